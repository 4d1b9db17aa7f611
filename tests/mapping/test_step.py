from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest

from codesign.graph.op import Op
from codesign.mapping import (ParallelPlan, Precision, collective_time, expert_placement, map_step, rank_loads,
                              slowest_rank)
from codesign.mapping.experts import dispatch_fanout
from tests.mapping.helpers import llama2_70b, qwen35_397b

B = 16  # sequences in the traced decode step


def _op(name: str, kind: str, block: str, layer: int, flops: float, w: float = 0.0, a: float = 0.0, kv: float = 0.0,
        out=(B, 1, 8192), gemm=None, **kw) -> Op:
    return Op(name=name, target="t", kind=kind, block=block, layer=layer, layer_type="full_attention+dense",
              phase="decode", in_shapes=(), out_shapes=(out,), dtype="bfloat16", flops=flops,
              bytes_read={"weight": w, "activation": a, "kv_cache": kv, "state": 0.0},
              bytes_written={"weight": 0.0, "activation": a, "kv_cache": 0.0, "state": 0.0}, gemm=gemm, **kw)


def dense_graph(layers: int = 2) -> nx.DiGraph:
    """embed -> per layer [norm, q_proj, attention, o_proj, add, norm, gate_up, down_proj, add] -> lm_head."""
    H, V = 8192, 32000
    g = nx.DiGraph(batch=B, tokens=1, phase="decode")
    ops = [_op("embed_tokens/embedding", "memory", "embed", -1, 0.0, w=B * H * 2, a=B * H * 2)]  # B rows read
    for L in range(layers):
        p = f"layers.{L}."
        ops += [
            _op(p + "input_layernorm/mul", "vector", "norm", L, B * H * 4, w=H * 2, a=B * H * 2),
            _op(p + "self_attn.q_proj/mm", "gemm", "attention", L, 2 * B * H * 10240, w=H * 10240 * 2,
                a=B * H * 2, out=(B, 10240), gemm=(1, B, 10240, H)),
            _op(p + "self_attn/attention", "attention", "attention", L, 4 * B * 64 * 128 * 1000, a=B * 10240 * 2,
                kv=B * 1000 * 2 * 8 * 128 * 2, out=(B, 64, 1, 128)),
            _op(p + "self_attn.o_proj/mm", "gemm", "attention", L, 2 * B * H * H, w=H * H * 2, a=B * H * 2,
                gemm=(1, B, H, H)),
            _op(p + "add", "vector", "other", L, B * H, a=B * H * 4),
            _op(p + "post_attention_layernorm/mul", "vector", "norm", L, B * H * 4, w=H * 2, a=B * H * 2),
            _op(p + "mlp.gate_up/mm", "gemm", "mlp", L, 2 * B * H * 57344, w=H * 57344 * 2, a=B * H * 2,
                out=(B, 57344), gemm=(1, B, 57344, H)),
            _op(p + "mlp.down_proj/mm", "gemm", "mlp", L, 2 * B * H * 28672, w=H * 28672 * 2, a=B * 28672 * 2,
                gemm=(1, B, H, 28672)),
            _op(p + "add_1", "vector", "other", L, B * H, a=B * H * 4),
        ]
    ops.append(_op("lm_head/mm", "gemm", "lm_head", layers, 2 * B * H * V, w=V * H * 2, a=B * H * 2,
                   out=(B, 1, V), gemm=(1, B, V, H)))
    for i, o in enumerate(ops):
        g.add_node(i, op=o)
    g.add_edges_from(zip(range(len(ops) - 1), range(1, len(ops))))
    return g


