"""`mapping.pipeline_microbatches`: a pipeline-parallel plan's steady-state step as micro-batches in
flight (docs/simulator.md "Pipeline", docs/mapping.md "Pipeline micro-batches")."""

from __future__ import annotations

import pytest

import codesign as cs
from codesign.graph.shape import StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.mapping.options import MappingOptions
from codesign.models import load_model
from codesign.sim.engine import pipeline_period
from codesign.sim.stepper import Stepper
from codesign.sim.workload import microbatch_split
from tests.sim.helpers import make_hw

BF16 = {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}
CTX = 4096


def _run(on: bool | None, mode: str = "decode", **wl):
    opts = {} if on is None else {"pipeline_microbatches": on}
    return cs.simulate(make_hw(), "qwen3-8b", chips=2, plan={"pp": 2}, precision=BF16, context=CTX,
                       workload={"mode": mode, "input_tokens": CTX, "max_batch": 64, **wl}, mapping_options=opts)[0]


def _stages(shape: StepShape) -> list[float]:
    """The 2-stage plan's stage times at `shape`, from the whole-step graph path (not the step-time
    model that `simulate` uses)."""
    st = Stepper(make_hw(), load_model("qwen3-8b"), ParallelPlan(pp=2), Precision(**BF16), cache=False)
    return st.full_step(shape).stage_times_s


def test_decode_period_is_pp_times_the_slowest_stage_at_the_micro_batch():
    r = _run(True)
    assert r.concurrency == 64
    t0, t1 = _stages(StepShape.decode(32, CTX))  # 64 sequences over 2 stages: micro-batches of 32
    period = 2 * max(t0, t1)
    assert r.tpot_s["mean"] == pytest.approx(period, rel=1e-9)
    assert r.output_tokens_per_s == pytest.approx(64 / period, rel=1e-9)
    # TTFT: one prompt alone is one micro-batch, so it passes the stages in turn (their sum)
    assert r.ttft_s["mean"] == pytest.approx(sum(_stages(StepShape.prefill(1, CTX))), rel=1e-9)
    off = _run(False)
    b0, b1 = _stages(StepShape.decode(64, CTX))
    assert off.tpot_s["mean"] == pytest.approx(b0 + b1, rel=1e-9)  # off: the stages in turn
    assert r.output_tokens_per_s > off.output_tokens_per_s


def test_prefill_prompts_split_likewise():
    r = _run(True, mode="prefill")
    prompts = 16_384 // CTX  # the chunk budget's whole prompts (workload.PREFILL_TOKENS_PER_STEP)
    assert r.concurrency == prompts
    period = 2 * max(_stages(StepShape.prefill(prompts // 2, CTX)))
    assert r.input_tokens_per_s == pytest.approx(prompts * CTX / period, rel=1e-9)


def test_off_by_default_changes_nothing():
    assert MappingOptions().pipeline_microbatches is False
    base, off = _run(None), _run(False)
    assert (base.output_tokens_per_s, base.tpot_s, base.ttft_s) == (off.output_tokens_per_s, off.tpot_s, off.ttft_s)
    # pp 1: nothing to overlap, the option changes nothing
    one = [cs.simulate(make_hw(), "qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16, context=CTX,
                       mapping_options={"pipeline_microbatches": on})[0] for on in (False, True)]
    assert one[0].output_tokens_per_s == one[1].output_tokens_per_s


def test_micro_batch_split_and_period_rule():
    assert microbatch_split(64, 2) == (32, 2)
    assert microbatch_split(3, 2) == (2, 2)     # ceil(3 / 2) = 2: micro-batches of 2 and 1
    assert microbatch_split(5, 4) == (2, 3)     # fewer micro-batches than stages
    assert microbatch_split(1, 4) == (1, 1)
    assert microbatch_split(10, 2, replicas=2) == (3, 2)  # per engine instance: 5 -> 3 + 2
    assert pipeline_period([1.0, 3.0], 2) == 6.0        # pp x the slowest stage
    assert pipeline_period([1.0, 3.0], 1) == 4.0        # one micro-batch: the stages in turn
    assert pipeline_period([2.0, 2.0, 2.0], 2) == 6.0   # the sum bounds a micro-batch's own pass


def test_bad_input_is_one_line():
    with pytest.raises(cs.CodesignError, match=r"mapping\.pipeline_microbatches: .*maybe") as e:
        _run("maybe")
    assert "\n" not in str(e.value)


def test_server_mode_refuses_it_in_one_line():
    with pytest.raises(cs.CodesignError, match=r"mapping\.pipeline_microbatches: not yet supported in server mode") as e:
        cs.simulate(make_hw(), "qwen3-8b", chips=2, plan={"pp": 2}, precision=BF16, context=CTX,
                    workload={"mode": "server", "input_tokens": CTX, "output_tokens": 64, "rate_per_s": 1.0,
                              "requests": 8}, mapping_options={"pipeline_microbatches": True})
    assert "\n" not in str(e.value)
