"""Layer segments at new shapes from a few recordings, exactly.

Every op's FLOPs, bytes and shapes in a recorded segment are affine in the number of sequences
(sequences are independent; weights do not grow) and, for layers that read the cache in proportion,
in the cached length. So a segment recorded at two adjacent values of one of them extrapolates to
any other value (`extrapolate`), and one recorded at the four corners (1 and 2 sequences, two
adjacent cached lengths) is a bilinear function of both (`Bilinear`, evaluated in one pass). The
recorded quantities are integers, so the values are exact. Where two recordings differ in
structure (another kernel path) there is no extrapolation (None) and the caller records directly
(`codesign.graph.tracing`).
"""

from __future__ import annotations

import hashlib
import marshal
import math
import os
import sys
from types import CodeType
from typing import Callable

from codesign.graph.op import Op
from codesign.graph.segment import Segment


def lerp(a, b, t: int):
    """a + (b - a) * t over numbers, tuples and dicts of them."""
    if isinstance(a, dict):
        return {k: a[k] + (b[k] - a[k]) * t for k in a}
    if isinstance(a, tuple):
        return tuple(lerp(x, y, t) for x, y in zip(a, b, strict=True))
    return a + (b - a) * t


def lerp_shapes(a: tuple, b: tuple, t: int) -> tuple:
    """`lerp` of a tuple of shapes (tuples of ints); shared when the two are equal."""
    if a == b:
        return a
    return tuple(p if p == q else tuple(x + (y - x) * t for x, y in zip(p, q, strict=True))
                 for p, q in zip(a, b, strict=True))


def lerp_bytes(a: dict, b: dict, t: int) -> dict:
    """`lerp` of a byte-class dict; shared when the two are equal (weights: every batch)."""
    if a == b:
        return a
    return {k: v + (b[k] - v) * t for k, v in a.items()}


def same_structure(s1: Segment, s2: Segment) -> bool:
    """Whether two recordings have the same ops, edges and shape ranks (only sizes differ)."""
    if len(s1.ops) != len(s2.ops) or s1.edges != s2.edges or s1.entries != s2.entries or s1.exit != s2.exit:
        return False
    for a, b in zip(s1.ops, s2.ops):
        if a.target != b.target or len(a.in_shapes) != len(b.in_shapes) or len(a.out_shapes) != len(b.out_shapes) \
                or (a.gemm is None) != (b.gemm is None) or a.repeat != b.repeat \
                or (a.tokens_per_expert is None) != (b.tokens_per_expert is None) \
                or (a.tokens_per_expert is not None and len(a.tokens_per_expert) != len(b.tokens_per_expert)) \
                or any(len(x) != len(y) for x, y in zip(a.in_shapes + a.out_shapes, b.in_shapes + b.out_shapes)):
            return False
    return True


def extrapolate(s1: Segment, s2: Segment, t: int) -> Segment | None:
    """s1 + (s2 - s1) * t for two recordings one step apart (in batch or in cached length), or None
    when they differ in structure."""
    if not same_structure(s1, s2):
        return None
    ops = []
    for a, b in zip(s1.ops, s2.ops):
        op = a.clone()
        op.in_shapes = lerp_shapes(a.in_shapes, b.in_shapes, t)
        op.out_shapes = lerp_shapes(a.out_shapes, b.out_shapes, t)
        op.flops = a.flops + (b.flops - a.flops) * t
        op.bytes_read = lerp_bytes(a.bytes_read, b.bytes_read, t)
        op.bytes_written = lerp_bytes(a.bytes_written, b.bytes_written, t)
        op.gemm = None if a.gemm is None else lerp(a.gemm, b.gemm, t)
        if a.tokens_per_expert is not None:
            op.tokens_per_expert = lerp(a.tokens_per_expert, b.tokens_per_expert, t)
        ops.append(op)
    return Segment(ops=ops, edges=s1.edges, entries=s1.entries, exit=s1.exit, params=s1.params, wall_s=0.0)


# Evaluations of a form (or a placement) by the table-driven reference before its evaluator is
# compiled: a form asked for once (a one-off chunk length) is not worth its 20-30 ms compile.
COMPILE_AFTER = 2


