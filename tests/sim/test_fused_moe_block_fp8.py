"""`cost.moe_kernel: triton_fused_block_fp8`: vLLM's Triton fused_moe on block-scaled FP8 weights
(benchmarks/kernels/fused_moe_block_fp8.yaml, `efficiency.moe_triton_block_fp8*`)."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.graph.router import UniformRouter
from codesign.hw import load_hw
from codesign.sim.kernel import KernelShape, fused_moe_op, predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table, validate_kernels

DEEPSEEK_TP8 = dict(op="fused_moe", hw="h200", dtype="fp8", groups=256, top_k=8, hidden=7168, n=256)


def _pad(x: int, step: int) -> int:
    return -(-x // step) * step


def test_block_fp8_prediction_is_an_independent_hand_calculation():
    # DeepSeek-V3's routed experts at TP 8 (E 256, top-8, hidden 7168, 256 per rank) on H200, 8,192
    # tokens. By hand from the spec fields and the router's own per-expert counts (seed 0, layer 0):
    # every expert holds more than the 64-row tile, so its tokens pad to a multiple of 64;
    # compute = FLOPs x padded/routed / (FP8 peak x frac x P/(P + tokens_half) x K ramp), the K ramp
    # the FLOP-weighted harmonic mean of K/(K + k_half) over gate/up (K = 7168, 2/3 of the FLOPs) and
    # down (K = 256); weights and the (L2-overflowing) activations stream at HBM x memory; time =
    # p-norm(compute, memory) + 5 kernels x kernel_overhead + the curve's fixed time.
    hw = load_hw("h200")
    e = hw.efficiency
    B, E, k, H, N = 8192, 256, 8, 7168, 256
    counts = [int(t) for t in UniformRouter(seed=0).tokens_per_expert(0, B, E, k)]
    assert min(counts) >= 64
    routed = sum(counts)
    padded = sum(_pad(t, 64) for t in counts)
    flops = routed * (2 * H * 2 * N + 2 * N * H)

    def ramp(kk: float) -> float:
        return kk / (kk + e.moe_triton_block_fp8_k_half)

    f_gu, f_d = 2.0 * H * 2 * N, 2.0 * N * H
    k_ramp = (f_gu + f_d) / (f_gu / ramp(H) + f_d / ramp(N))
    occ = padded / (padded + e.moe_triton_block_fp8_tokens_half)
    compute = flops * padded / routed / (1979e12 * e.moe_triton_block_fp8 * occ * k_ramp)
    weights = E * 3 * H * N  # every expert touched, one byte a weight
    op = fused_moe_op(KernelShape(**DEEPSEEK_TP8, tokens=B))
    assert op.bytes_read["weight"] == weights
    act = op.bytes_total - weights
    assert act > 0.5 * 50e6  # beyond the L2 budget: activations through HBM too
    memory = (weights + act) / (4.8e12 * e.moe_triton_block_fp8_memory)
    p = e.overlap_exponent
    hi, lo = max(compute, memory), min(compute, memory)
    expected = hi * (1 + (lo / hi) ** p) ** (1 / p) + 5 * e.kernel_overhead + e.moe_triton_block_fp8_overhead
    got = predict(KernelShape(**DEEPSEEK_TP8, tokens=B, moe_kernel="triton_fused_block_fp8"), hw)
    assert got.seconds == pytest.approx(expected, rel=1e-9)
    assert got.bound == "matrix"


def test_small_batches_pad_each_expert_to_the_triton_row_block():
    # 16 tokens x top-8 over 256 experts: at most a few tokens an expert, each padded to the Triton
    # kernel's 16-row block (cost.triton_moe_min_block), not to the grouped rule's swap-AB step.
    hw = load_hw("h200")
    s = KernelShape(**DEEPSEEK_TP8, tokens=16)
    counts = [int(t) for t in UniformRouter(seed=0).tokens_per_expert(0, 16, 256, 8)]
    padded = sum(_pad(t, 16) for t in counts if t > 0)
    e = hw.efficiency
    got = predict(s.model_copy(update={"moe_kernel": "triton_fused_block_fp8"}), hw)
    flops = 16 * 8 * 6 * 7168 * 256
    occ = padded / (padded + e.moe_triton_block_fp8_tokens_half)

    def ramp(kk: float) -> float:
        return kk / (kk + e.moe_triton_block_fp8_k_half)

    k_ramp = 3.0 / (2.0 / ramp(7168) + 1.0 / ramp(256))
    assert got.compute_s == pytest.approx(flops * padded / 128 / (1979e12 * e.moe_triton_block_fp8 * occ * k_ramp),
                                          rel=1e-9)


def test_table_rows_are_sourced_and_the_curve_meets_them():
    t = load_table(KERNEL_DIR / "fused_moe_block_fp8.yaml")
    assert len(t.rows) == 108 and {r.moe_kernel for r in t.rows} == {"triton_fused_block_fp8"}
    assert {r.n for r in t.rows} == {256, 512, 1024, 2048}
    rows = [r for r in validate_kernels() if r.file == "fused_moe_block_fp8.yaml"]
    assert sum(abs(r.error) for r in rows) / len(rows) < 0.10
    tp8 = [r for r in rows if r.row.n == 256 and r.row.tokens >= 4096]
    assert tp8 and max(abs(r.error) for r in tp8) < 0.10  # the prefill steps of the vLLM TP 8 rows


def test_the_curve_is_refused_without_data():
    # H20 (cut tensor rate) carries no block-FP8 Triton curve; BF16 has no rows of it.
    with pytest.raises(CodesignError, match=r"efficiency\.moe_triton_block_fp8 of h20 for fp8 .*_dtypes: none$"):
        predict(KernelShape(**{**DEEPSEEK_TP8, "hw": "h20"}, tokens=8, moe_kernel="triton_fused_block_fp8"),
                load_hw("h20"))
    with pytest.raises(CodesignError, match=r"efficiency\.moe_triton_block_fp8 of h200 for bf16 .*_dtypes: fp8$"):
        predict(KernelShape(**{**DEEPSEEK_TP8, "dtype": "bf16"}, tokens=8, moe_kernel="triton_fused_block_fp8"),
                load_hw("h200"))


def test_spec_without_dtypes_for_the_curve_is_refused(tmp_path):
    import yaml

    from codesign.hw import load_hw as load

    src = (KERNEL_DIR.parents[1] / "hw_specs" / "h200.yaml").read_text()
    spec = yaml.safe_load(src)
    spec["efficiency"].pop("moe_triton_block_fp8_dtypes")
    p = tmp_path / "h200x.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(CodesignError, match="moe_triton_block_fp8_dtypes"):
        load(str(p))


TRTLLM_EP8 = dict(op="fused_moe", hw="h200", dtype="fp8", groups=256, top_k=8, hidden=7168, n=2048, ranks=8)


def test_ep_op_is_rank_zeros_experts_of_the_layers_draw():
    # With `ranks`, the op holds groups / ranks experts with their counts of the full draw (rank 0's
    # share of the routed rows); token-proportional bytes scale by that share, weights do not.
    s = KernelShape(**TRTLLM_EP8, tokens=1024)
    op = fused_moe_op(s)
    counts = [int(t) for t in UniformRouter(seed=0).tokens_per_expert(0, 1024, 256, 8)][:32]
    assert op.tokens_per_expert == tuple(counts)
    assert op.flops == sum(counts) * 6 * 7168 * 2048
    assert op.bytes_read["weight"] == 32 * 3 * 7168 * 2048
    whole = fused_moe_op(s.model_copy(update={"ranks": None, "groups": 256}))
    share = sum(counts) / (1024 * 8)
    assert op.bytes_read["activation"] == pytest.approx(whole.bytes_read["activation"] * share, rel=1e-12)
    with pytest.raises(ValueError, match=r"groups \(256\) must be a multiple of ranks \(3"):
        KernelShape(**{**TRTLLM_EP8, "ranks": 3}, tokens=8)


def test_trtllm_curve_uses_the_grouped_padding_and_its_own_rates():
    # TensorRT-LLM's kernel swaps A and B below the 64-row tile (the grouped rule's padding to
    # cost.grouped_min_tokens = 8), not the Triton 16-row block: at 1,024 tokens over EP 8 each local
    # expert holds ~32 tokens, padded to a multiple of 8. Compute by hand from the curve's fields.
    hw = load_hw("h200")
    e = hw.efficiency
    s = KernelShape(**TRTLLM_EP8, tokens=1024, moe_kernel="trtllm_cutlass_block_fp8")
    counts = [int(t) for t in UniformRouter(seed=0).tokens_per_expert(0, 1024, 256, 8)][:32]
    assert max(counts) < 64
    padded = sum(_pad(t, 8) for t in counts if t > 0)
    routed = sum(counts)
    half = e.moe_trtllm_block_fp8_k_half
    k_ramp = 3.0 / (2.0 / (7168 / (7168 + half)) + 1.0 / (2048 / (2048 + half)))
    occ = padded / (padded + e.moe_trtllm_block_fp8_tokens_half)
    compute = routed * 6 * 7168 * 2048 * padded / routed / (1979e12 * e.moe_trtllm_block_fp8 * occ * k_ramp)
    got = predict(s, hw)
    assert got.compute_s == pytest.approx(compute, rel=1e-9)
    assert got.overhead_s == pytest.approx(5 * e.kernel_overhead + e.moe_trtllm_block_fp8_overhead, rel=1e-12)


def test_trtllm_table_meets_the_curve_in_the_rows_regime():
    rows = [r for r in validate_kernels() if r.file == "trtllm_moe_block_fp8.yaml"]
    assert len(rows) == 100 and sum(abs(r.error) for r in rows) / len(rows) < 0.08
    # the TensorRT-LLM validation row's steps: 1,024 gathered tokens (decode) to ~9K (prompt steps)
    ep8 = [r for r in rows if r.row.ranks == 8 and 128 <= r.row.tokens <= 1536]
    assert ep8 and max(abs(r.error) for r in ep8) < 0.06


def test_cli_fused_moe_takes_the_ep_degree_and_the_kernel(capsys):
    import json

    from codesign.cli import main

    args = ["kernel", "--hw", "h200", "fused_moe", "--groups", "256", "--top-k", "8", "--hidden", "7168",
            "--n", "2048", "--tokens", "1024", "--dtype", "fp8"]
    assert main(args + ["--ranks", "8", "--moe-kernel", "trtllm_cutlass_block_fp8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = predict(KernelShape(**TRTLLM_EP8, tokens=1024, moe_kernel="trtllm_cutlass_block_fp8"), load_hw("h200"))
    assert out["seconds"] == pytest.approx(want.seconds, rel=1e-12) and out["shape"]["ranks"] == 8
    assert main(args + ["--ranks", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "groups (256) must be a multiple of ranks (3" in err[0]
