"""The scheduler against hand calculations on an analytic step time and a hand-sized KV pool."""

from __future__ import annotations

import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.sim.serving.arrivals import Request, RequestStream, burst_stream, poisson_stream
from codesign.sim.serving.config import SchedulerConfig, scheduler_config
from codesign.sim.serving.metrics import stats, summarise
from codesign.sim.serving.scheduler import Draft, run_stream
from tests.sim.serving.helpers import A, B, C, capacity, step_time


def one(prompt: int, out: int) -> RequestStream:
    return RequestStream("burst", (Request(0, 0.0, prompt, out),))


def recorded(shapes):
    def f(shape):
        shapes.append(shape)
        return step_time(shape)
    return f


def test_one_request_chunked_prefill_then_decode():
    shapes: list[StepShape] = []
    rec = run_stream(one(20_000, 5), SchedulerConfig(), capacity(), recorded(shapes))
    chunks = [s.groups for s in shapes[:3]]
    assert chunks == [(Group(1, 8192, 0),), (Group(1, 8192, 8192),), (Group(1, 3616, 16_384),)]
    ttft = sum(A + B * g.tokens + C * g.cached_tokens for (g,) in chunks)
    assert rec.first_token[0] == pytest.approx(ttft, rel=1e-12)
    # four decode steps at KV 20000..20003 (one stretch, timed at its middle: linear, so exact to 1 token)
    decode = sum(A + B + C * kv for kv in range(20_000, 20_004))
    assert rec.finish[0] == pytest.approx(ttft + decode, abs=4 * C)
    m = summarise(rec, np.array([20_000]))
    assert m.tpot_s["mean"] == pytest.approx(decode / 4, abs=C) and m.steps == 7


def test_vllm_refuses_budget_below_max_seqs_and_so_do_we():
    with pytest.raises(CodesignError, match="max_num_batched_tokens \\(64\\) must be at least max_num_seqs \\(128\\)"):
        scheduler_config({"max_num_seqs": 128, "max_num_batched_tokens": 64})
    with pytest.raises(CodesignError, match="workload.scheduler: max_num_seq: Extra inputs"):
        scheduler_config({"max_num_seq": 1})
    d = SchedulerConfig()
    assert (d.max_num_seqs, d.max_num_batched_tokens, d.block_size, d.preemption) == (1024, 8192, 16, "recompute")


def test_max_num_seqs_and_client_concurrency_bound_the_batch():
    s = burst_stream(40, 300, 50, seed=0)
    rec = run_stream(s, SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=4096), capacity(), step_time)
    assert max(rec.step_running) == 4 and np.isfinite(rec.finish).all()
    s = burst_stream(40, 300, 50, seed=0, concurrency=3)
    rec = run_stream(s, SchedulerConfig(), capacity(), step_time)
    assert max(rec.step_in_system) == 3 and max(rec.step_running) == 3


def test_littles_law_on_a_poisson_run():
    s = poisson_stream(3000, 40.0, 1000, 100, seed=1)
    rec = run_stream(s, SchedulerConfig(), capacity(), step_time)
    m = summarise(rec, np.array([r.input_tokens for r in s.requests]))
    assert m.littles_law_ratio == pytest.approx(1.0, abs=0.05)
    assert m.request_rate_per_s == pytest.approx(3000 / m.duration_s)
    assert m.ttft_s["p50"] <= m.ttft_s["p90"] <= m.ttft_s["p99"]
    assert m.output_tokens_per_s == pytest.approx(3000 * 100 / m.duration_s)


def test_preemption_recomputes_and_every_request_finishes():
    # room for ~4 requests at their full length (100 + 200 tokens): 10 sent at once must preempt
    s = burst_stream(10, 100, 200, seed=0)
    cap = capacity(tokens=4 * 320)
    shapes: list[StepShape] = []
    rec = run_stream(s, SchedulerConfig(), cap, recorded(shapes))
    assert np.isfinite(rec.finish).all() and rec.preemptions.sum() > 0
    assert max(rec.step_kv_use) <= 1.0 + 1e-12
    assert len(rec.resume_gaps) > 0 and min(rec.resume_gaps) > 0
    # recompute prefills the prompt plus the generated tokens: prefill work exceeds the prompts
    assert sum(rec.step_prefill_tokens) > 10 * 100
    m = summarise(rec, np.full(10, 100))
    assert m.preemptions == int(rec.preemptions.sum()) and m.itl_s["p99"] >= m.itl_s["p50"]


