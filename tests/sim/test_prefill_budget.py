"""`workload.prefill_tokens_per_step`: offline/batch prefill in steps of the engine's token budget."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.graph.shape import StepShape
from codesign.scenario import parse_scenarios
from codesign.sim.engine import StepResult
from codesign.sim.workload import chunk_prompts, chunked_prefill, serving_mode

FIXED_S, PER_TOKEN_S, DECODE_S = 2e-3, 1e-6, 5e-2  # a step's fixed time, a prompt token's, a decode step's


def _step(shape: StepShape) -> StepResult:
    """A synthetic step: decode steps cost DECODE_S; a prefill step the fixed time plus its tokens."""
    g = shape.groups[0]
    if g.cached_tokens > 0 or g.new_tokens == 1:
        t = DECODE_S
    else:
        t = FIXED_S + PER_TOKEN_S * g.seqs * g.new_tokens
    return StepResult(time_s=t, bottleneck="compute", breakdown={"resource": {"compute": t}}, stage_times_s=[t])


def test_chunk_prompts_uses_the_budget():
    assert chunk_prompts(427, 8, 9216) == 8 * (9216 // 427)  # 21 whole prompts per engine
    assert chunk_prompts(20_000, 2, 9216) == 2  # at least one whole prompt per engine
    assert chunk_prompts(427, 1) == 16_384 // 427  # the default budget


def test_chunked_prefill_counts_steps_by_hand():
    # 1000 prompts of 400 tokens on 4 engines of 8192 tokens: 20 prompts per engine, 80 a step,
    # 12.5 steps, each 2 ms + 80 x 400 x 1 us = 34 ms.
    r = chunked_prefill(_step, 1000, 400, 4, 8192)
    assert r.time_s == pytest.approx(12.5 * (2e-3 + 80 * 400 * 1e-6))
    assert r.breakdown["resource"]["compute"] == pytest.approx(r.time_s)
    # fewer prompts than a step's worth: one step of them
    assert chunked_prefill(_step, 30, 400, 4, 8192).time_s == pytest.approx(2e-3 + 30 * 400e-6)


def test_offline_rate_with_and_without_a_budget():
    batch, inp, out = 1000, 400, 100
    one = serving_mode(_step, batch, inp, out, None, mean_context=450, replicas=4)
    chunked = serving_mode(_step, batch, inp, out, None, mean_context=450, replicas=4, prefill_budget=8192)
    total_one = (2e-3 + batch * inp * 1e-6) + out * DECODE_S
    total_chunked = 12.5 * (2e-3 + 80 * inp * 1e-6) + out * DECODE_S
    assert one.output_tokens_per_s == pytest.approx(batch * out / total_one)
    assert chunked.output_tokens_per_s == pytest.approx(batch * out / total_chunked)
    # TTFT: one budget's worth of prompts ahead of a request (80 of the batch's 1000)
    assert chunked.ttft_s == pytest.approx(12.5 * (2e-3 + 80 * inp * 1e-6) * 80 / batch)


def _scenario(mode: str, **extra) -> dict:
    wl = {"mode": mode, "input_tokens": 427, "output_tokens": 145, "prefill_tokens_per_step": 9216, **extra}
    return {"name": "x", "hardware": "h200", "chips": 1, "model": "mixtral-8x7b",
            "precision": {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}, "parallel": {"tp": 1},
            "workload": wl}


@pytest.mark.parametrize("mode", ["decode", "server"])
def test_refused_where_it_does_not_act(mode):
    with pytest.raises(CodesignError, match="workload.prefill_tokens_per_step: not yet supported"):
        parse_scenarios([_scenario(mode)], "s.yaml")


def test_accepted_in_offline_mode():
    (s,) = parse_scenarios([_scenario("offline")], "s.yaml")
    assert s.workload.prefill_tokens_per_step == 9216
    with pytest.raises(CodesignError, match="prefill_tokens_per_step"):
        parse_scenarios([_scenario("offline", prefill_tokens_per_step=0)], "s.yaml")


def test_prefill_mode_steps_hold_the_budget():
    from codesign.sim.workload import prefill_mode

    r = prefill_mode(_step, 10_000, 400, replicas=4, prefill_budget=8192)  # 20 prompts per engine, 80 a step
    assert r.batch == 80
    assert r.input_tokens_per_s == pytest.approx(80 * 400 / (2e-3 + 80 * 400 * 1e-6))
    assert prefill_mode(_step, 10_000, 400, replicas=4).batch == 4 * (16_384 // 400)  # the default budget
