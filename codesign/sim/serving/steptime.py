"""Step-time model for long serving runs: step shape -> seconds, without simulating every shape.

A serving run of 10,000 requests takes ~10^5 steps whose shapes almost never repeat exactly
(batch sizes, mean KV lengths and chunk sizes drift), while one new shape costs the evaluation core
a trace, a mapping and an engine run. `StepTimeModel.step_time(shape)` answers from a few exact
evaluations (memoised by shape) with these approximations, each named, documented and overridable
(`StepTimeOptions`), and with its error against exact evaluation measured by `measure_error` (the
serving benchmark prints it):

1. **Pooled decodes.** Decode (and speculative verify) sequences of different cached lengths in one
   step are one group at their mean cached length (the scheduler builds them so). Exact for ops
   linear in KV length: full-attention FLOPs and KV reads are; everything else (GEMMs, experts,
   GatedDeltaNet state) does not depend on the cached length at all. Sliding-window layers are
   capped at the window per sequence, which pooling at the mean does not see (small: those layers
   read at most the window).
2. **Grid with linear interpolation.** Each group is placed on a geometric grid over two axes and
   its time interpolated bilinearly between the four surrounding grid shapes, each evaluated exactly
   once by the core: decode/verify groups over (sequences, cached tokens), single prefill chunks over
   (new tokens, cached tokens). Grid ratios: ``seq_ratio`` 1.25 (every integer up to 5, then 6, 8,
   10, 12, 15, ...), ``token_ratio`` 1.5 for chunk lengths, cached tokens ``kv_ratio`` 1.25 for
   decodes and ``prefill_kv_ratio`` 2 for prefill chunks; 0 is a grid point of the cached axes. The
   cached axes can be coarse because step time is linear in the cached length (approximation 1;
   `measure_pooling` checks it): interpolating linearly between grid points is then exact, where
   bucketing to the nearest point would need a 1-2% grid and many more core evaluations (measured:
   ``kv_ratio`` 1.02 instead of 1.25 nearly doubles the evaluations of a run and leaves the error
   unchanged). A value on a grid point is exact. ``exact=True`` switches the model off (every shape
   evaluated as it is).
3. **Mixed steps, temporarily.** A step mixing groups (decodes with prefill chunks) costs the sum of
   its groups' steps evaluated separately, because the evaluation core does not evaluate mixed
   steps yet. This overcounts what the groups share (one weight read per step instead of one per
   group). When the core supports mixed shapes, `mixed_steps=True` evaluates them as one step (each
   group snapped to its nearest grid point, memoised).
4. **Decode-only stretches** (applied by the scheduler, codesign.sim.serving.scheduler): up to
   ``stretch_max`` (256) identical decode-only steps, the mean KV length moving at most
   ``stretch_drift`` (2%), are simulated as one, timed at the stretch's middle.

All of these are fields of `StepTimeOptions`, set per scenario as ``workload.step_model``.

MTP draft heads (`codesign.sim.serving.server.mtp_head_step`) are costed from the traced graph's
MTP ops: the step traced with ``include_mtp`` minus the same step without, i.e. one
decode-step-equivalent of the MTP layer(s) and their LM-head pass per drafted token, on the same
grid.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Iterable

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.sim.engine import StepResult

StepFn = Callable[[StepShape], StepResult]

_GRID_MAX = 1 << 23  # largest grid value (tokens or sequences); beyond any model's context


@dataclass(frozen=True)
class StepTimeOptions:
    """Resolution of the step-time model (see module docstring)."""

    seq_ratio: float = 1.25
    token_ratio: float = 1.5
    kv_ratio: float = 1.25
    prefill_kv_ratio: float = 2.0
    exact: bool = False
    mixed_steps: bool = False
    # Decode-only stretches simulated as one (codesign.sim.serving.scheduler): at most this
    # relative move of the mean KV length and this many steps; stretch_max 1 simulates every step.
    stretch_drift: float = 0.02
    stretch_max: int = 256

    def __post_init__(self) -> None:
        for name in ("seq_ratio", "token_ratio", "kv_ratio", "prefill_kv_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 1.0:
                raise CodesignError(f"workload.step_model: {name}: expected a grid ratio above 1, found {v!r}")
        for name in ("exact", "mixed_steps"):
            if not isinstance(getattr(self, name), bool):
                raise CodesignError(f"workload.step_model: {name}: expected true or false, found {getattr(self, name)!r}")
        if isinstance(self.stretch_drift, bool) or not isinstance(self.stretch_drift, (int, float)) or self.stretch_drift < 0:
            raise CodesignError(f"workload.step_model: stretch_drift: expected a fraction >= 0, found {self.stretch_drift!r}")
        if isinstance(self.stretch_max, bool) or not isinstance(self.stretch_max, int) or self.stretch_max < 1:
            raise CodesignError(f"workload.step_model: stretch_max: expected an integer >= 1, found {self.stretch_max!r}")

    @classmethod
    def from_dict(cls, data: dict | None) -> "StepTimeOptions":
        """From a scenario's `workload.step_model` mapping (unknown keys are errors naming them)."""
        import dataclasses

        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CodesignError(f"workload.step_model: unknown field {unknown[0]!r}; expected one of {sorted(names)}")
        return cls(**data)


