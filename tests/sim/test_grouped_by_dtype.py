"""`efficiency.grouped_gemm_by_dtype`: a chip's grouped expert GEMM fraction for one matrix dtype."""

from __future__ import annotations

import pytest

from codesign.hw import load_hw
from codesign.sim.cost import CostModel
from codesign.sim.kernel_table import load_table, table_files
from codesign.sim.kernel import predict


def test_mi325x_fp8_grouped_rate_is_its_own_fraction():
    hw = load_hw("mi325x")
    # FP8: 2614.9 TFLOPS peak (datasheet, 2x BF16) x 0.345; BF16 has no grouped entry and runs at
    # the dense BF16 fraction 0.651 of 1307.4 TFLOPS, as before the field existed.
    assert CostModel(hw, "fp8", "fp8").grouped_rate == pytest.approx(2614.9e12 * 0.345, rel=1e-3)
    assert CostModel(hw, "bf16", "bf16").grouped_rate == pytest.approx(hw.chip.matrix.peak("bf16") * 0.651)


def test_mi300x_value_is_the_maf_ratio_of_mi325x():
    e300, e325 = load_hw("mi300x").efficiency, load_hw("mi325x").efficiency
    assert e300.grouped_gemm_by_dtype["fp8"] == pytest.approx(
        e325.grouped_gemm_by_dtype["fp8"] * e300.gemm_by_dtype["fp8"] / e325.gemm_by_dtype["fp8"], abs=5e-4)


def test_absent_dtype_falls_back_in_order():
    eff = load_hw("h100").efficiency
    assert eff.grouped_gemm_by_dtype is None
    assert eff.grouped_gemm_for("fp8") == (eff.grouped_gemm or eff.gemm_for("fp8"))


def test_large_expert_rows_at_the_fraction():
    # At 16,384 tokens the call is matrix-bound: time ~ FLOPs / (peak x 0.345), FLOPs counted by hand
    # (tokens x top_k x (gate/up 2 x 7168 x 4096 + down 2 x 2048 x 7168)).
    (table,) = [load_table(f) for f in table_files() if f.name == "cdna_grouped_large.yaml"]
    row = next(r for r in table.rows if r.tokens == 16384)
    flops = 16384 * 9 * (2 * 7168 * 4096 + 2 * 2048 * 7168)
    hand = flops / (2614.9e12 * 0.345)
    got = predict(row, load_hw("mi325x")).seconds
    assert got == pytest.approx(hand, rel=0.08)  # tiles, fixed kernel times and the overlap rule on top
    assert got == pytest.approx(row.seconds, rel=0.06)  # the measured 13,796.9 us
