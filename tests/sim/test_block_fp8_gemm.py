"""`cost.gemm_kernel: cutlass_block_fp8`: vLLM's block-FP8 linear layers on Hopper without DeepGEMM
(CUTLASS's SM90 blockwise kernel), costed on the chip's `efficiency.cutlass_block_fp8*` curve; other
dense GEMMs (router, LM head, batched per-head products) and other options keep the family curve."""

from __future__ import annotations

import math

import pytest

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.kernel import KernelShape, predict

CB = CostOptions(gemm_kernel="cutlass_block_fp8")


def _gemm(block: str, b: int, m: int, n: int, k: int) -> Op:
    return Op(name=f"{block}/mm", target="t", kind="gemm", block=block, layer=0, layer_type="mla+moe", phase="prefill",
              in_shapes=(), out_shapes=(), dtype="fp8", flops=2.0 * b * m * n * k,
              bytes_read={"weight": float(b * n * k), "activation": float(b * m * k)},
              bytes_written={"activation": 2.0 * b * m * n}, gemm=(b, m, n, k))


@pytest.mark.parametrize("m,n,k", [(8192, 2112, 7168), (256, 7168, 2048), (1, 576, 7168), (4096, 512, 7168)])
def test_projection_compute_is_the_cutlass_curve_by_hand(m, n, k):
    hw = load_hw("h200")
    e = hw.efficiency
    mp, np_ = math.ceil(m / 64) * 64, math.ceil(n / 256) * 256  # the 64 x 256 wgmma tile
    want = max(2 * mp * np_ * k / (1979e12 * e.cutlass_block_fp8 * mp / (mp + e.cutlass_block_fp8_m_half)),
               k * e.cutlass_block_fp8_k_s)
    got = CostModel(hw, "fp8", "bf16", CB).gemm_time(_gemm("mla", 1, m, n, k))
    assert got == pytest.approx(want, rel=1e-12)


def test_small_m_floor_is_one_tiles_k_loop():
    # below a few hundred rows the time is K x k_s whatever M is (34 us at K = 7168 on H100's fit)
    hw = load_hw("h100")
    cm = CostModel(hw, "fp8", "bf16", CB)
    t = [cm.gemm_time(_gemm("mla", 1, m, 2112, 7168)) for m in (1, 16, 64)]
    assert t[0] == t[1] == t[2] == pytest.approx(7168 * hw.efficiency.cutlass_block_fp8_k_s)


@pytest.mark.parametrize("block,b", [("moe_router", 1), ("lm_head", 1), ("mla", 16)])
def test_router_lm_head_and_batched_products_keep_the_family_curve(block, b):
    hw = load_hw("h200")
    op = _gemm(block, b, 4096, 512, 7168)
    assert CostModel(hw, "fp8", "bf16", CB).gemm_time(op) == CostModel(hw, "fp8", "bf16").gemm_time(op)


def test_kernel_row_prediction_goes_through_the_option():
    hw = load_hw("h100")
    s = KernelShape(op="gemm", hw="h100", dtype="fp8", m=8192, n=2112, k=7168, gemm_kernel="cutlass_block_fp8")
    cb, cal = predict(s, hw), predict(s.model_copy(update={"gemm_kernel": None}), hw)
    assert cb.tflops == pytest.approx(483.1, rel=0.01)  # vLLM #23280 measured 489.7
    assert cal.tflops > 2 * cb.tflops


def test_refused_off_fp8_and_on_chips_without_the_curve():
    with pytest.raises(CodesignError, match="this deployment's GEMMs compute in bf16"):
        CostModel(load_hw("h200"), "bf16", "bf16", CB)
    with pytest.raises(CodesignError, match="needs efficiency.cutlass_block_fp8 of h20"):
        CostModel(load_hw("h20"), "fp8", "bf16", CB)
    with pytest.raises(CodesignError, match="gemm_kernel: Input should be .calibrated., .cutlass_block_fp8. or .trtllm_cublaslt_fp8."):
        CostOptions.from_dict({"gemm_kernel": "deepgemm"})
    with pytest.raises(ValueError, match="gemm_kernel applies to gemm only"):
        KernelShape(op="grouped_gemm", hw="h100", dtype="fp8", groups=2, m=64, n=64, k=64,
                    gemm_kernel="cutlass_block_fp8")


def test_cli_kernel_gemm_takes_the_kernel(capsys):
    import json

    from codesign.cli import main

    assert main(["kernel", "--hw", "h100", "gemm", "--m", "16", "--n", "2112", "--k", "7168", "--dtype", "fp8",
                 "--gemm-kernel", "cutlass_block_fp8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seconds"] == pytest.approx(7168 * load_hw("h100").efficiency.cutlass_block_fp8_k_s + 2.8e-6, rel=0.05)
    assert main(["kernel", "--hw", "h100", "gemm", "--m", "16", "--n", "2112", "--k", "7168", "--dtype", "fp8",
                 "--gemm-kernel", "deepgemm"]) != 0
    assert "gemm_kernel" in capsys.readouterr().err
