"""SimPy step engine on hand-built per-chip graphs."""

from __future__ import annotations

import networkx as nx
import pytest

from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.engine import simulate_step
from tests.sim.helpers import FakeMapped, FakePlan, chain_graph, layer_ops, make_hw, op, simple_collective_time

HW = make_hw()
# These tests check the engine's own mechanics (chain contraction, overlap, layer deltas) against
# per-op costs, so they charge element-wise ops one by one (`elementwise_model: sram_per_op`); the
# default's region rewrite is checked against the full evaluation in test_elementwise_regions.py.
PER_OP = {"elementwise_model": "sram_per_op"}


def run(g, hw=HW, tbo=False, stage_layers=None, **opts):
    m = FakeMapped(g, plan=FakePlan(two_batch_overlap=tbo), stage_layers=stage_layers)
    return simulate_step(m, hw, CostOptions(**{**PER_OP, **opts}), simple_collective_time)


def tpe_for(layer: int, batch: int = 64) -> tuple[int, ...]:
    # deterministic, layer-dependent routing over 128 experts, top-8
    counts = [0] * 128
    for t in range(batch * 8):
        counts[(t * 7 + layer * 13 + t // 8) % 128] += 1
    return tuple(counts)


def test_chain_time_is_sum_of_op_costs():
    ops = layer_ops(0, 64, tpe_for(0))
    g = chain_graph([ops])
    cm = CostModel(HW, "bf16", "bf16", CostOptions(**PER_OP), simple_collective_time)
    want = sum(cm.cost(o).time_s for o in ops)
    assert run(g).time_s == pytest.approx(want, rel=1e-12)


def test_parallel_branch_overlaps_compute_and_link():
    # a collective and a GEMM with no dependency between them run at the same time
    g = nx.DiGraph()
    gemm = op("g", "gemm", flops=2.0 * 4096**3, gemm=(1, 4096, 4096, 4096))
    coll = op("c", "collective", collective={"type": "all_to_all", "bytes": 1e8})
    g.add_node(0, op=gemm)
    g.add_node(1, op=coll)
    cm = CostModel(HW, "bf16", "bf16", CostOptions(**PER_OP), simple_collective_time)
    r = run(g)
    assert r.time_s == pytest.approx(max(cm.cost(gemm).time_s, cm.cost(coll).time_s), rel=1e-12)
    # two GEMMs with no dependency still share the matrix unit: they serialise
    g2 = nx.DiGraph()
    g2.add_node(0, op=gemm)
    g2.add_node(1, op=gemm)
    assert run(g2).time_s == pytest.approx(2 * cm.cost(gemm).time_s, rel=1e-12)


def test_distinct_layers_simulated_once_and_deltas_exact():
    layers = [layer_ops(i, 64, tpe_for(i)) for i in range(12)]
    g = chain_graph(layers)
    r = run(g)
    assert r.layers_simulated == 1
    cm = CostModel(HW, "bf16", "bf16", CostOptions(**PER_OP), simple_collective_time)
    want = sum(cm.cost(o).time_s for ops in layers for o in ops)
    assert r.time_s == pytest.approx(want, rel=1e-12)


def test_two_batch_overlap_hides_all_to_all():
    # a slow scale-up link makes the all-to-alls comparable to compute, where overlap pays
    hw = make_hw(**{"system.scale_up.link_bandwidth": "0.3 GB/s"})
    layers = [layer_ops(i, 256, tpe_for(i, 256)) for i in range(4)]
    g = chain_graph(layers)
    plain = run(g, hw=hw).time_s
    tbo = run(g, hw=hw, tbo=True).time_s
    # overlap hides communication, but never below the compute-only time of the two micro-batches
    assert tbo < plain
    no_comm = chain_graph([[o for o in ops if o.kind != "collective"] for ops in layers])
    assert tbo >= run(no_comm, hw=hw).time_s * 0.999
    # "auto" keeps the faster of the two, on fast and slow links alike
    for h in (hw, HW):
        m = FakeMapped(g, plan=FakePlan(two_batch_overlap=None))
        auto = simulate_step(m, h, CostOptions(**PER_OP), simple_collective_time).time_s
        assert auto == min(run(g, hw=h).time_s, run(g, hw=h, tbo=True).time_s)


def test_pipeline_stages_sum_to_step():
    layers = [layer_ops(i, 64, tpe_for(i)) for i in range(4)]
    g = chain_graph(layers)
    r = run(g, stage_layers=[[0, 1], [2, 3]])
    assert len(r.stage_times_s) == 2
    assert sum(r.stage_times_s) == pytest.approx(run(g).time_s, rel=1e-12)


def test_uneven_pipeline_stages_sum_their_own_layers():
    layers = [layer_ops(i, 64, tpe_for(i)) for i in range(4)]
    g = chain_graph(layers)
    per_layer = run(g, stage_layers=[[0], [1], [2], [3]]).stage_times_s
    r = run(g, stage_layers=[[0], [1, 2, 3]])
    assert r.stage_times_s == pytest.approx([per_layer[0], sum(per_layer[1:])], rel=1e-12)
    assert r.time_s == pytest.approx(sum(per_layer), rel=1e-12)


def test_more_hbm_bandwidth_never_slower():
    g = chain_graph([layer_ops(i, 64, tpe_for(i)) for i in range(3)])
    slow = run(g).time_s
    fast = run(g, hw=make_hw(**{"chip.hbm.bandwidth": "8 TB/s"})).time_s
    assert fast <= slow


def test_deterministic():
    g = chain_graph([layer_ops(i, 64, tpe_for(i)) for i in range(3)])
    a, b = run(g, tbo=True), run(g, tbo=True)
    assert a.time_s == b.time_s and a.breakdown == b.breakdown and a.bottleneck == b.bottleneck


def test_state_resident_when_it_fits():
    small = chain_graph([[op("s", "vector", state=1e6, flops=1.0)]])
    big = chain_graph([[op("s", "vector", state=1e9, flops=1.0)]])
    assert run(small).residency["state"] is True
    assert run(big).residency["state"] is False
    assert run(small, sram_state=False).residency["state"] is False


# ---- speed machinery ------------------------------------------------------------------------------

def test_op_fields_known():
    # the mapping builds ops positionally for speed; a new Op field must be added to scaling.OP_FIELDS
    from codesign.mapping import scaling

    assert scaling.OP_FIELDS_KNOWN
    # Scaler.bytes spells the byte classes out in this order
    from codesign.graph.op import BYTE_CLASSES

    assert scaling._CLASSES == BYTE_CLASSES


def test_scaler_bytes_by_hand():
    """Each class: bytes x factor x the precision's scale, in that order (fp8 weights: x 0.5)."""
    from codesign.mapping import Precision
    from codesign.mapping.scaling import Scaler

    sc = Scaler(Precision(weights="fp8", activations="bf16", kv_cache="fp8"))
    d = {"weight": 1000.0, "activation": 300.0, "kv_cache": 70.0}
    f = {"weight": 0.125, "activation": 1 / 3, "kv_cache": 0.25, "state": 1 / 3}
    out = sc.bytes(d, f)
    assert list(out) == ["weight", "activation", "kv_cache", "state"]
    assert out == {"weight": 1000.0 * 0.125 * 0.5, "activation": 300.0 * (1 / 3) * 1.0, "kv_cache": 70.0 * 0.25 * 0.5,
                   "state": 0.0}
    assert sc.bytes(d, f) is out  # memoised per (dict, factors)


def test_gc_state_restored_after_mapping_and_simulating():
    import gc

    import codesign as cs
    from codesign.mapping import ParallelPlan, Precision, map_step

    cfg = cs.load_model("qwen3-8b")
    g = cs.trace(cfg, phase="decode", batch=4, tokens=1, context=1024)
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            m = map_step(g, cfg, HW, ParallelPlan(), Precision())
            simulate_step(m, HW)
            assert gc.isenabled() is enabled
        finally:
            gc.enable()


def test_mapped_bytes_equal_direct_scaling_though_layers_share_dicts():
    # layers of one kind share their scaled byte dicts; each op's values must still be exactly
    # traced bytes x token share / tp x precision scale (computed here op by op)
    import codesign as cs
    from codesign.graph.op import BYTE_CLASSES
    from codesign.mapping import ParallelPlan, Precision, map_step
    from codesign.mapping.memory import TP_BLOCKS

    cfg = cs.load_model("qwen3-8b")
    g = cs.trace(cfg, phase="decode", batch=8, tokens=1, context=2048)
    prec = Precision(weights="fp8", activations="fp8", kv_cache="fp8")
    m = map_step(g, cfg, HW, ParallelPlan(tp=2, dp=2), prec)
    tok = 4 / 8  # ceil(8 / dp) of the 8 sequences
    kv_split = min(2, cfg.attention.num_kv_heads)
    checked = 0
    for n, src in g.nodes(data="op"):
        new = m.graph.nodes[n]["op"]
        tp = src.block in TP_BLOCKS
        f = {"weight": 1.0 / 2 if tp else 1.0, "activation": tok / 2 if tp else tok, "state": tok / 2 if tp else tok,
             "kv_cache": tok / (kv_split if src.block == "attention" else 2) if tp else tok}
        for c in BYTE_CLASSES:
            assert new.bytes_read[c] == src.bytes_read.get(c, 0.0) * f[c] * prec.scale(c)
            assert new.bytes_written[c] == src.bytes_written.get(c, 0.0) * f[c] * prec.scale(c)
        assert new.flops == src.flops * (tok / 2 if tp else tok)
        assert (new.name, new.layer, new.kind) == (src.name, src.layer, src.kind)
        checked += 1
    assert checked == g.number_of_nodes()


def _replicate_by_sorting(tpe, ep, redundant, loads=None):
    """The copy rule as documented, written plainly (a full sort per copy): the reference for the
    heap-based `replicate_experts`."""
    from codesign.mapping import expert_placement

    E = len(tpe)
    slots = (E + redundant) // ep
    load = [float(x) for x in (tpe if loads is None else loads)]
    held = [set() for _ in range(ep)]
    owners = [[] for _ in range(E)]
    for e, r in enumerate(expert_placement(E, ep)):
        held[r].add(e)
        owners[e].append(r)
    for _ in range(redundant):
        free = [r for r in range(ep) if len(held[r]) < slots]
        for e in sorted(range(E), key=lambda e: (-load[e] / len(owners[e]), e)):
            hosts = [r for r in free if e not in held[r]]
            if hosts:
                break
        r = min(hosts, key=lambda r: (sum(load[x] / len(owners[x]) for x in held[r]), r))
        held[r].add(e)
        owners[e].append(r)
    out = []
    for e, ranks in enumerate(owners):
        c, n = int(tpe[e]), len(ranks)
        out += [(e, r, c // n + (1 if i < c % n else 0)) for i, r in enumerate(ranks)]
    return sorted(out, key=lambda x: (x[1], x[0]))


def test_replicate_experts_matches_the_plain_rule():
    import random

    from codesign.mapping import replicate_experts

    rng = random.Random(7)
    for _ in range(60):
        E = rng.choice([8, 64, 256])
        ep = rng.choice([d for d in (4, 16, 48, 144) if d <= 2 * E])
        r = -E % ep + ep * rng.randint(0, 1)
        tpe = [rng.choice([0, rng.randint(0, 40), rng.randint(0, 4000)]) for _ in range(E)]
        loads = None if rng.random() < 0.5 else [rng.choice([1.0, rng.random()]) for _ in range(E)]
        assert replicate_experts(tpe, ep, r, "contiguous", loads) == _replicate_by_sorting(tpe, ep, r, loads)
