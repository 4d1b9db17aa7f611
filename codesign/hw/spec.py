"""Hardware specification: the architecture half of codesign's inputs.

One YAML file per chip or system in `hw_specs/`, validated into `HardwareSpec`. Quantities are
written with units ("4.8 TB/s", "141 GB", "989 TFLOPS", "3 us") and stored as SI floats (bytes,
bytes/s, FLOP/s, seconds, watts). Unknown keys are errors. The spec says what the machine *is*; it
knows nothing of models or parallel plans. Dotted paths into this tree ("chip.hbm.bandwidth") are
what sweeps override.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from codesign.limits import MAX_CHIPS, MAX_FULL_MESH, MAX_LINKS, MAX_SCALE_UP, MAX_TILE, MAX_WIDTH
from codesign.spec_files import Int, StrictModel
from codesign.units import parse_quantity


def _quantity(kind: str):
    """A quantity of `kind`, parsed from "4.8 TB/s" or a bare SI number, within `units.RANGES`
    (positive and finite; times may be zero)."""

    def parse(v):
        return parse_quantity(v, kind)

    return BeforeValidator(parse)


Bytes = Annotated[float, _quantity("bytes")]
Bandwidth = Annotated[float, _quantity("bandwidth")]
Flops = Annotated[float, _quantity("flops")]
Seconds = Annotated[float, _quantity("time")]
Watts = Annotated[float, _quantity("power")]
Fraction = Annotated[float, Field(gt=0, le=1)]
TileDim = Annotated[Int, Field(ge=1, le=MAX_TILE)]
DomainSize = Annotated[Int, Field(ge=1, le=MAX_SCALE_UP)]

Dtype = Literal["fp4", "fp8", "int8", "bf16", "fp16", "fp32"]
BYTES_PER_ELEMENT: dict[str, float] = {"fp4": 0.5, "fp8": 1.0, "int8": 1.0, "bf16": 2.0, "fp16": 2.0, "fp32": 4.0}


_Strict = StrictModel


class MatrixUnit(_Strict):
    """Dense matrix-engine peak throughput per dtype (no structured sparsity) and its tile shape."""

    bf16: Flops
    fp32: Flops | None = None
    fp16: Flops | None = None
    fp8: Flops | None = None
    int8: Flops | None = None
    fp4: Flops | None = None
    # Unit work shape (M, N): GEMM dims are padded up to multiples of it (tile quantisation).
    tile: tuple[TileDim, TileDim] = (64, 128)

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for `dtype`, falling back to the next wider format the unit supports
        (fp4 runs as fp8, fp8 as bf16, as on chips without the narrower path)."""
        own = getattr(self, dtype, None)
        if isinstance(own, float):  # the unit has this format's own path (int8, fp16 included)
            return own
        order = ["fp4", "fp8", "bf16", "fp32"]
        alias = {"int8": "fp8", "fp16": "bf16"}
        d = dtype if getattr(self, dtype, None) is not None else alias.get(dtype, dtype)
        for name in order[order.index(d) if d in order else 2 :]:
            v = getattr(self, name)
            if v is not None:
                return v
        return self.bf16


class VectorUnit(_Strict):
    """Vector/SIMD throughput for element-wise work (norms, activations, softmax, recurrences)."""

    fp32: Flops
    bf16: Flops | None = None


class MemoryLevel(_Strict):
    capacity: Bytes
    bandwidth: Bandwidth


class Chip(_Strict):
    matrix: MatrixUnit
    vector: VectorUnit
    sram: MemoryLevel  # on-chip SRAM / last-level cache usable by kernels
    hbm: MemoryLevel
    # Off-package tier (PCIe/CXL host memory): not yet supported (no mapping offloads to it), so a
    # spec that gives one is refused rather than silently ignored.
    host: MemoryLevel | None = None

    @field_validator("host")
    @classmethod
    def _no_host(cls, v: MemoryLevel | None) -> None:
        if v is not None:
            raise ValueError("not yet supported: no off-package memory tier is modelled yet (remove chip.host)")
        return v


