"""The cost model's kept bandwidth-free parts (`CostModel.cost` and `seconds` with `_STATIC`)
against the cost computed in full (`CostModel.reference_cost`), to the bit: on the models' mapped ops, on every
shipped spec and on hardware variants that share parts (HBM / SRAM bandwidth) and that do not. The
two-batch-overlap half ops' seconds from the ops themselves (`CostModel.half_seconds`) against the
half op built (`half_op`) and costed in full, on the same ops."""

from __future__ import annotations

import math
import random

import pytest

import codesign as cs
from codesign import mapping
from codesign.graph.shape import StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.models import load_model
from codesign.sim.cost import CostModel, CostOptions, Residency, half_op
from codesign.sim.stepmodel import StepModel
from tests.sim.helpers import make_hw, op

FP8 = Precision(weights="fp8", activations="fp8")
RESIDENCIES = (Residency(), Residency(state=True), Residency(weights=True), Residency(state=True, weights=True))


def _mapped_ops(hw, model: str, plan: ParallelPlan, shape: StepShape) -> list:
    cfg = load_model(model)
    sm = StepModel(hw, cfg, plan, FP8, cache=False)
    skeleton, _ = sm._skeleton_graph(shape)
    mapped = mapping.map_step(skeleton, cfg, hw, plan, FP8, **sm.options.map_kwargs(), rates=sm.cost_model.rank_rates())
    return [o for _, o in mapped.graph.nodes(data="op")]


def _check(cm: CostModel, ops: list) -> int:
    n = 0
    for residency in RESIDENCIES:
        for o in ops:
            want = cm.reference_cost(o, residency)
            assert cm.cost(o, residency) == want, o.name  # parts computed and kept
            assert cm.cost(o, residency) == want, o.name  # parts reused
            assert cm.seconds(o, residency) == want.time_s, o.name
            half = cm.reference_cost(half_op(o), residency).time_s
            if o.kind != "collective":
                assert cm.half_floor(o, residency) <= half, o.name
            assert _same(cm.half_seconds(o, residency), half), o.name  # half parts computed and kept
            assert _same(cm.half_seconds(o, residency), half), o.name  # half parts reused
            n += 1
        # ops of equal content share one cost: the same as each op's own, and so do their halves
        group, keys = cm.group_costs(ops, residency)
        assert repr(group) == repr([cm.reference_cost(o, residency) for o in ops])  # repr: -0.0 is not 0.0
        halves = {}
        for o, k in zip(ops, keys):
            if k is not None:
                assert _same(halves.setdefault(k, cm.half_seconds(o, residency)), cm.half_seconds(o, residency)), o.name
    return n


