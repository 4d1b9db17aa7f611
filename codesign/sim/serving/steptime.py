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
3. **Mixed steps** (decodes with prefill chunks, ``mixed_steps=True``, the default) are one step
   of the core (weights read once, every projection and expert GEMM over all the step's tokens).
   A step of two groups: the step with both groups at their nearest grid corner (the anchor),
   plus, group by group, the bilinear interpolation over that group's cell with the other group at
   its anchor corner, minus the anchor; every corner is a whole mixed step evaluated by the core
   (memoised). Exact on grid points and when step time is a sum of per-group bilinear parts
   (shared weights are a constant); it misses the groups' cross terms within a cell. Decode/verify
   groups of a mixed step sit on coarser axes (``mixed_seq_ratio`` 4, ``mixed_kv_ratio`` 2: with a
   prefill chunk in the step, time is near linear in both). A step of three or more groups
   (``pairwise``, the default): each further group with the first (the decodes) as a two-group
   step, summed, less the first group's own step once for every pair but one (exact for sums of
   per-group parts), plus the cross terms this leaves out as they are at the anchor (the whole
   step at every group's nearest grid corner minus the same pairwise sum there: one more core
   evaluation per anchor). What remains is how those cross terms vary within the cell (the
   benchmark measures ~0.6% on such steps, 2-3% without the anchor's cross terms);
   ``pairwise=False`` interpolates such steps in all their groups at once (0.15%, ~1.4x the core
   evaluations of a long run). ``mixed_steps=False`` costs each group as a step of its own and adds
   them (an upper bound: weights read once per group; the benchmark prints by how much it
   overstates).
   3b. **A prompt's last chunk along its prompt's line** (``prompt_end_line``, the default): in a
   mixed step, a prompt chunk whose cached tokens are off the cached grid but whose cached + new
   tokens (the prompt's length) are on it -- the last chunk of a fixed power-of-two prompt, as
   benchmark clients send -- is interpolated along cached = length - new, its corners the
   chunk-size grid points on that line: one corner shape per chunk-size point instead of two
   (the long benchmark run needs 260 grid shapes instead of 292). Exact where step time is linear
   along the line. The chunk's causal attention pairs, new x cached + new^2 / 2, are
   new x length - new^2 / 2 on the line: they bend along it as much as along the (new, cached)
   cell's new axis, with the opposite sign (at most (new / length) / 32 of that part between
   chunk-size points at ratio 1.5: 0.3% of it for a 3,326-token last chunk of a 32K prompt).
   The benchmark prints the error of the steps that hold such a chunk with and without it.
4. **Decode-only stretches** (applied by the scheduler, codesign.sim.serving.scheduler): up to
   ``stretch_max`` (256) identical decode-only steps, the mean KV length moving at most
   ``stretch_drift`` (2%), are simulated as one, timed at the stretch's middle.
5. **Attention-DP lock step** (codesign.sim.serving.lockstep): each rank's groups on this grid at
   the rank level, at grid points of the routed share u (``routed_ratio`` 1.25), linear in u.

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
# Entries of each of the hot path's lookup memos (grid brackets by value, cells by group): one per
# distinct prompt chunk or mean KV length, so a long run with spread-out lengths would grow them
# without bound; a memo that reaches this many is emptied (they hold no evaluations, only
# lookups, so no value changes). The memos of the core's evaluations are bounded by the grid.
LOOKUP_MEMO_MAX = 1 << 16


@dataclass(frozen=True)
class StepTimeOptions:
    """Resolution of the step-time model (see module docstring)."""

    seq_ratio: float = 1.25
    token_ratio: float = 1.5
    kv_ratio: float = 1.25
    prefill_kv_ratio: float = 2.0
    exact: bool = False
    mixed_steps: bool = True
    # Mixed steps' decode/verify groups: coarser (sequences, cached) axes (step time is near linear
    # in both once a prefill chunk shares the step; see approximation 3).
    # Steps of three or more groups: each further group paired with the first (see approximation 3).
    pairwise: bool = True
    # Mixed steps' prompt chunks that end their prompt at a cached-axis grid length: interpolated
    # along the prompt's own line (see approximation 3b).
    prompt_end_line: bool = True
    mixed_seq_ratio: float = 4.0
    mixed_kv_ratio: float = 2.0
    # Decode-only stretches simulated as one (codesign.sim.serving.scheduler): at most this
    # relative move of the mean KV length and this many steps; stretch_max 1 simulates every step.
    stretch_drift: float = 0.02
    stretch_max: int = 256
    # Attention-DP steps in lock step (codesign.sim.serving.lockstep): grid ratio of the routed
    # share u = routed tokens / (ranks x the busiest rank's tokens), interpolated linearly in u.
    routed_ratio: float = 1.25

    def __post_init__(self) -> None:
        for name in ("seq_ratio", "token_ratio", "kv_ratio", "prefill_kv_ratio", "mixed_seq_ratio", "mixed_kv_ratio",
                     "routed_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 1.0:
                raise CodesignError(f"workload.step_model: {name}: expected a grid ratio above 1, found {v!r}")
        for name in ("exact", "mixed_steps", "pairwise", "prompt_end_line"):
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
    """Decode-like groups (see `_decode_like`) of equal (new_tokens, logits) merged at their mean
    cached length: decode groups (new_tokens 1) together, verify groups of one width together.
    Prefill chunks (one sequence each, more new tokens) stay apart."""
    groups = shape.groups
    if len(groups) == 1 or (len(groups) == 2 and not (_decode_like(groups[0]) and _decode_like(groups[1]))):
        return shape  # nothing to pool (the scheduler's common steps: decodes and one prompt chunk)
    keys = [(g.new_tokens, g.logits) for g in groups if _decode_like(g)]
    if len(keys) == len(set(keys)):
        return shape  # already pooled (as the scheduler builds steps)
    pooled: dict[tuple[int, int], list[Group]] = {}
    rest: list[Group] = []
    for g in shape.groups:
        (pooled.setdefault((g.new_tokens, g.logits), []) if _decode_like(g) else rest).append(g)
    out: list[Group] = []
    for (n, lg), gs in pooled.items():
        seqs = sum(g.seqs for g in gs)
        mean = sum(g.seqs * g.cached_tokens for g in gs) / seqs
        out.append(Group(seqs, n, int(round(mean)), lg))
    return StepShape(tuple(out + rest))


def _decode_like(g: Group) -> bool:
    """Decode and verify groups (and several equal chunks) sit on the (sequences, cached) axes;
    a single prompt chunk on the (new tokens, cached) axes."""
    return g.new_tokens == 1 or g.seqs > 1 or g.logits > 1


class StepTimeModel:
    """Seconds per step of one design point (a `Stepper`'s `step`), from a memoised grid."""

    def __init__(self, step: StepFn, max_len: int, options: StepTimeOptions | None = None,
                 extra: Callable[[StepShape], float] | None = None) -> None:
        self._step = step
        # seconds added to a mixed step, exactly (not interpolated): an engine effect the core's
        # graph does not record (codesign.sim.mixed_gdn); None: nothing
        self.extra = extra
        self.max_len = max_len
        self.options = options or StepTimeOptions()
        o = self.options
        self._seq_grid = geometric_grid(o.seq_ratio, False)
        self._tok_grid = geometric_grid(o.token_ratio, False)
        self._kv_grid = geometric_grid(o.kv_ratio, True, max_len)
        self._pkv_grid = geometric_grid(o.prefill_kv_ratio, True, max_len)
        self._mseq_grid = geometric_grid(o.mixed_seq_ratio, False)
        self._mkv_grid = geometric_grid(o.mixed_kv_ratio, True, max_len)
        self._memo: dict[tuple, float] = {}
        # memoised lookups of the event loop's hot path (no effect on any value): brackets per
        # axis by (value, limit), mixed-step cells by group
        self._br: dict[int, dict[tuple[int, int | None], tuple[int, int]]] = {
            id(g): {} for g in (self._seq_grid, self._tok_grid, self._kv_grid, self._pkv_grid, self._mseq_grid,
                                self._mkv_grid)}
        self._cells: dict[tuple[int, int, int, int], tuple] = {}
        # a mixed step's decode group: its brackets by sequences and by cached tokens
        self._dec_x: dict[int, tuple[int, int]] = {}
        self._dec_y: dict[int, tuple[int, int]] = {}
        self._mixed_memo: dict[tuple, float] = {}
        self._cross_memo: dict[tuple, float] = {}
        self._cell_memo: dict[tuple, tuple[float, list[tuple[float, float, float, float]]]] = {}
        self.evaluations = 0  # exact evaluations by the core (grid shapes)
        self._interpolate_two = o.mixed_steps and not o.exact  # step_time's path for decodes + one chunk

    # -- exact points ---------------------------------------------------------------------------
    def exact_group(self, g: Group) -> float:
        """One group evaluated by the core alone (memoised)."""
        return self._point(g.seqs, g.new_tokens, g.cached_tokens, g.logits)

    def _point(self, seqs: int, new: int, cached: int, logits: int = 1) -> float:
        key = (seqs, new, cached, logits)
        t = self._memo.get(key)
        if t is None:
            self.evaluations += 1
            t = self._memo[key] = float(self._step(StepShape((Group(seqs, new, cached, logits),))).time_s)
        return t

    def _shape_point(self, groups: tuple[Group, ...]) -> float:
        """A (mixed) grid shape evaluated by the core as one step (memoised)."""
        if len(groups) == 1:
            g = groups[0]
            return self._point(g.seqs, g.new_tokens, g.cached_tokens, g.logits)
        return self._raw_point(tuple((g.seqs, g.new_tokens, g.cached_tokens, g.logits) for g in groups))

    def _raw_point(self, groups: tuple[tuple[int, int, int, int], ...]) -> float:
        """`_shape_point` of groups given as (seqs, new, cached, logits) tuples."""
        if len(groups) == 1:
            return self._point(*groups[0])
        key = tuple(sorted(groups))
        t = self._mixed_memo.get(key)
        if t is None:
            self.evaluations += 1
            shape = StepShape(tuple(Group(*g) for g in key)).canonical()
            t = self._mixed_memo[key] = float(self._step(shape).time_s)
        return t

    def exact(self, shape: StepShape) -> float:
        """The step as the core evaluates it, as it is (no pooling, no grid): one step of all its
        groups (``mixed_steps``), or the sum of its groups evaluated apart (``mixed_steps=False``)."""
        if not shape.is_mixed:
            return self.exact_group(shape.groups[0])
        if self.options.mixed_steps:
            return self._shape_point(shape.groups)
        return sum(self.exact_group(g) for g in shape.groups)

    # -- the model ------------------------------------------------------------------------------
    def group_time(self, g: Group) -> float:
        """Bilinear interpolation of one group's time on the grid."""
        return self.time_of(g.seqs, g.new_tokens, g.cached_tokens, g.logits)

    def _bracket(self, grid: list[int], v: int, hi_limit: int | None = None) -> tuple[int, int]:
        """`bracket(grid, v, hi_limit)`, memoised per grid (one of the model's grids)."""
        memo = self._br[id(grid)]
        key = (v, hi_limit)
        ab = memo.get(key)
        if ab is None:
            if len(memo) >= LOOKUP_MEMO_MAX:
                memo.clear()
            ab = memo[key] = bracket(grid, v, hi_limit)
        return ab

    def _cell(self, g: Group) -> tuple[int, tuple[int, int], int, tuple[int, int], tuple[int, ...]]:
        """Group g's grid cell (`_cell_of`)."""
        return self._cell_of(g.seqs, g.new_tokens, g.cached_tokens, g.logits)

    def _cell_of(self, seqs: int, new: int, y: int, lg: int) -> tuple[int, tuple[int, int], int, tuple[int, int], tuple[int, ...]]:
        """The grid cell of Group(seqs, new, y, lg): (x, (x0, x1), y, (y0, y1), (new, logits)) within
        the context; new 0 marks a prompt chunk, whose x axis is its new tokens (see `_corner`).
        Memoised by group (prompt chunks repeat; a decode group's cached length moves every step,
        its axes' brackets are memoised instead)."""
        if new == 1:  # a decode group (_decode_like): its brackets memoised, not the cell
            xs = self._dec_x.get(seqs)
            if xs is None:
                xs = self._dec_x[seqs] = self._bracket(self._mseq_grid, seqs)
            ys = self._dec_y.get(y)
            if ys is None:
                if len(self._dec_y) >= LOOKUP_MEMO_MAX:
                    self._dec_y.clear()
                ys = self._dec_y[y] = self._bracket(self._mkv_grid, y, self.max_len - 1)
            return (seqs, xs, y, ys, (1, lg))
        L = self.max_len
        key = (seqs, new, y, lg)
        c = self._cells.get(key)
        if c is not None:
            return c
        if len(self._cells) >= LOOKUP_MEMO_MAX:
            self._cells.clear()
        if seqs > 1 or lg > 1:  # _decode_like
            xs = self._bracket(self._mseq_grid, seqs)
            ys = self._bracket(self._pkv_grid, y, L - new)
            c = self._cells[key] = (seqs, xs, y, ys, (new, lg))
            return c
        xs = self._bracket(self._tok_grid, new, L - y)
        ys = self._bracket(self._pkv_grid, y, max(L - xs[1], y))
        end = y + new
        if self.options.prompt_end_line and ys[0] != ys[1] and xs[1] <= end and self._bracket(self._pkv_grid, end) == (end, end):
            # the chunk ends its prompt at a grid length: along the prompt's line (approximation 3b)
            c = self._cells[key] = (new, xs, 0, (0, 0), (0, 1, end))
            return c
        c = self._cells[key] = (new, xs, y, ys, (0, 1))
        return c

    def time_of(self, seqs: int, new: int, cached: int, logits: int = 1) -> float:
        """`group_time` of Group(seqs, new, cached, logits), without building the group."""
        if self.options.exact:
            return self._point(seqs, new, cached, logits)
        L, y = self.max_len, cached
        if new == 1 or seqs > 1 or logits > 1:  # decode / verify / several equal chunks: axes (seqs, cached)
            x0, x1 = self._bracket(self._seq_grid, seqs)
            y0, y1 = self._bracket(self._kv_grid if new == 1 else self._pkv_grid, y, L - new)
            x = seqs

            def at(xv: int, yv: int) -> float:
                return self._point(xv, new, yv, logits)
        else:  # one prefill chunk: axes (new tokens, cached)
            x0, x1 = self._bracket(self._tok_grid, new, L - y)
            y0, y1 = self._bracket(self._pkv_grid, y, max(L - x1, y))
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
        """Seconds of one scheduler iteration's step (see module docstring), with `extra`'s."""
        t = self._step_time(shape)
        return t if self.extra is None else t + self.extra(shape)

    def _step_time(self, shape: StepShape) -> float:
        groups = shape.groups
        if len(groups) == 1:
            g = groups[0]
            return self.time_of(g.seqs, g.new_tokens, g.cached_tokens, g.logits)
        if len(groups) == 2 and groups[1].new_tokens > 1 and groups[1].seqs == 1 and groups[1].logits == 1:
            if self.options.mixed_steps and not self.options.exact:  # decodes and one chunk: nothing to pool
                return self._mixed_two(groups[0], groups[1])
        shape = pool_decodes(shape)
        if len(shape.groups) == 1:
            g = shape.groups[0]
            return self.time_of(g.seqs, g.new_tokens, g.cached_tokens, g.logits)
        if not self.options.mixed_steps:
            return sum(self.time_of(g.seqs, g.new_tokens, g.cached_tokens, g.logits) for g in shape.groups)
        if self.options.exact:
            return self._shape_point(shape.groups)
        groups = shape.groups
        if len(groups) <= 2 or not self.options.pairwise:
            return self.mixed_time(groups)
        # three or more groups: each with the first (the decodes when there are any) as a two-group
        # step, the first group's own step counted once, plus the cross terms this leaves out as
        # they are at the anchor (see approximation 3)
        return self._pairwise(groups) + self._cross_terms(groups)

    def _pairwise(self, groups: tuple[Group, ...]) -> float:
        """The first group's own step plus, for each further group g, what g adds to it: the two-group
        step (first, g) less the first group alone, both on the mixed-step grid, so that the first
        group's interpolation error on that coarser grid cancels in each difference instead of
        adding up once per further group (with dozens of prompts beside a large decode batch it
        did, down to negative step times)."""
        first, rest = groups[0], groups[1:]
        alone = self.time_of(first.seqs, first.new_tokens, first.cached_tokens, first.logits)
        coarse = self._mixed_alone(first)
        return alone + sum(self.mixed_time((first, g)) - coarse for g in rest)

    def _mixed_alone(self, g: Group) -> float:
        """Group g's step alone, interpolated over its mixed-step grid cell (`_cell`)."""
        x, (x0, x1), y, (y0, y1), sig = self._cell(g)

        def at(xv: int, yv: int) -> float:
            return self._point(*_corner(sig, xv, yv))

        wx = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
        wy = 0.0 if y1 == y0 else (y - y0) / (y1 - y0)
        t00 = at(x0, y0)
        t01 = t00 if y1 == y0 else at(x0, y1)
        t10 = t00 if x1 == x0 else at(x1, y0)
        t11 = t10 if y1 == y0 else (t01 if x1 == x0 else at(x1, y1))
        return (1 - wx) * ((1 - wy) * t00 + wy * t01) + wx * ((1 - wy) * t10 + wy * t11)

    def _cross_terms(self, groups: tuple[Group, ...]) -> float:
        """The whole step minus its pairwise sum, both at the anchor (every group at its nearest
        grid corner): one core evaluation of the whole step per anchor (memoised)."""
        anchor = []
        for x, xs, y, ys, sig in (self._cell(g) for g in groups):
            anchor.append(_corner(sig, _nearest(x, xs), _nearest(y, ys)))
        key = tuple(anchor)
        hit = self._cross_memo.get(key)
        if hit is None:
            at = tuple(Group(*a) for a in anchor)
            hit = self._cross_memo[key] = self._raw_point(key) - self._pairwise(at)
        return hit

    def mixed_time(self, groups: tuple[Group, ...]) -> float:
        """A mixed step from whole-step core evaluations on the grid (approximation 3): the step at
        every group's nearest grid corner (the anchor), plus, group by group, the bilinear
        interpolation over that group's cell with the other groups held at their anchor, minus the
        anchor. Exact on grid points and for step times that are a sum of per-group bilinear parts;
        what it leaves out is the groups' cross terms within one cell."""
        if len(groups) == 2:
            return self._mixed_two(groups[0], groups[1])
        cells = [self._cell(g) for g in groups]
        anchor = tuple((x0 if x - x0 <= x1 - x else x1, y0 if y - y0 <= y1 - y else y1)
                       for x, (x0, x1), y, (y0, y1), _ in cells)  # _nearest, inlined (hot path)
        key = (anchor, tuple((xs, ys, sig) for _, xs, _, ys, sig in cells))
        corners = self._cell_memo.get(key)
        if corners is None:
            corners = self._cell_memo[key] = self._corners(cells, anchor)
        t_anchor, per_group = corners
        total = t_anchor
        for (x, (x0, x1), y, (y0, y1), _), (t00, t01, t10, t11) in zip(cells, per_group):
            wx = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            wy = 0.0 if y1 == y0 else (y - y0) / (y1 - y0)
            total += (1 - wx) * ((1 - wy) * t00 + wy * t01) + wx * ((1 - wy) * t10 + wy * t11) - t_anchor
        return total

    def _mixed_two(self, ga: Group, gb: Group) -> float:
        """`mixed_time` of a two-group step (`_two_cells`)."""
        return self._two_cells(self._cell(ga), self._cell(gb))

    def time_two(self, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
        """`step_time` of the step of groups `a` then `b`, each given as (seqs, new, cached, logits),
        `b` one prompt chunk of more than one token (the event loop's most common step: decodes and
        one chunk), without building the shape; the same value."""
        if self._interpolate_two and self.extra is None:
            return self._two_cells(self._cell_of(a[0], a[1], a[2], a[3]), self._cell_of(b[0], b[1], b[2], b[3]))
        return self.step_time(StepShape((Group(*a), Group(*b))))

    def _two_cells(self, ca: tuple, cb: tuple) -> float:
        """`mixed_time` of a two-group step from its groups' cells, unrolled (the event loop's most
        common step: decodes and one prompt chunk); the same operations in the same order, so the
        same value."""
        xa, (xa0, xa1), ya, (ya0, ya1), siga = ca
        xb, (xb0, xb1), yb, (yb0, yb1), sigb = cb
        aa = (xa0 if xa - xa0 <= xa1 - xa else xa1, ya0 if ya - ya0 <= ya1 - ya else ya1)
        ab = (xb0 if xb - xb0 <= xb1 - xb else xb1, yb0 if yb - yb0 <= yb1 - yb else yb1)
        key = ((aa, ab), ((ca[1], ca[3], siga), (cb[1], cb[3], sigb)))
        corners = self._cell_memo.get(key)
        if corners is None:
            corners = self._cell_memo[key] = self._corners([ca, cb], (aa, ab))
        t_anchor, ((t00, t01, t10, t11), (u00, u01, u10, u11)) = corners
        wx = 0.0 if xa1 == xa0 else (xa - xa0) / (xa1 - xa0)
        wy = 0.0 if ya1 == ya0 else (ya - ya0) / (ya1 - ya0)
        total = t_anchor
        total += (1 - wx) * ((1 - wy) * t00 + wy * t01) + wx * ((1 - wy) * t10 + wy * t11) - t_anchor
        wx = 0.0 if xb1 == xb0 else (xb - xb0) / (xb1 - xb0)
        wy = 0.0 if yb1 == yb0 else (yb - yb0) / (yb1 - yb0)
        total += (1 - wx) * ((1 - wy) * u00 + wy * u01) + wx * ((1 - wy) * u10 + wy * u11) - t_anchor
        return total

    def _corners(self, cells: list, anchor: tuple) -> tuple[float, list[tuple[float, float, float, float]]]:
        """The anchor step's time and, per group, its cell's four corner steps' times with the other
        groups at their anchor corners (core evaluations, memoised)."""
        base = tuple(_corner(sig, *a) for (_, _, _, _, sig), a in zip(cells, anchor))
        t_anchor = self._raw_point(base)
        out = []
        for i, (_, (x0, x1), _, (y0, y1), sig) in enumerate(cells):
            def at(xv: int, yv: int) -> float:
                if (xv, yv) == anchor[i]:
                    return t_anchor
                return self._raw_point(base[:i] + (_corner(sig, xv, yv),) + base[i + 1:])

            t00 = at(x0, y0)
            t01 = t00 if y1 == y0 else at(x0, y1)
            t10 = t00 if x1 == x0 else at(x1, y0)
            t11 = t10 if y1 == y0 else (t01 if x1 == x0 else at(x1, y1))
            out.append((t00, t01, t10, t11))
        return t_anchor, out


def _corner(sig: tuple[int, ...], xv: int, yv: int) -> tuple[int, int, int, int]:
    """A grid corner as (seqs, new, cached, logits): decode-like groups vary their sequences, prompt
    chunks (sig new 0) their new tokens; a chunk on its prompt's line (sig (0, 1, length)) its new
    tokens with cached = length - new."""
    if sig[0]:
        return (xv, sig[0], yv, sig[1])
    return (1, xv, sig[2] - xv, 1) if len(sig) == 3 else (1, xv, yv, 1)


def _nearest(v: int, ab: tuple[int, int]) -> int:
    a, b = ab
    return a if v - a <= b - v else b


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
    """Relative error of `model.step_time` against the core's exact evaluation of each shape as it
    is (`StepTimeModel.exact`: no pooling, no grid; the scheduler's `Recorder.sample` keeps the
    decodes of sampled steps at their own cached lengths)."""
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