class Linear:
    """`extrapolate(s1, s2, t)` of two recordings one step apart, as a function of t compiled once
    (one expression per op: a + (b - a) * t with b - a taken once), for the pairs a step asks for
    at every shape (the embedding and head at a new batch)."""

    def __init__(self, s1: Segment, s2: Segment) -> None:
        self.s1, self.s2 = s1, s2
        self._fn: Callable[[int], list[Op]] | None = None
        self._uses = 0

    @staticmethod
    def build(s1: Segment, s2: Segment) -> "Linear | None":
        """None when the two recordings differ in structure (as `extrapolate`)."""
        return Linear(s1, s2) if same_structure(s1, s2) else None

    def at(self, t: int) -> Segment:
        fn = self._fn
        if fn is None:
            self._uses += 1
            if self._uses < COMPILE_AFTER:
                return self.at_reference(t)
            fn = self._fn = _compile_linear(self.s1, self.s2)
        s = self.s1
        return Segment(ops=fn(t), edges=s.edges, entries=s.entries, exit=s.exit, params=s.params, wall_s=0.0)

    def at_reference(self, t: int) -> Segment:
        return extrapolate(self.s1, self.s2, t)  # type: ignore[return-value]


def _compile_linear(s1: Segment, s2: Segment) -> "Callable[[int], list[Op]]":
    """A function t -> `extrapolate(s1, s2, t).ops`, value for value (see `_compile`)."""
    consts: list = []

    def num(x, y) -> str:
        return f"({_literal(x, consts)} + {_literal(y - x, consts)} * t)"

    def shapes(a: tuple, b: tuple) -> str:
        if a == b:
            return _const(a, consts)
        return "(" + "".join((_const(p, consts) if p == q else "(" + "".join(num(x, y) + ", " for x, y in zip(p, q))
                              + ")") + ", " for p, q in zip(a, b)) + ")"

    def nbytes(a: dict, b: dict) -> str:
        if a == b:
            return _const(a, consts)
        return "{" + ", ".join(f"{k!r}: {num(v, b[k])}" for k, v in a.items()) + "}"

    def tup(x, y) -> str:
        return _const(x, consts) if x is None else "(" + "".join(num(p, q) + ", " for p, q in zip(x, y)) + ")"

    rows = [_op_src(a, consts, _const(a.name, consts), repr(a.layer), _const(a.layer_type, consts),
                    shapes(a.in_shapes, b.in_shapes), shapes(a.out_shapes, b.out_shapes), num(a.flops, b.flops),
                    nbytes(a.bytes_read, b.bytes_read), nbytes(a.bytes_written, b.bytes_written),
                    tup(a.gemm, b.gemm), tup(a.tokens_per_expert, b.tokens_per_expert))
            for a, b in zip(s1.ops, s2.ops)]
    return _function("t", rows, consts, "<codesign.graph.extrapolation.Linear>")


def _op_src(a: Op, consts: list, name: str, layer: str, layer_type: str, ins: str, outs: str, flops: str, rd: str,
            wr: str, gemm: str, tpe: str) -> str:
    """Source of `Op(...)` built from the fields a form computes (given as source) and the others
    taken from the recorded op `a` (its own objects, by `_const`), in `Op`'s field order."""
    fields = [name, _const(a.target, consts), repr(a.kind), repr(a.block), layer, layer_type, repr(a.phase), ins,
              outs, _const(a.dtype, consts), flops, rd, wr, repr(a.repeat), gemm, tpe,
              _const(a.expert_weight_bytes, consts), _const(a.expert_flops_per_token, consts),
              _const(a.collective, consts)]
    return "Op(" + ", ".join(fields) + ")"


def _function(params: str, rows: list[str], consts: list, filename: str) -> "Callable[..., list[Op]]":
    """The compiled function `at(params)` returning the ops of `rows` (`_code`: compiled once per
    source, kept on disk), with `consts` as its constant table C."""
    src = f"def at({params}):\n    return [\n" + "".join(f"        {r},\n" for r in rows) + "    ]\n"
    scope = {"Op": Op, "C": consts}
    exec(_code(src, filename), scope)
    return scope["at"]