def test_pure_tp_flops_sum_and_collectives(hw):
    g = dense_graph()
    c = llama2_70b()
    ms = map_step(g, c, hw, ParallelPlan(tp=8), Precision())
    ops = {n: o for n, o in ms.graph.nodes(data="op")}
    replicated = sum(o.flops for o in g.nodes.values() for o in [o["op"]] if o.block in ("norm", "other"))
    split = sum(o["op"].flops for o in g.nodes.values()) - replicated
    per_chip = sum(o.flops for o in ops.values())
    assert per_chip * 8 == pytest.approx(split + 8 * replicated)  # TP blocks split exactly
    # one all-reduce right after each o_proj and down_proj, one logits all-gather after the LM head
    colls = [(n, o) for n, o in ops.items() if o.kind == "collective"]
    kinds = sorted((o.block, o.collective["type"]) for _, o in colls)
    assert kinds == [("attention", "all_reduce")] * 2 + [("lm_head", "all_gather")] + [("mlp", "all_reduce")] * 2
    for n, o in colls:
        (pred,) = list(ms.graph.predecessors(n))
        assert ops[pred].name.endswith(("o_proj/mm", "down_proj/mm", "lm_head/mm"))
        assert o.layer == ops[pred].layer and o.collective["group"] == tuple(range(8))
        if o.collective["type"] == "all_reduce":
            assert o.collective["bytes"] == B * 8192 * 2
    assert nx.is_directed_acyclic_graph(ms.graph)
    # weights split by tp, KV by kv heads (8 heads / tp 8)
    q = next(o for o in ops.values() if o.name == "layers.0.self_attn.q_proj/mm")
    assert q.bytes_read["weight"] == 8192 * 10240 * 2 / 8 and q.gemm == (1, B, 1280, 8192)
    o_proj = next(o for o in ops.values() if o.name == "layers.0.self_attn.o_proj/mm")
    assert o_proj.gemm == (1, B, 8192, 1024)  # row-parallel: K split


def test_precision_rescales_bytes(hw):
    g = dense_graph(1)
    fp8 = map_step(g, llama2_70b(), hw, ParallelPlan(), Precision(weights="fp8", kv_cache="fp8"))
    bf = map_step(g, llama2_70b(), hw, ParallelPlan(), Precision())
    for n in g:
        a, b = fp8.graph.nodes[n]["op"], bf.graph.nodes[n]["op"]
        assert a.bytes_read["weight"] == b.bytes_read["weight"] / 2
        assert a.bytes_read["kv_cache"] == b.bytes_read["kv_cache"] / 2
        assert a.bytes_read["activation"] == b.bytes_read["activation"]


def test_pipeline_stages_and_send_recv(hw):
    g = dense_graph(2)
    c = llama2_70b().model_copy(update={"num_layers": 2, "layer_types": ["full_attention"] * 2,
                                        "mlp_types": ["dense"] * 2})
    ms = map_step(g, c, hw, ParallelPlan(pp=2), Precision())
    assert ms.stage_layers == [[0], [1]]
    sends = [(n, o) for n, o in ms.graph.nodes(data="op") if o.kind == "collective"]
    assert len(sends) == 1 and sends[0][1].collective["type"] == "send_recv" and sends[0][1].layer == 0
    assert sends[0][1].collective["group"] == (0, 1)
    assert ms.stage == 1  # the last stage also runs the LM head
    assert {o.layer for _, o in ms.stage_graph(1).nodes(data="op")} == {1, 2}


def _moe_graph(counts, E: int, layer: int = 3) -> nx.DiGraph:
    H, I = 4096, 1024
    efpt = 6.0 * H * I
    ewb = 3 * H * I * 2
    n_tok = sum(counts) // 10
    g = nx.DiGraph(batch=n_tok, tokens=1, phase="decode")
    router = _op(f"layers.{layer}.mlp.gate/mm", "gemm", "moe_router", layer, 2 * n_tok * H * E, w=E * H * 2,
                 a=n_tok * H * 2, out=(n_tok, E))
    experts = _op(f"layers.{layer}.mlp.experts/moe_experts", "grouped_gemm", "moe_experts", layer,
                  sum(counts) * efpt, w=sum(1 for c in counts if c) * ewb, a=sum(counts) * H * 2,
                  out=(n_tok, H), tokens_per_expert=tuple(counts), expert_weight_bytes=ewb,
                  expert_flops_per_token=efpt)
    add = _op(f"layers.{layer}.add", "vector", "other", layer, n_tok * H, a=n_tok * H * 4)
    g.add_node(0, op=router)
    g.add_node(1, op=experts)
    g.add_node(2, op=add)
    g.add_edges_from([(0, 1), (1, 2)])
    return g


