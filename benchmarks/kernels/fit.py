"""Least-squares fit of a chip family's efficiency curves to the kernel tables (kernel rows only;
no end-to-end result enters). Prints the fitted parameters and each group's error; the numbers are
then written by hand into the family's `efficiency:` sections (hw_specs/*.yaml), citing this fit.

    python benchmarks/kernels/fit.py            # Hopper, from the H800 rows
    python benchmarks/kernels/fit.py --group matrix
    python benchmarks/kernels/fit.py --maf      # CDNA large-GEMM fractions from AMD's MAF rows
    python benchmarks/kernels/fit.py --group cdna_grouped   # CDNA3 grouped expert GEMMs (AITER fused MoE rows)
    python benchmarks/kernels/fit.py --group cdna_grouped_large   # the MI325X large-expert rows alone
    python benchmarks/kernels/fit.py --group gdn_chunk   # GatedDeltaNet chunk kernel (FlashInfer, H100 / H200)
    python benchmarks/kernels/fit.py --group elementwise_h200   # fused element-wise streaming on H200 (vLLM causal conv rows)
    python benchmarks/kernels/fit.py --group attention_seq --group attention   # prefill attention vs length, then FP8
    python benchmarks/kernels/fit.py --group attention_decode_gqa   # GQA decode attention occupancy (vLLM FA3, H100 / H200)
    python benchmarks/kernels/fit.py --group mla_trtllm --group mla_sglang_fa3   # MLA kernels of TensorRT-LLM / SGLang
    python benchmarks/kernels/fit.py --group attention_paged   # paged-KV prefill attention (vLLM FA3, H100 / H200)
    python benchmarks/kernels/fit.py --group collectives   # all-reduce / all-gather / reduce-scatter curves (H100 NVSwitch)
    python benchmarks/kernels/fit.py --blackwell   # Blackwell: B200 GEMM / MLA decode / prefill, then GB200's FP8 fraction

Objective: the sum over a group's rows of log(predicted / measured)^2 (relative errors, symmetric in
over- and under-prediction), minimised by Nelder-Mead from the current spec values; each row is
predicted through `codesign.sim.kernel.predict`, the simulator's own cost path.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from codesign.hw import load_hw  # noqa: E402
from codesign.sim.kernel import predict  # noqa: E402
from codesign.sim.kernel_table import load_table, table_files  # noqa: E402

HOPPER = ("h100", "h200", "h800", "h20")  # one SM design: a fit on any of them holds for the family
FULL_HOPPER = ("h100", "h200", "h800")  # the full-rate parts (H20's tensor rate is cut, its clocks and SMs unpublished)
# Sources shown by `codesign validate --kernels` but read by no fit (docs/cost-model.md "vLLM kernel
# rows on H100 / H200"): vLLM's all-reduce with the algorithm vLLM picked (the collective curves are
# per named algorithm). vLLM 0.14's FlashAttention prefill rows (aic_ctx_*) were here until the
# paged-KV prefill curve (`attention_paged`) was fitted on them.
SHOWN_NOT_FITTED = ("aic_ar_h100", "aic_ar_h200",
                    # vLLM's MLA calls timed eagerly (benchmarks/kernels/aic_mla.yaml's header)
                    "aic_mla_vllm_ctx_h100", "aic_mla_vllm_ctx_h200", "aic_mla_vllm_gen_h100", "aic_mla_vllm_gen_h200",
                    # TensorRT-LLM 1.2.0rc5's AUTO all-reduce (aic_trtllm_allreduce.yaml): a mix of
                    # algorithms, not one per-algorithm collective curve (docs/cost-model.md
                    # "TensorRT-LLM kernel rows")
                    "trtllm_ar_h100", "trtllm_ar_h200",
                    # vLLM 0.24.0's FA3 decode at head dim 256 (aic_vllm_attention_decode_d256.yaml): the
                    # decode rule checked at Qwen3.5's heads (docs/cost-model.md "Paged-KV prefill
                    # attention at head dim 256")
                    "aic_gen024_h100", "aic_gen024_h200")


def _moe_curve(field: str, kernel: str, hws: tuple[str, ...], lo: float = 0.02, k_ramp: bool = True) -> tuple:
    """The fit group of the fused-MoE curve `efficiency.<field>*` on the fused_moe rows of
    `cost.moe_kernel` `kernel` on chips `hws`: its fraction of peak, occupancy half-tokens,
    weight-streaming fraction, fixed seconds per call and (`k_ramp`) its K half-point."""
    bounds = {field: (lo, 1.0), f"{field}_tokens_half": (1.0, 65536.0), f"{field}_memory": (0.2, 1.0),
              f"{field}_overhead": (0.0, 100e-6)}
    if k_ramp:
        bounds[f"{field}_k_half"] = (1.0, 8192.0)
    return (lambda r: r.op == "fused_moe" and r.moe_kernel == kernel and r.hw in hws, bounds, set())


# Parameter groups: (row filter, efficiency fields with bounds, integer fields).
GROUPS = {
    "matrix": (lambda r: r.op in ("gemm", "grouped_gemm") and r.hw == "h800",
               {"gemm": (0.3, 1.0), "small_m_half": (1, 512), "gemm_k_half": (1, 8192),
                "matrix_memory": (0.3, 1.0), "kernel_overhead": (0.0, 20e-6), "overlap_exponent": (1.0, 16.0)},
               {"small_m_half", "gemm_k_half"}),
    # FP8 attention (FlashAttention-3 FP8). `attention` itself is FA3's FP16 740 / 989 directly, and
    # FlashMLA's decode rows are predicted within a few percent at `attention` (no decode factor fitted).
    "attention": (lambda r: r.op == "attention" and r.hw in HOPPER and r.dtype == "fp8"
                  and r.source not in SHOWN_NOT_FITTED and r.attention_kernel is None,
                  {"attention_fp8": (0.2, 1.0)}, set()),
    # Prefill attention vs sequence length (16-bit FlashAttention-3 forward on H100: the paper's peak
    # and TritonBench's causal and non-causal tables): the long-sequence fraction `attention` and the
    # half-efficiency keys per query row `attention_seq_half`. Fit this before `attention` (the FP8
    # fraction is read at the curve's value of its row's length).
    "attention_seq": (lambda r: r.op == "attention" and r.hw in FULL_HOPPER and r.phase == "prefill"
                      and r.source not in SHOWN_NOT_FITTED and r.attention_kernel is None
                      and r.dtype in ("fp16", "bf16"),
                      {"attention": (0.3, 1.0), "attention_seq_half": (1.0, 8192.0)}, set()),
    # Paged-KV prefill attention (`cost.attention_kernel: vllm_flash_attn`: vLLM 0.14's FlashAttention
    # backend, FA3 through a paged 16-bit KV cache, on H100 / H200; aiconfigurator's rows aic_ctx_h100 /
    # aic_ctx_h200 in aic_vllm_attention.yaml and aic_vllm_attention_prefill.yaml): the long-sequence
    # fraction, the half-efficiency keys per query row and the fixed seconds per call
    # (docs/cost-model.md "Paged-KV prefill attention"); with vLLM 0.24.0's head-dim-256 rows
    # (aic_ctx024_h100 / aic_ctx024_h200, aic_vllm_attention_prefill_d256.yaml) the head-dim exponent
    # (docs/cost-model.md "Paged-KV prefill attention at head dim 256"), all four over all the rows.
    "attention_paged": (lambda r: r.op == "attention" and r.phase == "prefill"
                        and r.attention_kernel == "vllm_flash_attn",
                        {"attention_paged": (0.2, 1.0), "attention_paged_seq_half": (1.0, 8192.0),
                         "attention_paged_fixed_s": (0.0, 100e-6), "attention_paged_head_dim_exp": (-1.0, 1.0)},
                        set()),
    # GQA decode attention occupancy (vLLM 0.14's FlashAttention decode with a paged 16-bit KV cache
    # on H100 / H200, aiconfigurator's rows aic_gen_h100 / aic_gen_h200): the memory-rate ramp on the
    # work units batch x kv_heads x ceil(S / split) and the fixed seconds per call
    # (docs/cost-model.md "GQA decode attention occupancy").
    "attention_decode_gqa": (lambda r: r.op == "attention" and r.phase == "decode"
                             and r.source in ("aic_gen_h100", "aic_gen_h200"),
                             {"attention_decode_units_half": (1.0, 512.0), "attention_decode_split": (256, 16384),
                              "attention_decode_fixed_s": (0.0, 30e-6)}, {"attention_decode_split"}),
    # MLA attention as TensorRT-LLM 1.2.0rc5 runs it (context FMHA, FlashMLA decode; benchmarks/kernels/
    # aic_mla.yaml, H100 + H200): the prefill curve's rate factor and fixed seconds per prefill call,
    # and the fixed seconds per decode call (`efficiency.mla_trtllm_*`, `cost.mla_kernel: trtllm`).
    "mla_trtllm": (lambda r: r.op == "mla" and r.mla_kernel == "trtllm" and r.hw in FULL_HOPPER,
                   {"mla_trtllm_prefill": (0.3, 2.0), "mla_trtllm_prefill_fixed_s": (0.0, 100e-6),
                    "mla_trtllm_decode_fixed_s": (0.0, 100e-6)}, set()),
    # SGLang 0.5.9's FlashAttention-3 MLA decode (same table): fixed seconds per decode call.
    "mla_sglang_fa3": (lambda r: r.op == "mla" and r.mla_kernel == "sglang_fa3" and r.hw in FULL_HOPPER
                       and r.phase == "decode", {"mla_sglang_fa3_decode_fixed_s": (0.0, 100e-6)}, set()),
    # H20: the same SM design with its tensor rate cut to 148 TFLOPS; FA3 on it reaches a larger
    # fraction of its (lower) peak, so it has its own long-sequence fraction on the shared
    # half-length (its rows are at one length only: no half-length of its own can be fitted).
    "attention_h20": (lambda r: r.op == "attention" and r.hw == "h20" and r.phase == "prefill"
                      and r.dtype in ("fp16", "bf16"), {"attention": (0.3, 1.0)}, set()),
    # Fused GatedDeltaNet chunk kernel (FlashInfer SM90 on H200): its fraction of peak per busy SM;
    # the block slots (`gdn_chunk_units`, 132 SMs) are the chip's, not fitted.
    # With the state load/store seconds per wave of blocks and the fixed seconds per call
    # (`gdn_chunk_state_s`, `gdn_chunk_fixed_s`): FlashQLA's H200 rows and aiconfigurator's vLLM 0.24
    # rows on H100 and H200 (benchmarks/kernels/aic_vllm_gdn.yaml).
    "gdn_chunk": (lambda r: r.op == "gdn_chunk" and r.hw in HOPPER,
                  {"gdn_chunk": (0.05, 1.0), "gdn_chunk_state_s": (0.0, 30e-6), "gdn_chunk_fixed_s": (0.0, 20e-6)},
                  set()),
    # Fused element-wise kernels' HBM streaming fraction on H200 (`elementwise_memory`, read by the
    # element-wise regions): vLLM 0.24's causal_conv1d prefill rows (benchmarks/kernels/
    # aic_vllm_gdn.yaml), a kernel that reads its input and writes its output once. On H100 the same
    # rows give 0.68 and FlashInfer's fused RMSNorm rows 0.65-0.70, the value the H100 spec carries.
    "elementwise_h200": (lambda r: r.op == "gdn_conv" and r.phase == "prefill" and r.hw == "h200",
                         {"elementwise_memory": (0.2, 1.0)}, set()),
    # Triton fused_moe (vLLM's fused_experts, benchmark_moe.py rows on H100): the kernel's fraction of
    # the dtype's peak, its occupancy half-tokens, weight-streaming fraction and fixed time per call,
    # with a tuned config (`moe_triton`) and with vLLM's default tile heuristic (`moe_triton_default`).
    # vLLM's block-FP8 dense GEMM without DeepGEMM: CUTLASS's SM90 blockwise kernel (`cutlass_block_fp8`).
    "cutlass_block_fp8": (lambda r: r.op == "gemm" and r.gemm_kernel == "cutlass_block_fp8" and r.hw in HOPPER,
                          {"cutlass_block_fp8": (0.05, 1.0), "cutlass_block_fp8_m_half": (0.0, 8192.0),
                           "cutlass_block_fp8_k_s": (0.0, 50e-9)}, set()),
    # TensorRT-LLM's per-tensor FP8 linear on Hopper (`cublas_scaled_mm`, cuBLASLt; `cost.gemm_kernel:
    # trtllm_cublaslt_fp8`): the family rule's fraction, M and K half-points and operand streaming
    # fraction of its own, over aic_trtllm_gemm.yaml's FP8 rows (H100 and H200: one curve for the
    # full-rate parts); overlap exponent and fixed time the family's.
    "cublaslt_fp8": (lambda r: r.op == "gemm" and r.gemm_kernel == "trtllm_cublaslt_fp8" and r.hw in FULL_HOPPER,
                     {"cublaslt_fp8": (0.3, 1.0), "cublaslt_fp8_m_half": (0.0, 512.0),
                      "cublaslt_fp8_k_half": (1.0, 8192.0), "cublaslt_fp8_memory": (0.3, 1.0)}, set()),
    # TensorRT-LLM's context attention (`cost.attention_kernel: trtllm`; aic_trtllm_attention.yaml's prefill
    # rows, BF16 and FP8 context FMHA, H100 and H200): its fractions, half-length and fixed time per
    # call (the database's decode rows are left out of the table: a K-only cache, the file's header).
    "trtllm_attention": (lambda r: r.op == "attention" and r.attention_kernel == "trtllm" and r.phase == "prefill"
                         and r.hw in FULL_HOPPER,
                         {"trtllm_attention": (0.1, 1.0), "trtllm_attention_fp8": (0.1, 1.0),
                          "trtllm_attention_seq_half": (1.0, 8192.0), "trtllm_attention_fixed_s": (0.0, 50e-6)},
                         set()),
    "moe_triton": _moe_curve("moe_triton", "triton_fused", HOPPER, lo=0.05),
    "moe_triton_default": (lambda r: r.op == "fused_moe" and r.moe_kernel == "triton_fused_default" and r.hw in HOPPER,
                           {"moe_triton_default": (0.02, 1.0), "moe_triton_default_bf16": (0.02, 1.0),
                            "moe_triton_default_tokens_half": (1.0, 65536.0),
                            "moe_triton_default_memory": (0.2, 1.0), "moe_triton_default_overhead": (0.0, 100e-6)},
                           set()),
    # The same kernel on block-scaled FP8 weights with vLLM's tuned config (`moe_triton_block_fp8`;
    # benchmarks/kernels/fused_moe_block_fp8.yaml, H200: the full-rate Hopper parts share it).
    "moe_triton_block_fp8": _moe_curve("moe_triton_block_fp8", "triton_fused_block_fp8", FULL_HOPPER),
    # TensorRT-LLM's CUTLASS fused MoE on block-scaled FP8 weights at EP (`moe_trtllm_block_fp8`;
    # benchmarks/kernels/trtllm_moe_block_fp8.yaml, H200).
    "moe_trtllm_block_fp8": _moe_curve("moe_trtllm_block_fp8", "trtllm_cutlass_block_fp8", FULL_HOPPER),
    # The same runner on per-tensor FP8 (`moe_trtllm_fp8`; benchmarks/kernels/trtllm_moe_fp8.yaml,
    # Mixtral-8x7B's shape at TP1, H100 and H200): no K ramp (one shape).
    "moe_trtllm_fp8": _moe_curve("moe_trtllm_fp8", "trtllm_cutlass_fp8", FULL_HOPPER, k_ramp=False),
    # vLLM's MXFP4 (W4A16) MoE at gpt-oss-120b's shape, one curve per chip: the weight-streaming
    # floor (0.69 ms on H100, 0.66 on H200 at 32-512 tokens) does not follow HBM bandwidth, so a
    # shared memory fraction cannot hold both (benchmarks/kernels/aic_vllm_moe_mxfp4.yaml).
    "moe_triton_mxfp4_h100": _moe_curve("moe_triton_mxfp4", "triton_mxfp4", ("h100",), k_ramp=False),
    "moe_triton_mxfp4_h200": _moe_curve("moe_triton_mxfp4", "triton_mxfp4", ("h200",), k_ramp=False),
    # CDNA3 grouped expert GEMMs (AITER's fused-MoE call on gfx942, benchmarks/kernels/cdna_grouped.yaml)
    # under the default grouped rule: their fraction of the dtype's peak (`grouped_gemm`). The rows so
    # far are one tiny-expert shape (GLM-5 TP8); the value is printed, not written into the CDNA
    # specs (docs/cost-model.md, "CDNA grouped expert GEMMs").
    "cdna_grouped": (lambda r: r.op == "fused_moe" and r.moe_kernel is None and r.hw in ("mi300x", "mi325x"),
                     {"grouped_gemm": (0.05, 1.0)}, set()),
    # The same fraction from the large-expert rows alone (benchmarks/kernels/cdna_grouped_large.yaml:
    # AITER's block-scaled FP8 fused MoE on an MI325X at DeepSeek-V3.2 EP8, 33 experts of 2048);
    # printed, not written into mi325x.yaml (docs/cost-model.md, "CDNA grouped expert GEMMs at a
    # large-expert shape").
    "cdna_grouped_large": (lambda r: r.op == "fused_moe" and r.moe_kernel is None and r.hw == "mi325x"
                           and r.groups <= 64, {"grouped_gemm": (0.05, 1.0)}, set()),
    "low_latency": (lambda r: r.op == "all_to_all" and r.algorithm == "low_latency" and r.hw == "h800",
                    {"low_latency_collective": (0.05, 1.0), "low_latency_overhead": (0.0, 200e-6)}, set()),
}

# Blackwell (SM100) groups, fitted from the Blackwell rows only (benchmarks/kernels/blackwell.yaml,
# gemm.yaml's GB200 row); `--blackwell` runs them in this order. A dotted name sets one entry of
# a dict field (`gemm_by_dtype.bf16`: the large-GEMM fraction of BF16's peak).
BLACKWELL_GROUPS = {
    # Dense GEMMs on B200: FP8 CUTLASS sets `gemm`, cuBLAS BF16 and CUTLASS NVFP4 their own
    # fractions; the shape curves (small-M ramp, K ramp, operand streaming, overlap, fixed time)
    # are shared by the three libraries.
    "bw_matrix": (lambda r: r.op == "gemm" and r.hw == "b200",
                  {"gemm": (0.3, 1.0), "gemm_by_dtype.bf16": (0.3, 1.0), "gemm_by_dtype.fp4": (0.2, 1.0),
                   "small_m_half": (1, 512), "gemm_k_half": (1, 8192), "matrix_memory": (0.3, 1.0),
                   "kernel_overhead": (0.0, 20e-6), "overlap_exponent": (1.0, 16.0)},
                  {"small_m_half", "gemm_k_half"}),
    # MLA decode (CUTLASS MLA, 128 heads): its fraction of the 16-bit peak.
    "bw_attention_decode": (lambda r: r.op == "attention" and r.hw == "b200" and r.phase == "decode",
                            {"attention_decode": (0.1, 1.0)}, set()),
    # Prefill attention (FlashMLA's SM100 MHA forward peak): the long-sequence fraction.
    "bw_attention": (lambda r: r.op == "attention" and r.hw == "b200" and r.phase == "prefill",
                     {"attention": (0.3, 1.0)}, set()),
    # GB200 (1200 W against B200's 1000 W): its own FP8 large-GEMM fraction from the cuBLASLt row,
    # on the B200 shape curves (written into gb200-nvl72.yaml before this group is run).
    "bw_gb200_gemm": (lambda r: r.op == "gemm" and r.hw == "gb200-nvl72", {"gemm": (0.3, 1.0)}, set()),
}


# Collective curves (efficiency.collective_curves, codesign/mapping/collectives.py): the NVSwitch
# H100 rows of benchmarks/kernels/collectives.yaml (NCCL ring / NVLS / default, vLLM's custom
# one-shot and two-shot all-reduce, NCCL all-gather and reduce-scatter). Fitted jointly: the
# per-step latency is shared, every algorithm has its own overhead, efficiency and ramp; one-shot
# and two-shot have no ramp (their rows are flat in it). Parameter: (curve, field) -> bounds.
COLLECTIVE_HW = ("h100", "h200")
COLLECTIVE_PARAMS = {
    ("", "step"): (0.0, 10e-6),
    ("ring", "overhead"): (0.0, 60e-6), ("ring", "efficiency"): (0.3, 1.0), ("ring", "ramp_bytes"): (0.0, 256e6),
    ("nvls", "overhead"): (0.0, 200e-6), ("nvls", "efficiency"): (0.3, 1.0), ("nvls", "ramp_bytes"): (0.0, 256e6),
    ("one_shot", "overhead"): (0.0, 60e-6), ("one_shot", "efficiency"): (0.3, 1.0),
    ("two_shot", "overhead"): (0.0, 60e-6), ("two_shot", "efficiency"): (0.3, 1.0),
}


def _with_curves(hw, p: dict):
    """`hw` with its collective curves set to the parameters `p` ((curve, field) -> value)."""
    from codesign.hw.spec import CollectiveCurve, CollectiveCurves

    cur = hw.efficiency.collective_curves
    curves = {}
    for name in ("ring", "nvls", "one_shot", "two_shot"):
        base = getattr(cur, name) if cur is not None and getattr(cur, name) is not None else None
        fields = base.model_dump() if base is not None else {"overhead": 0.0, "efficiency": 1.0, "ramp_bytes": 0.0}
        fields.update({f: v for (c, f), v in p.items() if c == name})
        curves[name] = CollectiveCurve(**fields)
    step = p.get(("", "step"), cur.step if cur is not None else None)
    cc = CollectiveCurves(step=step, ramp_exponent=cur.ramp_exponent if cur is not None else 0.5, **curves)
    return hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update={"collective_curves": cc})})


def fit_collectives() -> dict:
    """Least-squares fit of the collective curves on the collective rows (same objective and search
    as `fit`)."""
    rows = [r for f in table_files() for r in load_table(f).rows
            if r.op in ("all_reduce", "all_gather", "reduce_scatter") and r.hw in COLLECTIVE_HW
            and r.source not in SHOWN_NOT_FITTED]
    specs = {h: load_hw(h) for h in {r.hw for r in rows}}
    names = list(COLLECTIVE_PARAMS)
    lo = np.array([COLLECTIVE_PARAMS[n][0] for n in names])
    span = np.array([COLLECTIVE_PARAMS[n][1] - COLLECTIVE_PARAMS[n][0] for n in names])

    def params(x: np.ndarray) -> dict:
        return {n: float(min(max(v, a), a + w)) for n, v, a, w in zip(names, lo + x * span, lo, span)}

    def errors(x: np.ndarray) -> list[float]:
        hw = {h: _with_curves(s, params(x)) for h, s in specs.items()}
        return [getattr(predict(r, hw[r.hw]), r.metric) / r.measured for r in rows]

    def loss(x: np.ndarray) -> float:
        return sum(math.log(e) ** 2 for e in errors(x))

    # from the spec's current curves (a refit converges where it was) and from 11 seeded random
    # starts; the best end point is restarted twice with smaller steps
    cur = specs["h100"].efficiency.collective_curves if "h100" in specs else None
    x_cur = [((cur.step if cur is not None and cur.step is not None else 1e-6) if c == "" else
              getattr(getattr(cur, c), f) if cur is not None and getattr(cur, c) is not None else
              {"overhead": 10e-6, "efficiency": 0.75, "ramp_bytes": 8e6}[f]) for c, f in names]
    rng = np.random.default_rng(0)
    starts = [(np.array(x_cur) - lo) / span] + [rng.uniform(0.0, 1.0, len(names)) for _ in range(11)]
    ends = [nelder_mead(loss, x, np.full(len(names), 0.1), iters=3000) for x in starts]
    best = min(ends, key=loss)
    for step in (0.03, 0.01):
        best = nelder_mead(loss, best, np.full(len(names), step), iters=3000)
    errs = [e - 1 for e in errors(best)]
    return {"params": params(best), "rows": len(rows), "mape": float(np.mean(np.abs(errs))),
            "worst": float(np.max(np.abs(errs)))}


def nelder_mead(f, x0: np.ndarray, steps: np.ndarray, iters: int = 600, tol: float = 1e-10) -> np.ndarray:
    """Plain Nelder-Mead (reflection 1, expansion 2, contraction 0.5, shrink 0.5)."""
    pts = [x0] + [x0 + np.eye(len(x0))[i] * steps[i] for i in range(len(x0))]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        centroid = np.mean(pts[:-1], axis=0)
        xr = centroid + (centroid - pts[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = centroid + 2 * (centroid - pts[-1])
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (pts[-1] - centroid)
            fc = f(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                pts = [pts[0] + 0.5 * (p - pts[0]) for p in pts]
                vals = [f(p) for p in pts]
    return pts[int(np.argmin(vals))]


def at_tdp(r) -> bool:
    """A row measured at the spec's operating point: no stated power limit, or one at least the
    chip's TDP. Power-capped rows (an H100 SXM at 500 W) are shown by `validate --kernels`, never fitted."""
    return r.power_w is None or r.power_w >= load_hw(r.hw).power.tdp


