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
from typing import Any

_URGENT, _NORMAL = 0, 1
_UNITS = ("matrix", "vector", "hbm", "link")


def list_schedule(items: list[tuple[Any, tuple[str, ...], float, list]]) -> float:
    """Makespan of `items` = (key, units held, seconds, predecessor keys), in priority order."""
    n = len(items)
    index = {key: i for i, (key, _, _, _) in enumerate(items)}
    heap: list[tuple[float, int, int, int, int]] = []  # (time, priority, event id, kind, op)
    eid = 0
    now = 0.0
    # Resources: holder (op index or -1) and waiting requests sorted by (priority, time).
    holder = {u: -1 for u in _UNITS}
    waiting: dict[str, list[tuple[int, float, int]]] = {u: [] for u in _UNITS}  # (priority, time, op)
    # Per op: predecessors' completion events not yet processed, its waiters, progress.
    done_processed = [False] * n
    waiters: list[list[int]] = [[] for _ in range(n)]  # ops whose condition waits on this op's completion
    missing = [0] * n
    unit_no = [0] * n
    units = [it[1] for it in items]
    preds = [[index[p] for p in it[3]] for it in items]
    secs = [it[2] for it in items]

    # kinds of heap entries
    INIT, COND, GRANT, TIMEOUT, RELEASE, DONE = range(6)

    def push(t: float, prio: int, kind: int, op: int) -> None:
        nonlocal eid
        heapq.heappush(heap, (t, prio, eid, kind, op))
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
            push(now, _NORMAL, GRANT, nxt)

    def start_units(op: int) -> None:
        if units[op]:
            request(op)
        else:
            push(now + secs[op], _NORMAL, TIMEOUT, op)

    for i in range(n):  # env.process(): an Initialize event each, in priority order
        push(0.0, _URGENT, INIT, i)

    while heap:
        now, _, _, kind, op = heapq.heappop(heap)
        if kind == INIT:
            if preds[op]:
                m = 0
                for p in preds[op]:
                    if not done_processed[p]:
                        m += 1
                        waiters[p].append(op)
                missing[op] = m
                if m == 0:
                    push(now, _NORMAL, COND, op)
            else:
                start_units(op)
        elif kind == COND:
            start_units(op)
        elif kind == GRANT:
            unit_no[op] += 1
            if unit_no[op] < len(units[op]):
                request(op)
            else:
                push(now + secs[op], _NORMAL, TIMEOUT, op)
        elif kind == TIMEOUT:
            for u in units[op]:  # release every unit: a Release event each
                holder[u] = -1
                push(now, _NORMAL, RELEASE, _UNITS.index(u))
            push(now, _NORMAL, DONE, op)
            eid += 1  # the process's own completion event (nobody waits on it)
        elif kind == RELEASE:
            u = _UNITS[op]
            q = waiting[u]
            if q and holder[u] < 0:
                nxt = heapq.heappop(q)[2]
                holder[u] = nxt
                push(now, _NORMAL, GRANT, nxt)
        else:  # DONE: the completion event's callbacks, in the order conditions registered
            done_processed[op] = True
            for w in waiters[op]:
                missing[w] -= 1
                if missing[w] == 0:
                    push(now, _NORMAL, COND, w)
    return now


__all__ = ["list_schedule"]
