"""Property-based fuzzing (hypothesis) of every input loader and of `simulate`, at a CI budget.

Cases come from `tests/fuzz_cases.py` (mutated shipped specs, model configs, scenarios and HF
config.json key sets; raw bytes as files; mutated specs and tiny model configs run through
`simulate`). Hypothesis drives the case's random draws (so that a failure shrinks and replays) and,
in `test_loader_with_hypothesis_values`, also draws the replacement values itself. Properties: only
`CodesignError` escapes, as one line; no case exceeds its time limit; `simulate` rows carry no NaN
or infinity and a feasible row has positive throughput and times.

`benchmarks/fuzz_bench.py` runs the same cases at >= 100,000.
"""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_cases import Case, make_case, make_sim_case, mutate, run_case, seeds

LOADER_EXAMPLES = 150  # per loader kind
SIM_EXAMPLES = 30
LOADER_LIMIT_S = 10.0  # per case; a loader answers in milliseconds
SIM_LIMIT_S = 60.0
# A guard on the whole module's wall time (a loaded CI machine must not run away): once spent, the
# remaining examples pass without running.
BUDGET_S = 90.0
_START: list[float] = []  # when this module's first example ran (not at collection: the suite runs first)

_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check(case: Case, limit_s: float) -> None:
    if not _START:
        _START.append(time.monotonic())
    if time.monotonic() - _START[0] > BUDGET_S:
        return
    outcome = run_case(case, limit_s)
    assert outcome.status in ("loaded", "refused"), f"{outcome.status}: {outcome.detail}\ncase: {case.describe()}"


@pytest.mark.parametrize("kind", ["hw", "model", "scenario", "hf", "file"])
@settings(max_examples=LOADER_EXAMPLES, **_SETTINGS)
@given(rng=st.randoms(use_true_random=False))
def test_loader(kind: str, rng: random.Random) -> None:
    _check(make_case(kind, rng), LOADER_LIMIT_S)


# Values drawn by hypothesis itself (its float, integer and text strategies reach edge cases a
# hand-written list misses), put at a random place of a shipped document.
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(max_size=20),
    st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=5)), max_size=4),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.floats()), max_size=3),
    st.sampled_from(["4.8 TB/s", "1e400 TB/s", "-1 GB", "nan GB", "3 GHz", "32k", "inf", "1e12"]),
)


@pytest.mark.parametrize("kind", ["hw", "model", "scenario", "hf"])
@settings(max_examples=LOADER_EXAMPLES // 2, **_SETTINGS)
@given(rng=st.randoms(use_true_random=False), value=_VALUES)
def test_loader_with_hypothesis_values(kind: str, rng: random.Random, value: object) -> None:
    doc = mutate(rng.choice(seeds(kind)), rng, value=lambda _rng: value)
    _check(Case(kind, doc), LOADER_LIMIT_S)


@settings(max_examples=SIM_EXAMPLES, **_SETTINGS)
@given(rng=st.randoms(use_true_random=False))
def test_simulate_on_fuzzed_specs(rng: random.Random) -> None:
    _check(make_sim_case(rng), SIM_LIMIT_S)


def test_cases_reach_both_outcomes() -> None:
    """The generators are not degenerate: some cases load, some are refused, for every kind."""
    for kind in ("hw", "model", "scenario", "hf"):
        statuses = {run_case(make_case(kind, random.Random(i)), LOADER_LIMIT_S).status for i in range(60)}
        assert statuses == {"loaded", "refused"}, (kind, statuses)