def test_prefix_cache_hits_skip_prefill_compute():
    s = burst_stream(5, 1000, 10, seed=0)
    rec = run_stream(s, SchedulerConfig(prefix_cache_hit_rate=0.5), capacity(), step_time)
    # 1000 tokens at 50%: 496 cached (31 whole blocks), 504 computed each
    assert sum(rec.step_prefill_tokens) == 5 * 504


def test_replicas_multiply_the_engine_limits():
    s = burst_stream(40, 300, 20, seed=0)
    rec = run_stream(s, SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=4096), capacity(replicas=2), step_time)
    assert max(rec.step_running) == 8


def test_mtp_expected_tokens_and_speed():
    assert Draft(2, (0.9, 0.8)).expected_tokens == pytest.approx(1 + 0.9 + 0.9 * 0.8)
    assert Draft(3, (0.0, 1.0, 1.0)).expected_tokens == 1.0
    s = burst_stream(8, 200, 400, seed=0)
    base = run_stream(s, SchedulerConfig(), capacity(), step_time)
    zero = run_stream(s, SchedulerConfig(), capacity(), step_time, Draft(1, (0.0,)), lambda n, kv: 0.002)
    full = run_stream(s, SchedulerConfig(), capacity(), step_time, Draft(1, (1.0,)), lambda n, kv: 0.002)
    assert zero.finish.max() > base.finish.max()  # same tokens per step, each step costlier
    assert full.finish.max() < base.finish.max()  # two tokens per step
    # with acceptance 1 the decode phase takes half the steps (399 tokens after the first: 200)
    assert sum(full.step_count) - 1 == pytest.approx(np.ceil(399 / 2), abs=1)


def test_weighted_stats():
    x = np.arange(1.0, 101.0)
    s = stats(x)
    assert (s["p50"], s["p99"]) == (pytest.approx(np.percentile(x, 50)), pytest.approx(np.percentile(x, 99)))
    w = stats(np.array([1.0, 10.0]), np.array([99.0, 1.0]))
    assert w["p50"] == 1.0 and w["mean"] == pytest.approx(1.09)
    assert stats(np.array([np.nan]))["mean"] is None


def test_stretches_match_step_by_step_simulation():
    # decode-only stretches are timed at their middle: on a cost linear in the KV length the run
    # matches simulating every step (stretch_max 1) to within one token's KV cost per stretch
    s = poisson_stream(60, 3.0, 500, 300, seed=2)
    fast = run_stream(s, SchedulerConfig(), capacity(), step_time)
    slow = run_stream(s, SchedulerConfig(), capacity(), step_time, stretch=(0.0, 1))
    assert sum(fast.step_count) == sum(slow.step_count) and len(fast.step_count) < len(slow.step_count) / 3
    assert np.allclose(fast.finish, slow.finish, rtol=1e-6)
    assert np.allclose(fast.first_token, slow.first_token, rtol=1e-6)


def test_step_model_options_from_a_scenario():
    from codesign.scenario import parse_scenarios
    from codesign.sim.serving.steptime import StepTimeOptions

    assert StepTimeOptions.from_dict({"exact": True, "stretch_max": 1}).exact
    for bad, msg in (({"seq_ratio": 1.0}, "seq_ratio: expected a grid ratio above 1"),
                     ({"exactly": True}, "unknown field 'exactly'"),
                     ({"stretch_max": 0}, "stretch_max: expected an integer >= 1")):
        with pytest.raises(CodesignError, match=msg):
            parse_scenarios({"name": "x", "hardware": "h200", "model": "qwen3-8b",
                             "workload": {"mode": "server", "step_model": bad}}, "s.yaml")


