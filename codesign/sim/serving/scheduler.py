"""A continuous-batching scheduler as vLLM V1 runs one, in simpy.

Processes: each **request** is a simpy process (sent at its arrival time, or when the client's
concurrency slot frees: a `simpy.Resource` of that capacity), waiting on its completion event; the
**engine** is one process that loops over scheduler iterations: build one step, hold the engine for
the step's time (`yield env.timeout`), apply what the step produced.

One iteration (vLLM V1 `Scheduler.schedule`, FCFS, `SchedulerConfig` knobs):

1. **Running decodes** each get their next token (``1 + k`` with k drafted MTP tokens to verify),
   all in one pooled group at their mean cached length. Their pages for the new tokens are
   allocated first; when the pool cannot hold them the **newest** running request is preempted
   (recompute: its pages are freed, it goes back to the front of the queue and is prefilled again,
   prompt and generated tokens, when readmitted), until they fit.
2. **Partially prefilled** requests, oldest first, get ``min(remaining prompt, budget left)`` of the
   token budget (``max_num_batched_tokens``, chunked prefill); one that cannot get its pages
   preempts newer requests; if it is the newest it keeps its pages for the next step
   (``stalled_prefill: wait``, vLLM with prefix caching, whose self-preempted request resumes from
   its cached pages) or preempts itself (``preempt``: vLLM without prefix caching).
3. **Waiting** requests are admitted in order while budget, ``max_num_seqs`` and pages last
   (admission stops at the first that does not fit: FCFS, no skipping), and only in an iteration
   that preempted nothing (vLLM V1's ``if not preempted_reqs:``; ``admit_after_preemption: true``
   admits anyway). A prefix-cache hit rate
   marks that share of a prompt (whole blocks, never the last token) as already cached: held in
   pages, not computed.

Other engines' policies (`SchedulerConfig`): with ``chunked_prefill: false`` a prompt is computed
whole in one step and waits until the step's remaining budget holds all of it (a recompute longer
than one engine's budget is still chunked: named deviation, TensorRT-LLM would refuse it); with
``capacity_policy: guaranteed_no_evict`` admission also needs the pages of the request's whole
sequence (prompt + output + the step's new tokens) beside the whole sequences already admitted
(`Engine.reserved`), so the pool never overflows and nothing is preempted.

When a prompt's last chunk is computed, the step also samples its first token (TTFT). Decoding
sequences' state lives in numpy arrays (one slot per sequence), so an iteration costs a few vector
operations, not a Python loop over the batch: a step's emission is one operation on a contiguous
block, the fewest remaining tokens moves with it instead of being searched for, and with whole
tokens per step (no MTP) and power-of-two pages the decodes' pages and cached tokens are counted
exactly from integers without a pass over the batch (`_BlockCount`). None of this changes a value. Accepted MTP tokens are counted at their expectation
per step (``1 + sum of cumulative acceptance products``; no per-step sampling).

Named deviation from vLLM V1: its running list is in admission order, so a long prefill chunk ahead
of a decode in that list could take the whole budget for a step; without preemption FCFS
admission never puts a still-prefilling request ahead of a decode, so giving decodes their tokens
first is the same schedule. Data-parallel replicas are one engine with limits x replicas;
attention-DP ranks of a MoE deployment each run this scheduler, in lock step
(`codesign.sim.serving.lockstep`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np
import simpy

from codesign.errors import CodesignError
from codesign.gc_pause import gc_paused
from codesign.graph.shape import Group, StepShape
from codesign.sim.serving.arrivals import RequestStream
from codesign.sim.serving.config import SchedulerConfig
from codesign.sim.serving.frontend import Frontend, FrontendConfig
from codesign.sim.serving.kv import KVCapacity, KVPool

if TYPE_CHECKING:
    from codesign.sim.serving.lockstep import LockStepTimer

_EPS = 1e-9
PROGRESS_STEPS = 2000
# Decode-only stretches (see Engine._stretch): at most this relative move of the mean KV length,
# and this many steps, per simulated stretch (defaults; StepTimeOptions.stretch_drift/_max).
STRETCH_DRIFT = 0.02
STRETCH_MAX = 256
_sum, _max = np.add.reduce, np.maximum.reduce  # ndarray.sum / .max without their Python wrappers


@dataclass(frozen=True)
class Draft:
    """Speculative decoding with `tokens` drafted per step; `acceptance[i]` = P(draft i+1 accepted |
    draft i accepted)."""

    tokens: int
    acceptance: tuple[float, ...]

    @property
    def expected_tokens(self) -> float:
        """Tokens emitted per verify step: the bonus token plus the expected accepted drafts (the sum
        of the cumulative acceptance products)."""
        total, p = 1.0, 1.0
        for a in self.acceptance:
            p *= a
            total += p
        return total


class _Req:
    __slots__ = ("rid", "prompt", "out", "target", "computed", "held", "generated", "order", "done", "chunk",
                 "resumed_from", "reserve")

    def __init__(self, rid: int, prompt: int, out: int, done: simpy.Event) -> None:
        self.rid, self.prompt, self.out, self.done = rid, prompt, out, done
        self.target, self.computed, self.held, self.generated = prompt, 0, 0.0, 0.0
        self.order, self.chunk = -1, 0
        self.resumed_from: float | None = None  # time of the last token before a preemption
        self.reserve = 0.0  # bytes of its whole sequence, held against the pool (guaranteed_no_evict)


class Recorder:
    """What a run produced: per-request times and per-step series (read by `metrics`)."""

    def __init__(self, n: int) -> None:
        self.sent = np.full(n, np.nan)
        self.admitted = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.output = np.zeros(n)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.step_end: list[float] = []
        self.step_dt: list[float] = []  # seconds per step
        self.step_count: list[int] = []  # steps in the entry (decode-only stretches: several)
        self.step_decodes: list[int] = []
        self.step_prefill_tokens: list[int] = []
        self.step_running: list[int] = []
        self.step_in_system: list[int] = []
        self.step_kv_use: list[float] = []
        self.resume_gaps: list[float] = []  # inter-token gaps across a preemption
        self.in_system_area = 0.0  # integral of requests in the system over time (Engine._count)
        self.sample: list[StepShape] = []  # steps recorded unpooled (Engine.sample_every)


class Engine:
    """The engine process and its scheduler state (see module docstring).

    Decoding sequences are packed in the first `n` entries of numpy arrays (admission order is kept
    in `order`; removal moves the last entry into the gap), so per-iteration work is on slices."""

    def __init__(self, env: simpy.Environment, cfg: SchedulerConfig, cap: KVCapacity,
                 step_time: Callable[[StepShape], float], rec: Recorder, draft: Draft | None = None,
                 draft_time: Callable[[int, int], float] | None = None,
                 stretch: tuple[float, int] = (STRETCH_DRIFT, STRETCH_MAX), timer: StepTimer | None = None) -> None:
        self.env, self.cfg, self.pool, self.rec = env, cfg, KVPool(cap), rec
        self.stretch_drift, self.stretch_max = stretch
        self.step_time, self.draft, self.draft_time = step_time, draft, draft_time
        self.timer = timer
        self.max_seqs = cfg.max_num_seqs * cap.replicas
        self.budget = cfg.max_num_batched_tokens * cap.replicas
        self.width = 1 + (draft.tokens if draft else 0)
        self.emit = draft.expected_tokens if draft else 1.0
        self.bs, self.block_bytes, self.seq_bytes = cap.block_size, cap.block_bytes, cap.seq_bytes
        S = self.max_seqs
        self.n = 0  # decoding sequences, packed in [0, n)
        # cached tokens, generated tokens and minus the tokens still to generate: columns of one
        # array, so that a step's emission is one vector operation on a contiguous block (`_apply`)
        self.state = np.zeros((S, 3))
        self.kv, self.gen, self.nrem = self.state[:, 0], self.state[:, 1], self.state[:, 2]
        self._nrem_max: float | None = None  # max of nrem[:n] (None: to recompute), see `_least_rem`
        self._buf = np.zeros(S)  # scratch for `_dec_bytes`
        # Whole-token steps (no MTP) and power-of-two pages: the decodes' pages and cached tokens are
        # counted exactly from integers instead of the arrays (see `_BlockCount`)
        self.blocks = _BlockCount(self.bs) if self.emit == 1.0 and self.bs & (self.bs - 1) == 0 else None
        self.order = np.zeros(S, dtype=np.int64)
        # when each sequence entered decoding; every step with decodes emits for all of them, so a
        # sequence's last token is at max(entered, dec_t), dec_t the end of the last decode step
        self.entered = np.zeros(S)
        self.dec_t = 0.0
        self.reqs: list[_Req | None] = [None] * S
        self.waiting: deque[_Req] = deque()
        self.prefilling: list[_Req] = []
        self.prefill_held = 0.0
        self.held_back = False  # the last iteration admitted nothing because it preempted
        self.no_evict = cfg.capacity_policy == "guaranteed_no_evict"
        self.reserved = 0.0  # guaranteed_no_evict: whole-sequence bytes of every admitted request
        self.counter = 0
        self.in_system = 0
        self._count_t = 0.0
        self._wake: simpy.Event = env.event()
        self.steps = 0  # engine steps
        self.iterations = 0  # simulated iterations (a decode-only stretch is one)
        self.on_step: Callable[[int], None] | None = None  # progress: called every PROGRESS_STEPS iterations
        self.sample_every = 0  # > 0: every this many iterations, record the step unpooled (Recorder.sample)
        self.finished = 0  # requests finished
        self.expected = -1  # with `all_done`: how many will be submitted
        self.all_done: simpy.Event | None = None  # succeeds when `expected` requests have finished
        self.peak = 0  # the most requests running at the end of an iteration
        # with `all_done`: also succeed it once stop_at(peak) requests have finished while others
        # still wait (an offline run measured only while saturated, codesign.sim.serving.ceiling)
        self.stop_at: Callable[[int], float] | None = None

    # -- client side ----------------------------------------------------------------------------
    def submit(self, rid: int, prompt: int, out: int, prefilled: bool = False,
               sent: float | None = None) -> simpy.Event:
        """Queue a request; `prefilled`: its prompt's KV arrives computed, with its first token (a
        disaggregated decode pool's requests), so it needs pages, not prefill; `sent`: when the
        client sent it (before the frontend; None: now)."""
        done = self.env.event()
        r = _Req(rid, prompt, out, done)
        if prefilled:
            r.computed, r.generated = prompt, 1.0
        self.waiting.append(r)
        self.rec.sent[rid] = self.env.now if sent is None else sent
        self._count(1)
        if not self._wake.triggered:
            self._wake.succeed()
        return done

    def _count(self, change: int) -> None:
        """Requests in the system (queued or running) change by `change` now; the engine integrates
        the count over time as it changes (Little's L, independent of the per-request times)."""
        now = self.env.now
        self.rec.in_system_area += self.in_system * (now - self._count_t)
        self._count_t, self.in_system = now, self.in_system + change

    # -- the engine process ---------------------------------------------------------------------
    def run(self):
        env, rec, width, emit = self.env, self.rec, self.width, self.emit
        schedule, stretch, step_time, apply = self._schedule, self._stretch, self._time, self._apply
        timeout = env.timeout
        while True:
            if not self.waiting and not self.prefilling and not self.n:
                self._wake = env.event()
                yield self._wake
            groups, n, mean_kv = schedule()
            if not groups:
                raise CodesignError("serving: the scheduler could not place any waiting request (nothing running, "
                                    "the first waiting request does not fit the KV pool)")
            k = stretch(groups, n, mean_kv) if len(groups) == 1 else 1
            if k > 1:  # k identical decode-only steps at once, timed at the stretch's middle
                mean_kv += int(round((k - 1) * emit / 2))
                groups = [(n, width, mean_kv, width)]
            if self.sample_every and self.iterations % self.sample_every == 0:
                rec.sample.append(self._unpooled(_shape(groups), n, mean_kv))
            dt = step_time(groups)
            if self.draft is not None and n and self.draft_time is not None:
                dt += self.draft.tokens * self.draft_time(n, mean_kv)
            if k == 1:
                yield timeout(dt)
            else:
                self._wake = env.event()  # an arrival ends the wait early (`submit`)
                k = yield from hold_steps(env, k, dt, self._wake)
            apply(n, dt, k)

    def _time(self, groups: list[tuple[int, int, int, int]]) -> float:
        """Seconds of the step of `groups` ((seqs, new, cached, logits) each): the step-time model's
        own entry points for one group and for decodes with one prompt chunk (no shape built),
        else `step_time` of the shape; the same value either way."""
        timer = self.timer
        if timer is not None:
            t = tuple_time(timer, groups)
            if t is not None:
                return t
        return self.step_time(_shape(groups))

    def _unpooled(self, shape: StepShape, n: int, mean_kv: int) -> StepShape:
        """`shape` with its pooled decode group split back into one group per cached length (the
        step as it is, for measuring the step-time model's pooling; see Recorder.sample)."""
        if not n:
            return shape
        kv = self.kv[:n] + self._off() if self.blocks is not None else self.kv[:n]
        shift = mean_kv - int(round(float(kv.sum()) / n))  # a stretch is timed at its middle
        lens, counts = np.unique(np.rint(kv).astype(np.int64) + shift, return_counts=True)
        decodes = tuple(Group(int(c), self.width, max(0, int(v)), self.width) for v, c in zip(lens, counts))
        return StepShape(decodes + shape.groups[1:])

    def _stretch(self, groups: list[tuple[int, int, int, int]], n: int, mean_kv: int) -> int:
        """How many decode-only steps can run before anything but the decodes' KV changes: up to the
        first completion, while the pages hold, the mean KV length moves at most `STRETCH_DRIFT`
        (step time is linear in it: the middle's time is the stretch's mean) and `STRETCH_MAX`."""
        if len(groups) != 1 or not n or groups[0][0] != n or (self.held_back and self.waiting):
            return 1  # (held back after a preemption: the next iteration may admit)
        first_done = int(np.ceil(self._least_rem() / self.emit - _EPS))
        drift = int(max(1.0, self.stretch_drift * mean_kv) / self.emit)
        k = max(1, min(first_done, drift, self.stretch_max))
        cap = self.pool.cap.free_bytes
        while k > 1 and self._dec_bytes(n, (k - 1) * self.emit + self.width) + self.prefill_held > cap + _EPS:
            k //= 2
        return k

    # -- one iteration --------------------------------------------------------------------------
    def _dec_bytes(self, n: int, extra: float) -> float:
        """Bytes the `n` decoding sequences hold once each has `extra` more tokens."""
        if not n:
            return 0.0
        b = self.blocks
        if b is not None:  # _BlockCount.pages(n, int(extra)), inlined (the hot path)
            bs, h = b.bs, b.hist
            Q, R = divmod(b.shift + int(extra), bs)
            part = n - (h[0] if R == 0 else 0) + (sum(h[bs + 1 - R:]) if R >= 2 else 0)
            return float(b.q_sum + n * Q + part) * self.block_bytes + n * self.seq_bytes
        t = self._buf[:n]
        np.add(self.kv[:n], extra, out=t)
        np.multiply(t, 1.0 / self.bs, out=t)
        np.ceil(t, out=t)
        return float(_sum(t)) * self.block_bytes + n * self.seq_bytes

    def _least_rem(self) -> float:
        """Fewest tokens any decoding sequence still has to generate (-max of nrem; memoised: a
        step moves every entry by the same amount, so the max moves with it)."""
        m = self._nrem_max
        return -(m if m is not None else self._least_rem_max())

    def _least_rem_max(self) -> float:
        if not self.n:
            m = -np.inf
        elif self.blocks is not None:
            m = float(_max(self.nrem[:self.n])) + self._off()
        else:
            m = float(_max(self.nrem[:self.n]))
        self._nrem_max = m
        return m

    def _off(self) -> float:
        """With `_BlockCount` (whole tokens per step), the decoding sequences' state columns hold
        their values less the tokens every sequence has gained since the run began
        (`_BlockCount.shift`): a step adds to that one integer instead of to every row. The values
        are whole numbers (cached, generated, remaining tokens), so row + shift is exactly what
        adding each step's tokens to the row would give."""
        return float(self.blocks.shift)

    def _schedule(self) -> tuple[list[tuple[int, int, int, int]], int, int]:
        """One iteration's groups as (seqs, new, cached, logits), the decodes first; the decodes'
        count and mean cached length."""
        cap = self.pool.cap.free_bytes + _EPS
        width, step_budget = self.width, self.budget
        bs, bb, sb = self.bs, self.block_bytes, self.seq_bytes
        chunked, engine_budget = self.cfg.chunked_prefill, self.cfg.max_num_batched_tokens
        dec_b = self._dec_bytes(self.n, width)
        preempted = False  # whether this iteration preempted a running request
        while self.n and dec_b + self.prefill_held > cap:
            preempted = self._preempt_newest(-1) or preempted
            dec_b = self._dec_bytes(self.n, width)
        extra = 0.0  # bytes the chunks scheduled so far in this iteration add
        chunks = 0  # their tokens
        groups: list[tuple[int, int, int, int]] = []
        prefilling = self.prefilling
        for r in list(prefilling) if prefilling else ():
            budget = step_budget - self.n * width - chunks
            if budget <= 0:
                break
            if r not in prefilling:  # preempted by an older request in this iteration
                continue
            left = r.target - r.computed
            chunk = min(left, budget)
            if chunk < left and not chunked and left <= engine_budget:  # self._whole(r)
                continue  # no chunked prefill: the prompt waits for a step with room for all of it
            held = r.computed
            cost = (math.ceil((held + chunk) / bs) - math.ceil(held / bs)) * bb  # KVPool.grow_cost
            while dec_b + self.prefill_held + extra + cost > cap and self._preempt_newest(r.order):
                preempted = True
                dec_b = self._dec_bytes(self.n, width)
            if dec_b + self.prefill_held + extra + cost > cap:
                if self.cfg.stalled_prefill == "preempt":  # the newest request: preempted itself
                    self._preempt_prefill(r)
                    preempted = True
                continue  # ("wait": it keeps its pages for the next step)
            chunk = min(chunk, step_budget - self.n * width - chunks)
            r.chunk, extra, chunks = chunk, extra + cost, chunks + chunk
            groups.append((1, chunk, r.computed, 1))
        budget = step_budget - self.n * width - chunks
        n_running = self.n + len(self.prefilling)
        used = dec_b + self.prefill_held + extra
        # vLLM V1 admits none in a step that preempted; a step left with nothing to run would be an
        # empty one (no forward pass), so its admissions are this iteration's
        admit = not preempted or self.cfg.admit_after_preemption or not (self.n or groups)
        self.held_back = not admit
        while admit and self.waiting and budget > 0 and n_running < self.max_seqs:
            r = self.waiting[0]
            if r.computed == 0:
                r.computed = self._cached_prefix(r.target)
            chunk = min(r.target - r.computed, budget)
            ready = r.computed >= r.target  # prefilled elsewhere: straight to decoding
            if not ready and chunk < r.target - r.computed and self._whole(r):
                break  # no chunked prefill: FCFS waits for a step with room for the whole prompt
            cost = math.ceil((r.computed + (width if ready else chunk)) / bs) * bb + sb  # KVCapacity.seq_footprint
            if used + cost > cap or (ready and budget < self.width):
                break
            reserve = self.pool.cap.seq_footprint(r.prompt + r.out + self.width) if self.no_evict else 0.0
            if self.no_evict and self.reserved + reserve > cap:
                break  # guaranteed_no_evict: its whole sequence must fit beside the admitted ones
            r.reserve, self.reserved = reserve, self.reserved + reserve
            self.waiting.popleft()
            if self.rec.admitted[r.rid] != self.rec.admitted[r.rid]:  # NaN: first admission
                self.rec.admitted[r.rid] = self.env.now
            r.order, self.counter = self.counter, self.counter + 1
            if ready:
                self._enter_decode(r, self.env.now)
                used, budget, n_running = used + cost, budget - self.width, n_running + 1
                continue
            r.held = math.ceil(r.computed / bs) * bb + sb  # KVCapacity.seq_footprint
            r.chunk = chunk
            self.prefill_held += r.held
            self.prefilling.append(r)
            used, budget, n_running = used + cost, budget - chunk, n_running + 1
            groups.append((1, chunk, r.computed, 1))
        n = self.n
        if not n:
            mean_kv = 0
        else:
            blocks = self.blocks
            total = float(blocks.a_sum + n * blocks.shift) if blocks is not None else float(_sum(self.kv[:n]))  # .tokens(n)
            mean_kv = int(round(total / n))
        if len(groups) > 1:
            groups = _merge_equal(groups)
        if n:
            groups.insert(0, (n, width, mean_kv, width))
        self.pool.used = used
        return groups, n, mean_kv

    def _whole(self, r: _Req) -> bool:
        """Whether `r`'s prompt must be computed in one step (no chunked prefill, and it fits one
        engine's budget; a longer recompute after a preemption is chunked)."""
        return not self.cfg.chunked_prefill and r.target - r.computed <= self.cfg.max_num_batched_tokens

    def _cached_prefix(self, target: int) -> int:
        """Tokens of a prompt already in the prefix cache: whole blocks, never the last token."""
        h = self.cfg.prefix_cache_hit_rate
        if h <= 0:
            return 0
        bs = self.cfg.block_size
        return min(int(h * target) // bs * bs, (target - 1) // bs * bs)

    def _preempt_newest(self, older_than: int) -> bool:
        """Preempt the newest running request newer than `older_than` (-1: any); False if none."""
        i = int(np.argmax(self.order[:self.n])) if self.n else -1
        o_dec = int(self.order[i]) if i >= 0 else -1
        pre = max(self.prefilling, key=lambda r: r.order, default=None)
        o_pre = pre.order if pre is not None else -1
        if max(o_dec, o_pre) <= older_than:
            return False
        if o_dec > o_pre:
            r = self.reqs[i]
            r.generated = float(self.gen[i]) + self._off() if self.blocks is not None else float(self.gen[i])
            r.resumed_from = max(float(self.entered[i]), self.dec_t)
            self._remove(i)
            self._requeue(r)
        else:
            self._preempt_prefill(pre)
        return True

    def _preempt_prefill(self, r: _Req) -> None:
        """Preempt the partially prefilled request `r` (its pages freed, first in the queue)."""
        self.prefilling.remove(r)
        self.prefill_held -= r.held
        r.chunk = 0
        self._requeue(r)

    def _requeue(self, r: _Req) -> None:
        """A preempted request back at the front of the queue, to be recomputed from scratch."""
        self.rec.preemptions[r.rid] += 1
        self.reserved -= r.reserve
        r.reserve = 0.0
        r.target = r.prompt + int(r.generated)
        r.computed, r.held = 0, 0.0
        self.waiting.appendleft(r)

    def _remove(self, i: int) -> None:
        """Drop decoding entry i (the last entry moves into its place)."""
        last = self.n - 1
        if self.blocks is not None:
            self.blocks.remove(int(self.kv[i] + self._off()))
        if i != last:
            self.state[i] = self.state[last]
            self.order[i], self.entered[i] = self.order[last], self.entered[last]
            self.reqs[i] = self.reqs[last]
        self.reqs[last] = None
        self.n = last
        self._nrem_max = None

    # -- what a step produced -------------------------------------------------------------------
    def _apply(self, n: int, dt: float, k: int = 1, record: bool = True) -> int:
        """What `k` steps of `dt` each produced (k > 1: decode-only stretches); its prompt tokens.
        `record`: append the step to the run's series (an attention-DP rank in lock step does not:
        `codesign.sim.serving.lockstep` records the step of all ranks once)."""
        now, rec = self.env.now, self.rec
        prefill_tokens = 0
        if n:
            e = self.emit * k
            if self.blocks is not None:
                self.blocks.shift += int(e)  # the state rows' common offset (`_off`)
            else:
                self.state[:n] += e  # kv and generated up by e, remaining down by e
            self.dec_t = now
            m = self._nrem_max
            if m is not None:
                m = self._nrem_max = m + e  # rounding is monotone: the max entry's own update
            else:
                m = self._least_rem_max()
            if -m <= _EPS:  # the fewest tokens left (`_least_rem`) is none
                nrem = self.nrem[:n] + self._off() if self.blocks is not None else self.nrem[:n]
                done = np.flatnonzero(nrem >= -_EPS)  # remaining <= _EPS
                for i in done[::-1]:  # highest first: a removal moves the last entry, already handled
                    r = self.reqs[int(i)]
                    self._remove(int(i))
                    self._finish(r)
        prefilling = self.prefilling
        if prefilling:
            bs, bb, sb = self.bs, self.block_bytes, self.seq_bytes
            for r in list(prefilling):
                chunk = r.chunk
                if not chunk:
                    continue
                prefill_tokens += chunk
                r.computed += chunk
                r.chunk = 0
                new_held = math.ceil(r.computed / bs) * bb + sb  # KVCapacity.seq_footprint
                self.prefill_held += new_held - r.held
                r.held = new_held
                if r.computed >= r.target:
                    self._to_decode(r, now)
        if not record:
            return prefill_tokens
        rec.step_end.append(now)
        rec.step_dt.append(dt)
        rec.step_count.append(k)
        rec.step_decodes.append(n)
        rec.step_prefill_tokens.append(prefill_tokens)
        running = self.n + len(prefilling)
        rec.step_running.append(running)
        if running > self.peak:
            self.peak = running
        rec.step_in_system.append(self.in_system)
        pool = self.pool
        free = pool.cap.free_bytes
        rec.step_kv_use.append(pool.used / free if free else 1.0)  # KVPool.use
        self.steps += k
        self.iterations += 1
        if self.on_step is not None and not self.iterations % PROGRESS_STEPS:
            self.on_step(int(np.isfinite(rec.finish).sum()))
        return prefill_tokens

    def _to_decode(self, r: _Req, now: float) -> None:
        self.prefilling.remove(r)
        self.prefill_held -= r.held
        rec = self.rec
        if r.resumed_from is not None:
            rec.resume_gaps.append(now - r.resumed_from)
            r.resumed_from = None
        elif rec.first_token[r.rid] != rec.first_token[r.rid]:  # NaN: the first token
            rec.first_token[r.rid] = now
        r.generated += 1.0  # the token sampled at the end of the prompt
        if r.generated >= r.out - _EPS:
            self._finish(r)
            return
        self._enter_decode(r, now)

    def _enter_decode(self, r: _Req, now: float) -> None:
        i = self.n
        self.n += 1
        self.reqs[i] = r
        nrem = -(r.out - r.generated)
        if self.blocks is not None:
            off = self._off()
            self.kv[i], self.gen[i], self.nrem[i] = r.target - off, r.generated - off, nrem - off
            self.blocks.add(r.target)
        else:
            self.kv[i], self.gen[i], self.nrem[i] = r.target, r.generated, nrem
        self.order[i], self.entered[i] = r.order, now
        if self._nrem_max is not None:
            self._nrem_max = max(self._nrem_max, float(nrem))

    def _finish(self, r: _Req) -> None:
        self.reserved -= r.reserve
        r.reserve = 0.0
        self.rec.finish[r.rid] = self.env.now
        self.rec.output[r.rid] = r.out
        self._count(-1)
        r.done.succeed()
        self.finished += 1
        done = self.all_done
        if done is not None and not done.triggered:
            if self.finished == self.expected:
                done.succeed()
            elif self.stop_at is not None and self.waiting and self.finished >= self.stop_at(self.peak):
                done.succeed()  # enough completions while requests still wait (`run_stream`'s stop_saturated)


class _BlockCount:
    """The decoding sequences' pages and cached tokens from integers, without a pass over them.

    Every step moves every decoding sequence's cached length by the same whole number of tokens, so
    each is kept as a base `a` = length - `shift` (`shift`: the tokens every sequence has gained
    since the count began). With `a` = q x bs + r, the pages of all sequences once each holds `x`
    more tokens are sum(q) + n x Q + sum over sequences of ceil((r + R) / bs), where shift + x =
    Q x bs + R, and that last sum needs only how many sequences have each r. Exact: the same
    integers as the arrays' ceil((kv + x) x (1 / bs)) summed, which are exact for power-of-two
    page sizes (the scheduler uses this count only then, and only without MTP's fractional tokens
    per step)."""

    __slots__ = ("bs", "shift", "q_sum", "a_sum", "hist")

    def __init__(self, bs: int) -> None:
        self.bs, self.shift, self.q_sum, self.a_sum = bs, 0, 0, 0
        self.hist = [0] * bs  # sequences by a mod bs

    def add(self, kv: int) -> None:
        q, r = divmod(kv - self.shift, self.bs)
        self.q_sum += q
        self.a_sum += kv - self.shift
        self.hist[r] += 1

    def remove(self, kv: int) -> None:
        q, r = divmod(kv - self.shift, self.bs)
        self.q_sum -= q
        self.a_sum -= kv - self.shift
        self.hist[r] -= 1

    def tokens(self, n: int) -> int:
        """Cached tokens of the `n` sequences."""
        return self.a_sum + n * self.shift

    def pages(self, n: int, extra: int) -> int:
        """Pages the `n` sequences hold once each has `extra` more tokens."""
        bs, h = self.bs, self.hist
        Q, R = divmod(self.shift + extra, bs)
        # ceil((r + R) / bs): 0 when r + R is 0, 1 up to bs, 2 above
        part = n - (h[0] if R == 0 else 0) + (sum(h[bs + 1 - R:]) if R >= 2 else 0)
        return self.q_sum + n * Q + part


def _merge_equal(chunks: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Prompt chunks (seqs, new, cached, logits) of equal (new, cached) tokens as one group of that
    many sequences: the same step for the core (each sequence its own tokens after its own cache),
    and one group instead of dozens for the step-time model (fixed-length prompts admitted
    together, e.g. without chunked prefill). First-appearance order is kept."""
    if len(chunks) < 2:
        return chunks
    counts: dict[tuple[int, int], int] = {}
    for seqs, new, cached, _ in chunks:
        counts[(new, cached)] = counts.get((new, cached), 0) + seqs
    if len(counts) == len(chunks):
        return chunks
    return [(k, new, cached, 1) for (new, cached), k in counts.items()]


def _shape(groups: Sequence[tuple[int, int, int, int]]) -> StepShape:
    return StepShape(tuple(Group(*g) for g in groups))


def tuple_time(timer: StepTimer, groups: Sequence[tuple[int, int, int, int]]) -> float | None:
    """The step time of `groups` through `timer`'s tuple entry points where one fits (one group;
    decodes with one prompt chunk), no shape built; None for other steps (`step_time` of the shape)."""
    if len(groups) == 1:
        return timer.time_of(*groups[0])
    if len(groups) == 2:
        b = groups[1]
        if b[1] > 1 and b[0] == 1 and b[3] == 1:
            return timer.time_two(groups[0], b)
    return None


class StepTimer(Protocol):
    """A step-time model's entry points that take groups as (seqs, new, cached, logits) tuples
    (`codesign.sim.serving.steptime.StepTimeModel`): the values of its `step_time` on the shape."""

    def time_of(self, seqs: int, new: int, cached: int, logits: int = 1) -> float: ...

    def time_two(self, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float: ...


def hold_steps(env: simpy.Environment, k: int, dt: float, wake: simpy.Event):
    """Wait out `k` identical steps of `dt` seconds (a decode-only stretch), unless `wake` succeeds
    first (an arrival): then stop after the step under way. Returns the steps taken."""
    t0 = env.now
    env.timeout(k * dt).callbacks.append(_Wake(wake))
    yield wake
    if env.now < t0 + k * dt * (1 - 1e-12):  # a request arrived: stop after the current step
        k = min(k, int((env.now - t0) / dt) + 1)
        rest = t0 + k * dt - env.now
        if rest > 0:
            yield env.timeout(rest)
    return k


class _Wake:
    """Succeeds `event` when the timeout it is a callback of fires, unless something (an arrival)
    has already: a decode-only stretch waits for whichever comes first."""

    __slots__ = ("event",)

    def __init__(self, event: simpy.Event) -> None:
        self.event = event

    def __call__(self, _timeout: simpy.Event) -> None:
        if not self.event.triggered:
            self.event.succeed()


class _Arrival:
    """A request sent when its arrival's timeout fires (a stream without a client limit: no process
    per request; the engine signals `Engine.all_done` when the last one finishes)."""

    __slots__ = ("engine", "rid", "prompt", "out")

    def __init__(self, engine: Engine, rid: int, prompt: int, out: int) -> None:
        self.engine, self.rid, self.prompt, self.out = engine, rid, prompt, out

    def __call__(self, _event: simpy.Event) -> None:
        self.engine.submit(self.rid, self.prompt, self.out)


def _request(env: simpy.Environment, engine: Engine, rid: int, at: float, prompt: int, out: int,
             slots: simpy.Resource | None, front: Frontend | None = None):
    """One request's process: sent at `at` (a client slot first, if the client limits them), through
    the frontend (if any), then to the engine until it finishes."""
    if at > env.now:
        yield env.timeout(at - env.now)
    if slots is None:
        yield from _sent(env, engine, rid, prompt, out, front)
        return
    with slots.request() as slot:
        yield slot
        yield from _sent(env, engine, rid, prompt, out, front)


def _sent(env: simpy.Environment, engine: Engine, rid: int, prompt: int, out: int, front: Frontend | None):
    if front is None:
        yield engine.submit(rid, prompt, out)
        return
    sent = env.now
    yield from front.through()
    yield engine.submit(rid, prompt, out, sent=sent)


def run_stream(stream: RequestStream, cfg: SchedulerConfig, cap: KVCapacity, step_time: Callable[[StepShape], float],
               draft: Draft | None = None, draft_time: Callable[[int, int], float] | None = None,
               on_progress: Callable[[int], None] | None = None,
               stretch: tuple[float, int] = (STRETCH_DRIFT, STRETCH_MAX), sample_every: int = 0,
               timer: StepTimer | None = None, stop_saturated: Callable[[int], float] | None = None,
               lock: "LockStepTimer | None" = None, frontend: FrontendConfig | None = None) -> Recorder:
    """Simulate `stream` through one engine until every request has finished (`stretch`: the
    decode-only stretch bounds, relative KV drift and steps; (0, 1) simulates every step;
    `sample_every` > 0: every that many iterations the step is kept unpooled in `Recorder.sample`;
    `timer`: the step-time model behind `step_time`, whose tuple entry points spare building the
    common steps' shapes; `stop_saturated`: stop early, once stop_saturated(C) requests have
    finished while others still wait, C the most running at once so far; a stream without a
    client limit only: the records then end there); `lock`: the attention-DP ranks' lock-step
    timer, whose ranks then each run their own scheduler (`codesign.sim.serving.lockstep`;
    `step_time` and `timer` are then unused); `frontend`: the request path in front of the engine
    (`codesign.sim.serving.frontend`; None or inactive: requests reach the scheduler when sent)."""
    env = simpy.Environment()
    rec = Recorder(stream.n)
    if lock is not None:
        from codesign.sim.serving.lockstep import LockStepEngine

        if sample_every:
            raise CodesignError("serving: sampling unpooled steps (sample_every) is not yet supported in an "
                                "attention-DP lock step")
        engine = LockStepEngine(env, cfg, cap, lock.ranks, lock, rec, draft, draft_time, stretch)
    else:
        engine = Engine(env, cfg, cap, step_time, rec, draft, draft_time, stretch, timer)
    if stream.concurrency and stop_saturated is not None:
        raise CodesignError("serving: stop_saturated needs a stream without a client concurrency limit")
    front = Frontend(env, frontend) if frontend is not None and frontend.active else None
    if stream.concurrency:  # a client's slots: each request a process that waits for one
        slots = simpy.Resource(env, capacity=stream.concurrency)
        procs = [env.process(_request(env, engine, r.id, r.arrival_s, r.input_tokens, r.output_tokens, slots, front))
                 for r in stream.requests]
        all_done = simpy.AllOf(env, procs)
    else:  # each request sent by its arrival's timeout (in request order, as the processes were)
        for r in stream.requests:
            if front is not None:  # a process per request, through the frontend
                env.process(_request(env, engine, r.id, r.arrival_s, r.input_tokens, r.output_tokens, None, front))
                continue
            ev = env.timeout(r.arrival_s if r.arrival_s > 0 else 0)
            ev.callbacks.append(_Arrival(engine, r.id, r.input_tokens, r.output_tokens))
        all_done = engine.all_done = env.event()
        engine.expected, engine.stop_at = stream.n, stop_saturated
    env.process(engine.run())
    engine.on_step = on_progress
    engine.sample_every = sample_every
    try:
        # The cyclic collector would traverse every live object (traced graphs in the step caches
        # among them) over and over while the run allocates its many small events; pause it.
        with gc_paused():
            env.run(until=all_done)
    except RuntimeError as e:  # simpy: the event queue ran dry before every request finished
        if "No scheduled events left" not in str(e):
            raise
        raise CodesignError(f"serving: the run stalled with {int(np.isnan(rec.finish).sum())} of {stream.n} requests "
                            "unfinished (no step could be scheduled)") from None
    return rec


__all__ = ["Engine", "Recorder", "Draft", "StepTimer", "run_stream"]
