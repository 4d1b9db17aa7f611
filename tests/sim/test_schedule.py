"""The engine's list schedule against SimPy itself on random layer graphs (ties, zero-length ops,
ops holding several units, collectives overlapping compute): the same makespan, to the bit."""

from __future__ import annotations

import random

import pytest

from codesign.sim.engine import _SimpySchedule
from codesign.sim.schedule import list_schedule

UNIT_SETS = [("hbm",), ("vector", "hbm"), ("matrix", "hbm"), ("matrix", "vector", "hbm"), ("link",)]


def _random_items(rng: random.Random, n: int) -> list:
    items = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 2, 3])
        preds = sorted(rng.sample(range(i), min(k, i)))
        secs = rng.choice([0.0, 1.0, 2.0, 0.5, rng.random(), rng.random() * 1e-5])
        items.append((i, rng.choice(UNIT_SETS), secs, preds))
    return items


@pytest.mark.parametrize("seed", range(300))
def test_list_schedule_equals_simpy(seed):
    rng = random.Random(seed)
    items = _random_items(rng, rng.randint(1, 40))
    assert list_schedule(items) == _SimpySchedule().run(items)


KINDS = ["gemm", "vector", "memory", "attention", "grouped_gemm", "collective"]


def _random_layer(rng: random.Random, n: int) -> tuple[list[str], list[list[int]], list[float]]:
    kinds, preds, secs = [], [], []
    for i in range(n):
        kinds.append(rng.choice(KINDS))
        preds.append(sorted(rng.sample(range(i), min(rng.choice([0, 1, 1, 1, 2]), i))))
        secs.append(rng.choice([0.0, 1.0, 0.5, rng.random(), rng.random() * 1e-6]))
    return kinds, preds, secs


@pytest.mark.parametrize("seed", range(100))
def test_layer_plan_equals_contracted_schedule(seed):
    """A compiled layer plan (structure contracted once, seconds summed per process) gives the
    makespan of contracting and list-scheduling the items themselves, for the plain layer and for
    both two-batch-overlap variants."""
    from codesign.sim.engine import _contract
    from codesign.sim.layerplan import LayerPlan, contract

    rng = random.Random(seed)
    kinds, preds, secs = _random_layer(rng, rng.randint(1, 50))
    items = [(i, k, s, p) for i, (k, p, s) in enumerate(zip(kinds, preds, secs))]
    assert contract(kinds, preds).makespan(secs) == list_schedule(_contract(items))
    plan = LayerPlan(kinds, preds, list(range(len(kinds))), contract(kinds, preds))
    one, two = plan.tbo()
    halves = [s / 2 for s in secs]
    sinks = [i for i in range(len(kinds)) if not any(i in p for p in preds)]
    for copies, compiled in ((1, one), (2, two)):
        built = []
        for r in range(copies):
            for i, (k, p) in enumerate(zip(kinds, preds)):
                for mb in (0, 1):
                    q = [(r, mb, x) for x in p] + ([(r - 1, mb, s) for s in sinks] if r > 0 and not p else [])
                    built.append(((r, mb, i), k, halves[i], q))
        doubled = [h for h in halves for _ in (0, 1)] * copies
        assert compiled.makespan(doubled) == list_schedule(_contract(built))


def _perturbed(rng: random.Random, secs: list[float]) -> list[float]:
    """Seconds near `secs`, as a hardware variant moves them: each distinct value scaled by its own
    factor close to 1 (equal seconds stay equal: ties of the two micro-batches), some left alone,
    zero-length ops kept or not."""
    factors = {s: rng.choice([1.0, 1.0 + rng.uniform(-0.02, 0.02), 1.0 + rng.uniform(-0.3, 0.3), 2.0]) for s in secs}
    out = [s * factors[s] for s in secs]
    if rng.random() < 0.2:
        i = rng.randrange(len(out))
        out[i] = rng.choice([0.0, 1e-300, out[i] * 0.5])
    return out


def _random_structure(seed: int):
    """(rng, items, compiled structure, seconds) of the seed's random layer graph."""
    from codesign.sim.schedule import compile_structure

    rng = random.Random(10_000 + seed)
    items = _random_items(rng, rng.randint(1, 60))
    index = {key: i for i, (key, _, _, _) in enumerate(items)}
    structure = compile_structure([it[1] for it in items], [[index[p] for p in it[3]] for it in items])
    return rng, items, structure, [it[2] for it in items]


