"""Cost model: each rule against an independent hand calculation."""

from __future__ import annotations

import math

import pytest

from codesign.errors import CodesignError
from codesign.sim.cost import CostModel, CostOptions, Residency
from tests.sim.helpers import make_hw, op, simple_collective_time

HW = make_hw()
PEAK_BF16 = 989e12
PEAK_FP8 = 1979e12
HBM = 4.8e12 * 0.85


def model(**kw) -> CostModel:
    return CostModel(HW, "bf16", "bf16", CostOptions(**kw), simple_collective_time)


def test_large_gemm_is_compute_bound_at_gemm_efficiency():
    m = n = k = 8192
    o = op("g", "gemm", flops=2.0 * m * n * k, w=n * k * 2, a=m * k * 2, gemm=(1, m, n, k))
    c = model().cost(o)
    ramp = m / (m + 64)
    assert c.compute_s == pytest.approx(2.0 * m * n * k / (PEAK_BF16 * 0.7 * ramp), rel=1e-12)
    assert c.bottleneck == "matrix"
    # fixed time per kernel: the chip's efficiency.kernel_overhead (default 2 us) for the kernel itself
    # and for the 1.4 element-wise kernels an engine runs per GEMM/attention kernel
    assert c.overhead_s == pytest.approx(2e-6 * (1 + 1.4), rel=1e-12)
    assert c.time_s == pytest.approx(c.compute_s + c.overhead_s, rel=1e-12)
    alone = model(elementwise_kernels_per_matrix_kernel=0.0, launch_overhead_s=5e-6).cost(o)
    assert alone.overhead_s == 5e-6


def test_tile_quantisation_pads_m_and_n():
    # M=10 pads to 64, N=200 pads to 256 (tile 64x128).
    o = op("g", "gemm", flops=2.0 * 10 * 200 * 4096, gemm=(1, 10, 200, 4096))
    c = model().compute_time(o)[0]
    want = 2.0 * 64 * 256 * 4096 / (PEAK_BF16 * 0.7 * (64 / 128))
    assert c == pytest.approx(want, rel=1e-12)
    off = model(tile_quantisation=False, small_m_ramp=False).compute_time(o)[0]
    assert off == pytest.approx(2.0 * 10 * 200 * 4096 / (PEAK_BF16 * 0.7), rel=1e-12)


def test_fp8_doubles_matrix_rate():
    o = op("g", "gemm", flops=2.0 * 4096**3, gemm=(1, 4096, 4096, 4096))
    bf = CostModel(HW, "bf16", "bf16").compute_time(o)[0]
    f8 = CostModel(HW, "fp8", "bf16").compute_time(o)[0]
    assert bf / f8 == pytest.approx(PEAK_FP8 / PEAK_BF16, rel=1e-12)


def test_decode_gemm_is_memory_bound():
    o = op("g", "gemm", flops=2.0 * 8 * 4096 * 4096, w=4096 * 4096 * 2, a=8 * 4096 * 2, gemm=(1, 8, 4096, 4096))
    c = model().cost(o)
    assert c.bottleneck == "hbm"
    # activations (64 KiB) come from SRAM; weights from HBM
    assert c.memory_s == pytest.approx(4096 * 4096 * 2 / HBM, rel=1e-12)


def test_grouped_gemm_pads_each_expert():
    """Experts with fewer tokens than the tile's 64 rows take them in N (swap-AB), padded to 8;
    larger ones pad to the tile; one ramp on the whole op's padded tokens."""
    efpt = 2 * 3 * 4096 * 1536
    tpe = (1, 1, 3, 0, 70)
    o = op("e", "grouped_gemm", flops=efpt * sum(tpe), tpe=tpe, efpt=efpt)
    got = model().compute_time(o)[0]
    padded = 8 + 8 + 8 + 128
    want = efpt * padded / (PEAK_BF16 * 0.7 * padded / (padded + 64))
    assert got == pytest.approx(want, rel=1e-12)


def test_decode_expert_work_is_bound_by_expert_weight_bytes():
    """Qwen3.5-like decode on one EP rank: 64 experts with ~10 tokens each stream 64 experts' fp8
    weights; the padded, grouped compute stays well below that (the brief's first MoE principle)."""
    H, I = 4096, 1024
    efpt = 2 * 3 * H * I
    tpe = (10,) * 64
    w = 64 * 3 * H * I * 1.0  # fp8 bytes
    o = op("e", "grouped_gemm", flops=efpt * 640, tpe=tpe, efpt=efpt, w=w)
    m = model()
    assert m.compute_time(o)[0] < 0.5 * m.memory_time(o)[0]


