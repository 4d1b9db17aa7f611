"""Attention-DP ranks in lock step (codesign.sim.serving.lockstep): the step of the busiest rank
with all ranks' tokens routed, checked against independent mappings and hand calculations; equal
loads give the even-share step bit for bit; per-rank schedulers against an analytic step time."""

from __future__ import annotations

import numpy as np
import pytest

from codesign import mapping
from codesign.errors import CodesignError
from codesign.graph import trace
from codesign.graph.shape import Group, StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.models import load_model
from codesign.sim.engine import StepResult
from codesign.sim.serving.arrivals import Request, RequestStream
from codesign.sim.serving.config import SchedulerConfig, scheduler_config
from codesign.sim.serving.lockstep import LockStepTimer, deployment_shape, lockstep_ranks, undominated
from codesign.sim.serving.scheduler import run_stream
from codesign.sim.serving.steptime import StepTimeModel, StepTimeOptions
from codesign.sim.stepper import Stepper
from tests.sim.helpers import make_hw
from tests.sim.serving.helpers import capacity

FP8 = Precision(weights="fp8", activations="fp8")
MODEL = "qwen3.5-35b-a3b"
PLAN = ParallelPlan(ep=2, attention_dp=2)
EXACT = StepTimeOptions(exact=True)
PROMPT = (1, 64, 0, 1)  # one rank computes a 64-token prompt ...
DECODES = (4, 1, 32, 1)  # ... the other decodes 4 sequences at 33 tokens of KV


@pytest.fixture(scope="module")
def stepper() -> Stepper:
    return Stepper(make_hw(**{"system.chips": 2}), load_model(MODEL), PLAN, FP8, cache=False)


def _mapped(st: Stepper, shape: StepShape):
    g = trace(st.config, shape=shape, router=st.router)
    return mapping.map_step(g, st.config, st.hw, st.plan, st.precision, **st.options.map_kwargs(), rates=st._rates())


def _ops(m, pred):
    return [op for _, op in m.graph.nodes(data="op") if pred(op)]


def test_a_prompt_rank_and_a_decode_rank_step_as_the_prompt_rank(stepper):
    """Two ranks, one with a prompt and one with decodes: the lock step is the prompt rank's shape
    on both ranks with the step's 68 real tokens routed, which the full-graph evaluation of that
    shape gives independently; it is slower than the decode rank's and about the even spread's."""
    timer = LockStepTimer(stepper.step, 2, stepper.config.max_position_embeddings, EXACT)
    lock = timer.time([[PROMPT], [DECODES]])
    busiest = StepShape((Group(2, 64, 0),), routed=68)
    shapes = mapping.lockstep_shapes([[Group(1, 64, 0)], [Group(4, 1, 32)]])
    assert shapes == [busiest, StepShape((Group(8, 1, 32),), routed=68)]
    assert lock == max(stepper.step(s).time_s for s in shapes)
    assert lock == stepper.full_step(busiest).time_s  # the step-time model's path against the full graph
    decode_rank = stepper.step(StepShape((Group(8, 1, 32),), routed=68)).time_s
    spread = stepper.step(StepShape((Group(4, 1, 32), Group(1, 64, 0)))).time_s  # the old even share
    # and within 1% of the even share's step (0.4% faster: the even share runs its decodes' and its
    # prompt's attention as two kernels a full-attention layer, codesign.graph.mixed, with their fixed
    # times; the prompt's 64 tokens carry both steps)
    assert lock > decode_rank and lock == pytest.approx(spread, rel=0.01)
    assert timer.evaluations == 2  # the two distinct ranks