def geometric_grid(ratio: float, with_zero: bool, limit: int = _GRID_MAX) -> list[int]:
    """Sorted integer grid points: ceil(ratio^k) for k >= 0 up to `limit` (and 0 if asked)."""
    pts = {0} if with_zero else set()
    x = 1.0
    while x <= limit:
        pts.add(int(math.ceil(x - 1e-9)))
        x *= ratio
    pts.add(limit)
    return sorted(pts)


def bracket(grid: list[int], v: int, hi_limit: int | None = None) -> tuple[int, int]:
    """Grid points (a, b) with a <= v <= b (a == b on a grid point); b capped at `hi_limit`."""
    i = bisect.bisect_left(grid, v)
    if i < len(grid) and grid[i] == v:
        return v, v
    a, b = grid[max(i - 1, 0)], grid[min(i, len(grid) - 1)]
    if hi_limit is not None and b > hi_limit:
        b = max(hi_limit, v)
    return a, b


def pool_decodes(shape: StepShape) -> StepShape:
    """Groups of equal (seqs-independent) new_tokens <= a verify width merged at their mean cached
    length: decode groups (new_tokens 1) together, verify groups of one width together. Prefill
    chunks (one sequence each, more new tokens) stay apart."""
    widths = [g.new_tokens for g in shape.groups if g.new_tokens == 1 or g.seqs > 1]
    if len(widths) == len(set(widths)):
        return shape  # already pooled (as the scheduler builds steps)
    pooled: dict[int, list[Group]] = {}
    rest: list[Group] = []
    for g in shape.groups:
        (pooled.setdefault(g.new_tokens, []) if (g.new_tokens == 1 or g.seqs > 1) else rest).append(g)
    out = list(rest)
    for n, gs in pooled.items():
        seqs = sum(g.seqs for g in gs)
        mean = sum(g.seqs * g.cached_tokens for g in gs) / seqs
        out.append(Group(seqs, n, int(round(mean))))
    return StepShape(tuple(out))