def _same(a: float, b: float) -> bool:
    """The same float, bit for bit (a -0.0 is not a +0.0)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@pytest.fixture(scope="module")
def qwen_ops():
    hw = make_hw(**{"system.chips": 8})
    plan = ParallelPlan(tp=8, ep=8)
    return (_mapped_ops(hw, "qwen3.5-35b-a3b", plan, StepShape.decode(37, 9000))
            + _mapped_ops(hw, "qwen3.5-35b-a3b", plan, StepShape.prefill(1, 3000, cached=2000)))


@pytest.mark.parametrize("spec", ["h200", "b200", "mi300x", "tpu-v6e", "gaudi3", "moe-concept"])
def test_kept_parts_equal_full_cost_on_shipped_specs(spec, qwen_ops):
    hw = cs.load_hw(spec)
    for moe_kernel in ("grouped", "triton_fused"):
        opts = CostOptions(moe_kernel=moe_kernel)
        try:
            cm = CostModel(hw, "fp8", "bf16", opts)
        except cs.CodesignError:  # no Triton curve on this chip
            continue
        assert _check(cm, qwen_ops) > 100


def test_hardware_variants_share_parts_only_where_they_may(qwen_ops):
    """Variants in HBM or SRAM bandwidth share a key (their ops' compute seconds, byte split and
    overhead are the same numbers), and get their own costs from them; variants in anything else
    the parts read get their own key. Each costed against the full computation."""
    base = cs.load_hw("h200")

    def variant(**chip) -> CostModel:
        """h200 with one chip field changed (`section__field=value`)."""
        ((path, value),) = chip.items()
        section, field = path.split("__")
        c = base.chip
        changed = c.model_copy(update={section: getattr(c, section).model_copy(update={field: value})})
        return CostModel(base.model_copy(update={"chip": changed}), "fp8", "bf16")

    ref = CostModel(base, "fp8", "bf16")
    same = [variant(hbm__bandwidth=base.chip.hbm.bandwidth * f) for f in (0.5, 1.01, 1.37, 3.0)]
    same.append(variant(sram__bandwidth=base.chip.sram.bandwidth * 2.0))
    other = [variant(sram__capacity=base.chip.sram.capacity * 1e-3),
             variant(matrix__fp8=base.chip.matrix.fp8 * 1.5),
             variant(vector__bf16=(base.chip.vector.bf16 or base.chip.vector.fp32) * 0.5),
             variant(matrix__tile=(128, 128))]
    for cm in same:
        assert cm.static_key == ref.static_key
    for cm in other:
        assert cm.static_key != ref.static_key
    for cm in [ref] + same + other:
        _check(cm, qwen_ops)


def test_kept_parts_on_random_ops():
    """Random gemm / grouped / attention / vector / memory ops with bytes of every class, on chips
    with and without the overlap p-norm: the same costs as computed in full."""
    rng = random.Random(7)
    chips = [make_hw(), make_hw(**{"efficiency.overlap_exponent": 1.74}),
             make_hw(**{"efficiency.overlap_exponent": 3.0, "chip.sram.capacity": "1 MB"})]
    ops = []
    for i in range(400):
        kind = rng.choice(["gemm", "grouped_gemm", "attention", "vector", "memory"])
        m, n, k = rng.choice([1, 7, 64, 300]), rng.choice([128, 1000, 4096]), rng.choice([512, 4096])
        tpe = tuple(rng.choice([0, 1, 3, 9, 70, 200]) for _ in range(8)) if kind == "grouped_gemm" else None
        ops.append(op(f"o{i}", kind, flops=rng.choice([0.0, 2.0 * m * n * k]), w=rng.choice([0.0, 1e6, 3e8]),
                      a=rng.choice([0.0, 1e3, 1e6, 1e9]), kv=rng.choice([0.0, 5e7]), state=rng.choice([0.0, 2e6]),
                      gemm=(1, m, n, k) if kind == "gemm" and rng.random() < 0.8 else None, tpe=tpe,
                      efpt=rng.choice([0.0, 1e6]) if tpe else 0.0))
        if rng.random() < 0.25:  # byte dicts without some classes (`half_op`'s other branch)
            o = ops[-1]
            o.bytes_read = {c: v for c, v in o.bytes_read.items() if rng.random() < 0.5}
            o.bytes_written = {"activation": rng.choice([0.0, -0.0, 3e5])} if rng.random() < 0.5 else {}
    # copies: equal content in other op objects (what `group_costs` shares), with a -0.0 FLOPs one
    ops += [o.clone() for o in ops[::3]]
    ops.append(op("neg", "vector", flops=-0.0, a=1e3))
    ops.append(op("pos", "vector", flops=0.0, a=1e3))
    for hw in chips:
        for opts in (CostOptions(), CostOptions(fused_activations_on_chip=False, sram_weights=True),
                     CostOptions(tile_quantisation=False, small_m_ramp=False, sram_activations=False),
                     CostOptions(fuse_elementwise=False, elementwise_kernels_per_matrix_kernel=0.0,
                                 launch_overhead_s=3e-6, grouped_op_kernels=2.0)):
            _check(CostModel(hw, "bf16", "bf16", opts), ops)


def test_a_subclass_keeps_no_parts():
    """A cost model with its own rules (a subclass) always computes in full."""

    class Slow(CostModel):
        def overhead(self, op):
            return 1.0

    cm = Slow(make_hw(), "bf16", "bf16")
    assert cm.static_key is None
    o = op("g", "gemm", flops=1e9, w=1e6, gemm=(1, 8, 128, 4096))
    assert cm.cost(o).overhead_s == 1.0 == cm.reference_cost(o).overhead_s


def test_a_step_model_that_shares_nothing_keeps_no_parts():
    """`cache=False` (nothing shared): the cost model keeps no op's parts (`keep_parts`) and the
    routed layers are not kept (`routed._ROUTED`), so a step's ops die with it; its results are
    those of a step model that keeps them, field for field."""
    from codesign.sim import kept_parts, routed

    hw = make_hw(**{"system.chips": 8})
    cfg = load_model("qwen3.5-35b-a3b")
    plan = ParallelPlan(tp=8, ep=8)
    kept = StepModel(hw, cfg, plan, FP8)
    alone = StepModel(hw, cfg, plan, FP8, cache=False)
    assert kept.cost_model.keep_parts and not alone.cost_model.keep_parts
    assert alone.cost_model.static_key == kept.cost_model.static_key
    for shape in (StepShape.decode(37, 9000), StepShape.decode(64, 20_001), StepShape.prefill(1, 3000, cached=2000)):
        want = kept.step(shape)
        parts = {k: dict(v) for k, v in kept_parts._STATIC.items()}
        n_routed = len(routed._ROUTED)
        assert alone.step(shape) == want
        assert {k: dict(v) for k, v in kept_parts._STATIC.items()} == parts
        assert len(routed._ROUTED) == n_routed


def test_padded_tokens_of_many_counts():
    """`padded_tokens` (the routed layers' padding of their distinct counts) against the rule by
    hand (tile M 64: below it, steps of `grouped_min_tokens` 8, or the Triton row block 16; above
    it, whole tiles) and against `expert_padding` one count at a time."""
    grouped = CostModel(make_hw(), "bf16", "bf16")
    triton = CostModel(cs.load_hw("h200"), "bf16", "bf16", CostOptions(moe_kernel="triton_fused"))
    counts = [0, 1, 7, 8, 9, 63, 64, 65, 128, 129, 1000]
    assert grouped.padded_tokens(counts) == [0, 8, 8, 8, 16, 64, 64, 128, 128, 192, 1024]
    assert triton.padded_tokens(counts) == [0, 16, 16, 16, 16, 64, 64, 128, 128, 192, 1024]
    for cm in (grouped, triton, CostModel(make_hw(), "bf16", "bf16", CostOptions(tile_quantisation=False))):
        many = list(range(0, 3000, 7))
        assert cm.padded_tokens(many) == [int(cm.expert_padding((t,))[0]) for t in many]


def _collectives(scale_up: int) -> list[dict]:
    from codesign.mapping.collectives import make_collective

    out = []
    for kind in ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "send_recv"):
        for n in (2, 4, 8, 16):
            group = tuple(range(n)) if kind != "send_recv" else (0, n - 1)
            for nbytes in (4096.0, 1.5e6, 3e8):
                for algo in ([None, "ring", "two_shot", "one_shot"] if kind == "all_reduce" else
                             [None, "low_latency"] if kind == "all_to_all" else [None]):
                    out.append(make_collective(kind, group, nbytes, scale_up, algorithm=algo, imbalance=1.3))
    return out


@pytest.mark.parametrize("spec", ["h200", "b200", "mi300x", "gb200-nvl72", "tpu-v6e"])
def test_collective_times_depend_on_the_network_key_only(spec):
    """A spec with another chip and other efficiencies, but this spec's network key (system,
    collective efficiencies and curves), gives the same collective seconds: cost models may share
    them by that key. Each also equals the mapping's own `collective_time`, memoised or not."""
    from codesign.mapping import collectives

    hw = cs.load_hw(spec)
    other = cs.load_hw("ascend-910c" if spec != "ascend-910c" else "h200")
    e = hw.efficiency
    mixed_eff = other.efficiency.model_copy(update={
        "collective": e.collective, "collective_curves": e.collective_curves,
        "low_latency_collective": e.low_latency_collective, "low_latency_overhead": e.low_latency_overhead})
    mixed = other.model_copy(update={"system": hw.system, "efficiency": mixed_eff, "name": "mixed"})
    assert mixed.chip != hw.chip
    cm, cm_mixed = CostModel(hw, "bf16", "bf16"), CostModel(mixed, "bf16", "bf16")
    checked = 0
    for c in _collectives(hw.system.scale_up.size):
        try:
            want = float(collectives.collective_time(c, hw))
        except cs.CodesignError:  # e.g. a group spanning domains on a spec without scale_out
            continue
        assert float(collectives.collective_time(c, mixed)) == want
        o = op("c", "collective", collective=c)
        assert cm.cost(o).time_s == want == cm.collective_time(o)
        assert cm_mixed.cost(o).time_s == want
        checked += 1
    assert checked > 50


