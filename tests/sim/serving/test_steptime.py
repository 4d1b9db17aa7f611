"""Step-time model: grid points are exact, bilinear costs interpolate exactly, mixed steps are one step."""

from __future__ import annotations

import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.sim.engine import StepResult
from codesign.sim.serving.steptime import (StepTimeModel, StepTimeOptions, bracket, geometric_grid, measure_error,
                                           measure_pooling, pool_decodes)
from tests.sim.serving.helpers import A, B, C, step_time


class Core:
    """Counts evaluations of an analytic single-group step."""

    def __init__(self, f=step_time) -> None:
        self.calls: list[StepShape] = []
        self.f = f

    def __call__(self, shape: StepShape) -> StepResult:
        self.calls.append(shape)
        return StepResult(time_s=self.f(shape), bottleneck="x", breakdown={})


def test_grid_and_bracket():
    g = geometric_grid(1.25, True, 100)
    assert g[:7] == [0, 1, 2, 3, 4, 5, 6] and g[-1] == 100 and g == sorted(set(g))
    assert bracket(g, 5) == (5, 5)
    a, b = bracket(g, 7)
    assert a < 7 < b and a in g and b in g
    assert bracket(g, 99, hi_limit=99) == (a := bracket(g, 99)[0], 99) and a < 99
    with pytest.raises(CodesignError, match="grid ratio above 1"):
        StepTimeOptions(kv_ratio=1.0)


def test_bilinear_costs_are_exact_and_memoised():
    core = Core()
    m = StepTimeModel(core, 1 << 20)
    for g in (Group(37, 1, 30_000), Group(1, 5000, 12_345), Group(19, 3, 777), Group(1, 8192, 0)):
        want = step_time(StepShape((g,)))
        assert m.group_time(g) == pytest.approx(want, rel=1e-12)
    n = len(core.calls)
    m.group_time(Group(37, 1, 30_000))
    assert len(core.calls) == n and m.evaluations == n  # memoised
    # a shape on grid points is evaluated as it is
    core2 = Core()
    m2 = StepTimeModel(core2, 1 << 20)
    m2.group_time(Group(4, 1, 0))
    assert core2.calls == [StepShape((Group(4, 1, 0),))]