def _coeffs(a, b, c, d):
    """(a, b - a, c - a, d - b - c + a) of a quantity recorded at (0, 0), (1, 0), (0, 1), (1, 1)
    sequences and cached tokens beyond the first recording: its value at (tb, tc) is
    a + (b - a) tb + (c - a) tc + (d - b - c + a) tb tc."""
    return (a, b - a, c - a, d - b - c + a)


def _at(k: tuple, tb: int, tc: int, tbc: int):
    return k[0] + k[1] * tb + k[2] * tc + k[3] * tbc


def _shape_coeffs(shapes: tuple[tuple, ...]) -> tuple | list:
    """Shapes of the four recordings -> the shared tuple when equal, else per shape either its
    tuple (constant) or its per-dimension coefficients (a list)."""
    a, b, c, d = shapes
    if a == b == c == d:
        return a
    return [p if p == q == r == t else [_coeffs(*x) for x in zip(p, q, r, t, strict=True)]
            for p, q, r, t in zip(a, b, c, d, strict=True)]


def _shapes_at(k, tb: int, tc: int, tbc: int) -> tuple:
    if isinstance(k, tuple):
        return k
    return tuple([p if isinstance(p, tuple) else tuple([x[0] + x[1] * tb + x[2] * tc + x[3] * tbc for x in p])
                  for p in k])


def _dict_coeffs(a: dict, b: dict, c: dict, d: dict) -> dict | list:
    if a == b == c == d:
        return a
    return [(key, _coeffs(a[key], b[key], c[key], d[key])) for key in a]