def test_routed_padding_equals_expert_padding_per_layer():
    """`RoutedLayers.padding` (distinct counts by a presence mask, or np.unique for sparse large
    counts) against `expert_padding` of each layer's counts."""
    import numpy as np

    from codesign.sim.routed import RoutedLayers

    rng = np.random.default_rng(3)
    cm = CostModel(make_hw(), "bf16", "bf16")
    for shape, high in (((44, 64), 13), ((14, 64), 800), ((44, 64), 6000), ((3, 8), 10**7), ((5, 4), 1)):
        a = rng.integers(0, high, size=shape)
        a[0, :2] = 0
        rows = [tuple(r) for r in a.tolist()]
        group = RoutedLayers(0, list(range(shape[0])), 0, [], rows, [], [], [], [], a)
        padded, routed = group.padding(cm)
        assert padded == [cm.expert_padding(r)[0] for r in rows]
        assert routed == [cm.expert_padding(r)[1] for r in rows]


def test_kept_parts_read_the_cost_models_attributes_only(qwen_ops):
    """The kept parts come from the cost model's attributes (what `static_key` holds), never from
    the spec at call time: with the spec taken away after construction they are the same."""
    for spec in ("h200", "mi300x"):
        cm = CostModel(cs.load_hw(spec), "fp8", "bf16")
        bare = CostModel(cs.load_hw(spec), "fp8", "bf16")
        bare.hw = None
        for residency in RESIDENCIES:
            for o in qwen_ops:
                if o.kind != "collective":
                    assert bare._static_parts(o, residency)[1:] == cm._static_parts(o, residency)[1:]


