"""Scaling traced ops to one chip's share and a deployment's precision, fast.

The tracer counts bytes at the traced dtypes (bf16 weights/activations/KV, fp32 state) for the
whole step; the mapping gives each chip a share (per byte class) and rescales to the precision.
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields

from codesign.graph.op import BYTE_CLASSES, Op
from codesign.mapping.plan import Precision

class Scaler:
    """Scales ops' byte dicts by per-class factors times the precision's scale, for one map_step.

    Speed: ``Precision.scale`` is evaluated once per class, not per op. And layers of one kind
    share their traced byte dicts (the tracer clones one segment's ops per layer, sharing the
    dicts), so each distinct (dict, factors) pair is scaled once and the result is shared the same
    way: ops are never mutated in place (the engine and cost model build new dicts). The memo is
    keyed by object identity and holds a reference to each source dict, so an id is never reused
    while the memo lives (one map_step call).
    Arithmetic is exactly ``bytes * f[class] * scale(class)`` in that order, as before."""

    def __init__(self, prec: Precision) -> None:
        self.scale = {c: prec.scale(c) for c in BYTE_CLASSES}
        self._memo: dict[tuple[int, int], tuple[dict[str, float], dict[str, float], dict[str, float]]] = {}

    def bytes(self, d: dict[str, float], f: dict[str, float]) -> dict[str, float]:
        key = (id(d), id(f))
        hit = self._memo.get(key)
        if hit is None:
            s = self.scale
            hit = self._memo[key] = ({c: d.get(c, 0.0) * f[c] * s[c] for c in BYTE_CLASSES}, d, f)
        return hit[0]

    def op(self, op: Op, flops_f: float, f: dict[str, float],
           gemm: tuple[int, int, int, int] | None | bool = False) -> Op:
        """`op` with FLOPs x flops_f and bytes scaled; `gemm` replaces the GEMM shape unless False."""
        return op_with(op, op.flops * flops_f, self.bytes(op.bytes_read, f), self.bytes(op.bytes_written, f),
                        op.gemm if gemm is False else gemm)


# Op's fields in order, for the positional constructor below; if Op changes, the slower generic
# copy is used (and tests/sim/test_engine.py::test_op_fields_known says so).
OP_FIELDS = ("name", "target", "kind", "block", "layer", "layer_type", "phase", "in_shapes", "out_shapes", "dtype",
              "flops", "bytes_read", "bytes_written", "repeat", "gemm", "tokens_per_expert", "expert_weight_bytes",
              "expert_flops_per_token", "collective")
OP_FIELDS_KNOWN = tuple(f.name for f in dataclass_fields(Op)) == OP_FIELDS


def op_with(op: Op, flops: float, bytes_read: dict[str, float], bytes_written: dict[str, float],
            gemm: tuple[int, int, int, int] | None, *, tokens_per_expert: tuple[int, ...] | None | bool = False,
            collective: dict | None | bool = False) -> Op:
    """A new Op equal to `op` but for the four arguments (and `tokens_per_expert`, `collective`
    unless False). Positional construction: ~2.5x faster than `Op.clone` plus assignments and ~10x
    faster than `dataclasses.replace` (~5,000 ops a step)."""
    tpe = op.tokens_per_expert if tokens_per_expert is False else tokens_per_expert
    coll = op.collective if collective is False else collective
    if not OP_FIELDS_KNOWN:
        new = op.clone()
        new.flops, new.bytes_read, new.bytes_written, new.gemm = flops, bytes_read, bytes_written, gemm
        new.tokens_per_expert, new.collective = tpe, coll
        return new
    return Op(op.name, op.target, op.kind, op.block, op.layer, op.layer_type, op.phase, op.in_shapes, op.out_shapes,
              op.dtype, flops, bytes_read, bytes_written, op.repeat, gemm, tpe,
              op.expert_weight_bytes, op.expert_flops_per_token, coll)
