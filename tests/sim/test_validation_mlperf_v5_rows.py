"""The MLPerf Inference v5.1 rows of the public validation file say what their sources say.

Each row's inputs are checked against the figures its comment quotes from the submission (plan,
precision, per-engine running-batch cap x engines, vLLM's num_scheduler_steps, the data set's mean
lengths) and its measured figure against the run's mlperf_log_summary.txt ("Samples per second",
"Tokens per second"), with the tokens per sample those two imply checked against the output mean.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.mapping import ParallelPlan
from codesign.scenario import load_scenarios

ROOT = Path(__file__).resolve().parents[2]
ROWS = {s.name: s for s in load_scenarios(ROOT / "benchmarks" / "validation" / "public.yaml")}

# name: (hardware, model, plan, per-engine max_num_seqs / gpu_batch_size, num_scheduler_steps,
#        samples/s, tokens/s) as printed in the sources the rows cite
AMD = {
    "mlperf-v5.1-8xmi300x-llama2-70b-offline": ("mi300x", "llama-2-70b", 1792, 11, 92.1544, 27803.9),
    "mlperf-v5.1-8xmi325x-llama2-70b-offline": ("mi325x", "llama-2-70b", 2700, 7, 114.7, 34520.4),
    "mlperf-v5.1-8xmi300x-mixtral-8x7b-offline": ("mi300x", "mixtral-8x7b", 5000, 9, 369.007, 53017.3),
    "mlperf-v5.1-8xmi325x-mixtral-8x7b-offline": ("mi325x", "mixtral-8x7b", 4736, 13, 479.775, 68781.4),
}
B200_LLAMA2 = "mlperf-v5.1-8xb200-llama2-70b-offline"
B200_405B = "mlperf-v5.1-8xb200-llama3.1-405b-offline"
GB200_LLAMA2 = "mlperf-v5.1-4xgb200-llama2-70b-offline"
GB200_405B = "mlperf-v5.1-72xgb200-llama3.1-405b-offline"
# partners' H200 systems: (model, plan, per-engine gpu_batch_size, samples/s, tokens/s)
H200 = {
    "mlperf-v5.1-8xh200-llama2-70b-offline": ("llama-2-70b", {"tp": 1, "dp": 8}, 2048, 120.235, 35075.1),
    "mlperf-v5.1-8xh200-mixtral-8x7b-offline": ("mixtral-8x7b", {"tp": 1, "dp": 8}, 3072, 421.086, 61372.4),
    "mlperf-v5.1-8xh200-llama3.1-405b-offline": ("llama-3.1-405b", {"tp": 4, "pp": 2}, 512, 0.84408, 547.261),
}
# the data sets' mean lengths (file header; Llama-3.1-405B from its per-sample summary)
LENGTHS = {"llama-2-70b": (222, 291, 0.79), "mixtral-8x7b": (427, 145, 0.78), "llama-3.1-405b": (9429, 652, 0.38)}


def _engines(name: str) -> int:
    s = ROWS[name]
    p = ParallelPlan.from_dict(s.parallel)
    assert p.tp * p.pp * p.dp == s.chips
    return p.dp


@pytest.mark.parametrize("name", sorted(AMD))
def test_amd_rows_have_the_submitted_plan_caps_and_engine(name):
    hw, model, seqs, steps, _, _ = AMD[name]
    s = ROWS[name]
    assert (s.hardware, s.model, s.chips) == (hw, model, 8)
    assert s.precision == {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}
    assert s.parallel == {"tp": 1, "dp": 8}  # tensor_parallel_size 1 on each of device_count 8 GPUs
    w = s.workload
    assert w.mode == "offline" and w.max_batch == seqs * _engines(name)
    eng = w.engine
    assert (eng.name, eng.detokenize, eng.multi_step) == ("vllm-0.5", False, steps)
    # enforce_eager True in the Llama-2-70B configs: vLLM's ROCm platform then turns asynchronous
    # output processing off, so those rows pay output processing every forward pass; the Mixtral
    # configs set enforce_eager False and keep the default (docs/cost-model.md "AMD Llama-2-70B rows")
    expected = "per_step" if model == "llama-2-70b" else None
    assert eng.multi_step_outputs == expected


@pytest.mark.parametrize("name", sorted(AMD) + [B200_LLAMA2, B200_405B, GB200_LLAMA2, GB200_405B, *H200])
def test_rows_use_the_data_sets_mean_lengths(name):
    w = ROWS[name].workload
    inp, out, cv = LENGTHS[ROWS[name].model]
    assert w.input_mean == inp
    assert (w.output_mean, w.output_tokens.cv) == (out, cv)


def test_b200_rows_have_nvidias_plans():
    fp4 = {"weights": "fp4", "activations": "fp8", "kv_cache": "fp8", "compute": "fp4"}
    llama = ROWS[B200_LLAMA2]
    assert llama.precision == fp4 and llama.parallel == {"tp": 1, "dp": 8}
    assert llama.workload.max_batch == 2048 * _engines(B200_LLAMA2)  # gpu_batch_size 2048 per engine
    big = ROWS[B200_405B]
    assert big.precision == fp4 and big.parallel == {"tp": 2, "pp": 2, "dp": 2}
    assert big.workload.max_batch == 128 * _engines(B200_405B) == 256  # two TP2 x PP2 engines
    assert big.mapping == {"two_batch_overlap": False, "pipeline_microbatches": True}  # TensorRT-LLM: pp micro-batches
    assert all(ROWS[n].mapping.get("pipeline_microbatches") is True for n in ROWS if "405b" in n)
    gb = ROWS[GB200_LLAMA2]
    assert (gb.hardware, gb.chips) == ("gb200-nvl72", 4) and gb.precision == fp4
    assert gb.parallel == {"tp": 1, "dp": 4} and gb.workload.max_batch == 2048 * 4
    rack = ROWS[GB200_405B]
    assert (rack.hardware, rack.chips) == ("gb200-nvl72", 72) and rack.precision == fp4
    assert rack.parallel == {"tp": 2, "pp": 2, "dp": 18} and _engines(GB200_405B) == 72 // 4
    assert rack.workload.max_batch == 2048 * 18  # the Custom harness setting's gpu_batch_size
    for s in (llama, big, gb, rack):
        assert s.workload.engine is None  # TensorRT-LLM v5.1: no published host figure


@pytest.mark.parametrize("name", sorted(H200))
def test_h200_rows_have_the_partners_plans_and_summaries(name):
    model, plan, batch, samples, tokens = H200[name]
    s = ROWS[name]
    assert (s.hardware, s.chips, s.model, s.parallel) == ("h200", 8, model, plan)
    assert s.precision == {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}
    assert s.workload.max_batch == batch * _engines(name) and s.workload.engine is None
    # the 2024 MoE runner's epilogue is not claimed for the 2025 engine; the Mixtral row runs the
    # CUTLASS MoE runner's measured curve (its MoE plugin: docs/cost-model.md)
    # and TensorRT-LLM's 16-bit context attention (context_fmha, no FP8 context FMHA flag:
    # docs/cost-model.md "TensorRT-LLM kernel rows on H100 / H200")
    want = {"moe_kernel": "trtllm_cutlass_fp8", "attention_kernel": "trtllm",
            "attention_dtype": "bf16"} if model == "mixtral-8x7b" else {}
    assert s.cost == want
    assert s.measured.output_tokens_per_s == tokens
    assert tokens / samples == pytest.approx(s.workload.output_mean, rel=0.05)


def test_measured_figures_are_the_run_summaries():
    for name, (*_, samples, tokens) in AMD.items():
        assert ROWS[name].measured.output_tokens_per_s == tokens
        # tokens per sample implied by the summary: the data set's ~291 / ~145 generated tokens
        per_sample = tokens / samples
        assert per_sample == pytest.approx(LENGTHS[ROWS[name].model][1], rel=0.05)
    assert ROWS[B200_LLAMA2].measured.output_tokens_per_s == 101527
    assert 101527 / 371.423 == pytest.approx(291, rel=0.07)
    assert ROWS[B200_405B].measured.output_tokens_per_s == 1624.11
    # the 405B row's output mean is the run's own tokens per sample
    assert ROWS[B200_405B].workload.output_mean == round(1624.11 / 2.49245)
    assert ROWS[GB200_LLAMA2].measured.output_tokens_per_s == 51736.9
    assert 51736.9 / 187.748 == pytest.approx(291, rel=0.06)
    assert ROWS[GB200_405B].measured.output_tokens_per_s == 14774.3
    assert round(14774.3 / 22.6462) == ROWS[GB200_405B].workload.output_mean  # the same 652 tokens


def test_rows_sit_after_the_v41_mi300x_row():
    names = list(ROWS)
    i = names.index("mlperf-v4.1-8xmi300x-llama2-70b-offline")
    assert names[i + 1:i + 12] == [*AMD, B200_LLAMA2, B200_405B, GB200_LLAMA2, GB200_405B, *H200]