def _updates(eff, p: dict) -> dict:
    """`p` as a model_copy update of the efficiency `eff`: a dotted name `field.key` sets one entry
    of the dict field `field`, keeping its other entries."""
    out: dict = {}
    for n, v in p.items():
        field, _, key = n.partition(".")
        if key:
            out.setdefault(field, dict(getattr(eff, field) or {}))[key] = v
        else:
            out[n] = v
    return out


def fit(group: str, select=None, bounds=None, ints=None) -> dict:
    if select is None:
        select, bounds, ints = {**GROUPS, **BLACKWELL_GROUPS}[group]
    rows = [r for f in table_files() for r in load_table(f).rows if select(r) and at_tdp(r)]
    if not rows:
        raise SystemExit(f"{group}: no kernel rows at the chips' TDP")
    specs = {r.hw: load_hw(r.hw) for r in rows}
    base = specs[rows[0].hw]
    names = list(bounds)
    scale = np.array([bounds[n][1] - bounds[n][0] for n in names])
    lo = np.array([bounds[n][0] for n in names])

    def params(x: np.ndarray) -> dict:
        out = {}
        for n, v, a, b in zip(names, lo + x * scale, lo, lo + scale):
            v = min(max(v, a), b)
            out[n] = int(round(v)) if n in ints else float(v)
        return out

    def spec(p: dict) -> dict:
        return {n: h.model_copy(update={"efficiency": h.efficiency.model_copy(update=_updates(h.efficiency, p))})
                for n, h in specs.items()}

    def loss(x: np.ndarray) -> float:
        hw = spec(params(x))
        return sum(math.log(getattr(predict(r, hw[r.hw]), r.metric) / r.measured) ** 2 for r in rows)

    cur = base.efficiency
    x0 = []
    for n in names:
        field, _, key = n.partition(".")
        v = getattr(cur, field)
        if key:
            v = (v or {}).get(key) if isinstance(v, dict) else None
            v = cur.gemm if v is None else v
        if v is None:
            v = {"gemm_k_half": 512, "matrix_memory": cur.memory, "overlap_exponent": 4.0,
                 "low_latency_overhead": base.system.scale_up.latency, "attention_fp8": cur.attention,
                 "attention_decode": cur.attention, "attention_seq_half": 256.0,
                 "attention_decode_units_half": 32.0, "attention_decode_split": 4096,
                 "attention_paged": cur.attention, "attention_paged_seq_half": 256.0,
                 "cutlass_block_fp8": 0.25, "grouped_gemm": cur.gemm, "mla_trtllm_prefill": 1.0,
                 "gdn_chunk_state_s": 5e-6, "gdn_chunk_fixed_s": 4 * cur.kernel_overhead, "cublaslt_fp8": cur.gemm,
                 "cublaslt_fp8_k_half": cur.gemm_k_half or 512, "cublaslt_fp8_memory": cur.matrix_memory or cur.memory,
                 "trtllm_attention": cur.attention, "trtllm_attention_fp8": cur.attention_fp8 or cur.attention,
                 "trtllm_attention_seq_half": cur.attention_seq_half or 256.0}.get(n)
        if v is None and n.startswith("moe_"):  # a fused-MoE curve's field (`_moe_curve`)
            suffix = next((x for x in ("_tokens_half", "_k_half", "_memory") if n.endswith(x)), "")
            v = {"_tokens_half": 256.0, "_k_half": 256.0, "_memory": cur.memory}.get(suffix, cur.gemm)
        if v is None:
            raise KeyError(n)
        x0.append((v - bounds[n][0]) / (bounds[n][1] - bounds[n][0]))
    # Nelder-Mead from the current values and from 8 seeded random starts (it stalls on the flat
    # regions that the bounds create); the best end point is restarted once with small steps.
    rng = np.random.default_rng(0)
    starts = [np.array(x0)] + [rng.uniform(0.0, 1.0, len(names)) for _ in range(8)]
    ends = [nelder_mead(loss, x, np.full(len(names), 0.1)) for x in starts]
    best = min(ends, key=loss)
    best = nelder_mead(loss, best, np.full(len(names), 0.02))
    p = params(best)
    hw = spec(p)
    errs = [getattr(predict(r, hw[r.hw]), r.metric) / r.measured - 1 for r in rows]
    return {"params": p, "rows": len(rows), "mape": float(np.mean(np.abs(errs))),
            "worst": float(np.max(np.abs(errs)))}


