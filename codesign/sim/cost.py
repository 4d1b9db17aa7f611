"""Cost of one op on one chip: seconds and the resource that limits it.

The rule is a roofline with the corrections that matter for MoE serving (each one a named,
overridable field of `CostOptions`, documented in docs/cost-model.md):

* **Matrix ops** (`gemm`, `grouped_gemm`): time = padded FLOPs / (peak(compute dtype) x
  efficiency.gemm (or `efficiency.gemm_by_dtype[dtype]`) x ramp(M)). GEMM dims are padded up to the matrix unit's tile
  (`hw.chip.matrix.tile` = (M, N)): a decode GEMM with 8 rows costs a full 64-row tile.
  `ramp(M) = M / (M + efficiency.small_m_half)` at the padded M: small-M GEMMs cannot fill the chip
  (few thread blocks, pipeline fill), as cuBLAS shows for decode shapes. Grouped expert GEMMs are
  padded per expert from `Op.tokens_per_expert` (an expert with fewer tokens than the tile's M
  puts them in N, swap-AB, padded to 8) and ramped once on the whole op (one kernel walks every
  expert's tiles), at `efficiency.grouped_gemm` (MoE kernels' own fraction of peak; defaults to
  `efficiency.gemm`).
* **MoE kernel implementation** (`CostOptions.moe_kernel`, `_moe_kernel`): the routed-expert op
  runs the grouped rule above (default) or the Triton fused_moe curve of the chip
  (`efficiency.moe_triton*` with a tuned config, `moe_triton_default*` with the engine's default
  tiles): per-expert padding to `triton_moe_min_block` below the tile's M, its own fraction of peak,
  occupancy half-tokens, weight-streaming fraction and fixed time per call, no K ramp. The same
  scalar functions serve the per-layer fast path (`codesign.sim.routed`).
* **Dense GEMM kernel implementation** (`CostOptions.gemm_kernel`, `_gemm_kernel`): the dense
  projections (2-D GEMMs of `BLOCK_FP8_LINEAR_BLOCKS`) run the family curve above (default) or
  CUTLASS's SM90 blockwise FP8 kernel (`efficiency.cutlass_block_fp8*`): max(padded FLOPs / (FP8
  peak x fraction x M / (M + m_half)), K x k_s), the second term one output tile's serial K loop.
* **Attention**: FLOPs / (peak x efficiency.attention) (FlashAttention-3 reaches ~75% of H100
  bf16 peak: accelerators.md anchor 40); prefill attention on a chip with
  `efficiency.attention_seq_half` is ramped by L / (L + attention_seq_half), L the keys per query
  row of one sequence from the op's recorded shapes (`attention_keys_per_row`).
* **Vector ops**: FLOPs / (vector peak x efficiency.vector).
* **Memory**: bytes / (HBM bandwidth x efficiency.memory); bytes that are SRAM-resident (activations
  small enough to stay on chip between producer and consumer; the recurrent state or weights when a
  whole step's worth fits, if enabled) are served at SRAM bandwidth instead.
* op time = overlap(compute, memory) + launch overhead (per kernel; element-wise ops are assumed
  fused into their neighbours' kernels and pay none, see `fuse_elementwise`). `overlap` is
  max(compute, memory) (perfect overlap) or, with `efficiency.overlap_exponent` = p, the p-norm
  (compute^p + memory^p)^(1/p): never below the max, equal to it when one term dominates.
* **Collectives**: `codesign.mapping.collective_time(op.collective, hw)` (topology-aware, owned by
  the mapping).
* **Fused GatedDeltaNet chunk kernel** (`fused_gdn_chunk`, where the chip has `efficiency.gdn_chunk`):
  the ops of a GatedDeltaNet layer's chunked prefill (op names in the `chunk_rule` scope) are one
  kernel in serving engines; its time is charged on the recurrence's matrix ops (the state hand-over,
  scope `chunk_rule.recurrence`) at that kernel's measured rate and occupancy, and the eager decomposition's other
  ops (element-wise, copies, the chunk-parallel products) cost nothing of their own (`gdn_chunk_cost`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from codesign.errors import CodesignError, format_validation_error
from codesign.graph.op import Op
from codesign.hw.spec import BYTES_PER_ELEMENT, HardwareSpec
from codesign.mapping.scaling import OP_FIELDS_KNOWN, op_with
from codesign.units import parse_quantity

# Torch dtype names (as the tracer writes them) -> spec dtype names.
_TORCH_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "int8": "int8",
}


# MoE routed-expert kernel implementations a deployment's engine runs (`CostOptions.moe_kernel`).
MoeKernel = Literal["grouped", "triton_fused", "triton_fused_default"]
# Dense GEMM kernel implementations (`CostOptions.gemm_kernel`).
GemmKernel = Literal["calibrated", "cutlass_block_fp8"]
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
    # Which kernel implementation runs the routed experts (`grouped_gemm` ops in the `moe_experts`
    # block), a fact of the deployment's engine and precision (docs/cost-model.md "MoE kernel
    # implementation"): "grouped" -- a DeepGEMM/CUTLASS-class grouped GEMM at `efficiency.grouped_gemm`
    # (the default); "triton_fused" -- the Triton `fused_moe` kernel that vLLM and SGLang run for
    # unquantized (BF16) and per-tensor FP8 MoE on Hopper, with a tuned config file for the shape
    # and device, at the chip's `efficiency.moe_triton*` curve; "triton_fused_default" -- the same
    # kernel where the engine has no tuned config for (experts, N, device, dtype) and falls back to
    # its default tile heuristic, at `efficiency.moe_triton_default*`. Both curves are fitted on that
    # kernel's published timings only (benchmarks/kernels/fused_moe.yaml).
    moe_kernel: MoeKernel = "grouped"
    # Which kernel runs the dense projections (2-D GEMMs of the attention, MLA, MLP and shared-expert
    # blocks), a fact of the deployment's engine and checkpoint (docs/cost-model.md "Block-scaled
    # FP8 dense GEMM"): "calibrated" -- the family GEMM curve (fitted on DeepGEMM and TileLang; the
    # cuBLAS / cuBLASLt / per-tensor CUTLASS rows meet it); "cutlass_block_fp8" -- CUTLASS's SM90
    # blockwise FP8 kernel, what vLLM runs for block-scaled FP8 checkpoints (DeepSeek-V3/R1) where
    # DeepGEMM is not installed, at the chip's `efficiency.cutlass_block_fp8*` curve. FP8 only.
    gemm_kernel: GemmKernel = "calibrated"
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
    # Attention compute dtype: "auto" = the wider of activations and KV-cache precision.
    attention_dtype: Literal["auto", "fp4", "fp8", "int8", "bf16", "fp16", "fp32"] = "auto"

    # validation of user overrides (`from_dict`, through pydantic): no NaN or infinity
    __pydantic_config__ = {"allow_inf_nan": False}

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


@dataclass(frozen=True)
class Residency:
    """Which byte classes a step keeps SRAM-resident (decided once per step by the engine)."""

    state: bool = False
    weights: bool = False


class OpCost(NamedTuple):
    """Seconds of one op and what limits it: "matrix" | "vector" | "hbm" | "sram" | "link" | "overhead".
    Immutable; a named tuple rather than a frozen dataclass because a step builds one per op and
    variant (~1,700 for a Qwen3.5-397B point), where a frozen dataclass's constructor is most of
    an op's cost."""

    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bottleneck: str


