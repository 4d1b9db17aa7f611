"""The step-time model (skeleton graph + virtual layers) against the full evaluation of the whole
traced step: same time, bottleneck and breakdown, on a grid of shapes and plans."""

from __future__ import annotations

import pytest

from codesign.graph.shape import Group, StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.models import load_model
from codesign.sim.stepper import Stepper
from tests.sim.helpers import make_hw

FP8 = Precision(weights="fp8", activations="fp8")
SHAPES = [
    StepShape.decode(1, 4096),
    StepShape.decode(37, 20_000),
    StepShape.prefill(1, 512, cached=1024),
    StepShape.verify(8, cached=3000, draft=2),
    StepShape((Group(12, 1, 5000), Group(1, 256, 700))),
]
POINTS = [
    ("qwen3.5-35b-a3b", 8, ParallelPlan(tp=8, ep=8)),
    ("qwen3.5-35b-a3b", 8, ParallelPlan(ep=8, attention_dp=8)),
    ("qwen3.5-35b-a3b", 8, ParallelPlan(tp=2, ep=1, pp=4)),
    ("qwen3-8b", 4, ParallelPlan(tp=2, pp=2)),
    ("qwen3-8b", 3, ParallelPlan(pp=3)),  # 36 layers: 12 per stage
    ("qwen3-8b", 5, ParallelPlan(pp=5)),  # uneven stages [7, 7, 7, 8, 7]
    ("deepseek-v3", 16, ParallelPlan(ep=16, attention_dp=16)),
]


