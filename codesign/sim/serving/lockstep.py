"""Attention-data-parallel ranks in lock step: per-rank batches, one step for all ranks.

In an attention-DP deployment (TensorRT-LLM ``enable_attention_dp``, SGLang
``--enable-dp-attention``, vLLM data parallel with expert parallelism) every attention-DP rank
has its own scheduler and batch, with its own ``max_num_seqs`` and ``max_num_batched_tokens``,
and a request's prompt is computed whole (or chunk by chunk) on the rank that admitted it. Every
MoE layer's all-to-all (or all-gather) waits for all ranks, so a step lasts as long as the
busiest rank's attention and dense part, while the routed experts see all ranks' tokens.

* **Ranks** (`LockStepEngine`): ``plan.attention_dp`` schedulers, each the request-stream
  scheduler of `codesign.sim.serving.scheduler` (`Engine`) with one rank's limits and its share
  of the KV pool (the pool per chip is per rank already: each attention-DP rank holds its own
  sequences' KV). ``dp`` replicas stay independent engines as before: each rank stands for its
  position in every replica, with the limits x dp (requests balanced evenly over replicas).
* **Dispatch** (``scheduler.attention_dp_dispatch``), when a request arrives:
  ``balanced`` (default) -- the rank with the fewest requests in its system (queued or running),
  the lowest rank on ties: TensorRT-LLM's attention-DP request balancing
  (`ExecutorRequestQueue._balance_requests_across_ranks`: new requests go to ranks below the
  expected active count, fewest active tokens first) and vLLM's DP load balancing by queued and
  running requests; ``round_robin`` -- rank i mod R for the i-th request: SGLang's
  `DataParallelController` default (``--load-balance-method round_robin``). Named deviation:
  TensorRT-LLM assigns a request when a rank fetches it from the shared queue, not on arrival;
  with a client's concurrency at or below the ranks' capacity (the benchmark rows) the two agree.
* **One step** (`LockStepTimer`): each rank builds its own groups; the step's time is the largest,
  over the ranks' distinct group lists G, of the core's step of G on every rank (the deployment
  shape R x G, so every attention chip runs exactly G) with the step's real routed tokens, all
  ranks' together (`StepShape.routed`; `codesign.mapping.lockstep.lockstep_shapes`): routed
  experts and all-to-alls by all ranks' tokens,
  attention, dense and shared-expert ops by the busiest rank. With every rank's groups equal the
  shape is R x G with nothing left unrouted: the same step as the scheduler before per-rank
  batches gave an even share of.
* **The busiest rank.** With ``step_model.exact`` every distinct rank batch is evaluated (those
  another batch dominates -- as many sequences, new and cached tokens in every group -- left
  out) and the slowest is the step. Otherwise the busiest is chosen first, as the batch whose own
  groups on every rank are slowest (the grid of u = 1 below, shared by all ranks' batches), and
  only it is evaluated at the step's real routed tokens (named assumption: the experts' time
  depends on the routed tokens alone, which every candidate shares, so the ranks differ by their
  attention and dense part; the choice leans to the rank with more tokens, whose own routed load
  is larger). This keeps one evaluation at the real routed share per step: each candidate at its
  own share would need a grid model for each share (a decode-only rank beside a prefilling one
  routes up to R times its own tokens).
* **Step-time model.** Each rank's groups are looked up on the serving step-time model's grid
  (`StepTimeModel`, at the rank level: its corners are whole deployment steps R x corner) at the
  share u = routed / (R x the rank's tokens) of grid points u = ratio^k, k any integer
  (``step_model.routed_ratio``, 1.25; u = 1, the rank's own tokens on every rank, is one),
  interpolated linearly in u between the two neighbouring models; ``step_model.exact`` evaluates
  every step's candidates exactly. A step whose ranks all hold the same groups is the even-share
  step R x G of the one engine's own model (the same grid, so the same values as without lock
  step when the schedules agree: fixed-length benchmark runs keep the ranks in phase).
* **Decode-only stretches** run when every rank with work only decodes, as long as the shortest
  of the ranks' own stretches.

``scheduler.attention_dp_lockstep: false`` turns it off: the deployment is simulated as one
engine with the limits x ranks and each step's tokens spread evenly over the ranks, as before.
Lock step applies to MoE models with ``attention_dp`` > 1 (a dense model's attention-DP groups
share no layer and run as independent replicas).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import simpy

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.mapping.lockstep import rank_shape
from codesign.sim.serving.config import SchedulerConfig
from codesign.sim.serving.kv import KVCapacity
from codesign.sim.serving.scheduler import PROGRESS_STEPS, Draft, Engine, Recorder, _shape, hold_steps, tuple_time
from codesign.sim.serving.steptime import StepFn, StepTimeModel, StepTimeOptions

GroupT = tuple[int, int, int, int]  # (seqs, new, cached, logits), as the scheduler builds them


def lockstep_ranks(plan, config, cfg: SchedulerConfig) -> int:
    """Attention-DP ranks that run in lock step at this point: plan.attention_dp for a MoE model
    with the option on (``attention_dp_lockstep``: None or true), else 1 (one engine)."""
    if cfg.attention_dp_lockstep is False or plan.attention_dp <= 1 or config.moe is None:
        return 1
    return int(plan.attention_dp)


def deployment_shape(groups: tuple[GroupT, ...] | list[GroupT], ranks: int, routed: int | None = None) -> StepShape:
    """Rank groups, as the scheduler's tuples, on every one of `ranks` ranks
    (`codesign.mapping.lockstep.rank_shape`), with `routed` tokens routed (None: all of them)."""
    return rank_shape([Group(*g) for g in groups], ranks, routed)


class LockStepTimer:
    """Seconds of one lock-stepped step from the ranks' groups (see module docstring)."""

    def __init__(self, step: StepFn, ranks: int, max_len: int, options: StepTimeOptions | None = None,
                 even: StepTimeModel | None = None) -> None:
        if ranks < 2:
            raise CodesignError(f"lock step: expected at least 2 attention-DP ranks, found {ranks}")
        self._step, self.ranks, self.max_len = step, ranks, max_len
        self.options = options or StepTimeOptions()
        # the deployment-level model of the same core (the one engine's): steps whose ranks are all
        # equal are its steps, looked up on its grid (the same values as without lock step)
        self.even = even
        self.ratio = self.options.routed_ratio
        self._log_ratio = math.log(self.ratio)
        self._models: dict[int, StepTimeModel] = {}
        self._exact: dict[tuple, float] = {}
        self.evaluations_exact = 0

    @property
    def evaluations(self) -> int:
        """Core evaluations so far (every grid model's, the even model's and the exact steps')."""
        even = self.even.evaluations if self.even is not None else 0
        return sum(m.evaluations for m in self._models.values()) + self.evaluations_exact + even

    def model(self, k: int) -> StepTimeModel:
        """The rank-level step-time model at routed share u = ratio^k (k = 0: the rank's own tokens
        routed on every rank; k < 0 fewer, k > 0 more)."""
        m = self._models.get(k)
        if m is None:
            u, R, core = self.ratio ** k, self.ranks, self._step

            def step(shape: StepShape):
                full = deployment_shape([(g.seqs, g.new_tokens, g.cached_tokens, g.logits) for g in shape.groups], R)
                routed = None if k == 0 else max(1, int(round(u * full.tokens)))
                return core(StepShape(full.groups, routed))

            m = self._models[k] = StepTimeModel(step, self.max_len, self.options)
        return m

    def rank_time(self, groups: tuple[GroupT, ...], routed: int) -> float:
        """One rank's groups on every rank, `routed` tokens routed (all ranks' together)."""
        R = self.ranks
        tokens = sum(s * n for s, n, _, _ in groups) * R
        if self.options.exact:
            key = (groups, routed)
            t = self._exact.get(key)
            if t is None:
                self.evaluations_exact += 1
                t = self._exact[key] = float(self._step(deployment_shape(groups, R, routed)).time_s)
            return t
        if routed == tokens:
            return _time(self.model(0), groups)
        u = routed / tokens
        k = math.floor(math.log(u) / self._log_ratio)  # ratio^k <= u < ratio^(k+1), up to rounding
        u0 = self.ratio ** k
        if u0 > u:
            k -= 1
            u0 = self.ratio ** k
        u1 = self.ratio ** (k + 1)
        if u1 <= u:
            k += 1
            u0, u1 = u1, self.ratio ** (k + 1)
        if u == u0:
            return _time(self.model(k), groups)
        w = (u - u0) / (u1 - u0)
        return (1 - w) * _time(self.model(k), groups) + w * _time(self.model(k + 1), groups)

    def time(self, ranks: list[list[GroupT]]) -> float:
        """The step of every rank's groups (an idle rank: []) with all ranks' tokens routed: with
        ``exact``, the largest `rank_time` of the distinct rank batches (those another batch
        dominates left out); else the `rank_time` of the busiest batch, the one whose own groups
        on every rank are slowest on the grid of u = 1 (named assumption, see module docstring)."""
        first = ranks[0]
        if self.even is not None and first and all(g == first for g in ranks):
            # every rank the same: the even share's step, on the deployment-level grid
            return _time(self.even, tuple((s * self.ranks, n, c, lg) for s, n, c, lg in first))
        routed = sum(s * n for g in ranks for s, n, _, _ in g)
        distinct = list(dict.fromkeys(tuple(g) for g in ranks if g))
        if len(distinct) == 1:
            return self.rank_time(distinct[0], routed)
        if self.options.exact:
            return max(self.rank_time(g, routed) for g in undominated(distinct))
        own = self.model(0)
        busiest = max(distinct, key=lambda g: _time(own, g))  # the first of equal maxima
        return self.rank_time(busiest, routed)