class Bilinear:
    """A segment as a bilinear function of (sequences, cached tokens) beyond a recording: built
    once from the recordings at 1 and 2 sequences and at two adjacent cached lengths (every
    quantity is affine in each of the two, so bilinear in both: attention pairs grow as sequences x
    cached length), then evaluated at any shape in one pass over the ops. The recorded quantities
    are integers (element counts, bytes, FLOPs), so the value is exact and equals two nested
    `extrapolate`s."""

    def __init__(self, s11: Segment, s21: Segment, s12: Segment, s22: Segment) -> None:
        self.segment = s11
        self._fn = None  # the compiled evaluator, built at the COMPILE_AFTER-th use
        self._uses = 0
        # per placement: its compiled evaluator, or how often it was evaluated without one
        self._placed: dict[tuple[str, int, str], Callable[[int, int, int], list[Op]] | int] = {}
        self.ops = []
        for a, b, c, d in zip(s11.ops, s21.ops, s12.ops, s22.ops):
            self.ops.append((
                a,
                _shape_coeffs((a.in_shapes, b.in_shapes, c.in_shapes, d.in_shapes)),
                _shape_coeffs((a.out_shapes, b.out_shapes, c.out_shapes, d.out_shapes)),
                _coeffs(a.flops, b.flops, c.flops, d.flops),
                _dict_coeffs(a.bytes_read, b.bytes_read, c.bytes_read, d.bytes_read),
                _dict_coeffs(a.bytes_written, b.bytes_written, c.bytes_written, d.bytes_written),
                None if a.gemm is None else [_coeffs(*x) for x in zip(a.gemm, b.gemm, c.gemm, d.gemm)],
                None if a.tokens_per_expert is None else _shape_coeffs(
                    ((a.tokens_per_expert,), (b.tokens_per_expert,), (c.tokens_per_expert,), (d.tokens_per_expert,))),
            ))

    @staticmethod
    def build(s11: Segment, s21: Segment, s12: Segment, s22: Segment) -> "Bilinear | None":
        """None when the four recordings differ in structure."""
        if not (same_structure(s11, s21) and same_structure(s11, s12) and same_structure(s11, s22)):
            return None
        return Bilinear(s11, s21, s12, s22)

    def at(self, tb: int, tc: int) -> Segment:
        """The segment at `tb` sequences and `tc` cached tokens beyond the first recording: the
        values of `at_reference`, from this form's compiled evaluator (`_compile`)."""
        fn = self._fn
        if fn is None:
            self._uses += 1
            if self._uses < COMPILE_AFTER:
                return self.at_reference(tb, tc)
            fn = self._fn = _compile(self.ops)
        s = self.segment
        return Segment(ops=fn(tb, tc, tb * tc), edges=s.edges, entries=s.entries, exit=s.exit, params=s.params,
                       wall_s=0.0)

    def placed_at(self, tb: int, tc: int, prefix: str, layer: int, layer_type: str) -> list[Op]:
        """The ops of `at(tb, tc)` as a step places them at decoder layer `layer`: names prefixed,
        `layer` and `layer_type` set (what `codesign.graph.tracing.assemble_ops` copies them to),
        made directly by an evaluator compiled per placement."""
        key = (prefix, layer, layer_type)
        fn = self._placed.get(key)
        if not callable(fn):
            uses = (fn or 0) + 1
            if len(self._placed) >= 512:
                self._placed.clear()
            if uses < COMPILE_AFTER:
                self._placed[key] = uses
                return [Op(prefix + o.name, o.target, o.kind, o.block, layer, layer_type, o.phase, o.in_shapes,
                           o.out_shapes, o.dtype, o.flops, o.bytes_read, o.bytes_written, o.repeat, o.gemm,
                           o.tokens_per_expert, o.expert_weight_bytes, o.expert_flops_per_token, o.collective)
                        for o in self.at_reference(tb, tc).ops]
            fn = self._placed[key] = _compile(self.ops, prefix, layer, layer_type)
        return fn(tb, tc, tb * tc)

    def at_reference(self, tb: int, tc: int) -> Segment:
        """`at`, evaluated op by op from the coefficient tables (what the compiled evaluator is
        checked against, tests/graph/test_trace.py)."""
        tbc = tb * tc
        ops = []
        for a, ins, outs, fl, rd, wr, gemm, tpe in self.ops:
            # a new Op positionally (every field of `a` but the extrapolated ones; faster than clone + sets)
            ops.append(Op(
                a.name, a.target, a.kind, a.block, a.layer, a.layer_type, a.phase,
                ins if isinstance(ins, tuple) else _shapes_at(ins, tb, tc, tbc),
                outs if isinstance(outs, tuple) else _shapes_at(outs, tb, tc, tbc),
                a.dtype, fl[0] + fl[1] * tb + fl[2] * tc + fl[3] * tbc,
                rd if isinstance(rd, dict) else {k: v[0] + v[1] * tb + v[2] * tc + v[3] * tbc for k, v in rd},
                wr if isinstance(wr, dict) else {k: v[0] + v[1] * tb + v[2] * tc + v[3] * tbc for k, v in wr},
                a.repeat,
                a.gemm if gemm is None else tuple([x[0] + x[1] * tb + x[2] * tc + x[3] * tbc for x in gemm]),
                a.tokens_per_expert if tpe is None else _shapes_at(tpe, tb, tc, tbc)[0],
                a.expert_weight_bytes, a.expert_flops_per_token, a.collective))
        s = self.segment
        return Segment(ops=ops, edges=s.edges, entries=s.entries, exit=s.exit, params=s.params, wall_s=0.0)


def _literal(x, consts: list) -> str:
    """Source text of a number: the literal itself for an int or a finite float (repr reads back
    the same value), else a reference to `consts`."""
    if type(x) is int or (type(x) is float and x == x and x not in (float("inf"), float("-inf"))):
        return f"({x!r})"
    consts.append(x)
    return f"C[{len(consts) - 1}]"