def test_ep_slowest_rank_against_brute_force(hw):
    rng = np.random.default_rng(7)
    E, ep = 512, 8
    counts = [int(c) for c in rng.multinomial(64 * 10, rng.dirichlet(np.ones(E) * 0.3))]
    # brute force: every rank's tokens and touched experts by walking its expert range
    per = E // ep
    brute = [(sum(counts[r * per:(r + 1) * per]), sum(1 for c in counts[r * per:(r + 1) * per] if c))
             for r in range(ep)]
    ranks = expert_placement(E, ep)
    assert rank_loads(counts, ranks, ep) == brute
    # compute-bound weighting picks the most tokens; memory-bound the most experts touched
    assert slowest_rank(counts, ranks, ep, 1.0, 0.0, 1.0, 1.0) == max(range(ep), key=lambda r: (brute[r][0], -r))
    assert slowest_rank(counts, ranks, ep, 0.0, 1.0, 1.0, 1.0) == max(range(ep), key=lambda r: (brute[r][1], -r))
    rr = expert_placement(E, ep, "round_robin")
    assert rank_loads(counts, rr, ep) == [(sum(counts[r::ep]), sum(1 for c in counts[r::ep] if c)) for r in range(ep)]

    c = qwen35_397b()
    g = _moe_graph(counts, E)
    prec = Precision(weights="fp8", activations="fp8")
    ms = map_step(g, c, hw, ParallelPlan(ep=8, attention_dp=8), prec)
    exp = ms.graph.nodes[1]["op"]
    r = ms.expert_ranks[3]
    assert exp.tokens_per_expert == tuple(counts[r * per:(r + 1) * per])
    assert exp.flops == pytest.approx(brute[r][0] * 6.0 * 4096 * 1024)
    assert exp.bytes_read["weight"] == pytest.approx(brute[r][1] * 3 * 4096 * 1024)  # fp8: 1 byte/param
    # the chosen rank is the slowest by the roofline estimate
    rate = hw.chip.matrix.peak("fp8") * hw.efficiency.gemm
    bw = hw.chip.hbm.bandwidth * hw.efficiency.memory
    times = [max(t * 6.0 * 4096 * 1024 / rate, k * 3 * 4096 * 1024 / bw) for t, k in brute]
    assert times[r] == max(times)
    # dispatch (fp8) before the experts, combine (bf16) after, imbalance = slowest / mean rank tokens
    (d,) = list(ms.graph.predecessors(1))
    (cb,) = list(ms.graph.successors(1))
    dc, cc = ms.graph.nodes[d]["op"].collective, ms.graph.nodes[cb]["op"].collective
    assert dc["type"] == cc["type"] == "all_to_all" and dc["role"] == "dispatch" and cc["role"] == "combine"
    assert cc["bytes"] / dc["bytes"] == pytest.approx(2 / (1 + 4 / 128))
    assert dc["imbalance"] == pytest.approx(max(t for t, _ in brute) / (sum(counts) / ep))
    assert ms.graph.has_edge(0, d) and ms.graph.has_edge(cb, 2)
    assert collective_time(dc, hw) > 0