def test_lock_step_attention_is_the_rank_shape_and_experts_see_all_tokens(stepper):
    """In the mapped lock step, every non-expert op is the busiest rank's (its shape on both ranks,
    nothing left unrouted), the expert op and its all-to-alls are those of a step of all 68 tokens
    (the even spread of the same tokens: the same router draw), and the dispatch carries each
    chip's mean share of them, 68 / 2 tokens (the even spread gives the chip of 3 of the 5
    sequences 41: the old share by sequences)."""
    lock = _mapped(stepper, StepShape((Group(2, 64, 0),), routed=68))
    rank = _mapped(stepper, StepShape((Group(2, 64, 0),)))
    spread = _mapped(stepper, StepShape((Group(4, 1, 32), Group(1, 64, 0))))
    dense = lambda op: op.block != "moe_experts"  # noqa: E731
    a, b = _ops(lock, dense), _ops(rank, dense)
    assert [(o.name, o.flops, o.bytes_read, o.gemm) for o in a] == [(o.name, o.flops, o.bytes_read, o.gemm) for o in b]
    experts = lambda op: op.kind == "grouped_gemm" and op.block == "moe_experts"  # noqa: E731
    for x, y in zip(_ops(lock, experts), _ops(spread, experts), strict=True):
        assert x.tokens_per_expert == y.tokens_per_expert and x.flops == y.flops
        assert x.bytes_read["weight"] == y.bytes_read["weight"]
        assert x.bytes_read["activation"] == pytest.approx(y.bytes_read["activation"], rel=1e-9)
    a2a = lambda op: op.kind == "collective" and op.collective.get("role") == "dispatch"  # noqa: E731
    d0 = _ops(lock, a2a)[0]
    cfg = stepper.config
    fanout = mapping.experts.dispatch_fanout(cfg.moe.num_experts, cfg.moe.top_k, 2)
    assert d0.collective["bytes"] == pytest.approx(34 * fanout * cfg.hidden_size * (1 + 4 / 128))


def test_equal_ranks_give_the_even_share_step_bit_for_bit(stepper):
    """Every rank with the same groups: nothing is left unrouted, and the lock step is the step the
    even share gave before (the same shape, the same cache key)."""
    assert StepShape((Group(2, 64, 0),), routed=128) == StepShape((Group(2, 64, 0),))
    timer = LockStepTimer(stepper.step, 2, stepper.config.max_position_embeddings, EXACT)
    for groups in ([PROMPT], [DECODES], [DECODES, PROMPT]):
        assert timer.time([groups, groups]) == stepper.step(deployment_shape(groups, 2)).time_s
    g = trace(stepper.config, shape=StepShape((Group(8, 1, 32),), routed=8), router=stepper.router)
    assert "routed_tokens" not in g.graph


def test_the_grid_interpolates_in_the_routed_share(stepper):
    """The step-time model's lookup (grid in sequences, cached tokens and routed share) is close
    to the exact lock step and exact on its grid points."""
    L = stepper.config.max_position_embeddings
    grid, exact = LockStepTimer(stepper.step, 2, L), LockStepTimer(stepper.step, 2, L, EXACT)
    for ranks in ([[PROMPT], [DECODES]], [[(5, 1, 32, 1)], [(4, 1, 32, 1)]]):
        assert grid.time(ranks) == pytest.approx(exact.time(ranks), rel=0.03)
    on_grid = [[(4, 1, 32, 1)], [(4, 1, 32, 1)]]
    assert grid.time(on_grid) == exact.time(on_grid) == stepper.step(StepShape((Group(8, 1, 32),))).time_s


def test_the_busiest_rank_is_chosen_on_the_shared_grid_and_dominated_batches_are_skipped(stepper):
    """The step-time model evaluates, at the real routed share, only the batch slowest on its own
    (u = 1); exact mode evaluates every batch no other dominates."""
    L = stepper.config.max_position_embeddings
    grid = LockStepTimer(stepper.step, 2, L)
    a, b = ((6, 1, 32, 1),), ((4, 1, 300, 1),)
    own = {g: grid.model(0).time_of(*g[0]) for g in (a, b)}
    busiest = max((a, b), key=own.get)
    assert grid.time([list(a), list(b)]) == grid.rank_time(busiest, 6 + 4)
    assert undominated([a, b, ((4, 1, 30, 1),), ((5, 1, 32, 1), PROMPT)]) == [a, b, ((5, 1, 32, 1), PROMPT)]