def _expr(k: tuple, consts: list) -> str:
    """`_at(k, tb, tc, tbc)` as source: the same operations in the same order, less the terms with
    a zero coefficient where leaving them out cannot change the value or its type: all four
    coefficients ints (exact), or all four floats with a constant term other than -0.0 (a sum
    that starts elsewhere is never -0.0, and adding a zero to it changes nothing; tb, tc are
    ints, so a zero term is never NaN)."""
    types = {type(x) for x in k}
    a = k[0]
    if types == {int} or (types == {float} and not (a == 0.0 and math.copysign(1.0, a) < 0)):
        terms = [f"{_literal(x, consts)} * {v}" for x, v in zip(k[1:], ("tb", "tc", "tbc")) if x != 0]
        return "(" + " + ".join([_literal(a, consts)] + terms) + ")" if terms else _literal(a, consts)
    a, b, c, d = (_literal(x, consts) for x in k)
    return f"({a} + {b} * tb + {c} * tc + {d} * tbc)"


def _const(x, consts: list) -> str:
    consts.append(x)
    return f"C[{len(consts) - 1}]"


def _shapes_src(k, consts: list) -> str:
    """`_shapes_at(k, ...)` as source (constant shapes shared, as there)."""
    if isinstance(k, tuple):
        return _const(k, consts)
    parts = [_const(p, consts) if isinstance(p, tuple) else "(" + "".join(_expr(x, consts) + ", " for x in p) + ")"
             for p in k]
    return "(" + "".join(p + ", " for p in parts) + ")"


def _bytes_src(d, consts: list) -> str:
    if isinstance(d, dict):
        return _const(d, consts)  # the recording's own dict, shared as in `at_reference`
    return "{" + ", ".join(f"{key!r}: {_expr(v, consts)}" for key, v in d) + "}"


_CODE: dict[str, CodeType] = {}  # compiled evaluators' code by the hash of their source


def _code(src: str, filename: str) -> CodeType:
    """`compile(src)`, memoised in this process and on disk beside the recordings (a layer kind's
    evaluator takes 20-30 ms to compile, about 1 ms to load); a missing, stale or corrupt file is
    compiled again, and a read-only cache is no reason to fail."""
    key = hashlib.sha256(src.encode()).hexdigest()[:24]
    hit = _CODE.get(key)
    if hit is not None:
        return hit
    from codesign.graph.tracing import cache_dir  # where the recordings are kept (imported here: no cycle)

    path = cache_dir() / "code" / f"{key}.{sys.implementation.cache_tag}.marshal"
    try:
        hit = marshal.loads(path.read_bytes())
        if not isinstance(hit, CodeType):
            hit = None
    except Exception:  # absent, unreadable or from another interpreter: compile it
        hit = None
    if hit is None:
        hit = compile(src, filename, "exec")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(marshal.dumps(hit))
            tmp.replace(path)
        except OSError:
            pass
    if len(_CODE) >= 1024:
        _CODE.clear()
    _CODE[key] = hit
    return hit


def _compile(table: list, prefix: str = "", layer: int | None = None, layer_type: str | None = None
             ) -> "Callable[[int, int, int], list[Op]]":
    """A function (tb, tc, tb * tc) -> the form's ops, equal to `Bilinear.at_reference` value for
    value: one expression per op with the coefficients as literals (what the reference looks up
    in its tables op by op: about 5x slower), every constant field the recording's own object.
    With a placement (`Bilinear.placed_at`): names prefixed, `layer` and `layer_type` set."""
    consts: list = []
    rows = [_op_src(a, consts, _const(prefix + a.name if prefix else a.name, consts),
                    repr(a.layer if layer is None else layer),
                    _const(a.layer_type if layer_type is None else layer_type, consts),
                    _shapes_src(ins, consts), _shapes_src(outs, consts), _expr(fl, consts), _bytes_src(rd, consts),
                    _bytes_src(wr, consts),
                    _const(a.gemm, consts) if gemm is None else "(" + "".join(_expr(x, consts) + ", " for x in gemm) + ")",
                    _const(a.tokens_per_expert, consts) if tpe is None else _shapes_src(tpe, consts) + "[0]")
            for a, ins, outs, fl, rd, wr, gemm, tpe in table]
    return _function("tb, tc, tbc", rows, consts, "<codesign.graph.extrapolation.Bilinear>")


__all__ = ["lerp", "lerp_shapes", "lerp_bytes", "same_structure", "extrapolate", "Linear", "Bilinear"]