def test_vector_and_memory_ops_fused_pay_no_launch():
    v = op("v", "vector", flops=1e9, a=1e3)
    c = model().cost(v)
    assert c.overhead_s == 0.0
    assert c.compute_s == pytest.approx(1e9 / (67e12 * 0.5), rel=1e-12)
    assert model(fuse_elementwise=False).cost(v).overhead_s == pytest.approx(2e-6 * 2.4)


def test_sram_activation_threshold():
    # a GEMM's activation operand: SRAM when it fits the budget (25 MB), else HBM
    small = op("m", "gemm", a=1e6)
    big = op("m", "gemm", a=1e9)
    assert model().memory_time(small) == (pytest.approx(1e6 / (12e12 * 0.85), rel=1e-12), "sram")
    assert model().memory_time(big) == (pytest.approx(1e9 / HBM, rel=1e-12), "hbm")
    assert model(sram_activations=False).memory_time(small)[1] == "hbm"
    # the per-op element-wise rule: fused element-wise ops keep activations on chip whatever their
    # size; `regions` without the SRAM split (the default) streams a region's bytes from HBM
    fused = op("v", "vector", a=1e9)
    assert model(elementwise_model="sram_per_op").memory_time(fused) == (
        pytest.approx(1e9 / (12e12 * 0.85), rel=1e-12), "sram")
    assert model().memory_time(fused) == (pytest.approx(1e9 / HBM, rel=1e-12), "hbm")
    assert model(elementwise_model="sram_per_op", fused_activations_on_chip=False).memory_time(fused)[1] == "hbm"


def test_state_residency_serves_state_from_sram():
    o = op("s", "vector", state=4 * 2**20)
    hbm = model().memory_time(o, Residency())[0]
    sram = model().memory_time(o, Residency(state=True))[0]
    assert hbm / sram == pytest.approx(12e12 / 4.8e12, rel=1e-12)


def test_collective_uses_given_function():
    o = op("c", "collective", collective={"type": "all_to_all", "bytes": 1e6})
    c = model().cost(o)
    assert c.bottleneck == "link"
    assert c.time_s == pytest.approx(3e-6 + 1e6 / (18 * 25e9 * 0.8), rel=1e-12)


def test_unknown_option_names_field():
    with pytest.raises(CodesignError, match=r"^scenario.yaml: cost.launch: unknown cost-model option"):
        CostOptions.from_dict({"launch": 1}, "scenario.yaml: cost")


def test_never_faster_than_roofline():
    for m in (1, 7, 64, 300, 5000):
        o = op("g", "gemm", flops=2.0 * m * 2048 * 4096, w=2048 * 4096 * 2, a=m * 4096 * 2, gemm=(1, m, 2048, 4096))
        c = model().cost(o)
        floor = max(o.flops / PEAK_BF16, o.bytes_read["weight"] / 4.8e12)
        assert c.time_s >= floor
        assert math.isfinite(c.time_s)


# -- calibration (docs/cost-model.md "Calibration") ------------------------------------------------

FAMILIES = {
    "hopper": ("h100", "h200", "h800", "h20"),
    "blackwell": ("b200", "gb200-nvl72"),
    "cdna": ("mi300x", "mi325x", "mi355x"),
}


# Fields a chip may carry on its own, where a sustained per-chip measurement sets them (power
# limits differ within a family: AMD's MAF, MI300X at 750 W vs MI325X at 1000 W).
# The fused GatedDeltaNet chunk kernel's curve needs the chip's block slots (SM count): Hopper parts
# with 132 SMs carry it, H20 (SM count not published) does not. Prefill attention's fraction is
# measured per chip where a chip has its own FA3 rows (H20: benchmarks/kernels/attention.yaml).
# Blackwell: GB200 (1200 W) has its own FP8 fraction from its cuBLASLt row; B200's is CUTLASS's.
# The CUTLASS blockwise FP8 curve (a K-loop time per tile) holds for the full-rate Hopper parts, not
# H20 (its tensor rate is cut), and so do the block-FP8 MoE kernel curves (fitted on H200 rows).
# CDNA3's FP8 grouped fraction: MI325X's from its AITER fused-MoE rows, MI300X's by the MAF ratio;
# MI355X (CDNA4) has none.
_BLOCK_FP8_MOE = tuple(f + s for f in ("moe_triton_block_fp8", "moe_trtllm_block_fp8")
                       for s in ("", "_dtypes", "_tokens_half", "_memory", "_overhead", "_k_half"))