def test_lockstep_applies_to_moe_attention_dp_only():
    on, off = SchedulerConfig(), SchedulerConfig(attention_dp_lockstep=False)
    moe, dense = load_model(MODEL), load_model("qwen3-8b")
    assert lockstep_ranks(ParallelPlan(ep=8, attention_dp=8), moe, on) == 8
    assert lockstep_ranks(ParallelPlan(ep=8, attention_dp=8), moe, off) == 1
    assert lockstep_ranks(ParallelPlan(tp=2, ep=8, attention_dp=4), moe, on) == 4
    assert lockstep_ranks(ParallelPlan(tp=8, dp=2), moe, on) == 1  # dp replicas: independent engines
    assert lockstep_ranks(ParallelPlan(tp=1, dp=8), dense, on) == 1


# -- per-rank schedulers on an analytic step time ------------------------------------------------

def _analytic(shape: StepShape) -> StepResult:
    """1 ms per busiest-rank token (the shape holds it on both ranks) + 1 us per routed token."""
    return StepResult(time_s=1e-3 * shape.tokens / 2 + 1e-6 * shape.routed_tokens, bottleneck="x", breakdown={})


def _stream(*reqs: tuple[float, int, int]) -> RequestStream:
    return RequestStream("trace", tuple(Request(i, t, p, o) for i, (t, p, o) in enumerate(reqs)))


def _run(stream, dispatch="balanced", **cfg):
    lock = LockStepTimer(_analytic, 2, 1 << 20, EXACT)
    sched = SchedulerConfig(attention_dp_dispatch=dispatch, **cfg)
    return run_stream(stream, sched, capacity(replicas=2), None, lock=lock, stretch=(0.0, 1))


def test_each_rank_computes_its_own_prompt_and_the_step_waits_for_the_busiest():
    """Request 0 (prompt 100) goes to rank 0, request 1 (prompt 20) to rank 1; the first step is
    rank 0's 100 tokens on both ranks (0.1 s) with 120 tokens routed; then both decode one token
    a step (1 ms + 2 us)."""
    rec = _run(_stream((0.0, 100, 3), (0.0, 20, 3)))
    first = 0.1 + 120e-6
    assert rec.first_token[0] == rec.first_token[1] == pytest.approx(first, rel=1e-12)
    assert rec.finish[0] == pytest.approx(first + 2 * (1e-3 + 2e-6), rel=1e-12)
    assert rec.step_prefill_tokens[0] == 120 and rec.step_decodes[1] == 2
    assert rec.step_running[1] == 2


def test_a_rank_admits_within_its_own_budget():
    """Rank limits are one rank's: with 100 tokens a step, round robin puts requests 0 and 2 (80
    tokens each) on rank 0, which computes 80 + a 20-token chunk of request 2, then 1 decode + the
    last 60; rank 1 computes its 10 and then decodes. Each step lasts as long as rank 0's part."""
    rec = _run(_stream((0.0, 80, 2), (0.0, 10, 2), (0.0, 80, 2)), dispatch="round_robin",
               max_num_batched_tokens=100, max_num_seqs=4)
    assert rec.step_prefill_tokens[:2] == [110, 60]
    first = 0.1 + 110e-6
    assert rec.first_token[0] == rec.first_token[1] == pytest.approx(first, rel=1e-12)
    assert rec.first_token[2] == pytest.approx(first + 61e-3 + 62e-6, rel=1e-12)


def test_balanced_dispatch_picks_the_rank_with_fewest_requests():
    """Requests 0 (long output) and 1 (short) go to ranks 0 and 1 under both rules; when request 2
    (a 100-token prompt) arrives, request 1 has finished. Round robin sends it to rank 0, whose
    step then also holds request 0's decode (101 tokens); balanced sends it to the idle rank 1
    (100 tokens): its first token comes 1 ms earlier, the runs being the same until then."""
    stream = _stream((0.0, 10, 50), (0.0, 10, 2), (0.05, 100, 2))
    rr, bal = _run(stream, dispatch="round_robin"), _run(stream)
    assert rr.finish[1] == bal.finish[1] < 0.05
    assert rr.first_token[2] - bal.first_token[2] == pytest.approx(1e-3, rel=1e-9)