# Chips whose large-GEMM fractions are set from one sustained max-achievable row per dtype
# (benchmarks/kernels/max_achievable_gemm.yaml, source `amd_maf`): BF16 sets `gemm` (the 16-bit
# rate), every other dtype its `gemm_by_dtype` entry.
MAF_SOURCE = "amd_maf"


def solve_maf() -> list[tuple[str, str, float, float]]:
    """(chip, dtype, fraction, predicted / measured - 1) for every `amd_maf` row: the large-GEMM
    fraction at which the simulator's own cost path reproduces the row (bisection; one unknown,
    one row, so an exact solve rather than a fit)."""
    out = []
    for f in table_files():
        for r in load_table(f).rows:
            if r.source != MAF_SOURCE or r.op != "gemm":
                continue
            hw = load_hw(r.hw)

            def tflops(e: float) -> float:
                eff = hw.efficiency
                upd = {"gemm": e} if r.dtype == "bf16" else {"gemm_by_dtype": {**(eff.gemm_by_dtype or {}), r.dtype: e}}
                h = hw.model_copy(update={"efficiency": eff.model_copy(update=upd)})
                return predict(r, h).tflops

            lo, hi = 0.05, 1.0
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if tflops(mid) < r.measured else (lo, mid)
            e = 0.5 * (lo + hi)
            out.append((r.hw, r.dtype, e, tflops(e) / r.measured - 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=sorted(GROUPS) + sorted(BLACKWELL_GROUPS) + ["collectives"], action="append")
    ap.add_argument("--blackwell", action="store_true", help="fit the Blackwell groups (B200 rows, then GB200's FP8 fraction)")
    ap.add_argument("--maf", action="store_true", help="solve the CDNA large-GEMM fractions from AMD's MAF rows")
    args = ap.parse_args()
    if args.maf:
        for chip, dtype, e, err in solve_maf():
            field = "gemm" if dtype == "bf16" else f"gemm_by_dtype.{dtype}"
            print(f"{chip} {field}: {e:.4f} (row reproduced within {err:+.2%})")
        return 0
    groups = args.group or (list(BLACKWELL_GROUPS) if args.blackwell else sorted(GROUPS) + ["collectives"])
    for g in groups:
        if g == "collectives":
            r = fit_collectives()
            print(f"collectives: {r['rows']} rows, MAPE {r['mape']:.1%}, worst {r['worst']:.1%}")
            for (c, f), v in r["params"].items():
                print(f"  {c + '.' if c else ''}{f}: {v:.4g}")
            continue
        r = fit(g)
        print(f"{g}: {r['rows']} rows, MAPE {r['mape']:.1%}, worst {r['worst']:.1%}")
        for k, v in r["params"].items():
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
