"""`cost.moe_kernel: trtllm_cutlass_fp8`: TensorRT-LLM's CUTLASS fused MoE on per-tensor FP8
(benchmarks/kernels/trtllm_moe_fp8.yaml, `efficiency.moe_trtllm_fp8*`)."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.graph.router import UniformRouter
from codesign.hw import load_hw
from codesign.sim.kernel import KernelShape, fused_moe_op, predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table, validate_kernels

MIXTRAL = dict(op="fused_moe", dtype="fp8", groups=8, top_k=2, hidden=4096, n=14336)


def _pad(x: int, step: int) -> int:
    return -(-x // step) * step


def _p_norm(a: float, b: float, p: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi * (1 + (lo / hi) ** p) ** (1 / p)


def test_prefill_size_prediction_is_an_independent_hand_calculation():
    # Mixtral-8x7B's experts at TP1 on H100, 16,384 tokens (one prompt step of the H100 rows). By
    # hand: every expert holds thousands of rows, padded to the 64-row tile; compute = FLOPs x
    # padded / routed / (FP8 peak 1,979 TFLOPS x frac x P / (P + tokens_half)), no K ramp; weights
    # (one byte each) and activations stream at 3.35 TB/s x memory; time = p-norm + 5 launches + fixed.
    hw = load_hw("h100")
    e = hw.efficiency
    assert (hw.chip.matrix.peak("fp8"), hw.chip.hbm.bandwidth) == (1979e12, 3.35e12)
    B, E, k, H, N = 16384, 8, 2, 4096, 14336
    counts = [int(t) for t in UniformRouter(seed=0).tokens_per_expert(0, B, E, k)]
    routed = sum(counts)
    assert routed == B * k and min(counts) > 64
    padded = sum(_pad(t, 64) for t in counts)
    flops = routed * (2 * H * 2 * N + 2 * N * H)
    occ = padded / (padded + e.moe_trtllm_fp8_tokens_half)
    compute = flops * padded / routed / (1979e12 * e.moe_trtllm_fp8 * occ)
    op = fused_moe_op(KernelShape(**MIXTRAL, hw="h100", tokens=B))
    assert op.bytes_read["weight"] == E * 3 * H * N
    memory = op.bytes_total / (3.35e12 * e.moe_trtllm_fp8_memory)
    expected = _p_norm(compute, memory, e.overlap_exponent) + 5 * e.kernel_overhead + e.moe_trtllm_fp8_overhead
    got = predict(KernelShape(**MIXTRAL, hw="h100", tokens=B, moe_kernel="trtllm_cutlass_fp8"), hw)
    assert got.compute_s == pytest.approx(compute, rel=1e-9)
    assert got.seconds == pytest.approx(expected, rel=1e-9)
    assert got.bound == "matrix"
    # the measured 8.144 ms is 11.54 TFLOP at 1,417 TFLOPS, 0.716 of the FP8 peak
    assert flops / 8.144347e-3 / 1979e12 == pytest.approx(0.716, abs=0.001)


def test_decode_size_prediction_streams_the_weights():
    # 128 tokens on H200: all 8 experts touched, 1.41 GB of FP8 weights streamed at 4.8 TB/s x memory
    hw = load_hw("h200")
    e = hw.efficiency
    op = fused_moe_op(KernelShape(**MIXTRAL, hw="h200", tokens=128))
    weights = 8 * 3 * 4096 * 14336
    assert op.bytes_read["weight"] == weights
    got = predict(KernelShape(**MIXTRAL, hw="h200", tokens=128, moe_kernel="trtllm_cutlass_fp8"), hw)
    assert got.bound == "hbm"
    # the weights at least; the few MB of activations may stay in L2 (at most all the op's bytes)
    bw = 4.8e12 * e.moe_trtllm_fp8_memory
    assert weights / bw <= got.memory_s <= op.bytes_total / bw * (1 + 1e-12)
    assert got.memory_s == pytest.approx(weights / bw, rel=0.01)


def test_table_rows_are_sourced_and_the_curve_meets_them():
    t = load_table(KERNEL_DIR / "trtllm_moe_fp8.yaml")
    fp8 = [r for r in t.rows if r.dtype == "fp8"]
    assert len(t.rows) == 100 and len(fp8) == 50
    assert {r.moe_kernel for r in fp8} == {"trtllm_cutlass_fp8"}
    assert {r.moe_kernel for r in t.rows if r.dtype == "bf16"} == {None}  # the default grouped rule
    assert {r.source for r in t.rows} == {"aic_trtllm_1_2_h100", "aic_trtllm_1_2_h200"}
    assert {(r.groups, r.top_k, r.hidden, r.n, r.ranks) for r in t.rows} == {(8, 2, 4096, 14336, None)}
    rows = [r for r in validate_kernels() if r.file == "trtllm_moe_fp8.yaml" and r.row.dtype == "fp8"]
    assert sum(abs(r.error) for r in rows) / len(rows) < 0.04
    assert max(abs(r.error) for r in rows) < 0.10
    # the validation rows' prompt steps (8,192-16,384 tokens per engine)
    prefill = [r for r in rows if 8192 <= r.row.tokens <= 16384]
    assert len(prefill) == 6 and max(abs(r.error) for r in prefill) < 0.08


def test_the_curve_is_refused_without_data():
    # BF16 has no rows of it; H20 (cut tensor rate) carries no curve.
    with pytest.raises(CodesignError, match=r"efficiency\.moe_trtllm_fp8 of h100 for bf16 .*_dtypes: fp8$"):
        predict(KernelShape(**{**MIXTRAL, "dtype": "bf16"}, hw="h100", tokens=64, moe_kernel="trtllm_cutlass_fp8"),
                load_hw("h100"))
    with pytest.raises(CodesignError, match=r"efficiency\.moe_trtllm_fp8 of h20 for fp8 .*_dtypes: none$"):
        predict(KernelShape(**MIXTRAL, hw="h20", tokens=64, moe_kernel="trtllm_cutlass_fp8"), load_hw("h20"))


def test_the_hopper_mixtral_rows_run_the_measured_runner_not_the_unfused_epilogue():
    from pathlib import Path

    from codesign.scenario import load_scenarios
    from codesign.sim.cost import CostOptions

    root = Path(__file__).resolve().parents[2]
    rows = {s.name: s for s in load_scenarios(root / "benchmarks" / "validation" / "public.yaml")}
    hopper = [n for n, s in rows.items() if s.model == "mixtral-8x7b" and s.hardware in ("h100", "h200")]
    assert sorted(hopper) == ["mlperf-v4.1-8xh100-mixtral-8x7b-offline", "mlperf-v4.1-8xh100-mixtral-8x7b-server",
                              "mlperf-v4.1-8xh200-mixtral-8x7b-server", "mlperf-v5.1-8xh200-mixtral-8x7b-offline"]
    for n in hopper:
        s = rows[n]
        assert s.parallel == {"tp": 1, "dp": 8} and s.precision["weights"] == "fp8", n  # the curve's TP1 FP8 shape
        opts = CostOptions.from_dict(s.cost)
        # the whole-call timings hold the permute / activation / finalize kernels: not counted twice
        assert opts.moe_kernel == "trtllm_cutlass_fp8" and not opts.moe_unfused_epilogue, n


def test_bf16_rows_are_the_same_call_at_twice_the_bytes_and_half_the_rate():
    # transcription check of the BF16 rows (shown under the grouped rule, not fitted): against the FP8
    # row of the same chip and tokens, decode sizes stream twice the weight bytes (ratio near 2, a bit
    # under: fixed time), prompt sizes run at half the tensor rate (ratio 1.6-2.0)
    t = load_table(KERNEL_DIR / "trtllm_moe_fp8.yaml")
    fp8 = {(r.hw, r.tokens): r.seconds for r in t.rows if r.dtype == "fp8"}
    bf16 = {(r.hw, r.tokens): r.seconds for r in t.rows if r.dtype == "bf16"}
    assert set(fp8) == set(bf16) and len(bf16) == 50
    for (hw, tokens), s in bf16.items():
        ratio = s / fp8[(hw, tokens)]
        assert 1.6 <= ratio <= 2.0, (hw, tokens, ratio)
    assert bf16[("h100", 16384)] == pytest.approx(14.516491e-3, rel=1e-6)
    assert bf16[("h200", 32768)] == pytest.approx(29.175489e-3, rel=1e-6)