class CollectiveCurve(_Strict):
    """One collective algorithm's kernel-calibrated cost inside a scale-up domain
    (docs/cost-model.md "Collectives vs message size and rank count"):

        time = overhead + steps x step + wire bytes / (link bandwidth x efficiency x ramp(message))
        ramp(m) = (m / (m + ramp_bytes)) ^ ramp_exponent

    `overhead`: fixed seconds per call (launch, flag synchronisation, protocol setup);
    `efficiency`: achieved / peak link bandwidth on large messages; `ramp_bytes`: the message bytes
    (per rank) over which the bandwidth ramps up (NCCL uses fewer channels and the low-latency
    protocols on small messages); 0 = no ramp."""

    overhead: Seconds
    efficiency: Fraction
    ramp_bytes: Annotated[float, Field(ge=0, le=1e12)] = 0.0


class CollectiveCurves(_Strict):
    """Per-algorithm collective curves of a chip family (fitted on benchmarks/kernels/collectives.yaml
    by `benchmarks/kernels/fit.py --group collectives`). `ring` is NCCL's ring (all-gather and
    reduce-scatter run one of its two phases); `nvls` NCCL's NVLink SHARP all-reduce (switched
    domains only; absent: the chip has none); `one_shot` / `two_shot` the serving engines' custom
    all-reduce kernels (absent: not available on the chip). `step`: seconds per algorithm step
    (ring 2(n-1), NVLS and two-shot 2, one-shot 1); none = `system.scale_up.latency`.
    `ramp_exponent`: the shape of the bandwidth ramp (1/2: an assumption, documented)."""

    step: Seconds | None = None
    ramp_exponent: Annotated[float, Field(gt=0, le=1)] = 0.5
    ring: CollectiveCurve
    nvls: CollectiveCurve | None = None
    one_shot: CollectiveCurve | None = None
    two_shot: CollectiveCurve | None = None