_PER_TENSOR_FP8_MOE = tuple("moe_trtllm_fp8" + s for s in ("", "_dtypes", "_tokens_half", "_memory", "_overhead"))
# MLA kernels by engine (aiconfigurator's H100 / H200 rows): the full-rate Hopper parts, not H20.
_MLA_KERNELS = ("mla_kernels", "mla_trtllm_prefill", "mla_trtllm_prefill_fixed_s", "mla_trtllm_decode_fixed_s",
                "mla_sglang_fa3_decode_fixed_s")
# TensorRT-LLM's cuBLASLt FP8 GEMM and context attention curves: H100 / H200 rows, full-rate parts only.
_TRTLLM_CURVES = tuple("cublaslt_fp8" + s for s in ("", "_m_half", "_k_half", "_memory")) + tuple(
    "trtllm_attention" + s for s in ("", "_fp8", "_seq_half", "_fixed_s"))
PER_CHIP = {"cdna": ("gemm", "gemm_by_dtype", "grouped_gemm_by_dtype"), "hopper": ("gdn_chunk", "gdn_chunk_units", "gdn_chunk_state_s", "gdn_chunk_fixed_s", "attention",
                                                          # GQA decode occupancy: H100 / H200 rows, H800
                                                          # the same die; H20's SM count differs
                                                          "attention_decode_units_half", "attention_decode_split",
                                                          "attention_decode_fixed_s",
                                                          # paged-KV prefill: the same rows and reason
                                                          "attention_paged", "attention_paged_seq_half",
                                                          "attention_paged_fixed_s", "attention_paged_head_dim_exp",
                                                          "cutlass_block_fp8", "cutlass_block_fp8_m_half",
                                                          "cutlass_block_fp8_k_s",
                                                          # fused element-wise streaming: H200 from its
                                                          # own causal-conv rows (0.51; H100 0.65)
                                                          "elementwise_memory",
                                                          # vLLM's MXFP4 MoE: fitted per chip (H100 / H200;
                                                          # H800 H100's by assumption, H20 none)
                                                          "moe_triton_mxfp4", "moe_triton_mxfp4_dtypes",
                                                          "moe_triton_mxfp4_tokens_half", "moe_triton_mxfp4_memory",
                                                          "moe_triton_mxfp4_overhead") + _BLOCK_FP8_MOE + _PER_TENSOR_FP8_MOE
                                                         + _MLA_KERNELS + _TRTLLM_CURVES,
            "blackwell": ("gemm",)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_efficiency_factors_are_constant_per_family(family):
    from codesign.hw import load_hw

    own = PER_CHIP.get(family, ())
    effs = {name: {k: v for k, v in load_hw(name).efficiency.model_dump().items() if k not in own}
            for name in FAMILIES[family]}
    first = next(iter(effs.values()))
    assert all(e == first for e in effs.values()), effs


def test_cdna_chips_differ_only_where_a_sustained_measurement_says_so():
    from codesign.hw import load_hw

    a, b = load_hw("mi300x").efficiency, load_hw("mi325x").efficiency
    assert b.gemm_for("fp8") > a.gemm_for("fp8") and b.gemm > a.gemm  # 1000 W sustains higher clocks
    # MI355X (CDNA4) has no MAF row: it keeps the assumed family constant and no per-dtype table
    c = load_hw("mi355x").efficiency
    assert c.gemm == pytest.approx(0.55) and c.gemm_by_dtype is None
    # the FP8 grouped fraction keeps the MAF ordering of the two CDNA3 parts; CDNA4 has none
    assert b.grouped_gemm_for("fp8") > a.grouped_gemm_for("fp8") and c.grouped_gemm_by_dtype is None


def test_memory_factors_are_raw_streaming_in_every_gpu_family():
    # No family may carry the old end-to-end 0.68 again, and the NVIDIA families sit at their
    # streaming figures; the per-kernel fixed time is the chip's kernel fit, not an end-to-end fit.
    from codesign.hw import load_hw

    assert load_hw("h100").efficiency.memory == pytest.approx(0.90)
    assert load_hw("b200").efficiency.memory == pytest.approx(0.92)
    assert load_hw("a100").efficiency.memory == pytest.approx(0.90)
    assert load_hw("mi300x").efficiency.memory == pytest.approx(0.80)
    assert CostOptions().launch_overhead_s is None  # = the chip's efficiency.kernel_overhead
    assert load_hw("h100").efficiency.kernel_overhead == pytest.approx(2.8e-6)


def test_validation_b200_scenario_computes_in_fp4():
    # The scenario schema passes precision.compute through to the mapping's Precision.
    from pathlib import Path

    from codesign.mapping.plan import Precision
    from codesign.scenario import load_scenarios

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "validation" / "public.yaml"
    (s,) = [s for s in load_scenarios(path) if s.name == "mlperf-v5.0-8xb200-llama2-70b-offline"]
    prec = Precision.from_dict(s.precision)
    assert prec.compute == "fp4"
    assert s.parallel == {"tp": 1, "dp": 8}
    # At fp4 a B200 GEMM runs at the fp4 peak (twice the fp8 peak the W4A8 default would use) times
    # its own kernel-calibrated fraction (efficiency.gemm_by_dtype.fp4, CUTLASS NVFP4 rows).
    from codesign.hw import load_hw

    hw = load_hw("b200")
    fp4 = CostModel(hw, prec.compute, "fp8")
    fp8 = CostModel(hw, "fp8", "fp8")
    eff = hw.efficiency
    assert fp4.matrix_rate == pytest.approx(2 * fp8.matrix_rate * eff.gemm_by_dtype["fp4"] / eff.gemm)


# -- grouped-GEMM efficiency and compute/memory overlap (efficiency.grouped_gemm, overlap_exponent) --


def test_grouped_gemm_runs_at_its_own_efficiency_and_dense_gemm_does_not_move():
    efpt = 2 * 3 * 4096 * 1536
    tpe = (256, 256, 256, 256)  # tile multiples, so padding is 1 and the ramp is 1024 / 1088
    g = op("e", "grouped_gemm", flops=efpt * 1024, tpe=tpe, efpt=efpt)
    d = op("g", "gemm", flops=2.0 * 4096**3, gemm=(1, 4096, 4096, 4096))
    base = CostModel(HW, "bf16", "bf16")
    low = CostModel(make_hw(**{"efficiency.grouped_gemm": 0.35}), "bf16", "bf16")
    assert low.compute_time(g)[0] == pytest.approx(efpt * 1024 / (PEAK_BF16 * 0.35 * 1024 / 1088), rel=1e-12)
    assert low.compute_time(g)[0] / base.compute_time(g)[0] == pytest.approx(0.7 / 0.35, rel=1e-12)
    assert low.compute_time(d)[0] == base.compute_time(d)[0]


def test_grouped_gemm_defaults_to_gemm_efficiency():
    assert make_hw().efficiency.grouped_gemm is None
    efpt = 1e6
    g = op("e", "grouped_gemm", flops=efpt * 128, tpe=(128,), efpt=efpt)
    assert model().compute_time(g)[0] == pytest.approx(efpt * 128 / (PEAK_BF16 * 0.7 * 128 / 192), rel=1e-12)


def test_overlap_exponent_is_the_p_norm_of_compute_and_memory():
    m = 1024
    o = op("g", "gemm", flops=2.0 * m * 8192 * 8192, w=8192 * 8192 * 2, a=m * 8192 * 2, gemm=(1, m, 8192, 8192))
    perfect = model(launch_overhead_s=0.0).cost(o)
    assert perfect.time_s == pytest.approx(max(perfect.compute_s, perfect.memory_s), rel=1e-12)
    for p in (1.0, 2.0, 3.5):
        cm = CostModel(make_hw(**{"efficiency.overlap_exponent": p}), "bf16", "bf16", CostOptions(launch_overhead_s=0.0))
        c = cm.cost(o)
        assert (c.compute_s, c.memory_s) == (perfect.compute_s, perfect.memory_s)
        assert c.time_s == pytest.approx((c.compute_s**p + c.memory_s**p) ** (1 / p), rel=1e-12)
    no_overlap = CostModel(make_hw(**{"efficiency.overlap_exponent": 1.0}), "bf16", "bf16", CostOptions(launch_overhead_s=0.0))
    assert no_overlap.cost(o).time_s == pytest.approx(perfect.compute_s + perfect.memory_s, rel=1e-12)
    # a huge exponent tends to perfect overlap without overflowing
    big = CostModel(make_hw(**{"efficiency.overlap_exponent": 1e6}), "bf16", "bf16", CostOptions(launch_overhead_s=0.0))
    assert big.cost(o).time_s == pytest.approx(perfect.time_s, rel=1e-4)


def test_overlap_keeps_roofline_floor_and_bandwidth_monotonicity():
    # never faster than max(FLOPs / peak, bytes / bandwidth); more HBM bandwidth never slower
    for p in (1.0, 2.0, 4.0):
        prev = None
        for bw in ("2 TB/s", "4.8 TB/s", "8 TB/s", "20 TB/s"):
            hw = make_hw(**{"efficiency.overlap_exponent": p, "chip.hbm.bandwidth": bw})
            cm = CostModel(hw, "bf16", "bf16", None, simple_collective_time)
            total = 0.0
            for m in (1, 64, 300, 2048, 8192):
                o = op("g", "gemm", flops=2.0 * m * 2048 * 4096, w=2048 * 4096 * 2, a=m * 4096 * 2, gemm=(1, m, 2048, 4096))
                t = cm.cost(o).time_s
                assert t >= max(o.flops / PEAK_BF16, o.bytes_read["weight"] / hw.chip.hbm.bandwidth)
                total += t
            assert prev is None or total <= prev
            prev = total


def test_overlap_exponent_below_one_is_rejected():
    with pytest.raises(Exception, match="overlap_exponent"):
        make_hw(**{"efficiency.overlap_exponent": 0.5})


def test_no_family_carries_a_grouped_gemm_constant():
    # docs/cost-model.md "Kernel calibration": DeepGEMM's grouped FP8 GEMMs run at the dense rate
    # (the Hopper 0.21 fitted to the H100 Mixtral row is gone); the overlap exponent exists only
    # where kernel data set it (Hopper, and Blackwell from its B200 GEMM rows).
    from codesign.hw import load_hw

    for name in FAMILIES["hopper"] + FAMILIES["blackwell"] + FAMILIES["cdna"]:
        assert load_hw(name).efficiency.grouped_gemm is None
    for name in FAMILIES["cdna"]:
        assert load_hw(name).efficiency.overlap_exponent is None


def test_grouped_op_pays_the_fixed_time_of_its_moe_kernels():
    # one traced expert op = align/permute, gate/up GEMM, activation, down GEMM, un-permute sum:
    # 5 kernels at the chip's per-kernel fixed time (2 us on the fixture chip)
    efpt = 2.0 * 3 * 4096 * 1536
    g = op("e", "grouped_gemm", flops=efpt * 64, tpe=(8,) * 8, efpt=efpt)
    assert model().cost(g).overhead_s == pytest.approx(5 * 2e-6)
    assert model(grouped_op_kernels=2.0).cost(g).overhead_s == pytest.approx(2 * 2e-6)


def test_expert_ffn_k_ramp_is_the_time_weighted_mean_of_its_two_gemms():
    # traced expert op shapes: x (T, H), ids, weights, w_gate_up (E, 2I, H), w_down (E, H, I);
    # gate/up runs at K = H with 2/3 of the FLOPs, down at K = I with 1/3
    from dataclasses import replace

    hw = make_hw(**{"efficiency.gemm_k_half": 500})
    cm = CostModel(hw, "bf16", "bf16")
    h, i = 4096, 14336
    o = replace(op("e", "grouped_gemm"), in_shapes=((4, h), (4, 2), (4, 2), (8, 2 * i, h), (8, h, i)))
    r = lambda k: k / (k + 500)  # noqa: E731
    assert cm._grouped_k_ramp(o) == pytest.approx(1.0 / ((2 / 3) / r(h) + (1 / 3) / r(i)), rel=1e-12)
    assert CostModel(make_hw(), "bf16", "bf16")._grouped_k_ramp(o) == 1.0  # no K curve on this chip


def test_gemm_by_dtype_sets_the_matrix_and_grouped_rates_of_its_dtype_only():
    from codesign.hw import load_hw
    from codesign.sim.cost import CostModel

    hw = load_hw("mi300x")
    e = hw.efficiency
    fp8, bf16 = CostModel(hw, "fp8", "fp8"), CostModel(hw, "bf16", "bf16")
    assert fp8.matrix_rate == pytest.approx(2614.9e12 * e.gemm_by_dtype["fp8"])
    assert bf16.matrix_rate == pytest.approx(1307.4e12 * e.gemm)
    # no grouped_gemm factor on CDNA: BF16 expert GEMMs run at the dtype's own large-GEMM fraction,
    # FP8 ones at the FP8 grouped fraction (grouped_gemm_by_dtype, from AITER's fused-MoE rows)
    assert bf16.rank_rates()[0] == pytest.approx(bf16.matrix_rate)
    assert fp8.rank_rates()[0] == pytest.approx(2614.9e12 * e.grouped_gemm_by_dtype["fp8"])
    # a spec override of the table acts (dotted path efficiency.gemm_by_dtype)
    hw2 = hw.model_copy(update={"efficiency": e.model_copy(update={"gemm_by_dtype": {"fp8": 0.3}})})
    assert CostModel(hw2, "fp8", "fp8").matrix_rate == pytest.approx(2614.9e12 * 0.3)
