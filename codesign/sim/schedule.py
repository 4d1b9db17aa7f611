"""The engine's inner loop: the makespan of one layer's ops, as SimPy computes it, without SimPy's
per-event overhead.

`codesign.sim.engine` models a layer's ops as SimPy processes (`_SimpySchedule`: wait for every
predecessor's completion, request each unit in a fixed order from a capacity-1
`PriorityResource` at the op's topological priority, hold them for the op's seconds, release,
signal completion). A step runs that simulation for every representative layer, and the two
micro-batch variants of two-batch overlap: about 14,000 SimPy events a step, most of the time of a
new step shape. `list_schedule` replays exactly the same event sequence with plain integers on a
heap and a FIFO queue: the same event kinds (initialise, condition, request, timeout, release, completion), the
same scheduling order and the same (time, priority, event id) tie-break as SimPy 4, so the
makespan is the same float (tests/sim/test_schedule.py checks it against SimPy on random layer
graphs, with ties and zero-length ops).

**Replay of a recorded run** (`schedule_compiled`). The event loop's path depends on the seconds
only through comparisons of event times: a timeout's end against the current time (`t == now`: a
zero-length hold is queued, not put on the heap) and timeouts against each other on the heap
(time, then event id). Every other decision (who waits, who is granted which unit) follows from
the order of events alone. So a run is recorded once per schedule structure as its *trace*: the
timeouts in the order they end, each with the timeout whose end was the current time when it
started (its parent), whether it ended at the same time as the previous one, and the zero-length
holds with their parents. For new seconds, the trace gives every end time with the same additions
the event loop makes (`end = parent's end + seconds`), and it is the event loop's run if those
times make the same comparisons: each timeout ends strictly after its parent (else it would have
been zero-length), after the previous timeout or exactly with it as recorded, and each zero-length
hold is still `now + seconds == now`. Then the heap pops in the recorded order (its entries keep
their order by (time, event id); a timeout started at `now` ends after it, so ends are popped in
increasing order), every `nt == now` test gives the recorded answer and the makespan is the last
end, to the bit. Where a check fails the event loop runs and its trace is kept as well (a few per
structure: hardware variants move the seconds a little and the order of events rarely).
`tests/sim/test_schedule.py` compares the replay with the event loop on random graphs with ties,
zero-length ops and perturbed seconds, and on the models' layers.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

_UNITS = ("matrix", "vector", "hbm", "link")
_UNIT_INDEX = {u: i for i, u in enumerate(_UNITS)}

# A recorded run (`_Trace`): (timeouts in the order they end, as (item, parent, ends with the
# previous one), zero-length holds as (item, parent)); parent p is the p-th timeout to end (1-based,
# 0 = time 0).
_Trace = tuple[list[tuple[int, int, bool]], list[tuple[int, int]]]
# Traces by schedule structure (the id of its successor lists, held with them so that the id is not
# reused while kept), most recently used first; bounded.
_TRACES: dict[int, tuple[list, list[_Trace]]] = {}
_TRACES_MAX = 1024
_TRACES_PER_STRUCTURE = 4


def list_schedule(items: list[tuple[Any, tuple[str, ...], float, list]]) -> float:
    """Makespan of `items` = (key, units held, seconds, predecessor keys), in priority order."""
    index = {key: i for i, (key, _, _, _) in enumerate(items)}
    structure = compile_structure([it[1] for it in items], [[index[p] for p in it[3]] for it in items])
    return event_schedule(*structure, [it[2] for it in items])


def compile_structure(units: list[tuple[str, ...]], preds: list[list[int]]
                      ) -> tuple[list[tuple[int, ...]], list[list[int]], list[int]]:
    """(unit indices, successors in item order, predecessor counts) of items 0..n-1 with these
    units and predecessors: the structure `schedule_compiled` runs on."""
    succ: list[list[int]] = [[] for _ in units]
    for v, ps in enumerate(preds):
        for p in ps:
            succ[p].append(v)
    return [tuple(_UNIT_INDEX[u] for u in us) for us in units], succ, [len(ps) for ps in preds]


def schedule_compiled(units: list[tuple[int, ...]], succ: list[list[int]], npreds: list[int], secs: list[float]) -> float:
    """Makespan of items 0..n-1 given by structure: each item's units (indices into `_UNITS`, in
    acquisition order), its successors in item order (the order their conditions register) and
    its number of predecessors; item i holds its units for secs[i].

    A structure's recorded runs are replayed where they apply (module docstring), else the event
    loop (`event_schedule`) runs and its trace is kept: the same float either way. The structure's
    lists must not change after the first call (layer plans compile them once)."""
    entry = _TRACES.get(id(succ))
    if entry is not None and entry[0] is succ:
        traces = entry[1]
        for i, trace in enumerate(traces):
            t = replay(trace, secs)
            if t is not None:
                if i:
                    traces.insert(0, traces.pop(i))
                return t
    else:
        if len(_TRACES) >= _TRACES_MAX:
            _TRACES.clear()
        traces = []
        _TRACES[id(succ)] = (succ, traces)
    trace: _Trace = ([], [])
    now = event_schedule(units, succ, npreds, secs, trace)
    if replay(trace, secs) == now:  # kept only where it reproduces its own run (module docstring)
        traces.insert(0, trace)
        del traces[_TRACES_PER_STRUCTURE:]
    return now


def replay(trace: _Trace, secs: list[float]) -> float | None:
    """The makespan of a recorded run (`event_schedule(..., trace)`) with item i lasting secs[i], or
    None where those seconds would make the event loop take another path (module docstring)."""
    ends, zeros = trace
    times = [0.0]  # times[p]: end of the p-th timeout to end (0: time 0)
    append = times.append
    prev = 0.0
    for op, parent, tie in ends:
        base = times[parent]
        t = base + secs[op]
        if not t > base:  # zero-length (queued, not on the heap), or not a number
            return None
        if tie:
            if t != prev:
                return None
        elif not t > prev:
            return None
        append(t)
        prev = t
    for op, parent in zeros:
        base = times[parent]
        if base + secs[op] != base:
            return None
    return prev


def event_schedule(units: list[tuple[int, ...]], succ: list[list[int]], npreds: list[int], secs: list[float],
                   trace: _Trace | None = None) -> float:
    """`schedule_compiled`'s event loop, run in full; `trace` (optional): filled with the run's
    recorded timeouts (module docstring).

    SimPy processes events by (time, priority, event id). Three facts let most events skip the
    heap without changing that order: every Initialize event (the only urgent ones) is at time 0
    and precedes everything else, in item order; an event scheduled for the current time has a
    larger id than every event already waiting for that time (those were scheduled earlier), so
    current-time events run first-in first-out after the heap's entries for the same time; only
    timeouts lie in the future. The heap holds timeouts, a FIFO queue the rest. Written for speed:
    events are integers (item << 3 | kind), a root item's Initialize event is its condition met
    (queued first, in item order, so its requests and timeouts follow in SimPy's order), and a
    unit's waiting requests are a heap of item indices
    (an item waits for one unit at a time, so its priority alone orders them). Layer plans
    (`codesign.sim.layerplan`) keep the structure and call this directly."""
    n = len(units)
    push, pop = heapq.heappush, heapq.heappop
    future: list[tuple[float, int, int]] = []  # (time, event id, item): timeouts
    inf = float("inf")
    nt = inf  # time of the earliest timeout (future[0][0]), inf when none
    queue: deque[int] = deque()  # events scheduled for the current time
    append, popleft = queue.append, queue.popleft
    eid = 0
    now = 0.0
    holder = [-1, -1, -1, -1]
    waiting: list[list[int]] = [[], [], [], []]
    missing = list(npreds)
    unit_no = [0] * n
    # recording (trace): parent of each heap timeout by event id; ends done so far (= parent of a
    # timeout started now)
    recording = trace is not None
    ends, zeros = trace if trace is not None else ([], [])
    parent_of: list[int] = []
    ended = 0
    # event kinds: 0 condition met, 1 grant, 2 release (of unit `item`), 3 completion, 4 timeout now
    for op in range(n):  # Initialize events, in priority order, at time 0: each root's condition is met
        if not npreds[op]:
            append(op << 3)
    while True:
        if nt == now:
            _, e, op = pop(future)
            nt = future[0][0] if future else inf
            kind = 4
            if recording:
                ended += 1
                ends.append((op, parent_of[e], True))
        elif queue:
            ev = popleft()
            op, kind = ev >> 3, ev & 7
        elif future:
            now, e, op = pop(future)
            nt = future[0][0] if future else inf
            kind = 4
            if recording:
                ended += 1
                ends.append((op, parent_of[e], False))
        else:
            break
        if kind == 2:  # release of unit `op`: grant it to the next waiting item
            w = waiting[op]
            if w and holder[op] < 0:
                nxt = pop(w)
                holder[op] = nxt
                append(nxt << 3 | 1)
        elif kind <= 1:  # condition met (request the first unit) or a grant (request the next unit)
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
                    if recording:
                        zeros.append((op, ended))
                else:
                    push(future, (t, eid, op))
                    eid += 1
                    if t < nt:
                        nt = t
                    if recording:
                        parent_of.append(ended)
        elif kind == 4:
            for u in units[op]:
                holder[u] = -1
                append(u << 3 | 2)
            append(op << 3 | 3)
        else:  # completion: successors' conditions
            for w in succ[op]:
                m = missing[w] - 1
                missing[w] = m
                if m == 0:
                    append(w << 3)
    return now


__all__ = ["list_schedule", "compile_structure", "schedule_compiled", "event_schedule", "replay"]