class Efficiency(_Strict):
    """Achievable fractions of peak, per op class. Named assumptions: documented in docs/cost-model.md
    and calibrated from kernel-level anchors (FlashAttention-3, cuBLAS, NCCL, DeepEP)."""

    gemm: Fraction = 0.70  # large GEMMs on the matrix unit
    # Large-GEMM fraction per matrix dtype, where a chip's sustained GEMM rate differs by dtype
    # (AMD's max-achievable FLOPs: MI300X reaches 0.54 of its BF16 peak but 0.49 of its FP8 peak;
    # clocks under the power limit and software efficiency both differ by dtype). A dtype absent
    # here runs at `gemm`. Also the base of `grouped_gemm`'s default.
    gemm_by_dtype: dict[Dtype, Fraction] | None = None
    attention: Fraction = 0.60  # fused attention kernels
    memory: Fraction = 0.85  # achieved / peak HBM bandwidth for streaming ops
    vector: Fraction = 0.50  # element-wise work on the vector unit
    collective: Fraction = 0.80  # achieved bus bandwidth / link peak
    # All-reduce / reduce-scatter / all-gather inside a scale-up domain vs message size and rank
    # count, per algorithm (`CollectiveCurves`). None: the flat rule (`collective` and the link
    # latency, docs/cost-model.md), the default for chips without collective kernel data.
    # All-to-all keeps `collective` / `low_latency_collective` either way.
    collective_curves: CollectiveCurves | None = None
    small_m_half: Annotated[float, Field(gt=0, le=MAX_WIDTH)] = 64  # GEMM rows at which matrix efficiency is half of `gemm`'s ramp (a ramp parameter, not a count)
    # Grouped expert GEMMs (MoE `grouped_gemm` ops): their own fraction of peak, because production
    # MoE kernels (token permutation/gather, per-expert tails, tile scheduling) reach less of peak
    # than a dense GEMM of the same FLOPs. None: same as `gemm` (no evidence either way).
    grouped_gemm: Fraction | None = None
    # Grouped expert GEMMs per matrix dtype, where the MoE kernel data of a chip cover one dtype only
    # (AITER's FP8 fused MoE on CDNA3: docs/cost-model.md "CDNA grouped expert GEMMs at a
    # large-expert shape"). A dtype present here runs at its own fraction; an absent one at
    # `grouped_gemm`, else at the dense fraction of its dtype (`gemm_for`).
    grouped_gemm_by_dtype: dict[Dtype, Fraction] | None = None
    # Compute/memory overlap inside one kernel: op time = (compute^p + memory^p)^(1/p). None: perfect
    # overlap, max(compute, memory). A finite p >= 1 charges the prologue/epilogue and the contention
    # that keep a kernel from hiding one term under the other when both are close (p = 1: no overlap).
    overlap_exponent: float | None = Field(default=None, ge=1)
    # -- kernel-calibrated shape curves (docs/cost-model.md "Kernel calibration"; fitted on
    # benchmarks/kernels/ rows only by benchmarks/kernels/fit.py). None = the curve is off and the
    # older constant rule applies, the default for chips without kernel data.
    # K-loop ramp K / (K + gemm_k_half): each output tile pays a fixed prologue/epilogue (pipeline
    # fill, scale loads, the C write) worth gemm_k_half steps of K, so short-K GEMMs reach less of peak.
    gemm_k_half: int | None = Field(default=None, gt=0)
    # Achieved / peak HBM bandwidth of operand streaming inside GEMM and grouped-GEMM kernels
    # (TMA tile loads competing with the MMA pipeline reach less than a pure copy kernel).
    # None: `memory`.
    matrix_memory: Fraction | None = None
    # Achieved / peak HBM bandwidth of the fused element-wise kernels (RMSNorm, SiLU-and-mul, ...)
    # that `cost.elementwise_model: regions` charges the traced element-wise ops as: one pass over
    # a few tensors of an LLM's activation size, one thread block per row, reaches less than a copy
    # kernel over a large buffer. None: `memory`.
    elementwise_memory: Fraction | None = None
    # Fixed seconds per GEMM/attention/grouped kernel: pipeline fill and drain, the tail wave and the
    # launch inside a CUDA graph; the intercept of kernel time vs work. A scenario's
    # `cost: {launch_overhead_s: ...}` overrides it. Default 2 us: assumed for chips without kernel
    # data, the order of the Hopper fit.
    kernel_overhead: Seconds = 2e-6
    # Fused attention in FP8 (FlashAttention-3 FP8): its own fraction of the FP8 peak. None: `attention`.
    attention_fp8: Fraction | None = None
    # Decode attention (one or a few query rows per sequence against a long KV cache, e.g. FlashMLA):
    # its own fraction of peak for the compute term. None: `attention`.
    attention_decode: Fraction | None = None
    # Prefill attention vs sequence length (docs/cost-model.md "Attention vs sequence length"): a
    # prefill attention op runs at `attention` (or `attention_fp8`) x L / (L + attention_seq_half),
    # L = the keys each query row attends to, averaged over the op's query rows of one sequence
    # (causal, queries at the end of the keys: L = S - (T - 1) / 2 for T queries against S keys;
    # a fresh prompt of T tokens: (T + 1) / 2). Short sequences run short inner loops over keys and
    # pay each query tile's prologue, epilogue and the masked diagonal tile on less work, as
    # FlashAttention-3's causal forward shows (364 TFLOPS at 1K tokens, 685 at 8K on H100). With the
    # curve, `attention` is the long-sequence asymptote. None: the curve is off (flat `attention`),
    # the default for chips without per-length kernel data. Decode attention keeps its own rate.
    attention_seq_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    # GQA decode attention occupancy (docs/cost-model.md "GQA decode attention occupancy"): a
    # decode attention op whose K and V rows have one head dim (GQA / MHA; not MLA's absorbed
    # latent, V a slice of K) streams its bytes at the memory rate x W / (W + half), W the work units
    # batch x kv_heads x ceil(S / attention_decode_split) (one unit per sequence, KV head and KV
    # split of S keys), and pays attention_decode_fixed_s per call on top of `kernel_overhead`
    # (the split-KV combine kernel, scheduler metadata and block-table walk of paged decode). None
    # (units half): off, today's rule; split None: no KV split (W = batch x kv_heads).
    attention_decode_units_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    attention_decode_split: int | None = Field(default=None, gt=0)
    attention_decode_fixed_s: Seconds = 0.0
    # Prefill attention through a paged KV cache (`cost.attention_kernel: vllm_flash_attn`;
    # docs/cost-model.md "Paged-KV prefill attention"): vLLM's FlashAttention-3 reads K and V through
    # its block table, and with a KV block smaller than the kernel's key tile (16 or 64 tokens
    # against 128 at head dim 128) it gathers them with cp.async instead of TMA (vllm-project/
    # flash-attention hopper/flash_api.cpp `get_pagedkv_tma`). That kernel runs at
    # `attention_paged` (16-bit; FP8: x attention_fp8 / attention) x L / (L + attention_paged_seq_half)
    # and pays attention_paged_fixed_s per call on top of `kernel_overhead` (fitted; it holds the
    # KV-cache write kernel that the measured forward call runs with the attention). None: the chip
    # has no such curve, and the option is refused on it.
    attention_paged: Fraction | None = None
    attention_paged_seq_half: float = Field(default=0.0, ge=0, le=MAX_WIDTH)
    attention_paged_fixed_s: Seconds = 0.0
    # Head-dim term of that curve (docs/cost-model.md "Paged-KV prefill attention at head dim 256"):
    # the rate x (D / 128) ** attention_paged_head_dim_exp, D the op's head dim (128: the head dim
    # the curve's first rows are at, factor 1). vLLM 0.24's FA3 runs head dim 256 (Qwen3.5's gated
    # attention) at a larger fraction of peak. 0: no term.
    attention_paged_head_dim_exp: float = Field(default=0.0, ge=-2.0, le=2.0)
    # TensorRT-LLM's context attention (its context FMHA through `AttentionOp`, the GPT attention
    # plugin's and the PyTorch flow's), used where a scenario sets `cost.attention_kernel: trtllm`
    # (docs/cost-model.md "TensorRT-LLM kernel rows on H100 / H200"): the prefill rule at its own
    # fractions (`trtllm_attention`, FP8: `trtllm_attention_fp8`) and half-length
    # (`trtllm_attention_seq_half`) plus `trtllm_attention_fixed_s` per prefill call; decode keeps the
    # family's rule. Fitted on benchmarks/kernels/aic_trtllm_attention.yaml's prefill rows only; a chip
    # without it refuses the option.
    trtllm_attention: Fraction | None = None
    trtllm_attention_fp8: Fraction | None = None
    trtllm_attention_seq_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    trtllm_attention_fixed_s: Seconds = 0.0
    # All-to-all in low-latency mode (DeepEP low-latency kernels: few SMs, per-token messages, no
    # CPU sync): achieved / peak link bandwidth and a fixed time per call, which replaces the link
    # latency (None: the scale-up latency). 0.43 is the EP8 dispatch of DeepEP's README at the link
    # latency (the rule before the kernel fit).
    low_latency_collective: Fraction = 0.43
    low_latency_overhead: Seconds | None = None
    # Fused GatedDeltaNet chunk kernel (prefill of linear-attention layers: FlashInfer's / FLA's
    # chunk_gated_delta_rule). One thread block per (sequence, value head) walks that sequence's
    # chunks in order, so the kernel fills only `gdn_chunk_units` x ceil(pairs / units) block slots:
    # time = recurrence FLOPs / (16-bit peak x gdn_chunk x occupancy), occupancy = pairs /
    # (ceil(pairs / units) x units). `gdn_chunk`: the fraction of peak one busy unit reaches on the
    # traced recurrence's matrix FLOPs (the intra-chunk work of the same kernel included in the
    # figure); `gdn_chunk_units`: the block slots (SMs). None: the curve is off and the traced eager
    # decomposition is costed op by op (docs/cost-model.md "Fused GatedDeltaNet chunk kernel").
    gdn_chunk: Fraction | None = None
    gdn_chunk_units: Annotated[Int, Field(gt=0, le=MAX_WIDTH)] | None = None
    # The same kernel's state and fixed time (both or neither; with `gdn_chunk` only): each block
    # loads its sequence's initial state and stores the final one (dk x dv fp32 per value head),
    # `gdn_chunk_state_s` seconds per wave of block slots, in series with its chunks' compute, and the
    # call costs `gdn_chunk_fixed_s` once (in place of one `kernel_overhead` per recurrence product).
    # Both fitted at head dim 128. None: the rule above alone (docs/cost-model.md "GatedDeltaNet
    # kernel rows of vLLM 0.24 on H100 / H200").
    gdn_chunk_state_s: Seconds | None = None
    gdn_chunk_fixed_s: Seconds | None = None

    # Triton fused_moe kernel (vLLM's / SGLang's `fused_experts` for unquantized and per-tensor FP8
    # MoE on Hopper), used for routed-expert ops where a deployment runs it (`cost.moe_kernel`;
    # docs/cost-model.md "MoE kernel implementation"). Each expert's tokens are padded to the
    # kernel's row block (`cost.triton_moe_min_block` below the tile's M, the tile's M above);
    # matrix seconds = padded FLOPs / (peak(dtype) x fraction x T / (T + tokens_half)), T the op's
    # padded routed tokens (occupancy of the whole grid); weights stream at `memory` x HBM peak; each
    # call pays `overhead` on top of its kernels' fixed time (token sort/alignment, the block map).
    # Two curves: `moe_triton*` with a tuned config file for the shape (`triton_fused`) and
    # `moe_triton_default*` with the engine's default tile heuristic (`triton_fused_default`).
    # Each curve holds for the matrix dtypes it has kernel rows of (`*_dtypes`); another dtype (or a
    # chip without the curve) is refused, not guessed. Fitted on benchmarks/kernels/fused_moe.yaml only.
    moe_triton: Fraction | None = None
    moe_triton_dtypes: tuple[Dtype, ...] = ()
    moe_triton_tokens_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)  # none: small_m_half
    moe_triton_memory: Fraction | None = None  # none: matrix_memory (else memory)
    moe_triton_overhead: Seconds = 0.0
    # K ramp K / (K + half) of the tuned curve's gate/up (K = hidden) and down (K = n) GEMMs: the
    # small-expert shapes (Qwen3-235B at TP8, n = 192) run their down GEMM at a short K; none: no ramp.
    moe_triton_k_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    moe_triton_default: Fraction | None = None
    moe_triton_default_dtypes: tuple[Dtype, ...] = ()
    moe_triton_default_tokens_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    moe_triton_default_memory: Fraction | None = None
    moe_triton_default_overhead: Seconds = 0.0
    # The default-config curve's fraction of the BF16 peak where it differs from `moe_triton_default`
    # (the same tiles run 16-bit and per-tensor FP8 at about one absolute rate, i.e. different
    # fractions of their peaks); none: `moe_triton_default`. Read as `<curve>_<dtype>`.
    moe_triton_default_bf16: Fraction | None = None
    # The same Triton kernel on block-scaled FP8 weights (128 x 128 weight blocks, 1 x 128 activation
    # groups: DeepSeek-V3/R1 and the other block-FP8 checkpoints) with the engine's tuned config file
    # (`..._dtype=fp8_w8a8,block_shape=[128,128].json`), `triton_fused_block_fp8`: the block scales
    # are applied per K block inside its loop, a cost the per-tensor curves do not hold, so it is its
    # own curve (same symbols). Fitted on benchmarks/kernels/fused_moe_block_fp8.yaml only.
    moe_triton_block_fp8: Fraction | None = None
    moe_triton_block_fp8_dtypes: tuple[Dtype, ...] = ()
    moe_triton_block_fp8_tokens_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    moe_triton_block_fp8_memory: Fraction | None = None
    moe_triton_block_fp8_overhead: Seconds = 0.0
    # K-loop ramp K / (K + k_half) of its two GEMMs (gate/up K = hidden, down K = intermediate per
    # rank), combined as for the grouped rule; none: no K ramp. The other two curves have none.
    moe_triton_block_fp8_k_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    # TensorRT-LLM's CUTLASS fused MoE on block-scaled FP8 weights on Hopper (`CutlassFusedMoE`:
    # routing, permute, the fp8_blockscale grouped GEMMs, SwiGLU, finalize), `trtllm_cutlass_block_fp8`:
    # the same symbols, with the grouped rule's padding (swap-AB below the tile's M) instead of the
    # Triton row block. Fitted on benchmarks/kernels/trtllm_moe_block_fp8.yaml only.
    moe_trtllm_block_fp8: Fraction | None = None
    moe_trtllm_block_fp8_dtypes: tuple[Dtype, ...] = ()
    moe_trtllm_block_fp8_tokens_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    moe_trtllm_block_fp8_memory: Fraction | None = None
    moe_trtllm_block_fp8_overhead: Seconds = 0.0
    moe_trtllm_block_fp8_k_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    # TensorRT-LLM's CUTLASS fused MoE on per-tensor FP8 weights and activations on Hopper (the
    # CutlassMoeFCRunner FP8 path: routing, quantisation, permute, the two grouped GEMMs, SwiGLU,
    # finalize), `trtllm_cutlass_fp8`: the same symbols and the grouped rule's padding, no K ramp (its
    # rows are at one shape). Fitted on benchmarks/kernels/trtllm_moe_fp8.yaml only.
    moe_trtllm_fp8: Fraction | None = None
    moe_trtllm_fp8_dtypes: tuple[Dtype, ...] = ()
    moe_trtllm_fp8_tokens_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    moe_trtllm_fp8_memory: Fraction | None = None
    moe_trtllm_fp8_overhead: Seconds = 0.0
    # vLLM's MXFP4 MoE on Hopper (gpt-oss checkpoints: `Mxfp4MoEMethod` with OpenAI's Triton
    # `matmul_ogs` kernels, weights MXFP4 dequantised in the kernel, BF16 activations: W4A16),
    # `triton_mxfp4`: the same symbols, its dtype the matrix (compute) dtype; the weight bytes are the
    # experts' own (`precision.expert_weights`). Fitted on benchmarks/kernels/aic_vllm_moe_mxfp4.yaml only.
    moe_triton_mxfp4: Fraction | None = None
    moe_triton_mxfp4_dtypes: tuple[Dtype, ...] = ()
    moe_triton_mxfp4_tokens_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)
    moe_triton_mxfp4_memory: Fraction | None = None
    moe_triton_mxfp4_overhead: Seconds = 0.0

    # MLA attention as an engine's own kernels run it (`cost.mla_kernel`; docs/cost-model.md "MLA
    # attention kernels by engine"), on the attention ops of MLA layers (block "mla"): the prefill
    # attention curve's rate x `mla_<kernel>_prefill` (None: x 1) plus `mla_<kernel>_prefill_fixed_s`
    # per prefill call, and `mla_<kernel>_decode_fixed_s` per decode call (RoPE / latent-cache write,
    # split-KV scheduling metadata and combine kernels around the attention kernel), each on top of
    # `kernel_overhead`. Kernels: "trtllm" (TensorRT-LLM's attention op: its context FMHA, FlashMLA
    # decode on SM90), "sglang_fa3" (SGLang's FlashAttention-3 backend). Fitted on
    # benchmarks/kernels/aic_mla.yaml only; `mla_kernels` names the kernels with rows on this chip's
    # family (a kernel not named is refused).
    mla_kernels: tuple[Literal["trtllm", "sglang_fa3"], ...] = ()
    mla_trtllm_prefill: float | None = Field(default=None, gt=0, le=2)
    mla_trtllm_prefill_fixed_s: Seconds = 0.0
    mla_trtllm_decode_fixed_s: Seconds = 0.0
    mla_sglang_fa3_prefill: float | None = Field(default=None, gt=0, le=2)
    mla_sglang_fa3_prefill_fixed_s: Seconds = 0.0
    mla_sglang_fa3_decode_fixed_s: Seconds = 0.0

    # Block-scaled FP8 dense GEMM as vLLM runs it without DeepGEMM on Hopper: CUTLASS's SM90 blockwise
    # kernel (`W8A8BlockFp8LinearOp` -> `cutlass_scaled_mm` with 128 x 128 weight and 1 x 128
    # activation scales), used for dense projections where a deployment runs it (`cost.gemm_kernel`;
    # docs/cost-model.md "Block-scaled FP8 dense GEMM"). Matrix seconds = max(padded FLOPs / (FP8 peak
    # x `cutlass_block_fp8` x M / (M + `cutlass_block_fp8_m_half`)), K x `cutlass_block_fp8_k_s`):
    # the second term is one output tile's K loop, which runs in one thread block (no split-K), the
    # floor of a GEMM with fewer tiles than SMs. Memory and fixed time as the family's GEMMs. Fitted
    # on benchmarks/kernels/block_fp8_gemm.yaml only; a chip without it refuses the option.
    cutlass_block_fp8: Fraction | None = None
    cutlass_block_fp8_m_half: float = Field(default=0.0, ge=0, le=MAX_WIDTH)
    cutlass_block_fp8_k_s: Seconds = 0.0  # seconds per K element of one tile's K loop

    # Per-tensor FP8 dense GEMM as TensorRT-LLM's PyTorch flow runs it on Hopper: `FP8QDQLinearMethod`
    # -> `cublas_scaled_mm` (cuBLASLt), used for a deployment's dense GEMMs where its engine runs it
    # (`cost.gemm_kernel: trtllm_cublaslt_fp8`; docs/cost-model.md "TensorRT-LLM kernel rows on H100 /
    # H200"). The family GEMM rule with its own parameters: matrix seconds = padded FLOPs / (FP8 peak x
    # `cublaslt_fp8` x M / (M + `cublaslt_fp8_m_half`) x K / (K + `cublaslt_fp8_k_half`)), operands
    # streamed at HBM x `cublaslt_fp8_memory`; overlap and fixed time the family's. Fitted on
    # benchmarks/kernels/aic_trtllm_gemm.yaml's FP8 rows only; a chip without it refuses the option.
    cublaslt_fp8: Fraction | None = None
    cublaslt_fp8_m_half: float = Field(default=0.0, ge=0, le=MAX_WIDTH)
    cublaslt_fp8_k_half: float | None = Field(default=None, gt=0, le=MAX_WIDTH)  # none: no K ramp
    cublaslt_fp8_memory: Fraction | None = None  # none: the family's matrix_memory

    @model_validator(mode="after")
    def _moe_triton_dtypes(self) -> "Efficiency":
        for f in FUSED_MOE_CURVES:
            if getattr(self, f) is not None and not getattr(self, f + "_dtypes"):
                raise ValueError(f"{f}_dtypes: expected the matrix dtypes {f} has kernel rows of, found none")
        if self.moe_triton_default_bf16 is not None and "bf16" not in self.moe_triton_default_dtypes:
            raise ValueError(f"moe_triton_default_bf16: expected bf16 among moe_triton_default_dtypes, found "
                             f"{', '.join(self.moe_triton_default_dtypes) or 'none'}")
        return self

    @model_validator(mode="after")
    def _gdn_chunk_pair(self) -> "Efficiency":
        if (self.gdn_chunk is None) != (self.gdn_chunk_units is None):
            raise ValueError("gdn_chunk and gdn_chunk_units: expected both or neither, found one")
        if (self.gdn_chunk_state_s is None) != (self.gdn_chunk_fixed_s is None):
            raise ValueError("gdn_chunk_state_s and gdn_chunk_fixed_s: expected both or neither, found one")
        if self.gdn_chunk_state_s is not None and self.gdn_chunk is None:
            raise ValueError("gdn_chunk_state_s: expected gdn_chunk and gdn_chunk_units with it (the chunk "
                             "kernel's curve), found none")
        return self

    def moe_kernel_curve(self, field: str, dtype: str) -> tuple[float, float | None, float | None, float,
                                                                float | None] | None:
        """(fraction of `dtype`'s peak, tokens_half, memory fraction, fixed seconds, K half-point)
        of the fused MoE curve `field` (one of `FUSED_MOE_CURVES`); None where the chip has no such
        curve or the curve has no rows of `dtype`. The K half-point is None (no K ramp) for the
        curves without one."""
        frac = getattr(self, field)
        if frac is None or dtype not in getattr(self, field + "_dtypes"):
            return None
        own = getattr(self, f"{field}_{dtype}", None)  # a per-dtype fraction (`moe_triton_default_bf16`)
        frac = frac if own is None else own
        return (frac, getattr(self, field + "_tokens_half"), getattr(self, field + "_memory"),
                getattr(self, field + "_overhead"), getattr(self, field + "_k_half", None))

    def mla_kernel_terms(self, kernel: str) -> tuple[float, float, float] | None:
        """(prefill rate factor, prefill fixed seconds, decode fixed seconds) of the MLA kernel
        `kernel` ("trtllm", "sglang_fa3"); None where `mla_kernels` does not name it."""
        if kernel not in self.mla_kernels:
            return None
        f = getattr(self, f"mla_{kernel}_prefill")
        return (1.0 if f is None else f), getattr(self, f"mla_{kernel}_prefill_fixed_s"), getattr(
            self, f"mla_{kernel}_decode_fixed_s")

    def gemm_for(self, dtype: str) -> float:
        """The large-GEMM fraction of peak for matrix `dtype`: `gemm_by_dtype[dtype]`, else `gemm`."""
        if self.gemm_by_dtype and dtype in self.gemm_by_dtype:
            return self.gemm_by_dtype[dtype]  # type: ignore[index]
        return self.gemm

    def grouped_gemm_for(self, dtype: str) -> float:
        """The grouped expert GEMMs' fraction of peak for matrix `dtype`: `grouped_gemm_by_dtype[dtype]`,
        else `grouped_gemm`, else the dense `gemm_for(dtype)`."""
        if self.grouped_gemm_by_dtype and dtype in self.grouped_gemm_by_dtype:
            return self.grouped_gemm_by_dtype[dtype]  # type: ignore[index]
        return self.grouped_gemm or self.gemm_for(dtype)


