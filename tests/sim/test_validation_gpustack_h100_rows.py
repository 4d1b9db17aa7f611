"""The GPUStack H100 rows of the public validation file say what their pages say.

Each row's inputs (plan, precision, request count, lengths, client concurrency) are checked against
the figures quoted from its page -- the `vllm serve` / `vllm bench serve` commands and the result
blocks' totals -- and each measured figure against the page's result lines: output throughput is
total generated tokens / benchmark duration, TTFT and TPOT the printed means in seconds. The rows
set no scheduler option: vLLM v0.11.0's defaults come from codesign.sim.serving.config.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.hw import load_hw
from codesign.mapping import ParallelPlan
from codesign.models import load_model
from codesign.scenario import load_scenarios
from codesign.sim.serving.config import scheduler_config

ROOT = Path(__file__).resolve().parents[2]
ROWS = {s.name: s for s in load_scenarios(ROOT / "benchmarks" / "validation" / "public.yaml")}

# Quoted from the pages' "Baseline benchmark results": (successful requests, total input tokens,
# total generated tokens, benchmark duration s, page's output token throughput, mean TTFT ms,
# mean TPOT ms), and the bench command's nominal lengths (input, output).
Q235 = {  # qwen3-235b-a22b/h100.md, commit 10e9444a, `vllm serve ... -tp 8`
    "vllm-8xh100-qwen3-235b-a22b-bf16-tp8-32k-100": ((100, 3_200_000, 8_191, 141.60, 57.85, 70_409.55, 132.10), (32_000, 100)),
    "vllm-8xh100-qwen3-235b-a22b-bf16-tp8-4k-200": ((500, 1_997_942, 92_185, 98.99, 931.21, 47_811.58, 68.94), (4_000, 200)),
    "vllm-8xh100-qwen3-235b-a22b-bf16-tp8-2k-100": ((500, 998_175, 49_500, 43.91, 1_127.26, 21_313.79, 101.08), (2_000, 100)),
    "vllm-8xh100-qwen3-235b-a22b-bf16-tp8-128-4": ((984, 125_650, 3_936, 8.83, 445.53, 7_042.17, 212.98), (128, 4)),
}
Q32 = {  # qwen3-32b/h100.md, commit 10e9444a, `vllm serve Qwen/Qwen3-32B`
    "vllm-1xh100-qwen3-32b-bf16-32k-100": ((100, 3_200_000, 7_681, 1_157.25, 6.64, 585_981.22, 43.42), (32_000, 100)),
    "vllm-1xh100-qwen3-32b-bf16-4k-200": ((500, 1_997_942, 99_790, 976.29, 102.21, 482_284.21, 66.61), (4_000, 200)),
    "vllm-1xh100-qwen3-32b-bf16-2k-100": ((500, 998_175, 50_000, 328.04, 152.42, 163_909.40, 86.62), (2_000, 100)),
    "vllm-1xh100-qwen3-32b-bf16-128-4": ((1_000, 127_698, 4_000, 32.88, 121.66, 21_648.67, 1_169.72), (128, 4)),
}
Q14 = {  # qwen3-14b/h100.md, commit 10e9444a, `vllm serve Qwen/Qwen3-14B`
    "vllm-1xh100-qwen3-14b-bf16-32k-100": ((100, 3_200_000, 9_855, 386.80, 25.48, 191_024.43, 277.44), (32_000, 100)),
    "vllm-1xh100-qwen3-14b-bf16-4k-200": ((500, 1_997_942, 99_803, 227.57, 438.56, 112_716.92, 132.45), (4_000, 200)),
    "vllm-1xh100-qwen3-14b-bf16-2k-100": ((500, 998_175, 50_000, 98.91, 505.51, 50_716.13, 206.51), (2_000, 100)),
    "vllm-1xh100-qwen3-14b-bf16-128-4": ((1_000, 127_698, 4_000, 22.72, 176.06, 18_282.75, 525.31), (128, 4)),
}
Q8 = {  # qwen3-8b/h100-latency.md, commit 1dbc3b81, ShareGPT, --num-prompts 100 --max-concurrency C
    "vllm-1xh100-qwen3-8b-bf16-sharegpt-c1": ((100, 23_260, 22_061, 166.04, 132.86, 59.01, 7.28), 1),
    "vllm-1xh100-qwen3-8b-bf16-sharegpt-c2": ((100, 23_260, 22_061, 85.78, 257.19, 63.78, 7.37), 2),
    "vllm-1xh100-qwen3-8b-bf16-sharegpt-c4": ((100, 23_260, 22_061, 44.40, 496.88, 64.00, 7.38), 4),
    "vllm-1xh100-qwen3-8b-bf16-sharegpt-c8": ((100, 23_260, 22_061, 24.05, 917.28, 74.57, 7.71), 8),
}
ALL = {k: v[0] for table in (Q235, Q32, Q14, Q8) for k, v in table.items()}
BF16 = {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}


def test_rows_present_with_the_serve_commands_plan_and_checkpoint():
    for names, model, chips in ((Q235, "qwen3-235b-a22b", 8), (Q32, "qwen3-32b", 1), (Q14, "qwen3-14b", 1),
                                (Q8, "qwen3-8b", 1)):
        for name in names:
            s = ROWS[name]
            assert (s.hardware, s.model, s.chips) == ("h100", model, chips)
            assert s.precision == BF16  # BF16 checkpoints (the pages' FP8 runs name the -FP8 repositories)
            p = ParallelPlan.from_dict(s.parallel)
            assert (p.tp, p.ep, p.pp, p.dp, p.attention_dp) == (chips, 1, 1, 1, 1)  # -tp 8: experts TP too
            # no --enable-dbo: the TP8 rows turn two-batch overlap off; TP1 has no collective to hide
            mapping = {"two_batch_overlap": False} if chips > 1 else {}
            # vLLM v0.11.0's start-up pool rule, except where it says the stated command could not
            # have started (Qwen3-32B: docs/cost-model.md "vLLM's KV pool")
            if model != "qwen3-32b":
                mapping["kv_pool"] = "vllm"
            assert s.mapping == mapping
            # vLLM v0.11.0 ships the tuned E=128,N=192 H100 file (Qwen3-235B at TP8): its tuned tiles (header)
            moe = {"qwen3-235b-a22b": {"moe_kernel": "triton_fused"}}
            # v0.11.0's FlashAttention backend: FA3 through the paged KV cache, 16-token blocks (header)
            assert s.cost == {**moe.get(model, {}), "attention_kernel": "vllm_flash_attn"}


def test_request_counts_and_lengths_are_the_results_totals_over_requests():
    for name, (n, tin, tout, *_rest) in ALL.items():
        w = ROWS[name].workload
        assert w.mode == "server" and w.requests == n
        assert w.input_tokens == round(tin / n) and w.output_tokens == round(tout / n)
        assert w.scheduler == {} and w.engine is None and w.rate_per_s is None
    for name, (_, (nin, nout)) in {**Q235, **Q32, **Q14}.items():
        w = ROWS[name].workload
        assert w.concurrency is None  # all sent at once: "Peak concurrent requests" = requests
        assert abs(w.input_tokens - nin) <= 0.002 * nin and w.output_tokens <= nout  # early EOS only
    for name, (_, c) in Q8.items():
        assert ROWS[name].workload.concurrency == c


def test_measured_figures_are_the_pages_result_lines():
    for name, (_n, _tin, tout, dur, page_tps, ttft_ms, tpot_ms) in ALL.items():
        m = ROWS[name].measured
        # generated tokens / benchmark duration, which the page's line matches to the duration's rounding
        assert m.output_tokens_per_s == page_tps
        assert m.output_tokens_per_s == pytest.approx(tout / dur, rel=1e-3)
        assert m.ttft_s == pytest.approx(ttft_ms / 1e3, rel=1e-9)
        assert m.tpot_s == pytest.approx(tpot_ms / 1e3, rel=1e-9)
        assert m.e2e_s is None


def test_8b_rows_latencies_agree_with_their_durations():
    """At a fixed client concurrency C, duration ~ requests x mean latency / C, and mean latency
    ~ TTFT + (output - 1) x TPOT: the pages' TPOT lines are consistent (unlike guidellm's). The
    duration runs longer by the drain at the end (the last requests run with fewer than C beside them):
    0.2% at C = 1, 8% at C = 8."""
    for name, ((n, _tin, tout, dur, _tps, ttft_ms, tpot_ms), c) in Q8.items():
        latency = ttft_ms / 1e3 + (tout / n - 1) * tpot_ms / 1e3
        assert 0.9 * dur < n * latency / c <= dur


def test_engine_defaults_on_an_80gb_h100_are_vllm_011s():
    cfg = scheduler_config({}, hw=load_hw("h100"))
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.chunked_prefill) == (1024, 8192, True)
    assert cfg.prefix_cache_hit_rate == 0.0


# qwen3.5-9b/h100.md, commit 6ceec5b8, "Other Benchmark Cases", "Throughput Profile", baseline (vLLM
# v0.17.1, guidellm): successful requests, maximum request concurrency, total input tokens, total
# generated tokens, benchmark duration s, the page's output token throughput line, mean TTFT ms, mean
# latency s; the profile's nominal lengths (dataset_input_tokens, dataset_output_tokens).
Q9_NAME = "vllm-1xh100-qwen3.5-9b-bf16-1k-128-c512"
Q9 = (1_000, 512, 1_033_932, 128_000, 43.00, 3_285.25, 4_433.02, 21.27, (1_024, 128))


def test_qwen35_9b_row_is_the_pages_throughput_profile():
    n, c, tin, tout, dur, page_tps, ttft_ms, e2e_s, (nin, nout) = Q9
    s = ROWS[Q9_NAME]
    assert (s.hardware, s.model, s.chips) == ("h100", "qwen3.5-9b", 1)  # "NVIDIA H100 80GB HBM3": SXM5
    assert s.precision == BF16 and ParallelPlan.from_dict(s.parallel).tp == 1
    assert s.cost == {"gdn_mixed_decodes": "chunk", "attention_kernel": "vllm_flash_attn"}  # v0.17.1: PR #44700 not in; FA3 paged prefill, as the 35B-A3B rows
    w = s.workload
    assert (w.mode, w.requests, w.concurrency) == ("server", n, c)
    assert w.input_tokens == round(tin / n) and abs(w.input_tokens - nin) <= 0.02 * nin
    assert w.output_tokens == tout / n == nout  # every request ran to its nominal length
    assert w.scheduler == {} and w.engine is None and w.rate_per_s is None
    m = s.measured
    # generated tokens / duration, not the page's line (which divides by another window)
    assert m.output_tokens_per_s == pytest.approx(tout / dur, rel=1e-4)
    assert abs(page_tps - m.output_tokens_per_s) > 0.05 * page_tps
    assert m.ttft_s == pytest.approx(ttft_ms / 1e3, rel=1e-9) and m.e2e_s == e2e_s and m.tpot_s is None


def test_9b_page_names_the_sxm_part_and_its_model_is_the_dense_hybrid():
    """The page's hardware line is the name nvidia-smi prints for the SXM5 H100 ("NVIDIA H100 80GB
    HBM3"; the PCIe card is "NVIDIA H100 PCIe"): the project's h100, whose HBM is HBM3 at 3.35 TB/s."""
    hw = load_hw("h100")
    assert hw.chip.hbm.bandwidth == pytest.approx(3.35e12)
    m = load_model("qwen3.5-9b")
    assert m.layer_types.count("linear_attention") == 24 and not m.is_moe


