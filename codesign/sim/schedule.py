"""The engine's inner loop: the makespan of one layer's ops, as SimPy computes it, without SimPy's
per-event overhead.

`codesign.sim.engine` models a layer's ops as SimPy processes (`_SimpySchedule`: wait for every
predecessor's completion, request each unit in a fixed order from a capacity-1
`PriorityResource` at the op's topological priority, hold them for the op's seconds, release,
signal completion). A step runs that simulation for every representative layer, and the two
micro-batch variants of two-batch overlap: about 14,000 SimPy events a step, most of the time of a
new step shape. `list_schedule` replays exactly the same event sequence with plain tuples on one
heap: the same event kinds (initialise, condition, request, timeout, release, completion), the
same scheduling order and the same (time, priority, event id) tie-break as SimPy 4, so the
makespan is the same float (tests/sim/test_schedule.py checks it against SimPy on random layer
graphs, with ties and zero-length ops).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

_URGENT, _NORMAL = 0, 1
_UNITS = ("matrix", "vector", "hbm", "link")
_UNIT_INDEX = {u: i for i, u in enumerate(_UNITS)}


def list_schedule(items: list[tuple[Any, tuple[str, ...], float, list]]) -> float:
    """Makespan of `items` = (key, units held, seconds, predecessor keys), in priority order.

    SimPy processes events by (time, priority, event id). Three facts let most events skip the
    heap without changing that order: every Initialize event (the only urgent ones) is at time 0
    and precedes everything else, in op order; an event scheduled for the current time has a
    larger id than every event already waiting for that time (those were scheduled earlier), so
    current-time events run first-in first-out after the heap's entries for the same time; only
    timeouts lie in the future. The heap holds timeouts, a FIFO queue the rest."""
    index = {key: i for i, (key, _, _, _) in enumerate(items)}
    return schedule_indexed([it[1] for it in items], [[index[p] for p in it[3]] for it in items],
                            [it[2] for it in items])


def schedule_indexed(units: list[tuple[str, ...]], preds: list[list[int]], secs: list[float]) -> float:
    """`list_schedule` of items 0..n-1: item i holds units[i] for secs[i] after preds[i]."""
    n = len(units)
    future: list[tuple[float, int, int]] = []  # (time, event id, op): timeouts
    now_q: deque[tuple[int, int]] = deque()  # (kind, op) scheduled for the current time
    eid = 0
    now = 0.0
    # Resources: holder (op index or -1) and waiting requests sorted by (priority, time).
    holder = {u: -1 for u in _UNITS}
    waiting: dict[str, list[tuple[int, float, int]]] = {u: [] for u in _UNITS}  # (priority, time, op)
    done_processed = [False] * n
    waiters: list[list[int]] = [[] for _ in range(n)]  # ops whose condition waits on this op's completion
    missing = [0] * n
    unit_no = [0] * n

    # kinds of queued events (timeouts live in `future`)
    COND, GRANT, RELEASE, DONE = range(4)

    def timeout(op: int) -> None:
        nonlocal eid
        t = now + secs[op]
        if t == now:
            now_q.append((-1, op))
        else:
            heapq.heappush(future, (t, eid, op))
            eid += 1

    def request(op: int) -> None:
        """The op requests its next unit: it joins the unit's queue (ordered by priority, then
        request time) and, if the unit is free, the queue's first request is granted (SimPy's
        `_trigger_put`; a grant is a scheduled event)."""
        u = units[op][unit_no[op]]
        q = waiting[u]
        heapq.heappush(q, (op, now, op))
        if holder[u] < 0:
            nxt = heapq.heappop(q)[2]
            holder[u] = nxt
            now_q.append((GRANT, nxt))

    def start_units(op: int) -> None:
        if units[op]:
            request(op)
        else:
            timeout(op)

    for op in range(n):  # env.process(): an Initialize event each, in priority order, at time 0
        if preds[op]:
            m = 0
            for p in preds[op]:
                if not done_processed[p]:
                    m += 1
                    waiters[p].append(op)
            missing[op] = m
            if m == 0:
                now_q.append((COND, op))
        else:
            start_units(op)

    while True:
        if future and future[0][0] == now:
            kind, op = -1, heapq.heappop(future)[2]
        elif now_q:
            kind, op = now_q.popleft()
        elif future:
            now, _, op = heapq.heappop(future)
            kind = -1
        else:
            break
        if kind == -1:  # timeout: release every unit (a Release event each), then completion
            for u in units[op]:
                holder[u] = -1
                now_q.append((RELEASE, _UNIT_INDEX[u]))
            now_q.append((DONE, op))
        elif kind == COND:
            start_units(op)
        elif kind == GRANT:
            unit_no[op] += 1
            if unit_no[op] < len(units[op]):
                request(op)
            else:
                timeout(op)
        elif kind == RELEASE:
            u = _UNITS[op]
            q = waiting[u]
            if q and holder[u] < 0:
                nxt = heapq.heappop(q)[2]
                holder[u] = nxt
                now_q.append((GRANT, nxt))
        else:  # DONE: the completion event's callbacks, in the order conditions registered
            done_processed[op] = True
            for w in waiters[op]:
                missing[w] -= 1
                if missing[w] == 0:
                    now_q.append((COND, w))
    return now


def schedule_compiled(units: list[tuple[int, ...]], succ: list[list[int]], npreds: list[int], secs: list[float]) -> float:
    """`schedule_indexed` on a precomputed structure (`codesign.sim.layerplan`): units as indices
    into `_UNITS`, each item's successors in item order (the order their conditions register) and
    its number of predecessors. The same event sequence, written for speed: events are integers
    (item << 3 | kind), the helper functions are inlined, and a unit's waiting requests are a heap of
    item indices (an item waits for one unit at a time, so its priority alone orders them)."""
    n = len(units)
    push, pop = heapq.heappush, heapq.heappop
    future: list[tuple[float, int, int]] = []  # (time, event id, item): timeouts
    queue: deque[int] = deque()  # events scheduled for the current time
    append, popleft = queue.append, queue.popleft
    eid = 0
    now = 0.0
    holder = [-1, -1, -1, -1]
    waiting: list[list[int]] = [[], [], [], []]
    missing = list(npreds)
    unit_no = [0] * n
    # event kinds: 0 condition met, 1 grant, 2 release (of unit `item`), 3 completion, 4 timeout now
    for op in range(n):  # Initialize events, in priority order, at time 0
        if npreds[op]:
            continue
        us = units[op]
        if us:
            u = us[0]
            w = waiting[u]
            push(w, op)
            if holder[u] < 0:
                nxt = pop(w)
                holder[u] = nxt
                append(nxt << 3 | 1)
        else:
            t = now + secs[op]
            if t == now:
                append(op << 3 | 4)
            else:
                push(future, (t, eid, op))
                eid += 1
    while True:
        if future and future[0][0] == now:
            op = pop(future)[2]
            kind = 4
        elif queue:
            ev = popleft()
            op, kind = ev >> 3, ev & 7
        elif future:
            now, _, op = pop(future)
            kind = 4
        else:
            break
        if kind == 4:
            for u in units[op]:
                holder[u] = -1
                append(u << 3 | 2)
            append(op << 3 | 3)
        elif kind == 3:
            for w in succ[op]:
                m = missing[w] - 1
                missing[w] = m
                if m == 0:
                    append(w << 3)
        elif kind == 2:
            w = waiting[op]
            if w and holder[op] < 0:
                nxt = pop(w)
                holder[op] = nxt
                append(nxt << 3 | 1)
        else:  # condition met (request the first unit) or a grant (request the next unit)
            if kind == 1:
                k = unit_no[op] + 1
                unit_no[op] = k
            else:
                k = unit_no[op]
            us = units[op]
            if k < len(us):
                u = us[k]
                w = waiting[u]
                push(w, op)
                if holder[u] < 0:
                    nxt = pop(w)
                    holder[u] = nxt
                    append(nxt << 3 | 1)
            else:
                t = now + secs[op]
                if t == now:
                    append(op << 3 | 4)
                else:
                    push(future, (t, eid, op))
                    eid += 1
    return now


__all__ = ["list_schedule", "schedule_indexed", "schedule_compiled"]
