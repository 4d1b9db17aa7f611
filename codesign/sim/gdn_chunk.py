"""The fused GatedDeltaNet chunk kernel's cost (`CostOptions.fused_gdn_chunk`,
`efficiency.gdn_chunk`): the op-name scopes that mark its ops and the rule that charges them
(`GdnChunkKernel`, a part of `codesign.sim.cost.CostModel`)."""

from __future__ import annotations

import math

from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec
from codesign.sim.op_cost import OpCost

# Op-name scopes of the GatedDeltaNet chunked prefill and of its chunk-by-chunk state hand-over
# (codesign.models.gated_deltanet.CHUNK_RULE_SCOPE, RECURRENCE_SCOPE): the first is a prefix of both.
_GDN_SCOPE = ".chunk_rule"
_GDN_RECURRENCE = ".chunk_rule.recurrence/"
# Matrix products of one chunk of the state hand-over (`codesign.models.gated_deltanet.chunk_recurrence`:
# w @ S, q @ S, attn @ v_new, k^T @ v_new): a call's state and fixed seconds are spread evenly over them.
RECURRENCE_PRODUCTS = 4


class GdnChunkKernel:
    """`CostModel`'s fused GatedDeltaNet chunk kernel rule; sets `gdn_rate`, `gdn_units`,
    `gdn_state_s`, `gdn_fixed_s` (`_gdn_kernel`) and reads the model's `opts`, `launch_s` and `combine`."""

    def _gdn_kernel(self, hw: HardwareSpec) -> None:
        """The kernel's rate, block slots, state and fixed seconds from the spec (`gdn_chunk_cost`)."""
        eff, chip = hw.efficiency, hw.chip
        # Fused GatedDeltaNet chunk kernel: 16-bit tensor-core rate of one fully busy chip at the
        # kernel's efficiency, and its block slots (None: the curve is off for this chip or by option).
        self.gdn_rate: float | None = None
        self.gdn_units = eff.gdn_chunk_units or 1
        if self.opts.fused_gdn_chunk and eff.gdn_chunk is not None:
            self.gdn_rate = chip.matrix.peak("bf16") * eff.gdn_chunk
        # Its state load/store seconds per wave and fixed seconds per call (None: one launch per
        # recurrence product, no state term; `gdn_chunk_cost`).
        self.gdn_state_s: float | None = eff.gdn_chunk_state_s
        self.gdn_fixed_s: float | None = eff.gdn_chunk_fixed_s

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
        is hidden under its compute (a named simplification, docs/cost-model.md).

        With `efficiency.gdn_chunk_state_s` / `gdn_chunk_fixed_s` (`_state_and_fixed`): each block
        also loads its initial state and stores its final one, `gdn_chunk_state_s` per wave of
        blocks, in series with the compute, and the call costs `gdn_chunk_fixed_s` once in place of
        a launch per product."""
        return self._gdn_cost(op, op.flops, op.gemm)

    def _gdn_cost(self, op: Op, flops: float, gemm: tuple[int, int, int, int] | None) -> OpCost:
        """`gdn_chunk_cost` of `op` with these FLOPs and GEMM problem (`_half_parts`)."""
        if op.kind != "gemm" or gemm is None or flops <= 0 or _GDN_RECURRENCE not in op.name:
            return OpCost(0.0, 0.0, 0.0, 0.0, "matrix")
        pairs = max(1, int(gemm[0]))
        units = self.gdn_units
        waves = math.ceil(pairs / units)
        occupancy = pairs / (waves * units)
        c = flops / (self.gdn_rate * occupancy)  # type: ignore[operator]
        if self.gdn_state_s is None:
            return self.combine(c, "matrix", 0.0, "sram", self.launch_s)
        return self._state_and_fixed(c, waves)

    def _state_and_fixed(self, c: float, waves: int) -> OpCost:
        """One recurrence product's share (1 / `RECURRENCE_PRODUCTS`) of the call's state seconds,
        waves x `gdn_chunk_state_s` (each block's initial-state load and final-state store, not
        overlapped with its chunks), and of its fixed seconds, added to the product's compute `c`."""
        m = waves * self.gdn_state_s / RECURRENCE_PRODUCTS  # type: ignore[operator]
        o = self.gdn_fixed_s / RECURRENCE_PRODUCTS  # type: ignore[operator]
        bound = "overhead" if o > max(c, m) else ("matrix" if c >= m else "hbm")
        return OpCost(c + m + o, c, m, o, bound)