# The fused-MoE kernel curves of `Efficiency` (`moe_kernel_curve`): the fields with a `<field>_dtypes`
# sibling naming the matrix dtypes the curve has kernel rows of.
FUSED_MOE_CURVES = tuple(f for f in Efficiency.model_fields if f + "_dtypes" in Efficiency.model_fields)


class ScaleUp(_Strict):
    """The scale-up domain (NVLink, Infinity Fabric, ICI, ...), as a networkx topology."""

    topology: Literal["switch", "full_mesh", "ring", "torus2d", "torus3d"]
    size: DomainSize  # chips in one domain
    links: Annotated[Int, Field(ge=1, le=MAX_LINKS)]  # links per chip
    link_bandwidth: Bandwidth  # per link, per direction
    latency: Seconds
    dims: tuple[DomainSize, ...] | None = Field(default=None, max_length=3)  # torus dimensions (product = size)

    @model_validator(mode="after")
    def _dims(self) -> "ScaleUp":
        if self.topology == "full_mesh" and self.size > MAX_FULL_MESH:
            raise ValueError(f"size: expected at most {MAX_FULL_MESH:,} chips for a full_mesh domain "
                             f"(its graph has n(n-1)/2 edges), found {self.size:,}")
        if self.topology.startswith("torus"):
            want = 2 if self.topology == "torus2d" else 3
            if self.dims is None or len(self.dims) != want:
                raise ValueError(f"{self.topology} needs dims with {want} entries")
            prod = 1
            for d in self.dims:
                prod *= d
            if prod != self.size:
                raise ValueError(f"dims {self.dims} multiply to {prod}, expected size={self.size}")
        elif self.dims is not None:  # parsed fields act or are refused
            raise ValueError(f"dims: only a torus2d or torus3d topology has dims, found dims {list(self.dims)} "
                             f"with topology {self.topology!r}")
        return self

    @property
    def chip_bandwidth(self) -> float:
        """All links of one chip, one direction (bytes/s)."""
        return self.links * self.link_bandwidth