def test_routed_layers_shared_by_variants_that_rank_alike():
    """`route` keeps its result by the routing inputs and the slowest ranks the rates chose: a
    hardware variant whose rates pick the same ranks gets the same object, with the numbers a fresh
    computation gives; rates that pick other ranks get their own. Per layer, each result agrees
    with mapping that layer's expert op (`ExpertMapper.map`) at those rates, and its costs (the
    group's kept bandwidth-free parts, reused by the variant in HBM bandwidth) with costing that
    op and its all-to-alls in full."""
    from codesign.graph import tracing as tr
    from codesign.sim import routed

    cfg = load_model("qwen3.5-35b-a3b")
    plan = ParallelPlan(tp=8, ep=8)
    shape = StepShape.prefill(1, 3000)

    def routed_at(bandwidth: str, flops: str, fresh: bool):
        hw = make_hw(**{"system.chips": 8, "chip.hbm.bandwidth": bandwidth, "chip.matrix.fp8": flops})
        sm = StepModel(hw, cfg, plan, FP8)
        skeleton, routing = sm._skeleton_graph(shape)
        mapped = mapping.map_step(skeleton, cfg, hw, plan, FP8, **sm.options.map_kwargs(),
                                  rates=sm.cost_model.rank_rates())
        by_layer: dict[int, list] = {}
        for _, o in mapped.graph.nodes(data="op"):
            by_layer.setdefault(o.layer, []).append(o)
        if fresh:
            routed._ROUTED.clear()
        out = []
        for tmpl, (traced, layers, counts) in sorted(routing.items()):
            ops = by_layer[tmpl]
            g = routed.route(sm.cost_model, mapped.experts, traced, counts, tmpl, layers, ops)
            costs = g.costs(sm.cost_model, Residency(), ops)  # kept parts of a shared group reused
            for j in range(len(layers)):
                new, _, imbalance = mapped.experts.map(tr._rescale_experts(traced, tuple(counts[j].tolist())))
                assert (g.blocks[j], g.imbalance[j], g.flops[j], g.bytes_read[j], g.bytes_written[j]) == (
                    new.tokens_per_expert, imbalance, new.flops, new.bytes_read, new.bytes_written)
                assert costs[j][0] == sm.cost_model.reference_cost(new)
                for i, c in zip(g.a2a_pos, costs[j][1]):
                    a2a = ops[i].clone()
                    a2a.collective = {**a2a.collective, "imbalance": float(imbalance)}
                    assert c == sm.cost_model.reference_cost(a2a)
            out.append(g)
        return out

    base = routed_at("4.8 TB/s", "1979 TFLOPS", fresh=True)
    near = routed_at("4.85 TB/s", "1979 TFLOPS", fresh=False)
    assert all(a is b for a, b in zip(base, near))
    assert all(len(g._kept) == 1 for g in near)  # the variant's costs came from the kept parts
    moved = 0
    for far_bw, far_flops in (("0.3 TB/s", "1979 TFLOPS"), ("4.8 TB/s", "20 TFLOPS")):
        far = routed_at(far_bw, far_flops, fresh=False)
        moved += sum(a.blocks != b.blocks for a, b in zip(far, base))
        fresh = routed_at(far_bw, far_flops, fresh=True)
        for a, b in zip(far, fresh):
            assert (a.blocks, a.imbalance, a.flops, a.bytes_read, a.bytes_written) == (
                b.blocks, b.imbalance, b.flops, b.bytes_read, b.bytes_written)
    assert moved  # the far rates rank other EP ranks slowest somewhere


