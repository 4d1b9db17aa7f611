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