class ScaleOut(_Strict):
    nic_bandwidth: Bandwidth  # per chip, per direction
    latency: Seconds


class System(_Strict):
    chips: Annotated[Int, Field(ge=1, le=MAX_CHIPS)]  # chips in the deployment this file describes (default system size)
    scale_up: ScaleUp
    scale_out: ScaleOut | None = None


class Power(_Strict):
    tdp: Watts
    # Named assumption: the average power a chip draws while serving, as a fraction of `tdp`
    # (1.0 = chips draw TDP while serving). Result rows' output_tokens_per_joule use
    # tdp x utilisation x chips.
    utilisation: Fraction = 1.0

    @property
    def serving_watts(self) -> float:
        """Watts one chip draws while serving (the named utilisation assumption)."""
        return self.tdp * self.utilisation


class Cost(_Strict):
    # USD per chip-hour; result rows' usd_per_million_output_tokens = per_hour x chips / output
    # tokens per hour (the deployment rented by the hour and kept busy at the row's throughput).
    per_hour: float = Field(gt=0, le=1e6, allow_inf_nan=False)
    source: str  # where the price comes from, or "assumed: ..."


class HardwareSpec(_Strict):
    name: str
    sources: list[str] = Field(min_length=1)
    notes: list[str] = []
    chip: Chip
    efficiency: Efficiency = Efficiency()
    system: System
    power: Power
    cost: Cost
