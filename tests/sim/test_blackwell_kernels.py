"""Blackwell kernel calibration (benchmarks/kernels/blackwell.yaml, fit.py --blackwell): the rows'
transcription, the fitted values against their rows, and the fit's dict-entry parameters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from codesign.hw import load_hw
from codesign.sim.kernel import predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table

TABLE = KERNEL_DIR / "blackwell.yaml"


def _fit_module():
    spec = importlib.util.spec_from_file_location("kfit", Path(KERNEL_DIR) / "fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mla_decode_seconds_follow_the_benchmark_script_byte_count():
    # bench_cutlass_mla.py: GB/s = (q + q x dv / d + whole latent cache) bytes / time, BF16,
    # d = 576, dv = 512; the table stores time = bytes / the log's GB/s.
    log_gbps = {2048: 4047.294114, 4096: 4015.363449, 8192: 4124.473260}
    rows = [r for r in load_table(TABLE).rows if r.op == "attention" and r.phase == "decode"]
    assert sorted(r.seq_kv for r in rows) == sorted(log_gbps)
    for r in rows:
        q = 128 * 256 * 576 * 2
        total = 256 * r.seq_kv * 576 * 2 + q + q * 512 / 576
        assert r.seconds == pytest.approx(total / (log_gbps[r.seq_kv] * 1e9), rel=1e-4)


def test_gemm_rows_are_sm100_rates_only():
    # BF16 above the H100/H200 dense peak (989 TFLOPS) and NVFP4 (no FP4 tensor cores before SM100):
    # the rows cannot come from an earlier part.
    rows = load_table(TABLE).rows
    assert max(r.tflops for r in rows if r.op == "gemm" and r.dtype == "bf16") > 989
    assert all(r.hw == "b200" for r in rows if r.op in ("gemm", "attention"))
    assert all(r.hw == "gb200-nvl72" and r.ranks == 72 for r in rows if r.op == "all_reduce")


def test_gb200_fp8_fraction_reproduces_its_cublaslt_row():
    row = next(r for r in load_table(KERNEL_DIR / "gemm.yaml").rows if r.hw == "gb200-nvl72")
    pred = predict(row, load_hw("gb200-nvl72")).tflops
    assert pred == pytest.approx(2744, rel=0.01)
    # and it is a per-chip value: the B200 fraction gives about 7% less at GB200's peak
    assert load_hw("b200").efficiency.gemm < load_hw("gb200-nvl72").efficiency.gemm


def test_large_nvfp4_gemm_is_capped_by_its_own_fraction():
    # M = 16384 x 6144 x 4096: compute-bound; predicted TFLOPS cannot exceed 9000 x gemm_by_dtype.fp4
    hw = load_hw("b200")
    row = next(r for r in load_table(TABLE).rows if r.dtype == "fp4" and r.m == 16384)
    pred = predict(row, hw).tflops
    assert pred <= 9000 * hw.efficiency.gemm_by_dtype["fp4"] + 1e-6
    assert pred == pytest.approx(row.tflops, rel=0.10)


def test_nvl72_all_reduce_rows_read_as_nccl_tests_prints_them():
    # out-of-place time; nccl-tests' busBw = 2 (n - 1) / n x bytes / time: 8 GB printed 834.57 GB/s
    row = next(r for r in load_table(TABLE).rows if r.op == "all_reduce" and r.bytes == 8589934592)
    assert 2 * 71 / 72 * row.bytes / row.seconds / 1e9 == pytest.approx(834.57, rel=1e-3)


def test_blackwell_rows_error_within_the_kernel_target():
    rows = load_table(TABLE).rows
    errs = [abs(getattr(predict(r, load_hw(r.hw)), r.metric) / r.measured - 1) for r in rows]
    assert sum(errs) / len(errs) <= 0.15


def test_fit_dotted_parameter_sets_one_dict_entry():
    mod = _fit_module()
    eff = load_hw("b200").efficiency
    upd = mod._updates(eff, {"gemm_by_dtype.fp4": 0.3, "gemm": 0.5})
    assert upd["gemm"] == 0.5
    assert upd["gemm_by_dtype"] == {**eff.gemm_by_dtype, "fp4": 0.3}
    assert eff.gemm_by_dtype["fp4"] != 0.3  # the spec itself is untouched
