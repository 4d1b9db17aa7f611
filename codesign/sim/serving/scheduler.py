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
   preempts newer requests, or waits if it is the newest.
3. **Waiting** requests are admitted in order while budget, ``max_num_seqs`` and pages last
   (admission stops at the first that does not fit: FCFS, no skipping). A prefix-cache hit rate
   marks that share of a prompt (whole blocks, never the last token) as already cached: held in
   pages, not computed.

When a prompt's last chunk is computed, the step also samples its first token (TTFT). Decoding
sequences' state lives in numpy arrays (one slot per sequence), so an iteration costs a few vector
operations, not a Python loop over the batch. Accepted MTP tokens are counted at their expectation
per step (``1 + sum of cumulative acceptance products``; no per-step sampling).

Named deviation from vLLM V1: its running list is in admission order, so a long prefill chunk ahead
of a decode in that list could take the whole budget for a step; without preemption FCFS
admission never puts a still-prefilling request ahead of a decode, so giving decodes their tokens
first is the same schedule. Data-parallel replicas are one engine with limits x replicas.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import simpy

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.sim.serving.arrivals import RequestStream
from codesign.sim.serving.config import SchedulerConfig
from codesign.sim.serving.kv import KVCapacity, KVPool

_EPS = 1e-9
PROGRESS_STEPS = 2000


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
    __slots__ = ("rid", "prompt", "out", "target", "computed", "held", "generated", "order", "done", "slot",
                 "chunk", "resumed_from")

    def __init__(self, rid: int, prompt: int, out: int, done: simpy.Event) -> None:
        self.rid, self.prompt, self.out, self.done = rid, prompt, out, done
        self.target, self.computed, self.held, self.generated = prompt, 0, 0.0, 0.0
        self.order, self.slot, self.chunk = -1, -1, 0
        self.resumed_from: float | None = None  # time of the last token before a preemption


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
        self.step_dt: list[float] = []
        self.step_decodes: list[int] = []
        self.step_prefill_tokens: list[int] = []
        self.step_running: list[int] = []
        self.step_in_system: list[int] = []
        self.step_kv_use: list[float] = []
        self.resume_gaps: list[float] = []  # inter-token gaps across a preemption


