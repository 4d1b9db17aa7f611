"""The fused GatedDeltaNet chunk kernel's cost (`CostOptions.fused_gdn_chunk`,
`efficiency.gdn_chunk`): the op-name scopes that mark its ops and the rule that charges them
(`GdnChunkKernel`, a part of `codesign.sim.cost.CostModel`)."""

from __future__ import annotations

import math

from codesign.graph.op import Op
from codesign.sim.op_cost import OpCost

# Op-name scopes of the GatedDeltaNet chunked prefill and of its chunk-by-chunk state hand-over
# (codesign.models.gated_deltanet.CHUNK_RULE_SCOPE, RECURRENCE_SCOPE): the first is a prefix of both.
_GDN_SCOPE = ".chunk_rule"
_GDN_RECURRENCE = ".chunk_rule.recurrence/"


class GdnChunkKernel:
    """`CostModel`'s fused GatedDeltaNet chunk kernel rule; reads the model's `gdn_rate`,
    `gdn_units`, `launch_s` and `combine`."""

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