def spec_dtype(name: str) -> str:
    """A spec dtype name ('bf16', 'fp8', ...) from either a spec or a torch dtype name."""
    if name in BYTES_PER_ELEMENT:
        return name
    return _TORCH_DTYPES.get(name, "bf16")


def wider(a: str, b: str) -> str:
    """The wider of two spec dtypes (the one a mixed-precision op computes in)."""
    return a if BYTES_PER_ELEMENT[a] >= BYTES_PER_ELEMENT[b] else b


# Op-name scopes of the GatedDeltaNet chunked prefill and of its chunk-by-chunk state hand-over
# (codesign.models.gated_deltanet.CHUNK_RULE_SCOPE, RECURRENCE_SCOPE): the first is a prefix of both.
_GDN_SCOPE = ".chunk_rule"
_GDN_RECURRENCE = ".chunk_rule.recurrence/"

# Padded-token tables by (tile quantisation, tile M, grouped minimum tokens): see `expert_padding`.
_PAD_TABLES: dict[tuple[bool, int, int], dict[int, int]] = {}

# The bandwidth-free part of op costs (`CostModel.cost`): by (the cost model's `static_key`,
# residency, of the op or of its two-batch-overlap half), id(op) -> (op, compute seconds, unit, HBM
# bytes, SRAM bytes, overhead seconds, HBM bandwidth index), or (op, the whole OpCost, None, ...)
# where the cost reads no bandwidth; the op is held so that its id is not reused while kept.
# Bounded: cleared when full (32 keys: 16 (static key, residency) pairs, each with its halves).
_STATIC: dict[tuple, dict[int, tuple]] = {}
_STATIC_KEYS_MAX = 32
_STATIC_OPS_MAX = 32_768
# Collective seconds by the spec's network (`network_key`): (all-to-all (slope, fixed) by the
# collective's items but its imbalance, seconds of any other collective by its items), shared by
# every cost model of that network (hardware variants of the chip share them). Bounded.
_NETWORKS: dict[tuple, tuple[dict[tuple, tuple[float, float]], dict[tuple, float]]] = {}
_NETWORKS_MAX = 16
_NETWORK_ENTRIES_MAX = 4096


def network_key(hw: HardwareSpec) -> tuple:
    """What `codesign.mapping.collectives` reads of a spec: the system (its scale-up and scale-out
    networks) and the collective efficiencies and curves. tests/sim/test_cost_parts.py checks that
    a spec with another chip and other efficiencies but these gives the same collective times."""
    e = hw.efficiency
    return (hw.system, e.collective, e.collective_curves, e.low_latency_collective, e.low_latency_overhead)


# CostModel attributes a cost reads at call time (the memory seconds and the overlap), and those
# that are not values (the spec, caches): every other attribute is part of `static_key`.
_CALL_TIME = frozenset({"hbm_bw", "matrix_hbm_bw", "grouped_hbm_bw", "sram_bw", "overlap_p"})
_NOT_KEYED = frozenset({"hw", "_collective_fn", "_a2a", "_collectives", "_expert_pad", "_static", "static_key", "_last",
                         "_last_half", "keep_parts"})


def attention_keys_per_row(op: Op) -> float | None:
    """Keys one query row of an attention op attends to, averaged over one sequence's query rows,
    from the op's recorded shapes: q (B, Hq, T, D) and k (B, Hkv, S, D), as the tracer records
    `codesign.attention` (codesign.graph.tracer). The model's attention is causal with the T
    queries at the end of the S keys (a fresh prompt: S = T; a chunk after a cache: S > T):
    L = S - (T - 1) / 2. A kernel-table row marked non-causal (target ending in `.noncausal`,
    codesign.sim.kernel) attends to all S keys: L = S. Sliding windows are not in the shapes: a
    windowed layer is charged at its full key length (a named simplification, docs/cost-model.md).
    None where the shapes are not those of an attention op."""
    shapes = op.in_shapes
    if len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        return None
    t, s = shapes[0][2], shapes[1][2]
    if t <= 0 or s <= 0:
        return None
    if op.target.endswith(".noncausal"):
        return float(s)
    return max(1.0, s - (t - 1) / 2.0)


def _routed(op: Op) -> int:
    """(token, expert) rows of a routed-expert op on its chip: the sum of its tokens per expert."""
    return sum([t for t in op.tokens_per_expert or () if t > 0])


def _expert_dims(op: Op) -> tuple[float, float] | None:
    """(hidden H, intermediate I) of a traced expert block from its weights' shapes (gate/up
    (E, 2I, H), down (E, H, I)); None for an op without them (a single grouped GEMM command)."""
    shapes = op.in_shapes
    if len(shapes) < 5 or len(shapes[3]) != 3 or len(shapes[4]) != 3:
        return None
    return float(shapes[3][2]), float(shapes[4][2])