class Engine:
    """The engine process and its scheduler state (see module docstring)."""

    def __init__(self, env: simpy.Environment, cfg: SchedulerConfig, cap: KVCapacity,
                 step_time: Callable[[StepShape], float], rec: Recorder, draft: Draft | None = None,
                 draft_time: Callable[[int, int], float] | None = None) -> None:
        self.env, self.cfg, self.pool, self.rec = env, cfg, KVPool(cap), rec
        self.step_time, self.draft, self.draft_time = step_time, draft, draft_time
        self.max_seqs = cfg.max_num_seqs * cap.replicas
        self.budget = cfg.max_num_batched_tokens * cap.replicas
        self.width = 1 + (draft.tokens if draft else 0)
        self.emit = draft.expected_tokens if draft else 1.0
        S = self.max_seqs
        self.kv = np.zeros(S)
        self.rem = np.zeros(S)
        self.gen = np.zeros(S)
        self.order = np.full(S, -1, dtype=np.int64)
        self.active = np.zeros(S, dtype=bool)
        self._last_emit = np.zeros(S)
        self.slot_req: list[_Req | None] = [None] * S
        self.free_slots = list(range(S - 1, -1, -1))
        self.waiting: deque[_Req] = deque()
        self.prefilling: list[_Req] = []
        self.prefill_held = 0.0
        self.counter = 0
        self.in_system = 0
        self._wake: simpy.Event = env.event()
        self.steps = 0
        self.on_step: Callable[[int], None] | None = None  # progress: called every PROGRESS_STEPS steps

    # -- client side ----------------------------------------------------------------------------
    def submit(self, rid: int, prompt: int, out: int) -> simpy.Event:
        done = self.env.event()
        self.waiting.append(_Req(rid, prompt, out, done))
        self.rec.sent[rid] = self.env.now
        self.in_system += 1
        if not self._wake.triggered:
            self._wake.succeed()
        return done

    # -- the engine process ---------------------------------------------------------------------
    def run(self):
        while True:
            if not self.waiting and not self.prefilling and not self.active.any():
                self._wake = self.env.event()
                yield self._wake
            shape, dec, mean_kv = self._schedule()
            if shape is None:
                raise CodesignError("serving: the scheduler could not place any waiting request (nothing running, "
                                    "the first waiting request does not fit the KV pool)")
            dt = self.step_time(shape)
            if self.draft is not None and len(dec) and self.draft_time is not None:
                dt += self.draft.tokens * self.draft_time(len(dec), mean_kv)
            yield self.env.timeout(dt)
            self._apply(dec, dt)

    # -- one iteration --------------------------------------------------------------------------
    def _dec_bytes(self, dec: np.ndarray, extra: float) -> float:
        c = self.pool.cap
        return float(np.ceil((self.kv[dec] + extra) / c.block_size).sum()) * c.block_bytes + len(dec) * c.seq_bytes

    def _schedule(self) -> tuple[StepShape | None, np.ndarray, int]:
        cap = self.pool.cap.free_bytes
        dec = np.flatnonzero(self.active)
        while len(dec) and self._dec_bytes(dec, self.width) + self.prefill_held > cap + _EPS:
            self._preempt_newest(-1)
            dec = np.flatnonzero(self.active)
        extra = 0.0  # bytes the chunks scheduled so far in this iteration add
        chunks = 0  # their tokens

        def used_now() -> float:
            return (self._dec_bytes(dec, self.width) if len(dec) else 0.0) + self.prefill_held + extra

        used = used_now()
        groups: list[Group] = []
        for r in list(self.prefilling):
            budget = self.budget - len(dec) * self.width - chunks
            if budget <= 0:
                break
            if r not in self.prefilling:  # preempted by an older request in this iteration
                continue
            chunk = min(r.target - r.computed, budget)
            cost = self.pool.grow_cost(r.computed, chunk)
            while used + cost > cap + _EPS and self._preempt_newest(r.order):
                dec = np.flatnonzero(self.active)
                used = used_now()
            if used + cost > cap + _EPS:
                continue  # the newest request: it waits for pages
            chunk = min(chunk, self.budget - len(dec) * self.width - chunks)
            r.chunk, extra, chunks = chunk, extra + cost, chunks + chunk
            used = used_now()
            groups.append(Group(1, chunk, r.computed))
        budget = self.budget - len(dec) * self.width - chunks
        n_running = len(dec) + len(self.prefilling)
        while self.waiting and budget > 0 and n_running < self.max_seqs:
            r = self.waiting[0]
            if r.computed == 0:
                r.computed = self._cached_prefix(r.target)
            chunk = min(r.target - r.computed, budget)
            cost = self.pool.cap.seq_footprint(r.computed + chunk)
            if used + cost > cap + _EPS:
                break
            self.waiting.popleft()
            if np.isnan(self.rec.admitted[r.rid]):
                self.rec.admitted[r.rid] = self.env.now
            r.order, self.counter = self.counter, self.counter + 1
            r.held = self.pool.cap.seq_footprint(r.computed)
            r.chunk = chunk
            self.prefill_held += r.held
            self.prefilling.append(r)
            extra += cost - r.held
            used, budget, n_running = used + cost, budget - chunk, n_running + 1
            groups.append(Group(1, chunk, r.computed))
        mean_kv = int(round(float(self.kv[dec].mean()))) if len(dec) else 0
        if len(dec):
            groups.insert(0, Group(len(dec), self.width, mean_kv))
        self.pool.used = used
        return (StepShape(tuple(groups)) if groups else None), dec, mean_kv

    def _cached_prefix(self, target: int) -> int:
        """Tokens of a prompt already in the prefix cache: whole blocks, never the last token."""
        h = self.cfg.prefix_cache_hit_rate
        if h <= 0:
            return 0
        bs = self.cfg.block_size
        return min(int(h * target) // bs * bs, (target - 1) // bs * bs)

    def _preempt_newest(self, older_than: int) -> bool:
        """Preempt the newest running request newer than `older_than` (-1: any); False if none."""
        dec = np.flatnonzero(self.active)
        best_dec = int(dec[np.argmax(self.order[dec])]) if len(dec) else -1
        o_dec = int(self.order[best_dec]) if best_dec >= 0 else -1
        pre = max(self.prefilling, key=lambda r: r.order, default=None)
        o_pre = pre.order if pre is not None else -1
        if max(o_dec, o_pre) <= older_than:
            return False
        if o_dec > o_pre:
            r = self.slot_req[best_dec]
            r.generated = float(self.gen[best_dec])
            r.resumed_from = self.last_emit_of(best_dec)
            self._free_slot(best_dec)
        else:
            self.prefilling.remove(pre)
            self.prefill_held -= pre.held
            r = pre
            r.chunk = 0
        self.rec.preemptions[r.rid] += 1
        r.target = r.prompt + int(r.generated)
        r.computed, r.held = 0, 0.0
        self.waiting.appendleft(r)
        return True

    def last_emit_of(self, slot: int) -> float:
        return float(self._last_emit[slot])

    def _free_slot(self, s: int) -> None:
        self.active[s] = False
        self.slot_req[s] = None
        self.free_slots.append(s)

    # -- what a step produced -------------------------------------------------------------------
    def _apply(self, dec: np.ndarray, dt: float) -> None:
        now, rec = self.env.now, self.rec
        prefill_tokens = 0
        if len(dec):
            self.kv[dec] += self.emit
            self.gen[dec] += self.emit
            self.rem[dec] -= self.emit
            self._last_emit[dec] = now
            for s in dec[self.rem[dec] <= _EPS]:
                self._finish(self.slot_req[int(s)], int(s))
        for r in list(self.prefilling):
            if not r.chunk:
                continue
            prefill_tokens += r.chunk
            r.computed += r.chunk
            r.chunk = 0
            new_held = self.pool.cap.seq_footprint(r.computed)
            self.prefill_held += new_held - r.held
            r.held = new_held
            if r.computed >= r.target:
                self._to_decode(r, now)
        rec.step_end.append(now)
        rec.step_dt.append(dt)
        rec.step_decodes.append(len(dec))
        rec.step_prefill_tokens.append(prefill_tokens)
        rec.step_running.append(int(self.active.sum()) + len(self.prefilling))
        rec.step_in_system.append(self.in_system)
        rec.step_kv_use.append(self.pool.use)
        self.steps += 1
        if self.on_step is not None and self.steps % PROGRESS_STEPS == 0:
            self.on_step(int(np.isfinite(rec.finish).sum()))

    def _to_decode(self, r: _Req, now: float) -> None:
        self.prefilling.remove(r)
        self.prefill_held -= r.held
        rec = self.rec
        if r.resumed_from is not None:
            rec.resume_gaps.append(now - r.resumed_from)
            r.resumed_from = None
        elif np.isnan(rec.first_token[r.rid]):
            rec.first_token[r.rid] = now
        r.generated += 1.0  # the token sampled at the end of the prompt
        if r.generated >= r.out - _EPS:
            self._finish(r, -1)
            return
        s = self.free_slots.pop()
        self.slot_req[s], r.slot = r, s
        self.kv[s], self.gen[s], self.rem[s] = r.target, r.generated, r.out - r.generated
        self.order[s], self.active[s] = r.order, True
        self._last_emit[s] = now

    def _finish(self, r: _Req, slot: int) -> None:
        if slot >= 0:
            self._free_slot(slot)
        self.rec.finish[r.rid] = self.env.now
        self.rec.output[r.rid] = r.out
        self.in_system -= 1
        r.done.succeed()


def _request(env: simpy.Environment, engine: Engine, rid: int, at: float, prompt: int, out: int,
             slots: simpy.Resource | None):
    if at > env.now:
        yield env.timeout(at - env.now)
    if slots is None:
        yield engine.submit(rid, prompt, out)
        return
    with slots.request() as slot:
        yield slot
        yield engine.submit(rid, prompt, out)


def run_stream(stream: RequestStream, cfg: SchedulerConfig, cap: KVCapacity, step_time: Callable[[StepShape], float],
               draft: Draft | None = None, draft_time: Callable[[int, int], float] | None = None,
               on_progress: Callable[[int], None] | None = None) -> Recorder:
    """Simulate `stream` through one engine until every request has finished."""
    env = simpy.Environment()
    rec = Recorder(stream.n)
    engine = Engine(env, cfg, cap, step_time, rec, draft, draft_time)
    slots = simpy.Resource(env, capacity=stream.concurrency) if stream.concurrency else None
    procs = [env.process(_request(env, engine, r.id, r.arrival_s, r.input_tokens, r.output_tokens, slots))
             for r in stream.requests]
    env.process(engine.run())
    engine.on_step = on_progress
    all_done = simpy.AllOf(env, procs)
    try:
        env.run(until=all_done)
    except RuntimeError:  # simpy: the event queue ran dry before every request finished
        raise CodesignError(f"serving: the run stalled with {int(np.isnan(rec.finish).sum())} of {stream.n} requests "
                            "unfinished (no step could be scheduled)") from None
    return rec


__all__ = ["Engine", "Recorder", "Draft", "run_stream"]
