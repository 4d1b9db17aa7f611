"""Golden results: every case reproduces its stored JSON exactly (floats to 1e-9 relative).
Regenerate with `python -m tests.golden.update` and review the diff."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.golden.cases import CASES, run_case

STORED = json.loads(Path(__file__).with_name("results.json").read_text())


def same(a, b, path="") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(b)} != {list(a)}"
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {b!r} != stored {a!r}"
    else:
        assert a == b, f"{path}: {b!r} != stored {a!r}"


def test_cases_are_stored():
    assert len(STORED) >= 10 and list(STORED) == list(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_golden(name):
    same(STORED[name], run_case(name), name)