def test_curved_costs_have_a_small_measured_error():
    # tile-like steps in the batch: not bilinear, so interpolation errs; measure_error reports it
    def f(shape):
        (g,) = shape.groups
        return 0.01 + 1e-4 * (-(-g.seqs // 16) * 16) + 1e-9 * g.seqs * g.cached_tokens

    core = Core(f)
    m = StepTimeModel(core, 1 << 20)
    shapes = [StepShape((Group(b, 1, 4000 + 37 * b),)) for b in range(1, 200, 7)]
    rep = measure_error(m, shapes)
    assert rep.shapes == len(shapes) and 0 < rep.max_abs < 0.15 and rep.mean_abs <= rep.max_abs
    exact = StepTimeModel(Core(f), 1 << 20, StepTimeOptions(exact=True))
    assert measure_error(exact, shapes).max_abs == 0.0


def merged(shape: StepShape) -> float:
    """A mixed step as one step: the per-step constant A once (weights read once), per-group work added."""
    return A + sum(B * g.tokens + C * g.seqs * g.cached_tokens for g in shape.groups)


def test_mixed_steps_are_one_step_and_interpolate_exactly():
    core = Core(merged)
    m = StepTimeModel(core, 1 << 20)
    for shape in (StepShape((Group(37, 1, 30_001), Group(1, 5000, 12_345))),
                  StepShape((Group(61, 1, 2000), Group(1, 3000, 0), Group(1, 1131, 7000)))):
        assert m.step_time(shape) == pytest.approx(merged(shape), rel=1e-12)  # a sum of bilinear parts: exact
        assert any(c.is_mixed for c in core.calls)  # evaluated by the core as mixed steps
        assert m.exact(shape) == merged(shape)
    # on grid points the mixed step is the core's step, one evaluation
    core2 = Core(merged)
    m2 = StepTimeModel(core2, 1 << 20)
    on_grid = StepShape((Group(4, 1, 0), Group(1, 1, 0)))  # (1, 1, 0) is also a decode: pooled
    assert m2.step_time(StepShape((Group(4, 1, 0), Group(1, 2, 0)))) == merged(StepShape((Group(4, 1, 0), Group(1, 2, 0))))
    assert len(core2.calls) == 1 and m2.step_time(on_grid) == merged(StepShape((Group(5, 1, 0),)))


def test_steps_of_three_groups_pair_each_with_the_first():
    shape = StepShape((Group(37, 1, 30_001), Group(1, 5000, 12_345), Group(1, 1131, 70)))
    pair = StepTimeModel(Core(merged), 1 << 20)
    assert pair.step_time(shape) == pytest.approx(merged(shape), rel=1e-12)  # sums of per-group parts: exact

    def knee(s):  # the token-parallel part saturates: a cross term between the groups
        return merged(s) + 1e-3 * min(sum(g.tokens for g in s.groups), 4000) / 4000

    core = Core(knee)
    m = StepTimeModel(core, 1 << 20)
    d, p1, p2 = shape.groups
    pairwise = knee(StepShape((d, p1))) + knee(StepShape((d, p2))) - knee(StepShape((d,)))
    got = m.step_time(shape)
    assert abs(got - knee(shape)) < 0.2 * abs(pairwise - knee(shape))  # the cross term, from the anchor
    assert sum(len(c.groups) == 3 for c in core.calls) == 1  # one whole-step evaluation: the anchor
    on_grid = StepShape((Group(16, 1, 32_768), Group(1, 3326, 16_384), Group(1, 986, 0)))
    assert m.step_time(on_grid) == pytest.approx(knee(on_grid), rel=1e-12)
    full = StepTimeModel(Core(knee), 1 << 20, StepTimeOptions(pairwise=False))
    assert full.step_time(shape) == pytest.approx(knee(shape), rel=1e-9)  # min() is flat in this cell


def test_mixed_steps_apart_sum_their_groups():
    core = Core(merged)
    m = StepTimeModel(core, 1 << 20, StepTimeOptions(mixed_steps=False))
    shape = StepShape((Group(64, 1, 2000), Group(1, 4096, 8192)))
    apart = merged(StepShape((shape.groups[0],))) + merged(StepShape((shape.groups[1],)))
    assert m.step_time(shape) == pytest.approx(apart, rel=1e-12) and m.exact(shape) == pytest.approx(apart)
    assert not any(c.is_mixed for c in core.calls)
    assert apart - merged(shape) == pytest.approx(A)  # the per-step part counted twice


def test_mixed_cross_terms_have_a_small_measured_error():
    # a product of the decodes' and the chunk's tokens: not a sum of per-group parts
    def f(shape):
        return merged(shape) + 1e-9 * shape.groups[0].seqs * sum(g.tokens for g in shape.groups[1:])

    m = StepTimeModel(Core(f), 1 << 20)
    shapes = [StepShape((Group(b, 1, 30_000 + 11 * b), Group(1, 8192 - b, 4000 * (b % 5)))) for b in range(3, 120, 9)]
    rep = measure_error(m, shapes)
    assert 0 < rep.max_abs < 0.02
    assert measure_error(StepTimeModel(Core(f), 1 << 20, StepTimeOptions(exact=True)), shapes).max_abs == 0.0


def test_pooling_merges_decodes_at_their_mean():
    s = pool_decodes(StepShape((Group(2, 1, 100), Group(6, 1, 300), Group(1, 512, 0))))
    assert sorted(s.groups) == sorted([Group(8, 1, 250), Group(1, 512, 0)])
    same = StepShape((Group(8, 1, 250),))
    assert pool_decodes(same) is same
    # linear in the cached length: pooling at the mean is exact
    assert measure_pooling(StepTimeModel(Core(), 1 << 20), 16, (1000, 3000)) == pytest.approx(0.0, abs=1e-12)


def test_context_limit_is_respected():
    core = Core()
    m = StepTimeModel(core, 5000)
    m.group_time(Group(1, 3000, 1999))
    m.group_time(Group(3, 1, 4990))
    assert all(g.kv_len <= 5000 for s in core.calls for g in s.groups)


def test_many_prompts_beside_a_large_decode_batch_stay_close_to_the_core():
    """Steps of one large decode group and k prompt chunks of different lengths (short-prompt server
    streams): the pairwise sum takes each prompt's increment on the mixed-step grid, so the decode
    group's coarse-grid interpolation error cancels per prompt instead of adding up k times (it
    used to put k = 10 at -8% and large k below zero)."""
    from codesign import mapping
    from codesign.hw import load_hw
    from codesign.models import load_model
    from codesign.sim.serving.steptime import StepTimeModel
    from codesign.sim.stepper import Stepper

    st = Stepper(load_hw("h200"), load_model("qwen3-8b"), mapping.ParallelPlan.from_dict({"tp": 1}),
                 mapping.Precision.from_dict({"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"}))
    m = StepTimeModel(st.step, 40960)
    prev = 0.0
    for k in (2, 5, 10, 20):
        sh = StepShape((Group(700, 1, 300),) + tuple(Group(1, 150 + 10 * i, 0) for i in range(k)))
        t = m.step_time(sh)
        assert t == pytest.approx(st.step(sh).time_s, rel=0.04) and t > prev
        prev = t


def test_a_prompt_ending_at_a_grid_length_is_interpolated_along_its_line():
    """Approximation 3b: the last chunk of a 32,768-token prompt (cached 32,768 - new, off the grid)
    beside decodes takes its corners on the prompt's own line (cached = 32,768 - chunk corner):
    one core evaluation per chunk corner instead of two, and exact for steps linear in both axes."""
    end, chunk = 32_768, 80
    shape = StepShape((Group(20, 1, 33_000), Group(1, chunk, end - chunk)))
    core = Core(merged)
    m = StepTimeModel(core, 1 << 20)
    assert m.step_time(shape) == pytest.approx(merged(shape), rel=1e-12)
    chunks = {g for c in core.calls for g in c.groups if g.new_tokens > 1}
    assert chunks and all(g.cached_tokens + g.new_tokens == end for g in chunks)
    off = StepTimeModel(Core(merged), 1 << 20, StepTimeOptions(prompt_end_line=False))
    assert off.step_time(shape) == pytest.approx(merged(shape), rel=1e-12)
    assert m.evaluations < off.evaluations
    # a chunk ending off the grid, or with its cached tokens on the grid, keeps the (new, cached) cell
    for g in (Group(1, chunk, 30_000), Group(1, 16_384, 16_384)):
        c = StepTimeModel(Core(merged), 1 << 20)._cell(g)
        assert len(c[4]) == 2
    with pytest.raises(CodesignError, match="prompt_end_line: expected true or false"):
        StepTimeOptions(prompt_end_line="yes")


def _curved(shape: StepShape) -> float:
    """Per-group costs plus terms across the step's groups (weights once, a concave token term)."""
    tokens = sum(g.tokens for g in shape.groups)
    return 0.005 + 2e-3 * tokens ** 0.5 + sum(B * g.tokens + C * g.seqs * g.cached_tokens for g in shape.groups)


def _run(model: StepTimeModel, timer):
    from codesign.scenario import TokenDist
    from codesign.sim.serving.arrivals import poisson_stream
    from codesign.sim.serving.config import SchedulerConfig
    from codesign.sim.serving.scheduler import run_stream
    from tests.sim.serving.helpers import capacity

    s = poisson_stream(120, 6.0, TokenDist(mean=3000, dist="lognormal", cv=0.8), TokenDist(mean=40, dist="lognormal", cv=0.8),
                       seed=3)
    return run_stream(s, SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=64), capacity(), model.step_time,
                      timer=timer)


def test_tuple_entry_points_and_bounded_memos_give_the_same_run():
    """The scheduler's tuple path (time_of / time_two, no shapes built) and lookup memos emptied
    when full give the run of `step_time` on every shape with unbounded memos, bit for bit."""
    import codesign.sim.serving.steptime as T

    ref_model = StepTimeModel(Core(_curved), 1 << 20)
    ref = _run(ref_model, None)
    fast_model = StepTimeModel(Core(_curved), 1 << 20)
    fast = _run(fast_model, fast_model)
    old = T.LOOKUP_MEMO_MAX
    try:
        T.LOOKUP_MEMO_MAX = 4
        small_model = StepTimeModel(Core(_curved), 1 << 20)
        small = _run(small_model, small_model)
    finally:
        T.LOOKUP_MEMO_MAX = old
    assert len(ref.step_dt) > 200 and len(ref_model._cells) > 4
    for rec in (fast, small):
        assert rec.step_dt == ref.step_dt and rec.step_end == ref.step_end
        assert np.array_equal(rec.finish, ref.finish) and np.array_equal(rec.first_token, ref.first_token)
    assert max(len(small_model._cells), len(small_model._dec_y), *map(len, small_model._br.values())) <= 4
    assert small_model.evaluations == ref_model.evaluations  # the memos of evaluations are kept
    # time_two is step_time's two-group path
    a, b = (24, 1, 31_000, 1), (1, 2000, 4096, 1)
    assert fast_model.time_two(a, b) == ref_model.step_time(StepShape((Group(*a), Group(*b))))