def undominated(batches: list[tuple[GroupT, ...]]) -> list[tuple[GroupT, ...]]:
    """The rank batches no other batch dominates: b dominates a when they have as many groups, the
    same decode/chunk pattern and logits, and b has at least a's sequences, new and cached tokens
    in every group (its step is then at least as long at the same routed tokens), in order."""
    def dominates(b: tuple[GroupT, ...], a: tuple[GroupT, ...]) -> bool:
        return len(a) == len(b) and all((x[1] == 1) == (y[1] == 1) and x[3] == y[3] and y[0] >= x[0]
                                        and y[1] >= x[1] and y[2] >= x[2] for x, y in zip(a, b))

    return [a for a in batches if not any(b != a and dominates(b, a) for b in batches)]


def _time(m: StepTimeModel, groups: tuple[GroupT, ...]) -> float:
    """`m.step_time` of the groups, through its tuple entry points for the common steps."""
    t = tuple_time(m, groups)
    return m.step_time(_shape(groups)) if t is None else t


def rank_capacity(cap: KVCapacity, ranks: int) -> KVCapacity:
    """One rank's share of the deployment's pool (its chips' free bytes x the dp replicas)."""
    return dataclasses.replace(cap, free_bytes=cap.free_bytes / ranks, replicas=max(1, cap.replicas // ranks))


class LockStepEngine:
    """`ranks` schedulers (`Engine`) stepping together (see module docstring); the engine side of
    `run_stream` for an attention-DP deployment in lock step."""

    def __init__(self, env: simpy.Environment, cfg: SchedulerConfig, cap: KVCapacity, ranks: int,
                 timer: LockStepTimer, rec: Recorder, draft: Draft | None = None,
                 draft_time: Callable[[int, int], float] | None = None,
                 stretch: tuple[float, int] = (0.02, 256)) -> None:
        self.env, self.rec, self.timer, self.R = env, rec, timer, ranks
        self.draft, self.draft_time = draft, draft_time
        rcap = rank_capacity(cap, ranks)
        self.ranks = [Engine(env, cfg, rcap, _no_step, rec, draft, None, stretch, None) for _ in range(ranks)]
        self.width = self.ranks[0].width
        self.emit = self.ranks[0].emit
        self.dispatch = cfg.attention_dp_dispatch
        self._next = 0  # round robin's next rank
        self.steps = self.iterations = 0
        self.on_step: Callable[[int], None] | None = None
        self.expected = -1
        self.all_done: simpy.Event | None = None
        self.stop_at: Callable[[int], float] | None = None
        self.peak = 0

    @property
    def finished(self) -> int:
        return sum(r.finished for r in self.ranks)

    def submit(self, rid: int, prompt: int, out: int, prefilled: bool = False,
               sent: float | None = None) -> simpy.Event:
        """Send a request to a rank by the dispatch rule (see module docstring); `sent`: as
        `Engine.submit`."""
        if self.dispatch == "round_robin":
            i = self._next
            self._next = (i + 1) % self.R
        else:  # balanced: fewest requests in the rank's system, the lowest rank on ties
            i = min(range(self.R), key=lambda j: (self.ranks[j].in_system, j))
        return self.ranks[i].submit(rid, prompt, out, prefilled, sent)

    def _share_wake(self) -> simpy.Event:
        wake = self.env.event()
        for r in self.ranks:
            r._wake = wake  # an arrival at any rank succeeds it (Engine.submit)
        return wake

    def run(self):
        env, ranks, timer = self.env, self.ranks, self.timer
        timeout = env.timeout
        while True:
            if all(not r.waiting and not r.prefilling and not r.n for r in ranks):
                yield self._share_wake()
            plans = [r._schedule() for r in ranks]  # (groups, decodes, mean cached) per rank
            if not any(g for g, _, _ in plans):
                raise CodesignError("serving: the scheduler could not place any waiting request (nothing running on "
                                    "any attention-DP rank, the first waiting request does not fit its rank's KV pool)")
            k = self._stretch(plans)
            if k > 1:  # k identical decode-only steps at once, timed at the stretch's middle
                shift = int(round((k - 1) * self.emit / 2))
                plans = [([(n, self.width, kv + shift, self.width)], n, kv + shift) if g else (g, n, kv)
                         for g, n, kv in plans]
            dt = timer.time([g for g, _, _ in plans])
            if self.draft is not None and self.draft_time is not None:
                drafts = [self.draft_time(n * self.R, kv) for _, n, kv in plans if n]
                if drafts:
                    dt += self.draft.tokens * max(drafts)
            if k == 1:
                yield timeout(dt)
            else:  # an arrival ends the wait early
                k = yield from hold_steps(env, k, dt, self._share_wake())
            self._apply(plans, dt, k)

    def _stretch(self, plans: list[tuple[list[GroupT], int, int]]) -> int:
        """Decode-only steps of every rank at once: the shortest of the busy ranks' own stretches
        (`Engine._stretch`), 1 unless every rank with work only decodes."""
        k = None
        for r, (g, n, kv) in zip(self.ranks, plans):
            if not g:
                continue
            if len(g) != 1 or not n or g[0][0] != n:
                return 1
            kr = r._stretch(g, n, kv)
            k = kr if k is None else min(k, kr)
            if k == 1:
                return 1
        return k or 1

    def _apply(self, plans: list[tuple[list[GroupT], int, int]], dt: float, k: int) -> None:
        """Each rank applies its part of the step; the step of all ranks is recorded once."""
        rec, now = self.rec, self.env.now
        prefill = decodes = 0
        for r, (_, n, _) in zip(self.ranks, plans):
            prefill += r._apply(n, dt, k, record=False)
            decodes += n
        rec.step_end.append(now)
        rec.step_dt.append(dt)
        rec.step_count.append(k)
        rec.step_decodes.append(decodes)
        rec.step_prefill_tokens.append(prefill)
        running = sum(r.n + len(r.prefilling) for r in self.ranks)
        if running > self.peak:
            self.peak = running
        rec.step_running.append(running)
        rec.step_in_system.append(sum(r.in_system for r in self.ranks))
        used = sum(r.pool.used for r in self.ranks)
        free = sum(r.pool.cap.free_bytes for r in self.ranks)
        rec.step_kv_use.append(used / free if free else 1.0)
        self.steps += k
        self.iterations += 1
        done = self.all_done
        if done is not None and not done.triggered:
            finished = self.finished
            if finished == self.expected:
                done.succeed()
            elif (self.stop_at is not None and any(r.waiting for r in self.ranks)
                  and finished >= self.stop_at(self.peak)):
                done.succeed()  # enough completions while requests still wait (run_stream's stop_saturated)
        if self.on_step is not None and not self.iterations % PROGRESS_STEPS:
            self.on_step(int(np.isfinite(rec.finish).sum()))


def _no_step(shape: StepShape) -> float:
    raise CodesignError("lock step: a rank's steps are timed for all ranks together (LockStepTimer)")


__all__ = ["LockStepEngine", "LockStepTimer", "deployment_shape", "lockstep_ranks", "rank_capacity", "undominated"]
