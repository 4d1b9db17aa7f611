"""Routed layers evaluated together (codesign.sim.routed) against building each layer's expert op
and all-to-alls and costing them one by one: the same costs, imbalances and weight bytes, to the bit."""

from __future__ import annotations

import pytest

from codesign import mapping
from codesign.graph import tracing as tr
from codesign.graph.shape import StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.models import load_model
from codesign.sim.cost import CostOptions, Residency
from codesign.sim.routed import route
from codesign.sim.stepmodel import StepModel
from tests.sim.helpers import make_hw

FP8 = Precision(weights="fp8", activations="fp8")
PLANS = [ParallelPlan(tp=8, ep=8), ParallelPlan(ep=8, attention_dp=8), ParallelPlan(tp=4, ep=4, dp=2),
         ParallelPlan(tp=8, ep=4)]


@pytest.mark.parametrize("plan", PLANS, ids=str)
@pytest.mark.parametrize("shape", [StepShape.decode(3, 900), StepShape.decode(150, 9000), StepShape.prefill(1, 700)],
                         ids=lambda s: s.canonical() if hasattr(s, "canonical") else str(s))
def test_routed_costs_equal_per_layer_ops(plan, shape, cost=None):
    hw = make_hw(**{"system.chips": 8})
    cfg = load_model("qwen3.5-35b-a3b")
    model = StepModel(hw, cfg, plan, FP8, cost=cost, cache=False)
    skeleton, routing = model._skeleton_graph(shape)
    mapped = mapping.map_step(skeleton, cfg, hw, plan, FP8, **model.options.map_kwargs(),
                              rates=model.cost_model.rank_rates())
    cm = model.cost_model
    by_layer: dict[int, list] = {}
    for _, op in mapped.graph.nodes(data="op"):
        by_layer.setdefault(op.layer, []).append(op)
    checked = 0
    for tmpl, (traced, layers, counts) in routing.items():
        ops = by_layer[tmpl]
        group = route(cm, mapped.experts, traced, counts, tmpl, layers, ops)
        assert group is not None
        for residency in (Residency(), Residency(state=True)):
            fast = group.costs(cm, residency, ops)
            for j, layer in enumerate(layers):
                op = tr._rescale_experts(traced, tuple(counts[j].tolist()))
                new, _, imbalance = mapped.experts.map(op)
                assert group.blocks[j] == new.tokens_per_expert
                assert group.imbalance[j] == imbalance
                assert group.bytes_read[j] == new.bytes_read and group.flops[j] == new.flops
                assert fast[j][0] == cm.cost(new, residency)
                for i, c in zip(group.a2a_pos, fast[j][1]):
                    a2a = ops[i].clone()
                    a2a.collective = {**a2a.collective, "imbalance": float(imbalance)}
                    assert c == cm.cost(a2a, residency)
                checked += 1
    assert checked >= len(layers)


@pytest.mark.parametrize("plan", PLANS[1:3], ids=str)
def test_routed_costs_with_moe_kernels_through_hbm(plan):
    """With `moe_unfused_epilogue` each layer's fixed time follows its own slowest rank's routed rows."""
    test_routed_costs_equal_per_layer_ops(plan, StepShape.decode(150, 9000), CostOptions(moe_unfused_epilogue=True))


def test_route_declines_layouts_it_does_not_cover():
    """Redundant expert copies and explicit placements are mapped per layer (None here)."""
    hw = make_hw(**{"system.chips": 8})
    cfg = load_model("qwen3.5-35b-a3b")
    for plan, placement in ((ParallelPlan(tp=8, ep=8, redundant_experts=8), "contiguous"),
                            (ParallelPlan(tp=8, ep=8), "round_robin")):
        model = StepModel(hw, cfg, plan, FP8, cache=False)
        skeleton, routing = model._skeleton_graph(StepShape.decode(16, 2000))
        kwargs = {**model.options.map_kwargs(), "placement": placement}
        mapped = mapping.map_step(skeleton, cfg, hw, plan, FP8, **kwargs, rates=model.cost_model.rank_rates())
        by_layer: dict[int, list] = {}
        for _, op in mapped.graph.nodes(data="op"):
            by_layer.setdefault(op.layer, []).append(op)
        for tmpl, (traced, layers, counts) in routing.items():
            assert route(model.cost_model, mapped.experts, traced, counts, tmpl, layers, by_layer[tmpl]) is None
