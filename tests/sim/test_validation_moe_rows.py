"""The DeepSeek-V3/R1 rows of the public validation file say what their sources say.

Each row's inputs are checked against the figures its comment cites (deployment unit, experts per
GPU, tokens per GPU per forward pass, running-batch caps, per-node throughput x nodes), and the
prefill rows' request stream is simulated to show that it runs the forward pass the source
describes (16,384 prompt tokens on every GPU), which steady-state `prefill` mode cannot say.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.mapping import ParallelPlan
from codesign.scenario import load_scenarios

ROOT = Path(__file__).resolve().parents[2]
ROWS = {s.name: s for s in load_scenarios(ROOT / "benchmarks" / "validation" / "public.yaml")}

PREFILL = ("deepseek-profile-32xh800-deepseek-v3-prefill-ep32-4k", "sglang-32xh100-deepseek-v3-prefill-ep32-4k-balanced")
DECODE_EP = ("sglang-72xh100-deepseek-v3-decode-ep72-2k", "sglang-48xgb200-deepseek-v3-decode-ep48-2k-jun2025",
             "sglang-48xgb200-deepseek-v3-decode-ep48-2k-sep2025")
H200 = ("vllm-8xh200-deepseek-r1-tp8-2k-100", "vllm-8xh200-deepseek-r1-tp8-4k-200")
TRTLLM_H200 = "trtllm-bench-8xh200-deepseek-r1-fp8-ep8-adp8-1k-2k"


def _plan(name: str) -> ParallelPlan:
    return ParallelPlan.from_dict(ROWS[name].parallel)


def test_rows_present_with_the_sources_deployment_units():
    for name in PREFILL + DECODE_EP + H200 + (TRTLLM_H200,):
        s = ROWS[name]
        assert s.model == "deepseek-v3"
        assert s.precision == {"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"}
        p = _plan(name)
        assert p.tp * p.attention_dp * p.dp * p.pp == s.chips
    # DeepSeek's overview: prefill unit "4 nodes with 32 redundant routed experts, where each GPU
    # handles 9 routed experts"; EP72 on 288 experts = 4 per GPU; EP48 = 6 per GPU.
    per_gpu = {PREFILL[0]: 9, PREFILL[1]: 9, DECODE_EP[0]: 4, DECODE_EP[1]: 6, DECODE_EP[2]: 6, TRTLLM_H200: 32}
    for name, slots in per_gpu.items():
        p = _plan(name)
        assert p.ep == p.attention_dp == ROWS[name].chips
        assert (256 + p.redundant(256)) == slots * p.ep


def test_measured_figures_are_the_sources_per_node_figures_times_nodes():
    per_unit = {  # (figure per node or GPU as printed, nodes or GPUs)
        PREFILL[0]: (62_713, 4), PREFILL[1]: (59_337, 4), DECODE_EP[0]: (22_282, 9),
        DECODE_EP[1]: (7_583, 48), DECODE_EP[2]: (9_087, 48)}
    for name, (fig, n) in per_unit.items():
        m = ROWS[name].measured
        got = m.input_tokens_per_s if name in PREFILL else m.output_tokens_per_s
        assert got == fig * n
    # GPUStack's H200 pages: generated tokens / benchmark duration.
    assert ROWS[H200[0]].measured.output_tokens_per_s == pytest.approx(50_000 / 59.26, rel=1e-3)
    assert ROWS[H200[1]].measured.output_tokens_per_s == pytest.approx(100_000 / 132.68, rel=1e-3)
    # trtllm-bench: Total Output Throughput = requests x output length / total latency (912.657 s).
    assert ROWS[TRTLLM_H200].measured.output_tokens_per_s == pytest.approx(5120 * 2048 / 912.6569938, rel=1e-6)


def test_trtllm_h200_row_has_the_published_per_rank_limits():
    s = ROWS[TRTLLM_H200]
    w, sched = s.workload, s.workload.scheduler
    ranks = _plan(TRTLLM_H200).attention_dp
    assert ranks == 8 and w.concurrency == 1024 == sched["max_num_seqs"] * ranks  # --max_batch_size 128 per rank
    # --max_num_tokens 1151: one whole 1,024-token prompt beside 127 decodes; no MLA chunked context on Hopper
    assert sched["max_num_batched_tokens"] == 1151 == w.input_tokens + sched["max_num_seqs"] - 1
    assert sched["chunked_prefill"] is False and sched["capacity_policy"] == "guaranteed_no_evict"
    assert (w.input_tokens, w.output_tokens, w.requests) == (1024, 2048, 5120)


def test_decode_batch_cap_is_256_per_gpu_and_gb200_rows_fill_the_kv_cache():
    assert ROWS[DECODE_EP[0]].workload.max_batch == 256 * 72
    for name in DECODE_EP[1:]:
        assert ROWS[name].workload.max_batch is None  # "chosen to make KV cache roughly full"
        assert ROWS[name].mapping == {"two_batch_overlap": False, "all_to_all_mode": "auto"}  # SGLang deepep-mode auto


def test_prefill_rows_hold_16k_tokens_per_gpu_per_forward_pass():
    for name in PREFILL:
        w = ROWS[name].workload
        sched = w.scheduler
        assert w.mode == "server" and w.input_tokens == 4096 and w.output_tokens == 1
        # one engine per attention-DP rank: whole 4K prompts up to 16,384 tokens per GPU
        assert sched["max_num_batched_tokens"] == 16_384 and sched["chunked_prefill"] is False
        assert sched["max_num_seqs"] * w.input_tokens == 16_384
        assert w.requests % (sched["max_num_seqs"] * ROWS[name].chips) == 0


def test_prefill_row_simulates_ten_equal_forward_passes_of_16k_tokens_per_gpu():
    from codesign.sim import simulate_scenario

    s = ROWS[PREFILL[0]]
    (r,) = simulate_scenario(s)
    sv = r.serving
    steps = s.workload.requests // (4 * s.chips)  # 128 prompts of 4,096 tokens per step
    assert sv["steps"] == steps == 10
    assert sv["input_tokens_per_s"] == pytest.approx(s.workload.requests * 4096 / sv["duration_s"], rel=1e-9)
    assert r.input_tokens_per_s == pytest.approx(sv["input_tokens_per_s"], rel=1e-12)
