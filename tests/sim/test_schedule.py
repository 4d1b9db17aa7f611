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