def test_engine_defaults_follow_vllm_by_chip():
    from codesign.hw import load_hw

    big = scheduler_config({}, hw=load_hw("h200"))
    small = scheduler_config({}, hw=load_hw("a100"))  # 80 GB, but vLLM excepts A100s
    assert (big.max_num_seqs, big.max_num_batched_tokens) == (1024, 8192)
    assert (small.max_num_seqs, small.max_num_batched_tokens) == (256, 2048)
    assert scheduler_config({"max_num_seqs": 64}, hw=load_hw("a100")).max_num_batched_tokens == 2048


def test_without_chunked_prefill_a_prompt_waits_for_room_for_all_of_it():
    s = burst_stream(3, 5000, 2, seed=0)  # fixed lengths: 3 prompts of 5000 tokens, 2 output tokens
    chunked: list[StepShape] = []
    run_stream(s, SchedulerConfig(), capacity(), recorded(chunked))
    assert chunked[0].groups == (Group(1, 5000, 0), Group(1, 3192, 0))  # 8192 tokens: the second is split
    whole: list[StepShape] = []
    rec = run_stream(s, SchedulerConfig(chunked_prefill=False), capacity(), recorded(whole))
    # step 1: the first prompt alone (5000 + 5000 > 8192); step 2: its decode + the second prompt;
    # step 3: the second's decode + the third prompt. No group is ever a partial prompt.
    assert [tuple(g.tokens for g in sh.groups) for sh in whole[:3]] == [(5000,), (1, 5000), (1, 5000)]
    assert all(g.tokens in (1, 5000) for sh in whole for g in sh.groups) and np.isfinite(rec.finish).all()
    first = A + B * 5000  # the first prompt's step, by hand
    assert rec.first_token[0] == pytest.approx(first, rel=1e-12)
    assert rec.first_token[1] == pytest.approx(first + (A + B + C * 5000) + (A + B * 5000), rel=1e-12)


def test_guaranteed_no_evict_admits_whole_sequences_and_never_preempts():
    # room for 4 whole sequences (100 + 200 tokens + 1 ahead, in 16-token pages: 19 pages = 304 bytes)
    s = burst_stream(10, 100, 200, seed=0)
    cap = capacity(tokens=4 * 304)
    rec = run_stream(s, SchedulerConfig(capacity_policy="guaranteed_no_evict"), cap, step_time)
    assert rec.preemptions.sum() == 0 and np.isfinite(rec.finish).all()
    assert max(rec.step_running) == 4  # vs max_utilization, which admits more and then preempts
    util = run_stream(s, SchedulerConfig(), cap, step_time)
    assert max(util.step_running) > 4 and util.preemptions.sum() > 0
    # in waves of 4: the fifth request starts only when a whole sequence's pages are released
    assert rec.first_token[4] > rec.finish[:4].min() - 1e-12


def test_new_scheduler_fields_are_validated():
    with pytest.raises(CodesignError, match="workload.scheduler: capacity_policy: Input should be 'max_utilization' or "
                       "'guaranteed_no_evict'"):
        scheduler_config({"capacity_policy": "no_evict"})
    with pytest.raises(CodesignError, match="workload.scheduler: chunked_prefill: Input should be a valid boolean"):
        scheduler_config({"chunked_prefill": "sometimes"})
    d = SchedulerConfig()
    assert d.chunked_prefill is True and d.capacity_policy == "max_utilization"


def test_equal_prompt_chunks_form_one_group():
    s = burst_stream(3, 2000, 4, seed=0)  # 6000 tokens fit one 8192-token step
    shapes: list[StepShape] = []
    run_stream(s, SchedulerConfig(chunked_prefill=False), capacity(), recorded(shapes))
    assert shapes[0].groups == (Group(3, 2000, 0),)
    (g,) = shapes[1].groups  # then the three decode together (one stretch, timed at its middle)
    assert (g.seqs, g.new_tokens) == (3, 1)