def test_ranks_in_phase_run_as_the_one_engine_bit_for_bit():
    """Identical requests spread evenly keep the ranks in phase: with the one engine's step-time
    model as the lock step's even model, the run is the one engine's (limits x ranks), bit for bit."""
    model = StepTimeModel(_analytic, 1 << 20)
    stream = _stream(*[(0.0, 50, 5)] * 4, *[(0.01, 30, 7)] * 2)
    lock = LockStepTimer(_analytic, 2, 1 << 20, even=model)
    a = run_stream(stream, SchedulerConfig(), capacity(replicas=2), None, lock=lock)
    b = run_stream(stream, SchedulerConfig(), capacity(replicas=2), model.step_time, timer=model)
    for f in ("first_token", "finish"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert a.step_dt == b.step_dt and a.step_running == b.step_running


def test_a_lock_stepped_poisson_run_with_preemptions_and_mtp_keeps_littles_law():
    """Four ranks, spread-out lengths, a pool small enough to preempt, MTP drafts: every request
    finishes, Little's law holds, and the ranks' stalls make the run slower than one engine."""
    from codesign.scenario import TokenDist
    from codesign.sim.serving.arrivals import poisson_stream
    from codesign.sim.serving.metrics import summarise
    from codesign.sim.serving.scheduler import Draft

    s = poisson_stream(600, 150.0, TokenDist(mean=300, dist="lognormal", cv=0.8), TokenDist(mean=60, dist="uniform"),
                       seed=3)
    cfg = SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=512)
    cap = capacity(tokens=4 * 3000, replicas=4)
    draft = Draft(1, (0.7,))
    lock = LockStepTimer(_analytic4, 4, 1 << 20, EXACT)
    rec = run_stream(s, cfg, cap, None, draft, lambda n, kv: 1e-4, lock=lock)
    m = summarise(rec, np.array([r.input_tokens for r in s.requests]))
    assert np.isfinite(rec.finish).all() and rec.preemptions.sum() > 0
    assert m.littles_law_ratio == pytest.approx(1.0, abs=0.05)
    one = run_stream(s, cfg, cap, lambda sh: _analytic4(sh).time_s, draft, lambda n, kv: 1e-4)
    assert rec.finish.mean() > one.finish.mean()


def _analytic4(shape: StepShape) -> StepResult:
    return StepResult(time_s=1e-3 + 1e-4 * shape.tokens / 4 + 1e-7 * shape.routed_tokens, bottleneck="x", breakdown={})


def test_lockstep_fields_are_validated():
    with pytest.raises(CodesignError, match=r"attention_dp_dispatch.*'balanced' or 'round_robin'"):
        scheduler_config({"attention_dp_dispatch": "shortest"})
    with pytest.raises(CodesignError, match=r"attention_dp_lockstep"):
        scheduler_config({"attention_dp_lockstep": "sometimes"})
    from codesign.scenario import parse_scenarios

    row = {"name": "x", "hardware": "h200", "chips": 8, "model": "deepseek-v3",
           "parallel": {"ep": 8, "attention_dp": 8},
           "workload": {"mode": "server", "input_tokens": 1024, "output_tokens": 64, "requests": 16,
                        "scheduler": {"attention_dp_lockstep": True},
                        "disaggregation": {"prefill": {"chips": 4}, "decode": {"chips": 4}}}}
    with pytest.raises(CodesignError, match=r"attention_dp_lockstep: true is not yet supported with workload.disagg"):
        parse_scenarios([row], "f.yaml")
    with pytest.raises(CodesignError, match="routed_ratio: expected a grid ratio above 1"):
        StepTimeOptions.from_dict({"routed_ratio": 1.0})
    with pytest.raises(CodesignError, match=r"routed: expected a positive integer .*found 0"):
        StepShape((Group(8, 1, 32),), routed=0)
    with pytest.raises(CodesignError, match="all 2 attention-DP ranks are idle"):
        mapping.lockstep_shapes([[], None])
    with pytest.raises(CodesignError, match="at least 2 attention-DP ranks"):
        LockStepTimer(_analytic, 1, 1024)
