"""Mixed GatedDeltaNet steps with the decodes in the chunk kernel (`cost.gdn_mixed_decodes: chunk`,
codesign.sim.mixed_gdn): the extra seconds against a hand calculation from the spec's figures, where
it acts and where not, and the serving step-time model adding it exactly."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.hw import load_hw
from codesign.mapping import ParallelPlan, Precision
from codesign.models import load_model
from codesign.sim.cost import CostOptions
from codesign.sim.engine import StepResult
from codesign.sim.mixed_gdn import mixed_gdn
from codesign.sim.serving.steptime import StepTimeModel
from codesign.sim.stepper import Stepper

BF16 = Precision(weights="bf16", activations="bf16", kv_cache="bf16")
CHUNK = CostOptions(gdn_mixed_decodes="chunk")
MIXED = StepShape((Group(480, 1, 1100), Group(7, 1034, 0), Group(1, 474, 0)))


def _stepper(plan: ParallelPlan = ParallelPlan(tp=1), cost: CostOptions = CHUNK, model: str = "qwen3.5-35b-a3b"):
    return Stepper(load_hw("h200"), load_model(model), plan, BF16, cost, cache=False)


def test_extra_matches_hand_calculation_h200():
    # Qwen3.5-35B-A3B: 30 GatedDeltaNet layers of 32 value heads, dk = dv = 128, 64-token chunks.
    # H200 (hw_specs/h200.yaml): 4.8 TB/s x efficiency.memory 0.90; 989 TFLOPS bf16 x gdn_chunk 0.307.
    m = mixed_gdn(_stepper())
    state = 32 * 128 * 128 * 4  # fp32 state of one sequence in one layer: 2 MiB
    mem = 30 * 4 * (480 + 8) * state / (4.8e12 * 0.90)
    pad = 6 * 64 * 128 * 128 + 2 * 64 * 64 * 128  # one padded chunk, one (sequence, head) pair
    comp = 30 * 480 * 32 * pad / (989e12 * 0.307)
    got_mem, got_comp = m.extra_s(MIXED)
    assert got_mem == pytest.approx(mem, rel=1e-12)
    assert got_comp == pytest.approx(comp, rel=1e-12)
    assert m(MIXED) == pytest.approx(0.0284 + 0.0111, abs=3e-4)  # ~40 ms on a ~150 ms step


def test_only_steps_that_mix_decodes_and_prompt_chunks():
    m = mixed_gdn(_stepper())
    assert m(StepShape((Group(480, 1, 1100),))) == 0.0  # decode-only: the recurrent kernel
    assert m(StepShape((Group(8, 1024, 0),))) == 0.0  # prefill-only
    verify = StepShape((Group(64, 3, 900, 3), Group(1, 2048, 0)))  # speculative verifies: vLLM's spec path
    assert m(verify) == 0.0
    one = m(StepShape((Group(1, 1, 500), Group(1, 2048, 0))))
    assert m(StepShape((Group(2, 1, 500), Group(1, 2048, 0)))) > one > 0.0


def test_split_mode_and_models_without_gdn_are_untouched():
    assert mixed_gdn(_stepper(cost=CostOptions())) is None  # the default: "split"
    assert mixed_gdn(_stepper(model="qwen3-8b")) is None


def test_tensor_and_data_parallel_share_the_work():
    base = mixed_gdn(_stepper())
    tp2 = mixed_gdn(_stepper(ParallelPlan(tp=2)))
    assert tp2.heads == 16 and tp2(MIXED) == pytest.approx(base(MIXED) / 2, rel=1e-12)
    dp2 = mixed_gdn(_stepper(ParallelPlan(dp=2)))
    d, p = 480 // 2, 8 // 2
    assert dp2.extra_s(MIXED)[0] == pytest.approx(base.extra_s(MIXED)[0] * (d + p) / (480 + 8), rel=1e-12)
    assert dp2.extra_s(MIXED)[1] == pytest.approx(base.extra_s(MIXED)[1] / 2, rel=1e-12)


def test_step_time_model_adds_it_exactly():
    """The hook is added outside the grid: a mixed step gets the base model's time plus the extra,
    whatever the interpolation (two groups through `time_two`, three through the pairwise rule)."""
    m = mixed_gdn(_stepper())

    def fake(shape: StepShape) -> StepResult:  # linear in tokens: the grid is exact
        return StepResult(time_s=1e-3 + 1e-6 * shape.tokens, bottleneck="hbm", breakdown={})

    plain = StepTimeModel(fake, 32768)
    hooked = StepTimeModel(fake, 32768, extra=m)
    two = ((300, 1, 1200, 1), (1, 3000, 0, 1))
    assert hooked.time_two(*two) == pytest.approx(plain.time_two(*two) + m(StepShape((Group(*two[0]), Group(*two[1])))),
                                                  rel=1e-12)
    assert hooked.step_time(MIXED) == pytest.approx(plain.step_time(MIXED) + m(MIXED), rel=1e-12)
    decode = StepShape((Group(480, 1, 1100),))
    assert hooked.step_time(decode) == plain.step_time(decode)


def test_bad_option_is_one_clear_error():
    with pytest.raises(CodesignError, match="gdn_mixed_decodes"):
        CostOptions.from_dict({"gdn_mixed_decodes": "unified"})


def test_state_dtype_sets_the_gathered_bytes():
    fp32 = mixed_gdn(_stepper())
    bf16 = Stepper(load_hw("h200"), load_model("qwen3.5-35b-a3b"), ParallelPlan(tp=1),
                   Precision(weights="bf16", activations="bf16", kv_cache="bf16", state="bf16"), CHUNK, cache=False)
    half = mixed_gdn(bf16)
    assert half.state_bytes == fp32.state_bytes / 2 == 32 * 128 * 128 * 2
    assert half.extra_s(MIXED)[0] == pytest.approx(fp32.extra_s(MIXED)[0] / 2, rel=1e-12)
    assert half.extra_s(MIXED)[1] == fp32.extra_s(MIXED)[1]  # the padded chunks' work does not change
