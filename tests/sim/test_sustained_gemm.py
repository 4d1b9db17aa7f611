"""Sustained vs short-run GEMMs on H100 (benchmarks/kernels/max_achievable_gemm.yaml): the two
16-bit measurements of one shape and the Hopper curve's prediction of it, checked by hand
(docs/cost-model.md "Sustained clocks on Hopper")."""

from __future__ import annotations

import pytest

from codesign.hw import load_hw
from codesign.sim.kernel import predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table

N = 8192


def _rows():
    rows = load_table(KERNEL_DIR / "max_achievable_gemm.yaml").rows
    at = [r for r in rows if r.hw == "h100" and (r.m, r.n, r.k) == (N, N, N)]
    short = next(r for r in at if r.source == "torch_perf_db" and r.dtype == "bf16")
    sustained = next(r for r in at if r.source == "gpu_fryer" and r.dtype == "bf16")
    return short, sustained


def test_the_curve_at_8192_cubed_bf16_by_hand():
    """2 N^3 FLOPs at 989 TFLOPS x gemm 0.725 x small-M ramp N/(N+7) x K ramp N/(N+573); A, B read
    and C written in BF16 at 3.35 TB/s x matrix_memory 0.94; p-norm overlap (p = 1.74); + 2.8 us."""
    hw = load_hw("h100")
    flops = 2.0 * N**3
    compute = flops / (989e12 * 0.725 * (N / (N + 7)) * (N / (N + 573)))
    memory = 3 * N * N * 2 / (3.35e12 * 0.94)
    p = 1.74
    t = compute * (1 + (memory / compute) ** p) ** (1 / p) + 2.8e-6
    short, _ = _rows()
    assert predict(short, hw).seconds == pytest.approx(t, rel=1e-9)
    assert flops / t / 1e12 == pytest.approx(664.0, abs=0.5)


def test_sustained_rate_is_below_the_short_run_and_above_the_curve():
    short, sustained = _rows()
    assert sustained.tflops / short.tflops == pytest.approx(0.915, abs=0.001)  # 730 / 797.51
    curve = predict(sustained, load_hw("h100")).tflops
    assert curve < sustained.tflops < short.tflops
    assert sustained.tflops / curve - 1 == pytest.approx(0.099, abs=0.002)  # the curve 9% slower than the 60 s burn