def test_dispatch_fanout_brute_force():
    # exact expectation by enumerating all top-k sets of a small model
    E, k, ep = 8, 2, 4
    per = E // ep
    sets = list(itertools.combinations(range(E), k))
    mean = sum(len({e // per for e in s}) for s in sets) / len(sets)
    assert dispatch_fanout(E, k, ep) == pytest.approx(mean)


def test_tp_experts_allreduce_and_dp_attention_gather(hw):
    from tests.mapping.helpers import mixtral

    counts = [20, 20, 20, 20, 20, 20, 20, 20]
    g = _moe_graph(counts, 8)
    g.graph["batch"] = 80
    c = mixtral()
    ms = map_step(g, c, hw, ParallelPlan(tp=8), Precision())
    exp = ms.graph.nodes[1]["op"]
    assert exp.flops == pytest.approx(g.nodes[1]["op"].flops / 8)  # every expert split 8 ways
    (ar,) = list(ms.graph.successors(1))
    assert ms.graph.nodes[ar]["op"].collective["type"] == "all_reduce"
    ms2 = map_step(g, c, hw, ParallelPlan(tp=2, attention_dp=4), Precision())
    (ag,) = list(ms2.graph.predecessors(1))
    (rs,) = list(ms2.graph.successors(1))
    assert ms2.graph.nodes[ag]["op"].collective["type"] == "all_gather"
    assert ms2.graph.nodes[ag]["op"].collective["group"] == (0, 2, 4, 6)
    assert ms2.graph.nodes[rs]["op"].collective["type"] == "reduce_scatter"


def _attention_graph(batch: int, kv_len: int) -> nx.DiGraph:
    """One GQA decode attention op with the shapes the tracer records: q (B, 64, 1, 128), k and v
    (B, 8, S, 128) (Llama-2-70B's heads)."""
    g = nx.DiGraph(batch=batch, tokens=1, phase="decode")
    shapes = ((batch, 64, 1, 128), (batch, 8, kv_len, 128), (batch, 8, kv_len, 128))
    op = Op(name="layers.0.self_attn/attention", target="codesign.attention", kind="attention", block="attention",
            layer=0, layer_type="full_attention+dense", phase="decode", in_shapes=shapes,
            out_shapes=((batch, 64, 1, 128),), dtype="bfloat16", flops=4.0 * batch * 64 * 128 * kv_len,
            bytes_read={"weight": 0.0, "activation": 0.0, "kv_cache": batch * kv_len * 2 * 8 * 128 * 2.0,
                        "state": 0.0},
            bytes_written={"weight": 0.0, "activation": 0.0, "kv_cache": 0.0, "state": 0.0})
    g.add_node(0, op=op)
    return g


@pytest.mark.parametrize("plan, rank_batch, q_heads, kv_heads", [
    (ParallelPlan(tp=8), 16, 8, 1),                   # every rank: all 16 sequences, 64/8 query and 8/8 KV heads
    (ParallelPlan(tp=2, attention_dp=4), 4, 32, 4),   # 16 / 4 sequences a rank, heads split two ways
    (ParallelPlan(tp=1, attention_dp=8), 2, 64, 8),   # attention DP only: whole heads, 2 sequences a rank
])
def test_attention_shapes_are_one_ranks(hw, plan, rank_batch, q_heads, kv_heads):
    """A mapped attention op carries the (batch, heads) one attention chip runs, which the shape-read
    kernel terms use (the GQA decode occupancy term's batch x KV heads), and bytes scaled alike."""
    g = _attention_graph(16, 1000)
    ms = map_step(g, llama2_70b(), hw, plan, Precision())
    (att,) = [o for o in ms.graph.nodes.values() for o in [o["op"]] if o.kind == "attention"]
    q, k, v = att.in_shapes
    assert q == (rank_batch, q_heads, 1, 128)
    assert k == v == (rank_batch, kv_heads, 1000, 128)
    # the KV bytes a rank streams are those of its own (batch, KV heads) rows
    assert att.bytes_read["kv_cache"] == pytest.approx(rank_batch * kv_heads * 1000 * 128 * 2 * 2.0)
