"""Workload modes on a synthetic step-time function (independent of tracer and mapping)."""

from __future__ import annotations

import pytest

from codesign.graph.shape import StepShape
from codesign.sim.engine import StepResult
from codesign.scenario import TokenDist
from codesign.sim.workload import (PREFILL_TOKENS_PER_STEP, capped_batch, decode_context, decode_mode, largest_fitting,
                                    prefill_mode, serving_mode)

W = 0.010  # weight streaming per step, s
KV = 1e-7  # s per token of KV read per sequence


def step(shape: StepShape) -> StepResult:
    (g,) = shape.groups
    if g.phase == "decode":
        t = W + g.seqs * g.kv_len * KV
    else:
        t = W + g.seqs * g.new_tokens * 2e-6
    return StepResult(time_s=t, bottleneck="hbm", breakdown={})


def test_largest_fitting_bisection():
    for limit in (0, 1, 2, 37, 1000):
        assert largest_fitting(lambda b: b <= limit, 1000) == limit
    assert largest_fitting(lambda b: True, 64) == 64


def test_decode_at_max_batch():
    r = decode_mode(step, 100, 8192, 8192, None)
    tpot = W + 100 * 8192 * KV
    assert r.batch == 100
    assert r.tpot_s == pytest.approx(tpot)
    assert r.output_tokens_per_s == pytest.approx(100 / tpot)
    assert r.ttft_s == pytest.approx(W + 8192 * 2e-6)


def test_decode_tpot_slo_picks_largest_batch_meeting_it():
    slo = 0.02
    r = decode_mode(step, 1000, 8192, 8192, slo)
    # W + b*ctx*KV <= slo  <=>  b <= (slo - W) / (ctx*KV)
    assert r.batch == int((slo - W) / (8192 * KV))
    assert r.tpot_s <= slo


def test_serving_interleaves_prefill_and_decode():
    r = serving_mode(step, 64, 300, 200, None)
    d = W + 64 * (300 + 100) * KV
    p = W + 64 * 300 * 2e-6
    total = p + 200 * d
    assert r.output_tokens_per_s == pytest.approx(64 * 200 / total)
    assert r.input_tokens_per_s == pytest.approx(64 * 300 / total)
    assert r.tpot_s == pytest.approx(total / 200)


def test_prefill_mode_uses_chunk_budget():
    r = prefill_mode(step, 1000, 1000)
    b = PREFILL_TOKENS_PER_STEP // 1000
    assert r.batch == b
    assert r.input_tokens_per_s == pytest.approx(b * 1000 / (W + b * 1000 * 2e-6))
    # one budget per engine instance (data-parallel replica / attention-DP rank), capped by the fit
    r8 = prefill_mode(step, 1000, 1000, replicas=8)
    assert r8.batch == 8 * b and r8.ttft_s == pytest.approx(W + 8 * b * 1000 * 2e-6)
    assert prefill_mode(step, 20, 1000, replicas=8).batch == 20
    # a prompt longer than the budget is still one whole prompt per instance
    assert prefill_mode(step, 1000, 40_000, replicas=4).batch == 4


def test_serving_ttft_counts_every_instances_chunk():
    one = serving_mode(step, 256, 1000, 100, None)
    four = serving_mode(step, 256, 1000, 100, None, replicas=4)
    b = PREFILL_TOKENS_PER_STEP // 1000
    p = W + 256 * 1000 * 2e-6  # the batch's prefill (no host overhead: the same p_t)
    assert one.ttft_s == pytest.approx(p * b / 256) and four.ttft_s == pytest.approx(p * 4 * b / 256)


def test_capped_batch_bounds_the_fit():
    assert capped_batch(1152, 896) == 896  # engine cap below what memory allows
    assert capped_batch(700, 896) == 700  # memory is the tighter bound
    assert capped_batch(1152, None) == 1152  # no cap
    assert capped_batch(0, 896) == 0  # nothing fits stays nothing


def test_decode_context_is_token_weighted_over_the_output_lengths():
    # Independent calculation on a two-point distribution: half the requests write 100 tokens, half
    # 500 (mean 300, sd 200, cv 2/3). Each request holds a slot for o steps at KV lengths
    # input .. input + o - 1, so the slot-average KV length is input + sum(o(o-1)/2) / sum(o).
    inp, outs = 222, (100, 500)
    direct = inp + sum(o * (o - 1) / 2 for o in outs) / sum(outs)  # 438.17
    dist = TokenDist(mean=300, dist="normal", cv=200 / 300)
    assert decode_context(inp, dist) == round(direct)
    # all requests alike: the mean context input + output / 2 (unchanged rule)
    assert decode_context(inp, 300) == inp + 150
    assert decode_context(inp, TokenDist(mean=300)) == inp + 150
    # no cv given: the distribution's own default (exponential: cv 1, E[o^2]/E[o] = 2 mean)
    assert decode_context(inp, TokenDist(mean=300, dist="exponential")) == inp + round((600 - 1) / 2)


def test_serving_mode_runs_decode_at_the_given_mean_context():
    r = serving_mode(step, 64, 300, 200, None, mean_context=520)
    d = W + 64 * 520 * KV
    p = W + 64 * 300 * 2e-6
    assert r.context == 520
    assert r.output_tokens_per_s == pytest.approx(64 * 200 / (p + 200 * d))