def half_op(op: Op) -> Op:
    """The op for one of two equal micro-batches: token-proportional work halves, weights do not
    (each micro-batch streams the weights again: the price of two-batch overlap)."""
    coll = op.collective
    if op.kind == "collective" and coll:
        if "bytes" in coll:
            coll = dict(coll)
            coll["bytes"] = coll["bytes"] / 2
        return op_with(op, op.flops, op.bytes_read, op.bytes_written, op.gemm, collective=coll)
    br, bw = _halved(op.bytes_read), _halved(op.bytes_written)
    gemm = op.gemm
    if gemm is not None:
        b, m, n, k = gemm
        gemm = (b, max(1, math.ceil(m / 2)), n, k)
    tpe = op.tokens_per_expert
    if tpe is not None:
        tpe = tuple([(t + 1) // 2 for t in tpe])
    if OP_FIELDS_KNOWN:  # `op_with` written out
        return Op(op.name, op.target, op.kind, op.block, op.layer, op.layer_type, op.phase, op.in_shapes,
                  op.out_shapes, op.dtype, op.flops / 2, br, bw, op.repeat, gemm, tpe, op.expert_weight_bytes,
                  op.expert_flops_per_token, op.collective)
    return op_with(op, op.flops / 2, br, bw, gemm, tokens_per_expert=tpe)


def _halved(d: dict[str, float]) -> dict[str, float]:
    """A byte dict for one of two micro-batches: every class halves but the weights."""
    if len(d) == 4:
        try:  # the mapping's dicts (every class, in BYTE_CLASSES order): the same values written out
            return {"weight": d["weight"], "activation": d["activation"] / 2, "kv_cache": d["kv_cache"] / 2,
                    "state": d["state"] / 2}
        except KeyError:
            pass
    return {k: (v if k == "weight" else v / 2) for k, v in d.items()}


def _pad(x: int, tile: int) -> int:
    return int(math.ceil(x / tile) * tile) if x > 0 else 0


class CostModel:
    """Op -> OpCost for one chip. `matrix_dtype` and `attention_dtype` come from the deployment's
    precision; `collective_fn(collective, hw) -> seconds` defaults to the mapping's."""

    def __init__(
        self,
        hw: HardwareSpec,
        matrix_dtype: str = "bf16",
        attention_dtype: str = "bf16",
        options: CostOptions | None = None,
        collective_fn: Callable[[dict, HardwareSpec], float] | None = None,
        keep_parts: bool = True,
    ) -> None:
        self.hw = hw
        self.opts = options or CostOptions()
        self.matrix_dtype = spec_dtype(matrix_dtype)
        self.attention_dtype = spec_dtype(attention_dtype)
        self._collective_fn = collective_fn
        # keep ops' bandwidth-free parts for later calls on the same ops (`cost`, `half_seconds`);
        # off where the ops are costed once (a step model that shares nothing: its ops die with
        # the step, and kept entries would only hold them for the cyclic collector to walk)
        self.keep_parts = keep_parts
        # collective seconds shared by the cost models of one network (`_NETWORKS`)
        self._a2a, self._collectives = self._network_memo(hw) if collective_fn is None else ({}, {})
        eff = hw.efficiency
        chip = hw.chip
        # Large-GEMM fraction of this dtype's peak (efficiency.gemm_by_dtype, else gemm).
        gemm_eff = eff.gemm_for(self.matrix_dtype)
        self.matrix_rate = chip.matrix.peak(self.matrix_dtype) * gemm_eff
        # Grouped expert GEMMs run at their own fraction of peak where the family declares one.
        self.grouped_rate = chip.matrix.peak(self.matrix_dtype) * (eff.grouped_gemm or gemm_eff)
        self.overlap_p = eff.overlap_exponent
        # Attention: FP8 kernels and decode kernels have their own fractions where the chip has kernel data.
        att = eff.attention_fp8 if (self.attention_dtype == "fp8" and eff.attention_fp8) else eff.attention
        self.attention_rate = chip.matrix.peak(self.attention_dtype) * att
        self.decode_attention_rate = chip.matrix.peak(self.attention_dtype) * (
            eff.attention_decode * att / eff.attention if eff.attention_decode else att)
        # Prefill attention vs sequence length (None: flat `attention_rate`).
        self.attention_seq_half = eff.attention_seq_half if self.opts.attention_seq_ramp else None
        vec_peak = chip.vector.bf16 or chip.vector.fp32
        self.vector_rate = vec_peak * eff.vector
        self.hbm_bw = chip.hbm.bandwidth * eff.memory
        # Operand streaming inside matrix kernels (efficiency.matrix_memory; none = memory).
        self.matrix_hbm_bw = chip.hbm.bandwidth * (eff.matrix_memory or eff.memory)
        self.k_half = eff.gemm_k_half
        self.launch_s = self.opts.launch_overhead_s if self.opts.launch_overhead_s is not None else eff.kernel_overhead
        # SRAM streams at its own peak; efficiency.memory applies to it too (same access patterns).
        self.sram_bw = chip.sram.bandwidth * eff.memory
        self.sram_budget = chip.sram.capacity * self.opts.sram_fraction
        self.tile_m, self.tile_n = chip.matrix.tile
        # tokens of one expert -> padded tokens, shared by cost models with the same padding rule
        # (below the tile's M: swap-AB steps for grouped kernels, the Triton kernel's row block)
        self.triton_moe = self.opts.moe_kernel != "grouped"
        self._min_tokens = self.opts.triton_moe_min_block if self.triton_moe else self.opts.grouped_min_tokens
        # what an expert's padded tokens depend on (`_padded_tokens`): its table's key
        self.padding_rule = (self.opts.tile_quantisation, self.tile_m, self._min_tokens)
        self._expert_pad = _PAD_TABLES.setdefault(self.padding_rule, {})
        self.half = eff.small_m_half
        self._moe_kernel(hw)
        self._gemm_kernel(hw)
        # MoE kernels through HBM (`CostOptions.moe_unfused_epilogue`): their streaming bandwidth,
        # kept as a keyed attribute (not a `_CALL_TIME` one) so that cost models of other HBM
        # bandwidths never share an overhead that depends on it; None when off.
        self.unfused_moe_bw: float | None = self.hbm_bw if self.opts.moe_unfused_epilogue else None
        self.matrix_bytes = BYTES_PER_ELEMENT.get(self.matrix_dtype, 2.0)
        # Fused GatedDeltaNet chunk kernel: 16-bit tensor-core rate of one fully busy chip at the
        # kernel's efficiency, and its block slots (None: the curve is off for this chip or by option).
        self.gdn_rate: float | None = None
        self.gdn_units = eff.gdn_chunk_units or 1
        if self.opts.fused_gdn_chunk and eff.gdn_chunk is not None:
            self.gdn_rate = chip.matrix.peak("bf16") * eff.gdn_chunk
        self._overheads()
        # byte_split's flags, read once per op
        self._fused_elementwise = self.opts.fused_activations_on_chip and self.opts.fuse_elementwise
        self._sram_activations = self.opts.sram_activations
        # Everything an op's compute seconds, byte split and overhead depend on: all attributes set
        # above but the bandwidths (`_CALL_TIME`). Cost models with the same key (hardware variants
        # that differ in HBM or SRAM bandwidth only) share those parts of their op costs (`cost`).
        # A subclass (its own rules) shares nothing.
        self.static_key: tuple | None = None
        self._static: dict[tuple[Residency, bool], dict[int, tuple]] = {}
        self._last: tuple[Residency | None, dict[int, tuple]] = (None, {})
        self._last_half: tuple[Residency | None, dict[int, tuple]] = (None, {})
        if type(self) is CostModel:
            self.static_key = tuple(sorted((k, v) for k, v in vars(self).items()
                                           if k not in _CALL_TIME and k not in _NOT_KEYED))

    def _moe_kernel(self, hw: HardwareSpec) -> None:
        """Rates of the routed-expert kernel implementation (`CostOptions.moe_kernel`): the grouped
        GEMM's by default; the Triton fused_moe curve's (`efficiency.moe_triton*`) for
        "triton_fused", refused on a chip without that curve."""
        eff = hw.efficiency
        self.grouped_half = self.half
        self.grouped_hbm_bw = self.matrix_hbm_bw
        self.grouped_fixed_s = 0.0
        if not self.triton_moe:
            return
        curve = eff.moe_triton_curve(self.opts.moe_kernel == "triton_fused_default", self.matrix_dtype)
        if curve is None:
            field = "moe_triton_default" if self.opts.moe_kernel == "triton_fused_default" else "moe_triton"
            have = ", ".join(getattr(eff, field + "_dtypes")) if getattr(eff, field) is not None else "none"
            raise CodesignError(f"cost.moe_kernel: {self.opts.moe_kernel} needs efficiency.{field} of {hw.name} "
                                f"for {self.matrix_dtype} (a fit on Triton fused_moe kernel rows of that dtype); "
                                f"{hw.name}'s {field}_dtypes: {have}")
        frac, half, memory, fixed = curve
        self.grouped_rate = hw.chip.matrix.peak(self.matrix_dtype) * frac
        if half is not None:
            self.grouped_half = half
        if memory is not None:
            self.grouped_hbm_bw = hw.chip.hbm.bandwidth * memory
        self.grouped_fixed_s = fixed

    def _gemm_kernel(self, hw: HardwareSpec) -> None:
        """Rate, M half-point and K-loop seconds of the dense projection kernel
        (`CostOptions.gemm_kernel`); None: the family GEMM curve. "cutlass_block_fp8" is refused on
        a deployment whose matrix dtype is not FP8 or on a chip without that curve."""
        self.block_fp8: tuple[float, float, float] | None = None
        if self.opts.gemm_kernel == "calibrated":
            return
        eff = hw.efficiency
        if self.matrix_dtype != "fp8":
            raise CodesignError(f"cost.gemm_kernel: {self.opts.gemm_kernel} is a block-scaled FP8 kernel; "
                                f"this deployment's GEMMs compute in {self.matrix_dtype}")
        if eff.cutlass_block_fp8 is None:
            raise CodesignError(f"cost.gemm_kernel: {self.opts.gemm_kernel} needs efficiency.cutlass_block_fp8 of "
                                f"{hw.name} (a fit on that kernel's rows); {hw.name} has none")
        self.block_fp8 = (hw.chip.matrix.peak("fp8") * eff.cutlass_block_fp8, eff.cutlass_block_fp8_m_half,
                          eff.cutlass_block_fp8_k_s)

    def rank_rates(self) -> tuple[float, float]:
        """(FLOP/s, bytes/s) of grouped expert GEMMs and HBM: what the mapping ranks EP ranks and
        pipeline stages by (`codesign.mapping.map_step(rates=...)`)."""
        return self.grouped_rate, self.hbm_bw

    # -- compute ----------------------------------------------------------------------------
    def _ramp(self, m_padded: float) -> float:
        if not self.opts.small_m_ramp:
            return 1.0
        return m_padded / (m_padded + self.half)

    def _k_ramp(self, k: float) -> float:
        """K-loop efficiency K / (K + efficiency.gemm_k_half); 1 where the chip has no K curve."""
        if self.k_half is None or k <= 0:
            return 1.0
        return k / (k + self.k_half)

    def _grouped_k_ramp(self, op: Op) -> float:
        """K ramp of an expert FFN: the kernel command's single grouped GEMM carries `op.gemm`
        (groups, M, N, K); a traced expert block is gate/up (K = hidden, 2/3 of the FLOPs) then
        down (K = intermediate, 1/3), combined as a time-weighted (harmonic) mean."""
        if self.k_half is None or self.triton_moe:  # the Triton curve is fitted without the K ramp
            return 1.0
        if op.gemm is not None:
            return self._k_ramp(op.gemm[3])
        shapes = op.in_shapes
        if len(shapes) >= 5 and len(shapes[3]) == 3 and len(shapes[4]) == 3:
            _, two_i, h = shapes[3]
            _, _, i = shapes[4]
            f_gu, f_d = 2.0 * h * two_i, 2.0 * i * h
            return (f_gu + f_d) / (f_gu / self._k_ramp(h) + f_d / self._k_ramp(i))
        return 1.0

    def attention_seq_ramp(self, op: Op) -> float:
        """Prefill attention's fraction of `attention_rate`: L / (L + efficiency.attention_seq_half)
        with L = `attention_keys_per_row(op)`; 1 where the chip has no curve or the shapes are unknown."""
        half = self.attention_seq_half
        if half is None:
            return 1.0
        keys = attention_keys_per_row(op)
        if keys is None:
            return 1.0
        return keys / (keys + half)

    def gemm_time(self, op: Op) -> float:
        """Matrix-unit seconds of a dense GEMM, with tile padding and the small-M ramp."""
        return self._gemm_seconds(op.flops, op.gemm, op.block)

    def _gemm_seconds(self, op_flops: float, gemm: tuple[int, int, int, int] | None, block: str | None) -> float:
        """`gemm_time` of an op with these FLOPs and GEMM problem (a half micro-batch's op passes
        its own: `_half_parts`) in `block` (what `CostOptions.gemm_kernel` acts on)."""
        if gemm is None:
            return op_flops / (self.matrix_rate * self._ramp(float(self.tile_m)))
        b, m, n, k = gemm
        if self.opts.tile_quantisation:
            mp, np_ = _pad(m, self.tile_m), _pad(n, self.tile_n)
        else:
            mp, np_ = m, n
        # Padded problem FLOPs relative to the op's own count (the tracer's FLOPs may include
        # a bias or repeat; scale them rather than recompute).
        useful = 2.0 * b * m * n * k
        padded = 2.0 * b * mp * np_ * k
        flops = op_flops * (padded / useful) if useful > 0 else op_flops
        if self.block_fp8 is not None and b == 1 and block in BLOCK_FP8_LINEAR_BLOCKS:
            rate, half, k_s = self.block_fp8
            ramp = mp / (mp + half) if self.opts.small_m_ramp else 1.0
            return max(flops / (rate * ramp), k * k_s)
        return flops / (self.matrix_rate * self._ramp(mp) * self._k_ramp(k))

    def grouped_gemm_time(self, op: Op) -> float:
        """Expert FFNs as one grouped kernel walking every expert's tiles.

        * Padding per expert: its tokens fill whole tiles. An expert with fewer tokens than the
          tile's M puts its tokens in the N dimension instead (swap-AB, as decode MoE kernels do:
          the weight rows fill M), padded to `CostOptions.grouped_min_tokens` (the unit's N step).
        * No small-M ramp per expert: the kernel fills the machine with all experts' tiles
          together, so occupancy follows the whole op's tokens (ramped once, on their sum).
        """
        return self._grouped_op_seconds(op, op.flops, op.tokens_per_expert)

    def _grouped_op_seconds(self, op: Op, flops: float, tpe: tuple[int, ...] | None) -> float:
        """`grouped_gemm_time` of `op` with these FLOPs and tokens per expert (`_half_parts`)."""
        if not tpe or op.expert_flops_per_token <= 0:
            return flops / (self.grouped_rate * self._ramp(float(self.tile_m)))
        padded, tokens_routed = self.expert_padding(tpe)
        return self.grouped_seconds(flops, padded, tokens_routed, self._grouped_k_ramp(op))

    def expert_padding(self, tpe: tuple[int, ...]) -> tuple[float, int]:
        """(padded tokens, routed tokens) of a grouped expert op's per-expert token counts. Padded
        tokens per expert come from a table kept per cost model (few distinct counts); sums of
        integers, exact in any order."""
        table = self._expert_pad
        try:
            padded = float(sum([table[t] for t in tpe]))
        except KeyError:
            for t in set(tpe):
                table[t] = self._padded_tokens(t)
            padded = float(sum([table[t] for t in tpe]))
        return padded, sum([t for t in tpe if t > 0])

    def padded_tokens(self, counts: list[int]) -> list[int]:
        """Each expert token count as its tiles hold it (`_padded_tokens`), from the same table as
        `expert_padding`: what the routed layers (`codesign.sim.routed`) pad their distinct counts
        with, in one call."""
        table = self._expert_pad
        try:
            return [table[t] for t in counts]
        except KeyError:
            for t in counts:
                if t not in table:
                    table[t] = self._padded_tokens(t)
            return [table[t] for t in counts]

    def grouped_seconds(self, flops: float, padded: float, tokens_routed: int, k_ramp: float) -> float:
        """Matrix seconds of a grouped expert op of `flops` with these padded and routed tokens.
        The tracer's FLOPs are authoritative for the op's total (the mapping may have rescaled
        tokens_per_expert to this chip's share); keep the padding/ramp factor only."""
        factor = padded / tokens_routed if tokens_routed else 1.0
        ramp = padded / (padded + self.grouped_half) if self.opts.small_m_ramp else 1.0
        return flops * factor / (self.grouped_rate * ramp * k_ramp)

    def _padded_tokens(self, t: int) -> int:
        """An expert's tokens as its tiles hold them (see `grouped_gemm_time`); 0 when it has none."""
        if t <= 0:
            return 0
        if not self.opts.tile_quantisation:
            return t
        if t < self.tile_m:
            return _pad(t, self._min_tokens)
        return _pad(t, self.tile_m)

    def compute_time(self, op: Op) -> tuple[float, str]:
        return self._compute(op, op.kind, op.flops, op.gemm, op.tokens_per_expert)

    def _compute(self, op: Op, kind: str, flops: float, gemm: tuple[int, int, int, int] | None,
                 tpe: tuple[int, ...] | None) -> tuple[float, str]:
        """`compute_time` of `op` with these FLOPs, GEMM problem and tokens per expert (its own, or
        a half micro-batch's: `_half_parts`); everything else is read from `op`."""
        if kind == "gemm":
            return self._gemm_seconds(flops, gemm, op.block), "matrix"
        if kind == "grouped_gemm":
            return self._grouped_op_seconds(op, flops, tpe), "matrix"
        if kind == "attention":
            if op.phase == "decode":
                return flops / self.decode_attention_rate, "matrix"
            return flops / (self.attention_rate * self.attention_seq_ramp(op)), "matrix"
        if kind == "vector":
            return flops / self.vector_rate, "vector"
        return 0.0, "vector"

    # -- memory -----------------------------------------------------------------------------
    def memory_time(self, op: Op, residency: Residency = Residency()) -> tuple[float, str]:
        """Seconds moving the op's bytes, split between SRAM-resident and HBM bytes."""
        hbm, sram = self.byte_split(op.kind, op.bytes_read, op.bytes_written, residency)
        if self.unfused_moe_bw is not None and op.kind == "grouped_gemm":
            hbm += self.unfused_gemm_bytes(op, _routed(op))
        return self.memory_seconds(op.kind, hbm, sram)

    def byte_split(self, kind: str, bytes_read: dict[str, float], bytes_written: dict[str, float],
                   residency: Residency = Residency()) -> tuple[float, float]:
        """(HBM bytes, SRAM bytes) an op of `kind` moves."""
        rd, wr = bytes_read.get, bytes_written.get
        return self._split(kind, rd("weight", 0.0) + wr("weight", 0.0), rd("activation", 0.0) + wr("activation", 0.0),
                           rd("kv_cache", 0.0) + wr("kv_cache", 0.0), rd("state", 0.0) + wr("state", 0.0), residency)

    def _split(self, kind: str, weight: float, activation: float, kv_cache: float, state: float,
               residency: Residency) -> tuple[float, float]:
        """(HBM bytes, SRAM bytes) of an op of `kind` moving these bytes per class (read + written)."""
        # Per class (weight, activation, kv_cache, state, in this order), read + written bytes go to
        # SRAM or HBM: weights when resident, activations when fused into an on-chip kernel or
        # small enough for the SRAM budget, the state when resident; the KV cache always to HBM.
        # Classes with no bytes add nothing (each sum in class order).
        hbm = 0.0
        sram = 0.0
        if weight > 0:
            if residency.weights:
                sram += weight
            else:
                hbm += weight
        if activation > 0:
            if (self._fused_elementwise and kind in ("vector", "memory")) or (
                    self._sram_activations and activation <= self.sram_budget):
                sram += activation
            else:
                hbm += activation
        if kv_cache > 0:
            hbm += kv_cache
        if state > 0:
            if residency.state:
                sram += state
            else:
                hbm += state
        return hbm, sram

    def memory_seconds(self, kind: str, hbm: float, sram: float) -> tuple[float, str]:
        """(seconds, level) of moving these HBM and SRAM bytes for an op of `kind`."""
        bw = self.grouped_hbm_bw if kind == "grouped_gemm" else (self.matrix_hbm_bw if kind == "gemm" else self.hbm_bw)
        t_hbm = hbm / bw
        t_sram = sram / self.sram_bw
        # HBM and SRAM stream concurrently; the slower one rules.
        return (t_hbm, "hbm") if t_hbm >= t_sram else (t_sram, "sram")

    # -- whole op -----------------------------------------------------------------------------
    def overlap(self, compute_s: float, memory_s: float) -> float:
        """Seconds of a kernel that both computes and moves data: max(compute, memory) with perfect
        overlap, else the p-norm with p = efficiency.overlap_exponent (written as
        max * (1 + (min/max)^p)^(1/p) so that large p cannot overflow)."""
        hi, lo = (compute_s, memory_s) if compute_s >= memory_s else (memory_s, compute_s)
        p = self.overlap_p
        if p is None or lo <= 0.0:
            return hi
        return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)

    def overhead(self, op: Op) -> float:
        if op.kind in ("vector", "memory") and self.opts.fuse_elementwise:
            return 0.0
        if op.kind == "grouped_gemm":
            return self.grouped_overhead(op, _routed(op))
        return self.launch_s * (1.0 + self.opts.elementwise_kernels_per_matrix_kernel)

    def grouped_overhead(self, op: Op, routed_tokens: int) -> float:
        """Fixed seconds of a routed-expert op with `routed_tokens` (token, expert) rows on this
        chip: its kernels' fixed time, and with `moe_unfused_epilogue` the serial HBM time of the
        permute, activation and un-permute kernels (`unfused_moe_bytes`)."""
        o = self.launch_s * self.opts.grouped_op_kernels + self.grouped_fixed_s
        if self.unfused_moe_bw is not None and routed_tokens > 0:
            o += self.unfused_moe_bytes(op, routed_tokens) / self.unfused_moe_bw
        return o

    def unfused_gemm_bytes(self, op: Op, routed_tokens: int) -> float:
        """HBM bytes the two grouped GEMMs add with `moe_unfused_epilogue`, inside their own kernels
        (overlapped with their compute like the op's other bytes): per routed row gate/up writes
        its output, 2 I o, and the down GEMM reads the activation kernel's output, I a, and writes
        its own, H o (see `unfused_moe_bytes` for the symbols; 0 without the traced weights)."""
        dims = _expert_dims(op)
        if dims is None:
            return 0.0
        h, i = dims
        return routed_tokens * (2.0 * i * self.opts.moe_gemm_output_bytes + i * self.matrix_bytes
                                + h * self.opts.moe_gemm_output_bytes)

    def unfused_moe_bytes(self, op: Op, routed_tokens: int) -> float:
        """HBM bytes of the MoE runner's non-GEMM kernels for `routed_tokens` routed rows
        (`CostOptions.moe_unfused_epilogue`), with hidden size H and intermediate size I from the
        traced expert weights (gate/up (E, 2I, H), down (E, H, I)), a = bytes of the matrix dtype,
        o = `moe_gemm_output_bytes`, per routed row: permute 2 H a (read the token, write its copy),
        gated activation 2 I o + I a (read gate/up's output, write the down GEMM's input), un-permute
        H o (read the down GEMM's row; the combined output is the op's own write). 0 for an op
        without the traced expert weights (a single grouped GEMM: `codesign kernel`)."""
        dims = _expert_dims(op)
        if dims is None:
            return 0.0
        h, i = dims
        a, o = self.matrix_bytes, self.opts.moe_gemm_output_bytes
        return routed_tokens * (2.0 * h * a + 2.0 * i * o + i * a + h * o)

    def _overheads(self) -> None:
        """`overhead` by kind, computed once (`_parts_of`): a GEMM/attention kernel's, a grouped
        expert op's and a vector or memory op's (0 when fused)."""
        self._kernel_overhead = self.launch_s * (1.0 + self.opts.elementwise_kernels_per_matrix_kernel)
        self._grouped_overhead = self.launch_s * self.opts.grouped_op_kernels + self.grouped_fixed_s
        self._elementwise_overhead = 0.0 if self.opts.fuse_elementwise else self._kernel_overhead

    def collective_time(self, op: Op) -> float:
        return self._collective_seconds(op.collective)

    def _collective_seconds(self, c: dict | None) -> float:
        """Seconds of the collective `c` (an op's `collective`)."""
        if not c:
            return 0.0
        fn = self._collective_fn
        if fn is None:
            from codesign.mapping import collectives  # the mapping owns topology costs

            if c.get("type") == "all_to_all":
                parts = self.all_to_all_parts(c)
                if parts is not None:
                    return parts[0] * float(c.get("imbalance", 1.0) or 1.0) + parts[1]
            # memoised per network (`_NETWORKS`); a collective with a list of ranks is not keyed
            memo = self._collectives
            key = tuple(c.items())
            try:
                t = memo.get(key)
            except TypeError:
                return float(collectives.collective_time(c, self.hw))
            if t is None:
                t = float(collectives.collective_time(c, self.hw))
                if len(memo) >= _NETWORK_ENTRIES_MAX:
                    memo.clear()
                memo[key] = t
            return t
        return float(fn(c, self.hw))

    @staticmethod
    def _network_memo(hw: HardwareSpec) -> tuple[dict[tuple, tuple[float, float]], dict[tuple, float]]:
        key = network_key(hw)
        memo = _NETWORKS.get(key)
        if memo is None:
            if len(_NETWORKS) >= _NETWORKS_MAX:
                _NETWORKS.clear()
            memo = _NETWORKS[key] = ({}, {})
        return memo

    def all_to_all_parts(self, c: dict) -> tuple[float, float] | None:
        """(seconds per unit of imbalance, fixed seconds) of an all-to-all with the mapping's
        topology costs (`codesign.mapping.collectives.all_to_all_parts`), memoised per network
        (`_NETWORKS`): layers of a step differ in their all-to-alls only by load imbalance, so the
        topology is evaluated once per all-to-all. None when the model has its own collective
        function or the collective cannot be keyed (a list of ranks)."""
        if self._collective_fn is not None:
            return None
        from codesign.mapping import collectives

        key = tuple(item for item in c.items() if item[0] != "imbalance")
        try:
            parts = self._a2a.get(key)
        except TypeError:
            return None
        if parts is None:
            if len(self._a2a) >= _NETWORK_ENTRIES_MAX:
                self._a2a.clear()
            parts = self._a2a[key] = collectives.all_to_all_parts(c, self.hw)
        return parts

    def cost(self, op: Op, residency: Residency = Residency()) -> OpCost:
        """The op's cost. Its bandwidth-free parts (compute seconds, byte split, overhead) are kept
        per op for every cost model of the same `static_key` and residency (`_STATIC`); the memory
        seconds and their overlap with compute are computed at each call from them, with the same
        functions: the same floats as `reference_cost`. An op is not modified once costed (the
        mapping and the step model build new ops)."""
        if op.kind == "collective":
            t = self.collective_time(op)
            return OpCost(t, 0.0, 0.0, 0.0, "link")
        if self.static_key is None:
            return self.reference_cost(op, residency)
        if self.keep_parts:  # `_parts` written out: a step costs all its ops at one residency
            last = self._last
            memo = last[1] if residency is last[0] else self._memo_for(residency)
            hit = memo.get(id(op))
            if hit is None or hit[0] is not op:
                hit = self._static_parts(op, residency)
                self._keep(memo, op, hit)
        else:
            hit = self._static_parts(op, residency)
        _, c, unit, hbm, sram, o, bw = hit
        if unit is None:
            return c
        # memory_seconds, combine and overlap written out (the same operations in the same order)
        t_hbm = hbm / (self.hbm_bw if bw == 0 else (self.matrix_hbm_bw if bw == 1 else self.grouped_hbm_bw))
        t_sram = sram / self.sram_bw
        if t_hbm >= t_sram:
            return self.combine(c, unit, t_hbm, "hbm", o)
        return self.combine(c, unit, t_sram, "sram", o)

    def group_costs(self, ops: list[Op], residency: Residency = Residency()) -> tuple[list[OpCost], list]:
        """(`cost` of each op, each op's `content_key`): ops of equal content share one cost (a
        layer's norms, copies and element-wise ops repeat the same numbers: about half of a decoder
        layer's ops), so each distinct one is costed once. The keys serve the half ops
        (`half_seconds` is a function of the same content). An op whose parts are kept (a hardware
        variant of the same ops) is costed from them, keyless: cheaper than its key."""
        if self.static_key is None:  # a subclass: its own rules, op by op
            return [self.cost(op, residency) for op in ops], [None] * len(ops)
        seen: dict[tuple, OpCost] = {}
        out: list[OpCost] = []
        keys: list = []
        key_of = self.content_key
        cost = self.cost
        kept: dict[int, tuple] = {}
        if self.keep_parts:
            last = self._last
            kept = last[1] if residency is last[0] else self._memo_for(residency)
        for op in ops:
            if kept:
                hit = kept.get(id(op))
                if hit is not None and hit[0] is op:
                    out.append(cost(op, residency))
                    keys.append(None)
                    continue
            k = key_of(op)
            keys.append(k)
            if k is None:
                out.append(cost(op, residency))
                continue
            c = seen.get(k)
            if c is None:
                c = seen[k] = cost(op, residency)
            out.append(c)
        return out, keys

    def content_key(self, op: Op) -> tuple | None:
        """Everything `cost` and `half_seconds` read of a dense GEMM, vector or memory op (kind,
        FLOPs, GEMM problem, each class's bytes read and written), or None for an op that is costed
        by itself: other kinds (attention reads its shapes and phase, grouped GEMMs their tokens per
        expert), the fused GatedDeltaNet kernel's ops (by name), and a vector or GEMM op of zero
        FLOPs (a -0.0 and a +0.0 are equal keys but not equal compute seconds)."""
        kind = op.kind
        if kind != "vector" and kind != "memory" and kind != "gemm":
            return None
        f = op.flops
        if not f and kind != "memory":
            return None
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return None
        r, w = op.bytes_read.get, op.bytes_written.get
        if kind == "gemm" and self.block_fp8 is not None:  # `gemm_kernel` reads the block
            return (kind, f, op.gemm, op.block, r("weight", 0.0), w("weight", 0.0), r("activation", 0.0),
                    w("activation", 0.0), r("kv_cache", 0.0), w("kv_cache", 0.0), r("state", 0.0), w("state", 0.0))
        return (kind, f, op.gemm, r("weight", 0.0), w("weight", 0.0), r("activation", 0.0), w("activation", 0.0),
                r("kv_cache", 0.0), w("kv_cache", 0.0), r("state", 0.0), w("state", 0.0))

    def seconds(self, op: Op, residency: Residency = Residency()) -> float:
        """`cost(op, residency).time_s`, without the OpCost: the same operations on the same kept
        parts."""
        if op.kind == "collective":
            return self.collective_time(op)
        if self.static_key is None:  # a subclass: its own rules, wherever they are
            return self.cost(op, residency).time_s
        return self._seconds(self._parts(op, residency))

    def half_seconds(self, op: Op, residency: Residency = Residency()) -> float:
        """`seconds(half_op(op), residency)`: the op of one of two equal micro-batches (the
        engine's two-batch overlap), from `op` itself. Its kept parts (`_half_parts`, the same
        functions on the half op's fields) are kept by `op` beside its own, so no half op is built
        and a hardware variant of the same ops reuses them."""
        if self.static_key is None:  # a subclass: its own rules, on the half op
            return self.cost(half_op(op), residency).time_s
        if op.kind == "collective":
            c = op.collective
            if c and "bytes" in c:  # `half_op`'s collective
                c = dict(c)
                c["bytes"] = c["bytes"] / 2
            return self._collective_seconds(c)
        if not self.keep_parts:
            return self._seconds(self._half_parts(op, residency))
        last = self._last_half
        memo = last[1] if residency is last[0] else self._memo_for(residency, True)
        hit = memo.get(id(op))
        if hit is None or hit[0] is not op:
            hit = self._half_parts(op, residency)
            self._keep(memo, op, hit)
        return self._seconds(hit)

    def half_parts_kept(self, op: Op, residency: Residency = Residency()) -> bool:
        """Whether `half_seconds(op, residency)` finds its parts kept (a hardware variant of ops
        costed before): then it is cheaper than `half_floor`."""
        if not self.keep_parts or self.static_key is None:
            return False
        last = self._last_half
        memo = last[1] if residency is last[0] else self._memo_for(residency, True)
        hit = memo.get(id(op))
        return hit is not None and hit[0] is op

    def half_floor(self, op: Op, residency: Residency = Residency()) -> float:
        """A lower bound of `half_seconds(op, residency)` for a non-collective op, from its weight
        bytes alone: the half op streams the whole weights, so its memory seconds are at least
        weight / bandwidth (the other classes only add bytes; the compute-memory overlap is never
        below the larger part), plus the same fixed overhead; 0 for a fused GatedDeltaNet kernel
        op. Each step is a rounded operation that is monotone in its operands, so the float is not
        above `half_seconds`' (tests/sim/test_cost_parts.py checks it on every op kind). The
        engine's two-batch-overlap bound sums these first: where they already reach the plain
        layer, no half op is costed."""
        kind = op.kind
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return 0.0
        if kind == "gemm":
            o, bw = self._kernel_overhead, self.matrix_hbm_bw
        elif kind == "grouped_gemm":
            o, bw = self._grouped_overhead, self.grouped_hbm_bw
        elif kind == "vector" or kind == "memory":
            o, bw = self._elementwise_overhead, self.hbm_bw
        else:
            o, bw = self._kernel_overhead, self.hbm_bw
        w = op.bytes_read.get("weight", 0.0) + op.bytes_written.get("weight", 0.0)
        if w > 0:
            return w / (self.sram_bw if residency.weights else bw) + o
        return o

    def _seconds(self, parts: tuple) -> float:
        """An op's seconds from its kept parts (`memory_seconds`, `overlap` and `combine`'s sum
        written out: the same operations in the same order)."""
        _, c, unit, hbm, sram, o, bw = parts
        if unit is None:
            return c.time_s
        t_hbm = hbm / (self.hbm_bw if bw == 0 else (self.matrix_hbm_bw if bw == 1 else self.grouped_hbm_bw))
        t_sram = sram / self.sram_bw
        m = t_hbm if t_hbm >= t_sram else t_sram
        if c >= m:
            hi, lo = c, m
        else:
            hi, lo = m, c
        p = self.overlap_p
        if not (p is None or lo <= 0.0):
            hi = hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)
        return hi + o

    def _parts(self, op: Op, residency: Residency) -> tuple:
        """The op's kept parts at `residency` (`_static_parts`), computed on first use."""
        if not self.keep_parts:
            return self._static_parts(op, residency)
        last = self._last  # a step costs all its ops at one residency
        memo = last[1] if residency is last[0] else self._memo_for(residency)
        hit = memo.get(id(op))
        if hit is None or hit[0] is not op:
            hit = self._static_parts(op, residency)
            self._keep(memo, op, hit)
        return hit

    @staticmethod
    def _keep(memo: dict[int, tuple], op: Op, parts: tuple) -> None:
        if len(memo) >= _STATIC_OPS_MAX:
            memo.clear()
        memo[id(op)] = parts

    def _memo_for(self, residency: Residency, half: bool = False) -> dict[int, tuple]:
        """The kept parts at `residency` (of the ops, or of their halves), remembered as the last
        used (one attribute: a thread never sees one residency with another's parts)."""
        memo = self._static.get((residency, half))
        if memo is None:
            memo = self._static[(residency, half)] = self._static_memo(residency, half)
        if half:
            self._last_half = (residency, memo)
        else:
            self._last = (residency, memo)
        return memo

    def _static_memo(self, residency: Residency, half: bool = False) -> dict[int, tuple]:
        key = (self.static_key, residency, half)
        memo = _STATIC.get(key)
        if memo is None:
            if len(_STATIC) >= _STATIC_KEYS_MAX:
                _STATIC.clear()
            memo = _STATIC[key] = {}
        return memo

    def _static_parts(self, op: Op, residency: Residency) -> tuple:
        """(op, compute seconds, unit, HBM bytes, SRAM bytes, overhead, HBM bandwidth index) of a
        non-collective op, or (op, its OpCost, None, 0, 0, 0, 0) where the cost reads no bandwidth
        (the fused GatedDeltaNet chunk kernel's ops)."""
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return op, self._gdn_cost(op, op.flops, op.gemm), None, 0.0, 0.0, 0.0, 0
        rd, wr = op.bytes_read.get, op.bytes_written.get
        return self._parts_of(op, op.kind, op.flops, op.gemm, op.tokens_per_expert,
                              rd("weight", 0.0) + wr("weight", 0.0), rd("activation", 0.0) + wr("activation", 0.0),
                              rd("kv_cache", 0.0) + wr("kv_cache", 0.0), rd("state", 0.0) + wr("state", 0.0), residency)

    def _half_parts(self, op: Op, residency: Residency) -> tuple:
        """`_static_parts(half_op(op), residency)` with `op` in the first place, from `op`'s fields:
        the half op's FLOPs, GEMM problem, tokens per expert and bytes as `half_op` makes them,
        through the same functions (tests/sim/test_cost_parts.py compares the two on every op
        kind)."""
        flops = op.flops / 2
        gemm = op.gemm
        if gemm is not None:
            b, m, n, k = gemm
            gemm = (b, max(1, math.ceil(m / 2)), n, k)
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return op, self._gdn_cost(op, flops, gemm), None, 0.0, 0.0, 0.0, 0
        tpe = op.tokens_per_expert
        if tpe is not None:
            tpe = tuple([(t + 1) // 2 for t in tpe])
        rd, wr = op.bytes_read.get, op.bytes_written.get
        # `_halved`'s dicts: every class but the weights halves (a class absent stays absent: 0.0)
        return self._parts_of(op, op.kind, flops, gemm, tpe, rd("weight", 0.0) + wr("weight", 0.0),
                              rd("activation", 0.0) / 2 + wr("activation", 0.0) / 2,
                              rd("kv_cache", 0.0) / 2 + wr("kv_cache", 0.0) / 2,
                              rd("state", 0.0) / 2 + wr("state", 0.0) / 2, residency)

    def _parts_of(self, op: Op, kind: str, flops: float, gemm: tuple[int, int, int, int] | None,
                  tpe: tuple[int, ...] | None, weight: float, activation: float, kv_cache: float, state: float,
                  residency: Residency) -> tuple:
        """The kept parts of `op` with these FLOPs, GEMM problem, tokens per expert and bytes per
        class: `compute_time`, `byte_split` (`_split`) and `overhead` written out for the vector
        and memory ops (most of a layer's), the same operations in the same order."""
        if kind == "vector":
            c, unit = flops / self.vector_rate, "vector"
        elif kind == "memory":
            c, unit = 0.0, "vector"
        else:
            c, unit = self._compute(op, kind, flops, gemm, tpe)
        # `_split` written out
        hbm = 0.0
        sram = 0.0
        if weight > 0:
            if residency.weights:
                sram += weight
            else:
                hbm += weight
        if activation > 0:
            if (self._fused_elementwise and kind in ("vector", "memory")) or (
                    self._sram_activations and activation <= self.sram_budget):
                sram += activation
            else:
                hbm += activation
        if kv_cache > 0:
            hbm += kv_cache
        if state > 0:
            if residency.state:
                sram += state
            else:
                hbm += state
        # `overhead` and the HBM bandwidth `memory_seconds` uses for this kind (0 hbm_bw, 1
        # matrix_hbm_bw, 2 grouped_hbm_bw)
        if kind == "gemm":
            return op, c, unit, hbm, sram, self._kernel_overhead, 1
        if kind == "grouped_gemm":
            if self.unfused_moe_bw is None:
                return op, c, unit, hbm, sram, self._grouped_overhead, 2
            # MoE kernels through HBM: the GEMMs' intermediate buffers and the serial kernels, by
            # these routed rows (`memory_time`, `overhead`)
            routed = sum([t for t in tpe or () if t > 0])
            hbm += self.unfused_gemm_bytes(op, routed)
            return op, c, unit, hbm, sram, self.grouped_overhead(op, routed), 2
        if kind == "vector" or kind == "memory":
            return op, c, unit, hbm, sram, self._elementwise_overhead, 0
        return op, c, unit, hbm, sram, self._kernel_overhead, 0

    def reference_cost(self, op: Op, residency: Residency = Residency()) -> OpCost:
        """The op's cost computed in full (what `cost` keeps parts of; tests compare the two)."""
        if op.kind == "collective":
            t = self.collective_time(op)
            return OpCost(t, 0.0, 0.0, 0.0, "link")
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return self.gdn_chunk_cost(op)
        c, unit = self.compute_time(op)
        m, level = self.memory_time(op, residency)
        return self.combine(c, unit, m, level, self.overhead(op))

    def gdn_chunk_cost(self, op: Op) -> OpCost:
        """One op of the fused GatedDeltaNet chunk kernel (FlashInfer's / FLA's chunk_gated_delta_rule).

        The kernel runs one thread block per (sequence, value head), walking that sequence's chunks
        in order, on `efficiency.gdn_chunk_units` block slots. A recurrence matrix op (the state
        hand-over's products, op names in the `chunk_rule.recurrence` scope, `repeat` = chunks; its
        GEMM batch is this chip's (sequence, head) pairs P) costs
        FLOPs / (16-bit peak x gdn_chunk x occupancy), occupancy = P / (ceil(P / units) x units),
        plus the per-kernel fixed time. Every other op of the region (the chunk-parallel products
        and solves, element-wise work, copies) runs inside the same kernel: its work is part of the
        measured figure `gdn_chunk` was set from (per recurrence FLOP), and its bytes stay on chip,
        so it costs nothing of its own. The kernel's own HBM traffic (q, k, v and gates in, o out)
        is hidden under its compute (a named simplification, docs/cost-model.md)."""
        return self._gdn_cost(op, op.flops, op.gemm)

    def _gdn_cost(self, op: Op, flops: float, gemm: tuple[int, int, int, int] | None) -> OpCost:
        """`gdn_chunk_cost` of `op` with these FLOPs and GEMM problem (`_half_parts`)."""
        if op.kind != "gemm" or gemm is None or flops <= 0 or _GDN_RECURRENCE not in op.name:
            return OpCost(0.0, 0.0, 0.0, 0.0, "matrix")
        pairs = max(1, int(gemm[0]))
        units = self.gdn_units
        occupancy = pairs / (math.ceil(pairs / units) * units)
        c = flops / (self.gdn_rate * occupancy)  # type: ignore[operator]
        return self.combine(c, "matrix", 0.0, "sram", self.launch_s)

    def combine(self, c: float, unit: str, m: float, level: str, o: float) -> OpCost:
        """The op's cost from its compute seconds (on `unit`), memory seconds (from `level`) and
        fixed overhead."""
        if c >= m:
            bound = unit if c > 0 else level
            hi, lo = c, m
        else:
            bound = level
            hi, lo = m, c
        if o > max(c, m):
            bound = "overhead"
        p = self.overlap_p  # `overlap` written out
        if not (p is None or lo <= 0.0):
            hi = hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)
        return OpCost(hi + o, c, m, o, bound)
