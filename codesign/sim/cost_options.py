"""`CostOptions`: the cost model's named modelling assumptions (docs/cost-model.md), each one a
validated, overridable field; and the kernel-implementation names they choose between. The rules
that read them are `codesign.sim.cost.CostModel`'s."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from codesign.errors import CodesignError, format_validation_error
from codesign.units import parse_quantity


# MoE routed-expert kernel implementations a deployment's engine runs (`CostOptions.moe_kernel`).
MoeKernel = Literal["grouped", "triton_fused", "triton_fused_default", "triton_fused_block_fp8",
                    "trtllm_cutlass_block_fp8", "trtllm_cutlass_fp8", "triton_mxfp4"]
# MLA attention kernel implementations (`CostOptions.mla_kernel`).
MlaKernel = Literal["calibrated", "trtllm", "sglang_fa3"]
# Prefill attention kernel implementations (`CostOptions.attention_kernel`).
AttentionKernel = Literal["flash_attention", "vllm_flash_attn", "trtllm"]
# Dense GEMM kernel implementations (`CostOptions.gemm_kernel`).
GemmKernel = Literal["calibrated", "cutlass_block_fp8", "trtllm_cublaslt_fp8"]
# Blocks whose dense GEMMs are the checkpoint's quantised linear layers (what `gemm_kernel` acts
# on); the router, embedding and LM head stay 16-bit in block-FP8 checkpoints and keep the family curve.
BLOCK_FP8_LINEAR_BLOCKS = frozenset({"attention", "mla", "linear_attention", "mlp", "moe_shared"})

# Seconds written as a number or with a unit ("5 us"), never negative.
_Seconds = Annotated[float, BeforeValidator(lambda v: parse_quantity(v, "time")), Field(ge=0)]


class CostOptions(BaseModel):
    """Named modelling assumptions of the cost model; every one overridable
    (`opts.model_copy(update=...)`, `simulate(..., cost={...})`, a scenario's `cost:` section or the
    dotted path `cost.<field>`). Validated by pydantic like every other input: unknown names,
    wrong types and out-of-range values are errors naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Per-kernel fixed cost, seconds, charged once per GEMM/attention/grouped kernel (pipeline fill
    # and drain, tail wave, launch inside a CUDA graph). None: the chip's `efficiency.kernel_overhead`,
    # the intercept of kernel time vs work fitted on kernel microbenchmarks (benchmarks/kernels/,
    # docs/cost-model.md "Kernel calibration"). No end-to-end row sets it.
    launch_overhead_s: _Seconds | None = None
    # Small element-wise kernels a serving engine launches between the GEMM/attention kernels, per
    # GEMM/attention kernel; each pays the per-kernel fixed time (its bytes are charged with the
    # traced element-wise ops). 1.4 = 7 / 5 from a vLLM Qwen3/Llama-style decoder layer: fused
    # add+RMSNorm twice, q-norm, k-norm, RoPE, KV-cache write and SiLU-and-mul (7) between QKV,
    # attention, O, gate/up and down (5). A count of the engine's kernels, not a fit; 0 = every
    # element-wise kernel fused into a GEMM epilogue. `codesign kernel` uses 0 (one kernel alone).
    elementwise_kernels_per_matrix_kernel: float = Field(default=1.4, ge=0.0)
    # Kernels one traced MoE expert op (`grouped_gemm`: gate/up, activation, down over all experts)
    # stands for, each paying the per-kernel fixed time: vLLM's fused_moe path runs token alignment
    # / permutation (moe_align_block_size), the gate/up grouped GEMM, SiLU-and-mul, the down grouped
    # GEMM and the weighted un-permute sum (moe_sum) = 5. The routing (gate GEMM, top-k softmax) is
    # its own traced op. Their bytes are the op's own (gather of routed tokens, output write).
    grouped_op_kernels: float = Field(default=5.0, ge=0.0)
    # The engine's MoE runner moves the routed tokens through HBM between its kernels instead of
    # fusing them into the grouped GEMMs' prologue/epilogue (docs/cost-model.md "MoE kernels
    # through HBM"): TensorRT-LLM's CUTLASS MoE runner on SM90 (`CutlassMoeFCRunner::gemm1`/`gemm2`
    # in cpp/tensorrt_llm/kernels/mixtureOfExperts/moe_kernels.cu, 2024) permutes the tokens
    # (expandInputRows: each routed row read and written at the GEMM input dtype), writes gate/up's
    # output to an intermediate buffer in the GEMM output type and runs the gated activation as its
    # own kernel (doActivation: reads 2 x intermediate, writes intermediate at the input dtype), and
    # reduces the down GEMM's per-row output in finalizeMoeRouting (reads hidden per routed row).
    # When on, those kernels' bytes are charged serially at HBM streaming bandwidth
    # (`efficiency.memory`) after the grouped op; off (the default): fused, as DeepGEMM-class kernels
    # and the kernel tables' grouped rows run. A fact of the engine, set per scenario.
    moe_unfused_epilogue: bool = False
    # Bytes per element of the grouped GEMMs' output buffers when `moe_unfused_epilogue` is on:
    # TensorRT-LLM's FP8 MoE writes GEMM outputs in its OutputType (BF16/FP16, 2 bytes).
    moe_gemm_output_bytes: float = Field(default=2.0, gt=0.0)
    # The engine runs the dense MLP's gated activation as a kernel of its own between the gate/up
    # and down GEMMs (docs/cost-model.md "Engine effect: dense SwiGLU through HBM"): TensorRT-LLM
    # v0.9.0's LLaMA GatedMLP with `--use_fused_mlp` runs gate and up as one GEMM "followed by a
    # separate SwiGLU kernel" (its performance page's Known Issues). When on, per dense-MLP layer
    # that kernel's bytes (read the 2 x intermediate GEMM output, write the down GEMM's input) are
    # charged serially at HBM streaming bandwidth (`efficiency.memory`) with one kernel's fixed
    # time, on the layer's down-projection GEMM; off (the default): fused into the GEMMs.
    mlp_unfused_activation: bool = False
    # Bytes per element of the gate/up GEMM output the separate activation kernel reads when
    # `mlp_unfused_activation` is on: an FP8 GEMM of TensorRT-LLM writes the model dtype (FP16/BF16, 2).
    mlp_gemm_output_bytes: float = Field(default=2.0, gt=0.0)
    # Which kernel implementation runs the routed experts (`grouped_gemm` ops in the `moe_experts`
    # block), a fact of the deployment's engine and precision (docs/cost-model.md "MoE kernel
    # implementation"): "grouped" -- a DeepGEMM/CUTLASS-class grouped GEMM at `efficiency.grouped_gemm`
    # (the default); "triton_fused" -- the Triton `fused_moe` kernel that vLLM and SGLang run for
    # unquantized (BF16) and per-tensor FP8 MoE on Hopper, with a tuned config file for the shape
    # and device, at the chip's `efficiency.moe_triton*` curve; "triton_fused_default" -- the same
    # kernel where the engine has no tuned config for (experts, N, device, dtype) and falls back to
    # its default tile heuristic, at `efficiency.moe_triton_default*`. Both curves are fitted on that
    # kernel's published timings only (benchmarks/kernels/fused_moe.yaml); "triton_fused_block_fp8"
    # -- the same kernel on block-scaled FP8 weights (DeepSeek-V3/R1's 128 x 128 blocks) with the
    # engine's tuned config file, what vLLM runs for such checkpoints on Hopper without DeepGEMM, at
    # `efficiency.moe_triton_block_fp8*` (benchmarks/kernels/fused_moe_block_fp8.yaml);
    # "trtllm_cutlass_block_fp8" -- TensorRT-LLM's CUTLASS fused MoE (`CutlassFusedMoE`) on such
    # weights on Hopper, at `efficiency.moe_trtllm_block_fp8*` (benchmarks/kernels/trtllm_moe_block_fp8.yaml);
    # "trtllm_cutlass_fp8" -- the same runner on per-tensor FP8 weights and activations on Hopper, at
    # `efficiency.moe_trtllm_fp8*` (benchmarks/kernels/trtllm_moe_fp8.yaml); "triton_mxfp4" -- vLLM's
    # MXFP4 MoE on Hopper (gpt-oss: OpenAI's Triton `matmul_ogs`, MXFP4 weights dequantised in the
    # kernel, 16-bit activations), at `efficiency.moe_triton_mxfp4*` (benchmarks/kernels/aic_vllm_moe_mxfp4.yaml;
    # the experts' weight bytes at `precision.expert_weights`).
    moe_kernel: MoeKernel = "grouped"
    # Which kernel runs the dense projections (2-D GEMMs of the attention, MLA, MLP and shared-expert
    # blocks), a fact of the deployment's engine and checkpoint (docs/cost-model.md "Block-scaled
    # FP8 dense GEMM"): "calibrated" -- the family GEMM curve (fitted on DeepGEMM and TileLang; the
    # cuBLAS / cuBLASLt / per-tensor CUTLASS rows meet it); "cutlass_block_fp8" -- CUTLASS's SM90
    # blockwise FP8 kernel, what vLLM runs for block-scaled FP8 checkpoints (DeepSeek-V3/R1) where
    # DeepGEMM is not installed, at the chip's `efficiency.cutlass_block_fp8*` curve; "trtllm_cublaslt_fp8"
    # -- TensorRT-LLM's PyTorch-flow per-tensor FP8 linear (`FP8QDQLinearMethod` -> `cublas_scaled_mm`,
    # cuBLASLt) for every dense GEMM of the deployment, at `efficiency.cublaslt_fp8*`
    # (docs/cost-model.md "TensorRT-LLM kernel rows on H100 / H200"). FP8 only.
    gemm_kernel: GemmKernel = "calibrated"
    # Which kernels run the attention of MLA layers (DeepSeek-V2/V3; attention ops of block "mla"), a
    # fact of the deployment's engine (docs/cost-model.md "MLA attention kernels by engine"):
    # "calibrated" -- the prefill attention curve and the decode attention rate (FlashAttention-3 and
    # FlashMLA rows; the default); "trtllm" -- TensorRT-LLM's attention op (its context FMHA kernel,
    # FlashMLA decode on SM90, with the RoPE / latent-cache kernels around them), at the chip's
    # `efficiency.mla_trtllm_*` terms; "sglang_fa3" -- SGLang's FlashAttention-3 backend, at
    # `efficiency.mla_sglang_fa3_*`. Both fitted on aiconfigurator's MLA kernel rows only
    # (benchmarks/kernels/aic_mla.yaml); a chip without the terms refuses the option.
    mla_kernel: MlaKernel = "calibrated"
    # Row block of the Triton fused_moe kernel for an expert with fewer tokens than the tile's M:
    # `moe_align_block_size` pads every expert's tokens to BLOCK_SIZE_M, 16 in vLLM's decode-size
    # tuned and default configs (no swap-AB: the tokens stay in M). Above the tile's M, the tile's M.
    triton_moe_min_block: int = Field(default=16, gt=0)
    # Element-wise/vector and pure data-movement ops are fused into the adjacent GEMM/attention
    # kernel (prologue/epilogue) in production engines: their bytes and FLOPs are charged, their
    # launch overhead is not.
    fuse_elementwise: bool = True
    # The fused element-wise kernels keep intermediate activations on chip: activation bytes of
    # vector and memory ops move at SRAM bandwidth (the producing GEMM/attention's write and the
    # consuming one's read are charged to those ops). The traced graph is eager torch (an RMSNorm
    # is ~8 ops each reading and writing the activations); production kernels do it in one pass.
    fused_activations_on_chip: bool = True
    # How the traced element-wise ops' bytes are charged (docs/cost-model.md "Element-wise
    # regions"): "regions" (the default) -- each run of consecutive element-wise ops of a layer is
    # one fused kernel that moves its external bytes once (its inputs from outside the run, its
    # outputs consumed outside it) from HBM (`elementwise_sram_split` below); the bytes passed
    # inside the run cost nothing (`codesign.sim.elementwise_regions`); "sram_per_op" -- each op's
    # activation bytes at SRAM bandwidth (with `fused_activations_on_chip`), as above, which costs
    # a traced RMSNorm 4.6-5.8x FlashInfer's fused kernel on H100 (the kernel table's norm rows).
    # The regions' fixed time stays `elementwise_kernels_per_matrix_kernel`'s.
    # Applies where element-wise work runs fused (`fuse_elementwise` and `fused_activations_on_chip`,
    # `elementwise_regions`); an eager device (the native calibration's overlays) keeps per-op bytes.
    elementwise_model: Literal["sram_per_op", "regions"] = "regions"
    # With `elementwise_model: regions`: whether a region op's activation bytes small enough for
    # `sram_activations` are served at SRAM bandwidth (True) or every region byte streams from HBM
    # at `efficiency.elementwise_memory` (False). FlashInfer's fused RMSNorm on H100 streams at
    # 1.6-1.9 TB/s at 1K-2K tokens although its tensors fit the SRAM budget (docs/cost-model.md
    # "Element-wise regions"). GEMM and attention operands keep `sram_activations` either way.
    elementwise_sram_split: bool = False
    # Pad GEMM M and N to the matrix unit tile (hw.chip.matrix.tile).
    tile_quantisation: bool = True
    # Small-M efficiency ramp M / (M + efficiency.small_m_half) on the padded M.
    small_m_ramp: bool = True
    # Token granularity of an expert whose tokens are fewer than the tile's M (swap-AB: tokens in
    # the N dimension; Hopper wgmma and Blackwell tcgen05 take N in steps of 8).
    grouped_min_tokens: int = Field(default=8, gt=0)
    # Fraction of on-chip SRAM that kernels can use to keep data resident (the rest holds
    # kernel working sets: tiles, pipelines buffers).
    sram_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    # Activation bytes of one op that fit in sram_fraction x SRAM are served from SRAM: the
    # producer's output is still in L2/SRAM when the consumer reads it.
    sram_activations: bool = True
    # The recurrent state (GatedDeltaNet) is kept in SRAM across steps when a whole step's state
    # for this chip fits in sram_fraction x SRAM (decided per step by the engine).
    sram_state: bool = True
    # Weights are kept in SRAM across steps when all of this chip's weight bytes touched in a step
    # fit (after the state); off by default: on GPUs weights never fit, on SRAM-only designs they must.
    sram_weights: bool = False
    # The GatedDeltaNet chunked prefill (ops in the `chunk_rule` scope) is ONE fused kernel, costed
    # by the chip's kernel curve (`efficiency.gdn_chunk`, `gdn_chunk_units`; see `gdn_chunk_cost`),
    # where the chip has one. False (or a chip without the curve): the eager decomposition the
    # tracer records, op by op (each batched product, triangular solve and element-wise op alone).
    fused_gdn_chunk: bool = True
    # How the engine runs the GatedDeltaNet layers of a step that mixes prompt chunks and decodes
    # (codesign.sim.mixed_gdn): "split" -- decodes in the recurrent kernel, prompt chunks in the
    # chunk kernel (what the trace records; vLLM since PR #44700, 2026-06); "chunk" -- every
    # sequence through one chunk-kernel call, each decode a padded chunk, its state gathered and
    # scattered (vLLM before that PR, v0.17.1 among them). Acts in server mode's mixed steps.
    gdn_mixed_decodes: Literal["split", "chunk"] = "split"
    # Prefill attention efficiency ramp L / (L + efficiency.attention_seq_half) on the keys per
    # query row L of one sequence (`attention_keys_per_row`), where the chip has the curve.
    attention_seq_ramp: bool = True
    # GQA decode attention occupancy (efficiency.attention_decode_units_half, _split, _fixed_s):
    # the memory-rate ramp on the op's work units and the fixed time per call, where the chip has
    # them (`CostModel.attention_terms`). False: today's rule (flat memory rate).
    decode_attention_occupancy: bool = True
    # Which kernel runs prefill attention, a fact of the deployment's engine (docs/cost-model.md
    # "Paged-KV prefill attention"): "flash_attention" -- FlashAttention-3's forward on contiguous K
    # and V (TMA loads), as its own benchmarks run it, at `efficiency.attention` and the
    # `attention_seq_half` curve (the default); "vllm_flash_attn" -- vLLM's FlashAttention backend on
    # Hopper, FA3 reading K and V through the paged KV cache with blocks smaller than its key tile
    # (cp.async gathers, PackGQA), at the chip's `efficiency.attention_paged*` curve (fitted on
    # aiconfigurator's vLLM 0.14 prefill rows); "trtllm" -- TensorRT-LLM's context FMHA (its attention
    # op, the GPT attention plugin's and the PyTorch flow's `TrtllmAttention`), at the chip's
    # `efficiency.trtllm_attention*` curve (fitted on aiconfigurator's TensorRT-LLM 1.2.0rc5 prefill
    # rows: docs/cost-model.md "TensorRT-LLM kernel rows on H100 / H200"). A chip without the chosen
    # curve refuses it. Decode attention keeps its own rule either way.
    attention_kernel: AttentionKernel = "flash_attention"
    # Attention compute dtype: "auto" = the wider of activations and KV-cache precision.
    attention_dtype: Literal["auto", "fp4", "fp8", "int8", "bf16", "fp16", "fp32"] = "auto"

    # validation of user overrides (`from_dict`, through pydantic): no NaN or infinity
    __pydantic_config__ = {"allow_inf_nan": False}

    @property
    def elementwise_regions(self) -> bool:
        """Whether the traced element-wise ops are charged as their regions' fused kernels
        (`elementwise_model: regions` where element-wise work runs fused at all)."""
        return self.elementwise_model == "regions" and self.fuse_elementwise and self.fused_activations_on_chip

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "cost") -> "CostOptions":
        """Options from a mapping of overrides; unknown names are errors naming the field."""
        if not data:
            return cls()
        if isinstance(data, CostOptions):
            return data
        if not isinstance(data, dict):
            raise CodesignError(f"{source}: expected a mapping of cost-model options, found {type(data).__name__}")
        known = set(cls.model_fields)
        for k in data:
            if k not in known:
                raise CodesignError(f"{source}.{k}: unknown cost-model option; expected one of {', '.join(sorted(known))}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise CodesignError(format_validation_error(source, e)) from None