def _same(a, b):
    assert a.time_s == pytest.approx(b.time_s, rel=1e-12, abs=0)
    assert a.bottleneck == b.bottleneck and a.two_batch_overlap == b.two_batch_overlap
    assert a.stage_times_s == pytest.approx(b.stage_times_s, rel=1e-12)
    for part in ("block", "resource"):
        assert a.breakdown[part].keys() == b.breakdown[part].keys()
        for k in a.breakdown[part]:
            assert a.breakdown[part][k] == pytest.approx(b.breakdown[part][k], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("model,chips,plan", POINTS, ids=lambda p: str(p))
def test_step_model_equals_full_evaluation(model, chips, plan):
    hw = make_hw(**{"system.chips": chips, "system.scale_up.size": max(8, chips)})
    st = Stepper(hw, load_model(model), plan, FP8, cache=False)
    for shape in SHAPES:
        _same(st.step(shape), st.full_step(shape))


def test_mapping_reused_across_rates_equals_mapping_again():
    """A skeleton mapped once is re-ranked for hardware with other rates (`mapping.remap_experts`):
    the same step as mapping it afresh on that hardware."""
    from codesign import mapping
    from codesign.sim.stepmodel import StepModel

    cfg = load_model("qwen3.5-35b-a3b")
    plan = ParallelPlan(tp=8, ep=8)
    shape = StepShape.decode(40, 6000)
    base = StepModel(make_hw(**{"system.chips": 8}), cfg, plan, FP8)
    base.step(shape)
    for bw in ("1 TB/s", "9 TB/s"):
        hw = make_hw(**{"system.chips": 8, "chip.hbm.bandwidth": bw})
        model = StepModel(hw, cfg, plan, FP8)
        sk = model._skeleton(shape)
        skeleton = sk.graph()
        fresh = mapping.map_step(skeleton, cfg, hw, plan, FP8, **model.options.map_kwargs(),
                                 rates=model.cost_model.rank_rates())
        reused, replaced = model._mapped(sk)  # the kept mapping, its expert ops remapped
        assert reused is not fresh and reused.expert_ranks == fresh.expert_ranks and replaced
        assert [replaced.get(n, o).to_dict() for n, o in reused.graph.nodes(data="op")] == \
            [o.to_dict() for _, o in fresh.graph.nodes(data="op")]
        assert list(reused.graph.edges) == list(fresh.graph.edges)
        first = mapping.map_step(skeleton, cfg, base.hw, plan, FP8, **model.options.map_kwargs(),
                                 rates=base.cost_model.rank_rates())
        remapped, _, _ = mapping.remap_experts(first, skeleton.nodes(data="op"), cfg, model.cost_model.rank_rates())
        assert [remapped.get(n, o).to_dict() for n, o in first.graph.nodes(data="op")] == \
            [o.to_dict() for _, o in fresh.graph.nodes(data="op")]
        _same(model.step(shape), Stepper(hw, cfg, plan, FP8, cache=False).full_step(shape))


@pytest.mark.parametrize("plan", [ParallelPlan(tp=8, ep=8), ParallelPlan(tp=2, ep=8, attention_dp=4),
                                  ParallelPlan(tp=4, ep=2), ParallelPlan(ep=8, attention_dp=8), ParallelPlan(tp=8),
                                  ParallelPlan(tp=2, attention_dp=4)], ids=str)
def test_remap_on_a_template_equals_map_step(plan):
    """A skeleton of a known structure mapped on that structure's template (`mapping.remap`: ops
    sharded and collectives remade per site, no graph built) gives `map_step`'s ops node for node,
    and its step equals the full evaluation, across decode batches and lengths, prefill, verify and
    a mixed step."""
    from codesign import mapping
    from codesign.sim.stepmodel import StepModel

    cfg = load_model("qwen3.5-35b-a3b")
    hw = make_hw(**{"system.chips": 8})
    model = StepModel(hw, cfg, plan, FP8, cache=False)
    kwargs = {**model.options.map_kwargs(), "rates": model.cost_model.rank_rates()}
    shapes = [StepShape.decode(40, 6000), StepShape.decode(41, 6001), StepShape.decode(333, 20_000),
              StepShape.prefill(1, 700), StepShape.prefill(3, 700, cached=900), StepShape.verify(9, 5000, 2),
              StepShape((Group(12, 1, 3000), Group(1, 256, 512)))]
    remapped = 0
    for shape in shapes:
        sk = model._skeleton(shape)
        template = mapping.map_step(model._skeleton(StepShape.decode(40, 6000)).graph(), cfg, hw, plan, FP8, **kwargs)
        fresh = mapping.map_step(sk.graph(), cfg, hw, plan, FP8, **kwargs)
        if sk.structure() == model._skeleton(StepShape.decode(40, 6000)).structure():
            ops, ranks, _ = mapping.remap(template, sk.ops, sk.attrs, cfg, hw, **kwargs)
            assert ranks == fresh.expert_ranks and sorted(ops) == sorted(fresh.graph.nodes)
            assert [ops[n].to_dict() for n in fresh.graph.nodes] == [o.to_dict() for _, o in fresh.graph.nodes(data="op")]
            assert list(template.graph.edges) == list(fresh.graph.edges)
            remapped += 1
        _same(model.step(shape), Stepper(hw, cfg, plan, FP8, cache=False).full_step(shape))
    assert remapped >= 3  # the decode shapes share the template's structure


def _exact(r) -> tuple:
    """A step result with its floats as their reprs: equal only bit for bit."""
    return (repr(r.time_s), r.bottleneck, repr(r.breakdown), repr(r.stage_times_s), r.residency, r.layers_simulated,
            r.two_batch_overlap)


def test_a_walk_of_new_shapes_equals_fresh_evaluations():
    """New decode shapes one after another through one warm stepper (what the step benchmark times:
    a mapping template, its layout and plans, compiled layer forms, router counts taken from the
    previous draw) give, bit for bit, what a fresh stepper gives for each shape alone after the
    process's memos are cleared, and the full evaluation."""
    from codesign.graph import router, tracing
    from codesign.sim.stepper import clear_caches

    hw = make_hw(**{"system.chips": 8})
    cfg = load_model("qwen3.5-35b-a3b")
    plan = ParallelPlan(tp=8, ep=8)
    warm = Stepper(hw, cfg, plan, FP8, cache=False)
    warm.step(StepShape.decode(64, 32_768))
    shapes = [StepShape.decode(100 + b, 30_000 + 997 * b) for b in range(4)] + [StepShape.decode(3, 5000),
                                                                                 StepShape.decode(99, 29_000)]
    walked = [warm.step(s) for s in shapes]
    for shape, got in zip(shapes, walked):
        clear_caches()
        for memo in (router._LAST, router._MATRICES, router._DRAWS, tracing._SHAPED):
            memo.clear()
        fresh = Stepper(hw, cfg, plan, FP8, cache=False)
        assert _exact(got) == _exact(fresh.step(shape))
    for shape, got in zip(shapes[:2], walked[:2]):
        _same(got, warm.full_step(shape))
