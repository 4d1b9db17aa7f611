"""Pareto fronts against a brute-force dominance check; derived cost columns against hand sums."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codesign.report.pareto import pareto_front, with_costs


def brute_force(df: pd.DataFrame, maximize, minimize) -> list[bool]:
    out = []
    for i, a in df.iterrows():
        if not a["feasible"] or any(pd.isna(a[c]) for c in (*maximize, *minimize)):
            out.append(False)
            continue
        dominated = False
        for j, b in df.iterrows():
            if j == i or not b["feasible"] or any(pd.isna(b[c]) for c in (*maximize, *minimize)):
                continue
            ge = all(b[c] >= a[c] for c in maximize) and all(b[c] <= a[c] for c in minimize)
            gt = any(b[c] > a[c] for c in maximize) or any(b[c] < a[c] for c in minimize)
            if ge and gt:
                dominated = True
                break
        out.append(not dominated)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_front_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 120
    df = pd.DataFrame({
        # few distinct values, so ties and duplicates occur
        "thr": rng.integers(0, 12, n).astype(float),
        "usd": rng.integers(0, 12, n).astype(float),
        "pw": rng.integers(0, 4, n).astype(float),
        "feasible": rng.random(n) > 0.1,
    })
    df.loc[rng.choice(n, 5, replace=False), "usd"] = np.nan
    got = pareto_front(df, maximize=["thr"], minimize=["usd", "pw"])
    assert got.tolist() == brute_force(df, ["thr"], ["usd", "pw"])
    assert got.any()


def test_front_of_a_known_set():
    df = pd.DataFrame({"output_tokens_per_s_per_chip": [10, 8, 12, 12, 5], "usd_per_mtok": [1.0, 0.5, 2.0, 2.0, 0.5],
                       "power_w": [1, 1, 1, 1, 1], "feasible": [True, True, True, True, True]},
                      index=list("abcde"))
    # e is dominated by b (same cost, less throughput); c and d are duplicates, both on the front
    assert pareto_front(df).to_dict() == {"a": True, "b": True, "c": True, "d": True, "e": False}


def test_missing_objective_column_is_named():
    from codesign.errors import CodesignError

    with pytest.raises(CodesignError, match="unknown column 'usd_per_mtok'"):
        pareto_front(pd.DataFrame({"output_tokens_per_s_per_chip": [1.0], "power_w": [1.0]}))


def test_costs_from_the_spec_and_from_swept_columns():
    df = pd.DataFrame({"hardware": ["h200", "h200", "no-such-chip"], "chips": [8, 8, 4],
                       "output_tokens_per_s": [10_000.0, 10_000.0, 1_000.0],
                       "cost.per_hour": [np.nan, 7.0, 2.0], "power.tdp": [np.nan, 1000.0, 500.0]})
    out = with_costs(df)
    # h200.yaml: USD 3.50 per chip-hour, 700 W
    assert out["usd_per_mtok"].iloc[0] == pytest.approx(8 * 3.5 / 3600 / 10_000 * 1e6)
    assert out["power_w"].iloc[0] == pytest.approx(8 * 700)
    assert out["tokens_per_joule"].iloc[0] == pytest.approx(10_000 / 5600)
    # swept values win over the spec
    assert out["usd_per_mtok"].iloc[1] == pytest.approx(8 * 7.0 / 3600 / 10_000 * 1e6)
    assert out["power_w"].iloc[1] == pytest.approx(8000)
    # an unknown spec name is fine when the row carries the values
    assert out["usd_per_mtok"].iloc[2] == pytest.approx(4 * 2.0 / 3600 / 1000 * 1e6)
    # existing derived columns are kept as they are
    df2 = df.assign(usd_per_mtok=[1.0, 2.0, 3.0])
    assert with_costs(df2)["usd_per_mtok"].tolist() == [1.0, 2.0, 3.0]
    # the rows' own price, power and energy columns (result rows and sweep rows carry them) win
    # where set; utilisation scales the power as it does in the simulator's rows
    own = df.assign(usd_per_million_output_tokens=[9.0, np.nan, 1.5], deployment_power_w=[np.nan, 123.0, np.nan],
                    output_tokens_per_joule=[0.5, np.nan, np.nan], **{"power.utilisation": [0.5, np.nan, 1.0]})
    out = with_costs(own)
    assert out["usd_per_mtok"].tolist()[::2] == [9.0, 1.5]
    assert out["usd_per_mtok"].iloc[1] == pytest.approx(8 * 7.0 / 3600 / 10_000 * 1e6)
    assert out["power_w"].iloc[0] == pytest.approx(8 * 700 * 0.5) and out["power_w"].iloc[1] == 123.0
    assert out["tokens_per_joule"].iloc[0] == 0.5 and out["tokens_per_joule"].iloc[1] == pytest.approx(10_000 / 123.0)