@pytest.mark.parametrize("bs", [1, 2, 16, 64])
def test_block_count_matches_a_pass_over_the_sequences(bs):
    """The scheduler's integer page count (whole-token steps, power-of-two pages) against
    ceil((length + extra) / page) summed over the sequences, as they join, gain tokens and leave."""
    from codesign.sim.serving.scheduler import _BlockCount

    rng = np.random.default_rng(bs)
    count, lens = _BlockCount(bs), []
    for _ in range(300):
        op = rng.integers(3)
        if op == 0 or not lens:
            lens.append(int(rng.integers(0, 5000)))
            count.add(lens[-1])
        elif op == 1:
            e = int(rng.integers(1, 40))
            lens = [v + e for v in lens]
            count.shift += e
        else:
            count.remove(lens.pop(int(rng.integers(len(lens)))))
        for extra in (0, 1, 2, bs - 1, bs, bs + 1, 257):
            assert count.pages(len(lens), extra) == sum(-(-(v + extra) // bs) for v in lens)
        assert count.tokens(len(lens)) == sum(lens)


def test_block_count_and_shared_offset_run_as_the_per_sequence_arrays(monkeypatch):
    """With whole tokens per step and power-of-two pages the engine counts pages from integers and
    keeps the decoding sequences' state as rows less one shared offset; a run with preemptions,
    stretches and spread-out lengths is the same bit for bit as with the per-sequence arrays."""
    import codesign.sim.serving.scheduler as SC
    from codesign.scenario import TokenDist

    s = poisson_stream(150, 8.0, TokenDist(mean=300, dist="lognormal", cv=0.8), TokenDist(mean=120, dist="lognormal", cv=0.8),
                       seed=4)
    cfg, cap = SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=64), capacity(tokens=6000)
    fast = run_stream(s, cfg, cap, step_time)
    monkeypatch.setattr(SC, "_BlockCount", lambda bs: None)  # the arrays, updated every step
    slow = run_stream(s, cfg, cap, step_time)
    assert fast.preemptions.sum() > 0 and max(fast.step_count) > 1
    assert fast.step_dt == slow.step_dt and fast.step_end == slow.step_end and fast.step_kv_use == slow.step_kv_use
    assert np.array_equal(fast.finish, slow.finish) and np.array_equal(fast.first_token, slow.first_token)
    assert fast.resume_gaps == slow.resume_gaps


def _two(a: tuple[int, int], b: tuple[int, int]) -> RequestStream:
    return RequestStream("burst", (Request(0, 0.0, *a), Request(1, 0.0, *b)))


def _tokens(shapes: list[StepShape]) -> list[tuple[tuple[int, int, int], ...]]:
    return [tuple((g.seqs, g.new_tokens, g.cached_tokens) for g in s.groups) for s in shapes]


def test_a_step_that_preempts_admits_nothing_as_vllm_v1():
    # vLLM V1 runs its waiting loop only `if not preempted_reqs`. By hand: 32 tokens a step, 5 pages
    # of 16 tokens. Step 1 prefills both 16-token prompts; steps 2-17 decode both (2 pages each).
    # Step 18: both would reach 33 tokens (3 pages each, 6 > 5), so the newer (17 tokens generated)
    # is preempted; vLLM then admits nothing, the older decodes alone; step 19 readmits the
    # preempted one (31 of its 33 tokens: 2 pages beside 3), beside the older's last token; step 20
    # computes its last 2 tokens.
    s = _two((16, 19), (16, 40))
    cfg = SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=32)
    shapes: list[StepShape] = []
    rec = run_stream(s, cfg, capacity(tokens=5 * 16), recorded(shapes))
    got = _tokens(shapes)
    assert got[0] == ((2, 16, 0),) and got[1:17] == [((2, 1, 16 + i),) for i in range(16)]
    assert got[17:20] == [((1, 1, 32),), ((1, 1, 33), (1, 31, 0)), ((1, 2, 31),)]
    assert rec.preemptions.tolist() == [0, 1]
    t = A + 32 * B + sum(A + 2 * B + 2 * C * (16 + i) for i in range(16)) + (A + B + 32 * C)
    t += (A + B + 33 * C) + (A + 31 * B)  # the older's 19th token ends step 19
    assert rec.finish[0] == pytest.approx(t, rel=1e-12)
    # admitting after the preemption (the simulator's former schedule): readmitted at once in
    # step 18, its last 2 tokens then wait for pages while the older finishes (step 19)
    old = SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=32, admit_after_preemption=True,
                          stalled_prefill="wait")
    shapes = []
    run_stream(s, old, capacity(tokens=5 * 16), recorded(shapes))
    assert _tokens(shapes)[17:20] == [((1, 1, 32), (1, 31, 0)), ((1, 1, 33),), ((1, 2, 31),)]