# The same page's constant-rate profiles (guidellm --profile constant --rate 1): successful requests,
# maximum request concurrency, total input tokens, total generated tokens, benchmark duration s,
# mean TTFT ms, mean latency s; the profile's dataset_input_tokens, dataset_output_tokens.
Q9_RATE1 = {
    "vllm-1xh100-qwen3.5-9b-bf16-32k-100-rate1": (100, 9, 3_200_993, 10_000, 100.89, 1_021.12, 7.88, (32_000, 100)),
    "vllm-1xh100-qwen3.5-9b-bf16-1k-2k-rate1": (200, 18, 201_982, 400_000, 214.96, 54.95, 17.48, (1_000, 2_000)),
}


def test_qwen35_9b_constant_rate_rows_send_one_request_a_second():
    for name, (n, cmax, tin, tout, dur, ttft_ms, e2e_s, (nin, nout)) in Q9_RATE1.items():
        s = ROWS[name]
        assert (s.hardware, s.model, s.chips, s.precision) == ("h100", "qwen3.5-9b", 1, BF16)
        assert s.cost == {"gdn_mixed_decodes": "chunk", "attention_kernel": "vllm_flash_attn"}
        w = s.workload
        assert (w.mode, w.requests, w.rate_per_s, w.arrival) == ("server", n, 1.0, "constant")
        assert w.concurrency is None  # no client limit: the reported maximum is what the rate produced
        assert w.input_tokens == round(tin / n) and abs(w.input_tokens - nin) <= 0.01 * nin
        assert w.output_tokens == tout / n == nout
        # Little's law: mean in flight = rate x mean latency, under the reported maximum concurrency
        assert 1.0 * e2e_s < cmax
        # the page's duration is shorter than its own send schedule allows (request n sent n s after
        # the start, then one latency): why throughput is not compared on these rows (header)
        assert dur < (n - 1) / w.rate_per_s + e2e_s
        m = s.measured
        assert m.output_tokens_per_s is None and m.tpot_s is None
        assert m.ttft_s == pytest.approx(ttft_ms / 1e3, rel=1e-9) and m.e2e_s == e2e_s