@pytest.mark.parametrize("seed", range(200))
def test_replayed_schedule_equals_event_loop(seed):
    """`schedule_compiled` (a structure's recorded runs replayed where they apply) against the event
    loop run in full, to the bit, over a sequence of perturbed seconds on one structure; the replay
    itself is either None or the event loop's makespan."""
    from codesign.sim.schedule import event_schedule, replay, schedule_compiled

    rng, items, structure, secs = _random_structure(seed)
    trace: tuple = ([], [])
    assert event_schedule(*structure, secs, trace) == _SimpySchedule().run(items)
    for _ in range(20):
        new = _perturbed(rng, secs)
        full = event_schedule(*structure, new)
        r = replay(trace, new)
        assert r is None or r == full
        assert schedule_compiled(*structure, new) == full


def test_replay_applies_and_refuses():
    """Both paths are exercised by the perturbations above: the replay applies to most small moves
    and is refused where the order of events changes (checked against the event loop each time)."""
    from codesign.sim.schedule import event_schedule, replay

    hits = misses = 0
    for seed in range(200):
        rng, items, structure, secs = _random_structure(seed)
        trace: tuple = ([], [])
        event_schedule(*structure, secs, trace)
        for _ in range(20):
            new = _perturbed(rng, secs)
            r = replay(trace, new)
            if r is None:
                misses += 1
            else:
                assert r == event_schedule(*structure, new)
                hits += 1
    assert hits > 1000 and misses > 1000, (hits, misses)


def test_replay_refuses_a_changed_order():
    """Two independent ops on one unit each, a third waiting for both on the link: swapping which of
    the first two ends first changes the order of events, and the trace is refused; a move that
    keeps the order is replayed with the new times."""
    from codesign.sim.schedule import compile_structure, event_schedule, replay

    structure = compile_structure([("matrix", "hbm"), ("link",), ("link",)], [[], [], [0, 1]])
    trace: tuple = ([], [])
    assert event_schedule(*structure, [1.0, 2.0, 0.5], trace) == 2.5
    assert replay(trace, [1.5, 2.0, 0.25]) == 2.25
    assert replay(trace, [3.0, 2.0, 0.5]) is None  # the link op ends first now
    assert replay(trace, [2.0, 2.0, 0.5]) is None  # a tie that was not there
    assert replay(trace, [1.0, 2.0, 0.0]) is None  # zero-length: queued, not on the heap
    assert event_schedule(*structure, [3.0, 2.0, 0.5]) == 3.5


def test_models_layer_schedules_replayed_equal_event_loop(monkeypatch):
    """On the models' own layers (Qwen3.5-35B-A3B at tp=8 ep=8 with two-batch overlap, decode and
    prefill, hardware variants of the HBM bandwidth and matrix peak): every makespan the engine
    asks for is the event loop's, to the bit, and most come from replays."""
    import codesign as cs
    from codesign.sim import layerplan, schedule
    from tests.sim.helpers import make_hw

    calls = {"n": 0, "replayed": 0}
    compiled = schedule.schedule_compiled

    def checked(units, succ, npreds, secs):
        entry = schedule._TRACES.get(id(succ))
        replayed = entry is not None and entry[0] is succ and any(schedule.replay(t, secs) is not None for t in entry[1])
        t = compiled(units, succ, npreds, secs)
        assert t == schedule.event_schedule(units, succ, npreds, secs)
        calls["n"] += 1
        calls["replayed"] += replayed
        return t

    monkeypatch.setattr(layerplan, "schedule_compiled", checked)
    for i, (bw, fp8) in enumerate([("4.8 TB/s", "1979 TFLOPS"), ("4.9 TB/s", "1979 TFLOPS"),
                                   ("5.3 TB/s", "1979 TFLOPS"), ("4.8 TB/s", "2500 TFLOPS"), ("9 TB/s", "1500 TFLOPS")]):
        hw = make_hw(**{"name": f"replay-{i}", "chip.hbm.bandwidth": bw, "chip.matrix.fp8": fp8})
        for wl in ({"mode": "decode", "input_tokens": 32768}, {"mode": "prefill", "input_tokens": 4096}):
            cs.simulate(hw, "qwen3.5-35b-a3b", chips=8, plan={"tp": 8, "ep": 8}, workload=wl,
                        mapping_options={"two_batch_overlap": True}, cache=False)
    assert calls["n"] > 20 and calls["replayed"] > calls["n"] // 2, calls
