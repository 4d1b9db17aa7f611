"""map_step on a real traced graph (a tiny Qwen3.5-like config: GDN + full attention + MoE)."""

from __future__ import annotations

import networkx as nx
import pytest

from codesign.graph import trace
from codesign.mapping import ParallelPlan, Precision, map_step, memory_per_chip
from codesign.models.tiny import tiny_config
from tests.mapping.helpers import qwen35_397b


@pytest.fixture(scope="module")
def traced():
    c = tiny_config(qwen35_397b())
    return c, trace(c, "decode", batch=32, context=64)


def test_dp_attention_ep_on_trace(traced, hw):
    c, g = traced
    ms = map_step(g, c, hw, ParallelPlan(ep=8, attention_dp=8), Precision(weights="fp8", activations="fp8"))
    assert nx.is_directed_acyclic_graph(ms.graph)
    moe_layers = sum(1 for t in c.mlp_types if t == "moe")
    a2a = [o for _, o in ms.graph.nodes(data="op") if o.kind == "collective"]
    assert len(a2a) == 2 * moe_layers and all(o.collective["type"] == "all_to_all" for o in a2a)
    # everything but the routed experts splits evenly over the 8 attention-DP groups (32 / 8 sequences)
    orig = sum(o.flops for _, o in g.nodes(data="op") if o.block != "moe_experts")
    mine = sum(o.flops for _, o in ms.graph.nodes(data="op") if o.block not in ("moe_experts",))
    assert mine * 8 == pytest.approx(orig)
    for layer, rank in ms.expert_ranks.items():
        op = next(o for _, o in ms.graph.nodes(data="op") if o.kind == "grouped_gemm" and o.layer == layer)
        assert len(op.tokens_per_expert) == c.moe.num_experts // 8


def test_graph_weights_match_config_formula(traced, hw):
    c, g = traced
    plan, prec = ParallelPlan(tp=2, ep=8, attention_dp=4), Precision(weights="fp8")
    a = memory_per_chip(c, g, hw, plan, prec, 32, 64)
    b = memory_per_chip(c, None, hw, plan, prec, 32, 64)
    assert a.weights == pytest.approx(b.weights, rel=1e-3)
