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
  peak x fraction x M / (M + m_half)), K x k_s), the second term one output tile's serial K loop;
  or TensorRT-LLM's per-tensor FP8 cuBLASLt GEMM (`trtllm_cublaslt_fp8`, `efficiency.cublaslt_fp8*`)
  for every dense GEMM: the family rule with its own fraction, M and K half-points and operand
  streaming fraction.
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

This module holds `CostModel` and its rules (compute, memory, overhead, `reference_cost`,
`combine`); its parts live in modules of their own, and the names other modules import from here
are re-exported (`__all__`): `codesign.sim.cost_options` (`CostOptions`, `MoeKernel`, `GemmKernel`,
`BLOCK_FP8_LINEAR_BLOCKS`), `codesign.sim.op_cost` (`OpCost`, `Residency`),
`codesign.sim.kept_parts` (`KeptParts`: `cost`, `seconds`, `group_costs`, `content_key`,
`half_seconds`, `half_floor` from the ops' kept bandwidth-free parts; `half_op`),
`codesign.sim.collective_cost` (`NetworkCollectives`: collective seconds, memoised per
`network_key`), `codesign.sim.moe_kernel` (`MoeKernels`: the routed-expert kernel curves and the
MoE runner's kernels through HBM), `codesign.sim.mlp_activation` (`MlpActivationKernel`: the
dense MLP's SwiGLU kernel through HBM, `CostOptions.mlp_unfused_activation`) and
`codesign.sim.gdn_chunk` (`GdnChunkKernel`).
"""

from __future__ import annotations

import math
from typing import Callable

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw.spec import BYTES_PER_ELEMENT, HardwareSpec
from codesign.graph.mixed import causal_keys_per_row
from codesign.sim.attention_kernel import AttentionKernels
from codesign.sim.collective_cost import NetworkCollectives, network_key
from codesign.sim.cost_options import (BLOCK_FP8_LINEAR_BLOCKS, AttentionKernel, CostOptions, GemmKernel, MlaKernel,
                                     MoeKernel)
from codesign.sim.gdn_chunk import _GDN_SCOPE, GdnChunkKernel
from codesign.sim.kept_parts import KeptParts, _cache_or_state, half_op
from codesign.sim.mlp_activation import MlpActivationKernel, is_mlp_down
from codesign.sim.moe_kernel import MoeKernels, _routed
from codesign.sim.op_cost import OpCost, Residency

# What other modules import from here (the names that live in the parts above among them).
__all__ = ["AttentionKernel", "BLOCK_FP8_LINEAR_BLOCKS", "CostModel", "CostOptions", "GemmKernel", "MlaKernel", "MoeKernel",
           "OpCost", "Residency",
           "attention_keys_per_row", "half_op", "network_key", "spec_dtype", "wider"]

# Torch dtype names (as the tracer writes them) -> spec dtype names.
_TORCH_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "int8": "int8",
}


def spec_dtype(name: str) -> str:
    """A spec dtype name ('bf16', 'fp8', ...) from either a spec or a torch dtype name."""
    if name in BYTES_PER_ELEMENT:
        return name
    return _TORCH_DTYPES.get(name, "bf16")


def wider(a: str, b: str) -> str:
    """The wider of two spec dtypes (the one a mixed-precision op computes in)."""
    return a if BYTES_PER_ELEMENT[a] >= BYTES_PER_ELEMENT[b] else b


# Padded-token tables by (tile quantisation, tile M, grouped minimum tokens): see `expert_padding`.
_PAD_TABLES: dict[tuple[bool, int, int], dict[int, int]] = {}


# CostModel attributes a cost reads at call time (the memory seconds and the overlap), and those
# that are not values (the spec, caches): every other attribute is part of `static_key`.
_CALL_TIME = frozenset({"hbm_bw", "matrix_hbm_bw", "grouped_hbm_bw", "elementwise_hbm_bw", "sram_bw", "overlap_p"})
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
    return causal_keys_per_row(t, s)


def _pad(x: int, tile: int) -> int:
    return int(math.ceil(x / tile) * tile) if x > 0 else 0


class CostModel(KeptParts, MoeKernels, MlpActivationKernel, NetworkCollectives, GdnChunkKernel, AttentionKernels):
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
        self.grouped_rate = chip.matrix.peak(self.matrix_dtype) * eff.grouped_gemm_for(self.matrix_dtype)
        self.overlap_p = eff.overlap_exponent
        # Attention rates, the prefill kernel, decode occupancy and the MLA kernel (`AttentionKernels`).
        self._attention_rates(hw)
        vec_peak = chip.vector.bf16 or chip.vector.fp32
        self.vector_rate = vec_peak * eff.vector
        self.hbm_bw = chip.hbm.bandwidth * eff.memory
        # Operand streaming inside matrix kernels (efficiency.matrix_memory; none = memory).
        self.matrix_hbm_bw = chip.hbm.bandwidth * (eff.matrix_memory or eff.memory)
        # HBM streaming of the element-wise ops: with `elementwise_model: regions`, the fused
        # kernels' own fraction (efficiency.elementwise_memory; none = memory); else `hbm_bw`.
        regions = self.opts.elementwise_regions
        self.elementwise_hbm_bw = chip.hbm.bandwidth * (eff.elementwise_memory or eff.memory) if regions else self.hbm_bw
        self._elementwise_bw_code = 3 if regions else 0  # the kept parts' bandwidth selector (`_parts_of`)
        self.k_half = eff.gemm_k_half
        self.launch_s = self.opts.launch_overhead_s if self.opts.launch_overhead_s is not None else eff.kernel_overhead
        # SRAM streams at its own peak; efficiency.memory applies to it too (same access patterns).
        self.sram_bw = chip.sram.bandwidth * eff.memory
        self.sram_budget = chip.sram.capacity * self.opts.sram_fraction
        self.tile_m, self.tile_n = chip.matrix.tile
        # tokens of one expert -> padded tokens, shared by cost models with the same padding rule
        # (below the tile's M: swap-AB steps for grouped kernels, the Triton kernel's row block)
        self.triton_moe = self.opts.moe_kernel.startswith("triton")  # Triton's row block (not swap-AB)
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
        # The dense MLP's activation kernel through HBM (`CostOptions.mlp_unfused_activation`),
        # keyed the same way; None when off.
        self.unfused_mlp_bw: float | None = self.hbm_bw if self.opts.mlp_unfused_activation else None
        self.matrix_bytes = BYTES_PER_ELEMENT.get(self.matrix_dtype, 2.0)
        self._gdn_kernel(hw)  # the fused GatedDeltaNet chunk kernel's rate and terms (`GdnChunkKernel`)
        self._overheads()
        # byte_split's flags, read once per op
        # (with `elementwise_model: regions` the element-wise ops carry their regions' external
        # bytes, `codesign.sim.elementwise_regions`, split like any op's)
        self._fused_elementwise = (self.opts.fused_activations_on_chip and self.opts.fuse_elementwise
                                   and not self.opts.elementwise_regions)
        self._sram_activations = self.opts.sram_activations
        # whether vector/memory ops' activations may take the SRAM split (`elementwise_sram_split`)
        self._sram_elementwise = self._sram_activations and (not self.opts.elementwise_regions
                                                             or self.opts.elementwise_sram_split)
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

    def _gemm_kernel(self, hw: HardwareSpec) -> None:
        """Rate, M half-point and K-loop seconds of the dense projection kernel
        (`CostOptions.gemm_kernel`); None: the family GEMM curve. "cutlass_block_fp8" is refused on
        a deployment whose matrix dtype is not FP8 or on a chip without that curve."""
        self.block_fp8: tuple[float, float, float] | None = None
        self.cublaslt: tuple[float, float, float | None] | None = None
        if self.opts.gemm_kernel == "calibrated":
            return
        eff = hw.efficiency
        if self.matrix_dtype != "fp8":
            what = "per-tensor" if self.opts.gemm_kernel == "trtllm_cublaslt_fp8" else "block-scaled"
            raise CodesignError(f"cost.gemm_kernel: {self.opts.gemm_kernel} is a {what} FP8 kernel; "
                                f"this deployment's GEMMs compute in {self.matrix_dtype}")
        if self.opts.gemm_kernel == "trtllm_cublaslt_fp8":
            self._cublaslt_kernel(hw)
            return
        if eff.cutlass_block_fp8 is None:
            raise CodesignError(f"cost.gemm_kernel: {self.opts.gemm_kernel} needs efficiency.cutlass_block_fp8 of "
                                f"{hw.name} (a fit on that kernel's rows); {hw.name} has none")
        self.block_fp8 = (hw.chip.matrix.peak("fp8") * eff.cutlass_block_fp8, eff.cutlass_block_fp8_m_half,
                          eff.cutlass_block_fp8_k_s)

    def _cublaslt_kernel(self, hw: HardwareSpec) -> None:
        """TensorRT-LLM's per-tensor FP8 GEMM (`cublas_scaled_mm`) for every dense GEMM of the
        deployment: its rate, M half-point and K half-point (`_gemm_seconds`) and its operand
        streaming bandwidth (`matrix_hbm_bw`, read at call time like the family's)."""
        eff = hw.efficiency
        if eff.cublaslt_fp8 is None:
            raise CodesignError(f"cost.gemm_kernel: trtllm_cublaslt_fp8 needs efficiency.cublaslt_fp8 of {hw.name} "
                                f"(a fit on that kernel's rows); {hw.name} has none")
        self.cublaslt = (hw.chip.matrix.peak("fp8") * eff.cublaslt_fp8, eff.cublaslt_fp8_m_half, eff.cublaslt_fp8_k_half)
        self.matrix_hbm_bw = hw.chip.hbm.bandwidth * (eff.cublaslt_fp8_memory or eff.matrix_memory or eff.memory)

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
        half = self.grouped_k_half  # the family's `gemm_k_half`, or the Triton curve's own (None: none)
        if half is None:
            return 1.0

        def ramp(k: float) -> float:
            return 1.0 if k <= 0 else k / (k + half)

        if op.gemm is not None:
            return ramp(op.gemm[3])
        shapes = op.in_shapes
        if len(shapes) >= 5 and len(shapes[3]) == 3 and len(shapes[4]) == 3:
            _, two_i, h = shapes[3]
            _, _, i = shapes[4]
            f_gu, f_d = 2.0 * h * two_i, 2.0 * i * h
            return (f_gu + f_d) / (f_gu / ramp(h) + f_d / ramp(i))
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
        if self.cublaslt is not None:
            rate, half, k_half = self.cublaslt
            ramp = mp / (mp + half) if self.opts.small_m_ramp else 1.0
            k_ramp = k / (k + k_half) if k_half is not None and k > 0 else 1.0
            return flops / (rate * ramp * k_ramp)
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
            if self.mla_terms is not None and op.block == "mla":  # the engine's MLA prefill kernel
                return flops / (self.attention_rate * self.attention_seq_ramp(op) * self.mla_terms[0]), "matrix"
            paged = self.paged_prefill_seconds(op, flops, attention_keys_per_row(op))
            if paged is not None:  # `CostOptions.attention_kernel` other than "flash_attention"
                return paged, "matrix"
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
        if op.kind == "attention":
            hbm = hbm * self.attention_terms(op)[0]
        return self.memory_seconds(op.kind, hbm, sram, not _cache_or_state(op))

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
            elementwise = kind == "vector" or kind == "memory"
            if (self._fused_elementwise and elementwise) or (
                    (self._sram_elementwise if elementwise else self._sram_activations)
                    and activation <= self.sram_budget):
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

    def memory_seconds(self, kind: str, hbm: float, sram: float, elementwise: bool = True) -> tuple[float, str]:
        """(seconds, level) of moving these HBM and SRAM bytes for an op of `kind`; a vector or memory
        op streams at the element-wise kernels' rate (`elementwise_hbm_bw`) unless `elementwise` is
        False (an op moving KV-cache or recurrent-state bytes: a cache write, a recurrent kernel)."""
        if kind == "grouped_gemm":
            bw = self.grouped_hbm_bw
        elif kind == "gemm":
            bw = self.matrix_hbm_bw
        else:
            bw = self.elementwise_hbm_bw if elementwise and (kind == "vector" or kind == "memory") else self.hbm_bw
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
        if self.unfused_mlp_bw is not None and is_mlp_down(op):
            return self.mlp_down_overhead(op.gemm)
        kernel = self.launch_s * (1.0 + self.opts.elementwise_kernels_per_matrix_kernel)
        if op.kind == "attention":  # the attention kernel's fixed time per call (`attention_terms`)
            return kernel + self.attention_terms(op)[1]
        return kernel

    def _overheads(self) -> None:
        """`overhead` by kind, computed once (`_parts_of`): a GEMM/attention kernel's, a grouped
        expert op's and a vector or memory op's (0 when fused)."""
        self._kernel_overhead = self.launch_s * (1.0 + self.opts.elementwise_kernels_per_matrix_kernel)
        self._grouped_overhead = self.launch_s * self.opts.grouped_op_kernels + self.grouped_fixed_s
        self._elementwise_overhead = 0.0 if self.opts.fuse_elementwise else self._kernel_overhead

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