def test_routed_padding_of_small_and_huge_counts_equals_expert_padding():
    """The routed layers' padding (a table by count below its bound, distinct values above it: a
    huge batch's counts must not size a table) against `CostModel.expert_padding` layer by layer."""
    import numpy as np

    from codesign.sim.routed import RoutedLayers

    cm = CostModel(cs.load_hw("h200"), "fp8", "fp8")
    rng = np.random.default_rng(1)
    for top in (100, 200_000, 10**9):
        a = rng.integers(0, top, size=(5, 16))
        group = RoutedLayers(0, [0] * 5, 0, [], [tuple(r) for r in a.tolist()], [1.0] * 5, [0.0] * 5, [{}] * 5,
                             [{}] * 5, a)
        ref = [cm.expert_padding(tuple(r)) for r in a.tolist()]
        assert group.padding(cm) == ([float(p) for p, _ in ref], [r for _, r in ref]), top


def test_kept_parts_with_the_dense_mlp_activation_kernel():
    """`mlp_unfused_activation` (its serial kernel on each dense MLP's down projection, from the
    op's GEMM problem and of its half's): the same floats as computed in full, on Llama-2-70B's
    mapped decode and prefill ops at TP 2, and on copies renamed so that equal content is a down
    projection in one op and an attention projection in the other."""
    hw = make_hw(**{"system.chips": 2})
    plan = ParallelPlan(tp=2)
    ops = (_mapped_ops(hw, "llama-2-70b", plan, StepShape.decode(1024, 2100))
           + _mapped_ops(hw, "llama-2-70b", plan, StepShape.decode(63, 2100))
           + _mapped_ops(hw, "llama-2-70b", plan, StepShape.prefill(3, 2048)))
    downs = [o for o in ops if o.block == "mlp" and o.name.endswith("down_proj/mm")]
    assert downs
    for o in downs:
        twin = o.clone()
        twin.name, twin.block = o.name.replace("mlp.down_proj", "self_attn.o_proj"), "attention"
        ops.append(twin)
    for spec_hw in (hw, cs.load_hw("h100"), cs.load_hw("h200")):
        for opts in (CostOptions(mlp_unfused_activation=True),
                     CostOptions(mlp_unfused_activation=True, mlp_gemm_output_bytes=4.0, launch_overhead_s=2e-6)):
            cm = CostModel(spec_hw, "fp8", "fp8", opts)
            assert _check(cm, ops) > 100
            off = CostModel(spec_hw, "fp8", "fp8", opts.model_copy(update={"mlp_unfused_activation": False}))
            ids = {id(o) for o in downs}
            assert all(cm.cost(o).overhead_s > off.cost(o).overhead_s for o in downs)
            assert all(cm.cost(o) == off.cost(o) for o in ops if id(o) not in ids)


def test_step_results_with_the_dense_mlp_activation_kernel_equal_the_full_computation():
    """Llama-2-70B at TP 2 with `mlp_unfused_activation`: every step result (decode, prefill, with
    two-batch overlap off and on) the same float for float as a step model whose cost model keeps
    no parts (a subclass: `reference_cost` for every op), and slower than with the option off."""
    from codesign.mapping.options import MappingOptions
    from codesign.sim.stepmodel import StepSimulator

    class Full(CostModel):
        pass

    h100 = cs.load_hw("h100")
    hw = h100.model_copy(update={"system": h100.system.model_copy(update={"chips": 2})})
    cfg = load_model("llama-2-70b")
    on = CostOptions(mlp_unfused_activation=True)
    for tbo in (False, True, None):
        opts = MappingOptions(two_batch_overlap=tbo)
        fast = StepModel(hw, cfg, ParallelPlan(tp=2), FP8, on, opts)
        full = StepModel(hw, cfg, ParallelPlan(tp=2), FP8, on, opts)
        full.cost_model = Full(hw, fast.cost_model.matrix_dtype, fast.cost_model.attention_dtype, on)
        assert full.cost_model.static_key is None
        full._simulator = StepSimulator(hw, full.cost_model, full.options.two_batch_overlap)
        off = StepModel(hw, cfg, ParallelPlan(tp=2), FP8, None, opts)
        for shape in (StepShape.decode(1024, 2100), StepShape.decode(63, 300), StepShape.prefill(4, 2048)):
            want = full.step(shape)
            assert repr(fast.step(shape)) == repr(want), (tbo, shape)
            assert want.time_s > off.step(shape).time_s
