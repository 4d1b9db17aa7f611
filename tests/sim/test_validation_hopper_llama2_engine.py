"""The Hopper Llama-2-70B TensorRT-LLM rows of the public validation file carry their engine build.

NVIDIA's MLPerf v4.1 builder passes `--use_fused_mlp` without `--gemm_swiglu_plugin` (a separate
SwiGLU kernel after the fused gate/up GEMM: `cost.mlp_unfused_activation`); the 2025 configs build
with `gemm_swiglu_plugin: fp8` and TensorRT-LLM v0.9.0's static rows without `--use_fused_mlp`, so
those keep the option off. The option's effect on the rows' own decode step is checked against the
kernel's bytes counted by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.graph.shape import StepShape
from codesign.hw import load_hw
from codesign.mapping import ParallelPlan, Precision
from codesign.models import load_model
from codesign.scenario import load_scenarios
from codesign.sim.cost import CostOptions
from codesign.mapping.options import MappingOptions
from codesign.sim.stepmodel import StepModel

ROOT = Path(__file__).resolve().parents[2]
ROWS = {s.name: s for s in load_scenarios(ROOT / "benchmarks" / "validation" / "public.yaml")}

V41 = [f"mlperf-v4.1-8x{chip}-llama2-70b-{kind}" for chip in ("h100", "h200")
       for kind in ("offline", "server", "server-latency-at-rate")]
FUSED = ["mlperf-v5.1-8xh200-llama2-70b-offline"] + [n for n in ROWS if n.startswith("trtllm-v0.9-")]
FP8 = Precision(weights="fp8", activations="fp8", kv_cache="fp8")


def test_v41_rows_run_the_separate_swiglu_kernel_and_the_fused_builds_do_not():
    for name in V41:
        assert CostOptions.from_dict(ROWS[name].cost).mlp_unfused_activation, name
    assert len(FUSED) == 9
    for name in FUSED:
        assert not CostOptions.from_dict(ROWS[name].cost or None).mlp_unfused_activation, name


@pytest.mark.parametrize("hw_name,tp,batch", [("h200", 1, 806), ("h100", 2, 896)])
def test_decode_step_grows_by_the_kernel_bytes_counted_by_hand(hw_name, tp, batch):
    """A decode step of the v4.1 rows' own plan and cap: the option adds, on each of the 80 layers,
    batch x (2 x I/tp x 2 + I/tp x 1) bytes (read the FP16 gate/up output, write the FP8 down
    input) at HBM streaming bandwidth plus one kernel's fixed time, serially; nothing else moves."""
    hw = load_hw(hw_name)
    if tp > 1:
        hw = hw.model_copy(update={"system": hw.system.model_copy(update={"chips": tp})})
    cfg = load_model("llama-2-70b")
    opts = MappingOptions(two_batch_overlap=False)
    on = StepModel(hw, cfg, ParallelPlan(tp=tp), FP8, CostOptions(mlp_unfused_activation=True), opts)
    off = StepModel(hw, cfg, ParallelPlan(tp=tp), FP8, None, opts)
    shape = StepShape.decode(batch, 458)
    k = 28672 // tp
    per_layer = batch * (2 * k * 2 + k * 1) / (hw.chip.hbm.bandwidth * hw.efficiency.memory)
    want = 80 * (per_layer + hw.efficiency.kernel_overhead)
    assert on.step(shape).time_s - off.step(shape).time_s == pytest.approx(want, rel=1e-9)
    # size: H200 TP1 at 806 sequences, 143,360 bytes a token a layer at 4.8 TB/s x 0.90: 26.7 us
    if hw_name == "h200":
        assert per_layer == pytest.approx(806 * 143_360 / (4.8e12 * 0.90), rel=1e-9)