class StepTimeModel:
    """Seconds per step of one design point (a `Stepper`'s `step`), from a memoised grid."""

    def __init__(self, step: StepFn, max_len: int, options: StepTimeOptions | None = None) -> None:
        self._step = step
        self.max_len = max_len
        self.options = options or StepTimeOptions()
        o = self.options
        self._seq_grid = geometric_grid(o.seq_ratio, False)
        self._tok_grid = geometric_grid(o.token_ratio, False)
        self._kv_grid = geometric_grid(o.kv_ratio, True, max_len)
        self._pkv_grid = geometric_grid(o.prefill_kv_ratio, True, max_len)
        self._memo: dict[tuple[int, int, int] | StepShape, float] = {}
        self.evaluations = 0  # exact evaluations by the core (grid shapes)

    # -- exact points ---------------------------------------------------------------------------
    def exact_group(self, g: Group) -> float:
        """One group evaluated by the core alone (memoised)."""
        return self._point(g.seqs, g.new_tokens, g.cached_tokens)

    def _point(self, seqs: int, new: int, cached: int) -> float:
        key = (seqs, new, cached)
        t = self._memo.get(key)
        if t is None:
            self.evaluations += 1
            t = self._memo[key] = float(self._step(StepShape((Group(seqs, new, cached),))).time_s)
        return t

    def exact(self, shape: StepShape) -> float:
        """The step as the core evaluates it today: mixed shapes as the sum of their groups."""
        if self.options.mixed_steps and shape.is_mixed:
            key = shape.canonical()
            t = self._memo.get(key)
            if t is None:
                self.evaluations += 1
                t = self._memo[key] = float(self._step(key).time_s)
            return t
        return sum(self.exact_group(g) for g in shape.groups)

    # -- the model ------------------------------------------------------------------------------
    def group_time(self, g: Group) -> float:
        """Bilinear interpolation of one group's time on the grid."""
        return self.time_of(g.seqs, g.new_tokens, g.cached_tokens)

    def time_of(self, seqs: int, new: int, cached: int) -> float:
        """`group_time` of Group(seqs, new, cached), without building the group."""
        if self.options.exact:
            return self._point(seqs, new, cached)
        L, y = self.max_len, cached
        if new == 1 or seqs > 1:  # decode / verify / several equal chunks: axes (seqs, cached)
            x0, x1 = bracket(self._seq_grid, seqs)
            y0, y1 = bracket(self._kv_grid if new == 1 else self._pkv_grid, y, L - new)
            x = seqs

            def at(xv: int, yv: int) -> float:
                return self._point(xv, new, yv)
        else:  # one prefill chunk: axes (new tokens, cached)
            x0, x1 = bracket(self._tok_grid, new, L - y)
            y0, y1 = bracket(self._pkv_grid, y, max(L - x1, y))
            x = new

            def at(xv: int, yv: int) -> float:
                return self._point(1, xv, yv)
        wy = 0.0 if y1 == y0 else (y - y0) / (y1 - y0)
        t00 = at(x0, y0)
        t01 = t00 if y1 == y0 else at(x0, y1)
        if x1 == x0:
            return t00 + wy * (t01 - t00)
        wx = (x - x0) / (x1 - x0)
        t10 = at(x1, y0)
        t11 = t10 if y1 == y0 else at(x1, y1)
        return (1 - wx) * ((1 - wy) * t00 + wy * t01) + wx * ((1 - wy) * t10 + wy * t11)

    def step_time(self, shape: StepShape) -> float:
        """Seconds of one scheduler iteration's step (see module docstring)."""
        shape = pool_decodes(shape)
        if self.options.mixed_steps and shape.is_mixed:
            return self.exact(StepShape(tuple(self._snap(g) for g in shape.groups)))
        # Temporary: the core does not evaluate mixed steps yet; groups are costed apart and add.
        return sum(self.time_of(g.seqs, g.new_tokens, g.cached_tokens) for g in shape.groups)

    def _snap(self, g: Group) -> Group:
        def near(grid: list[int], v: int) -> int:
            a, b = bracket(grid, v)
            return a if v - a <= b - v else b

        if g.new_tokens == 1 or g.seqs > 1:
            return Group(near(self._seq_grid, g.seqs), g.new_tokens,
                         near(self._kv_grid if g.new_tokens == 1 else self._pkv_grid, g.cached_tokens))
        return Group(1, max(1, near(self._tok_grid, g.new_tokens)), near(self._pkv_grid, g.cached_tokens))


@dataclass(frozen=True)
class ErrorReport:
    """Step-time model vs exact evaluation on a sample of shapes (relative errors)."""

    shapes: int
    mean_abs: float
    max_abs: float
    worst: str

    def __str__(self) -> str:
        return (f"step-time model vs exact on {self.shapes} shapes: mean |error| {self.mean_abs:.2%}, "
                f"max {self.max_abs:.2%} ({self.worst})")


def measure_error(model: StepTimeModel, shapes: Iterable[StepShape]) -> ErrorReport:
    """Relative error of `model.step_time` against the core's exact evaluation of each shape (its
    groups evaluated as they are, mixed shapes summed as the core would today)."""
    errs: list[tuple[float, str]] = []
    for s in shapes:
        approx = model.step_time(s)
        exact = model.exact(s)
        errs.append((abs(approx - exact) / exact, str(s)))
    if not errs:
        raise CodesignError("step-time model: no shapes to measure the error on")
    worst = max(errs)
    return ErrorReport(len(errs), sum(e for e, _ in errs) / len(errs), worst[0], worst[1])


def measure_pooling(model: StepTimeModel, seqs: int, cached: tuple[int, int]) -> float:
    """Relative error of pooling: half the sequences at each of two cached lengths, costed at their
    mean, against the two halves' exact costs averaged (what pooling assumes: step time linear in the
    cached length). Until the core evaluates a step with two decode groups, this is the measurable
    part of approximation 1."""
    a, b = cached
    mean = model.exact_group(Group(seqs, 1, (a + b) // 2))
    ends = (model.exact_group(Group(seqs, 1, a)) + model.exact_group(Group(seqs, 1, b))) / 2
    return abs(mean - ends) / ends


__all__ = ["measure_pooling", "StepTimeModel", "StepTimeOptions", "ErrorReport", "measure_error", "pool_decodes", "geometric_grid", "bracket"]