def test_a_prefill_that_cannot_grow_preempts_itself_as_vllm_v1():
    # 32 tokens a step, 6 pages. Step 1: the first prompt (32 tokens, 2 pages). Step 2: its decode
    # (3 pages at 33 tokens) and 31 tokens of the 64-token prompt (2 pages). Step 3: that prompt's
    # next 31 tokens need 2 more pages (3 + 2 + 2 > 6) and it is the newest: vLLM V1 without prefix
    # caching pops it from its running list (pages freed, computed tokens lost), so step 3 only
    # decodes and admits nothing; step 4 prefills its first 31 tokens again, and so on, every other step, until the
    # first request finishes (10 tokens: its last at step 10, beside a fresh chunk, which then
    # stays); then the prompt's other 33 tokens in two steps (32, 1) and its second token.
    s = _two((32, 10), (64, 2))
    cfg = SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=32, stalled_prefill="preempt")
    shapes: list[StepShape] = []
    rec = run_stream(s, cfg, capacity(tokens=6 * 16), recorded(shapes))
    got = _tokens(shapes)
    assert got[:2] == [((1, 32, 0),), ((1, 1, 32), (1, 31, 0))]
    for step in range(3, 11):  # steps 3..10: decode alone (odd), decode + a fresh 31-token chunk (even)
        kv = 32 + step - 2
        assert got[step - 1] == (((1, 1, kv),) if step % 2 else ((1, 1, kv), (1, 31, 0)))
    assert got[10:] == [((1, 32, 31),), ((1, 1, 63),), ((1, 1, 64),)]
    assert rec.preemptions.tolist() == [0, 4]  # at steps 3, 5, 7, 9
    t = A + 32 * B + sum(A + B + C * (32 + i) for i in range(9)) + 5 * (A + 31 * B)
    assert rec.finish[0] == pytest.approx(t, rel=1e-12)
    t += (A + 32 * B + 31 * C) + (A + B + 63 * C)  # the prompt's last two chunks: its first token
    assert rec.first_token[1] == pytest.approx(t, rel=1e-12)
    # "wait" (the default; vLLM with prefix caching resumes from its cached pages): it keeps its
    # 31 tokens' pages and resumes when the first request finishes
    shapes = []
    run_stream(s, SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=32), capacity(tokens=6 * 16),
               recorded(shapes))
    assert _tokens(shapes)[2:10] == [((1, 1, 33 + i),) for i in range(8)]
    assert _tokens(shapes)[10] == ((1, 32, 31),)


def test_preemption_fields_are_validated():
    with pytest.raises(CodesignError, match="workload.scheduler: stalled_prefill: Input should be 'preempt' or 'wait'"):
        scheduler_config({"stalled_prefill": "retry"})
    d = SchedulerConfig()
    assert d.admit_after_preemption is False and d.stalled_prefill == "wait"


@pytest.mark.parametrize("n, prompt, out, pages", [(10, 100, 200, 80), (16, 500, 500, 300)])
def test_preempting_bursts_with_stretches_match_step_by_step(n, prompt, out, pages):
    # with preemptions and steps that admit nothing after one, decode-only stretches (never
    # started while requests wait after a preemption) give the finish times of simulating every step
    s = burst_stream(n, prompt, out, seed=0)
    fast = run_stream(s, SchedulerConfig(), capacity(tokens=pages * 16), step_time)
    slow = run_stream(s, SchedulerConfig(), capacity(tokens=pages * 16), step_time, stretch=(0.0, 1))
    assert fast.preemptions.sum() == slow.preemptions.sum() > 0 and len(fast.step_count) < len(slow.step_count) / 2
    assert np.allclose(fast.finish, slow.finish, rtol=1e-6) and np.allclose(fast.first_token, slow.first_token, rtol=1e-6)
