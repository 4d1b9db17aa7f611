"""Pareto fronts and the cost columns they are drawn over.

`pareto_front(frame, maximize=..., minimize=...)`: True for the rows no other row dominates (at
least as good in every objective and better in one); infeasible rows and rows with a missing
objective are never on the front. Sort-and-scan: rows are visited best-first, so a row is checked
only against the front found so far (a row dominated by anything is dominated by a front row).

`with_costs(frame)` adds, where missing, the derived columns the Pareto plots use:
* `usd_per_mtok` = chips x `cost.per_hour` (USD per chip-hour) / 3600 / output tokens/s x 1e6;
* `power_w` = chips x `power.tdp` (named assumption: every chip at its TDP);
* `tokens_per_joule` = output tokens/s / `power_w`.
`cost.per_hour` and `power.tdp` come from the row's own columns when a sweep varied them, else from
the named hardware spec (`hw_specs/<hardware>.yaml`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

THROUGHPUT = "output_tokens_per_s_per_chip"
DEFAULT_MAXIMIZE = (THROUGHPUT,)
DEFAULT_MINIMIZE = ("usd_per_mtok", "power_w")


def pareto_front(frame: pd.DataFrame, maximize: Sequence[str] = DEFAULT_MAXIMIZE,
                 minimize: Sequence[str] = DEFAULT_MINIMIZE) -> pd.Series:
    """Boolean Series (index of `frame`): the non-dominated feasible rows."""
    cols = list(maximize) + list(minimize)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise KeyError(f"pareto_front: no column(s) {', '.join(missing)}")
    # all objectives as "smaller is better"
    vals = np.column_stack([-frame[c].astype(float).to_numpy() for c in maximize] +
                           [frame[c].astype(float).to_numpy() for c in minimize]) if cols else np.zeros((len(frame), 0))
    ok = ~np.isnan(vals).any(axis=1)
    if "feasible" in frame.columns:
        ok &= frame["feasible"].astype(bool).to_numpy()
    on = np.zeros(len(frame), dtype=bool)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort(vals[idx].T[::-1])] if len(idx) else idx
    front: list[int] = []
    for i in order:
        v = vals[i]
        if front:
            f = vals[front]
            if (np.all(f <= v, axis=1) & np.any(f < v, axis=1)).any():
                continue
            if (np.all(f == v, axis=1)).any():  # a duplicate of a front point is on the front too
                on[i] = True
                continue
        front.append(i)
        on[i] = True
    return pd.Series(on, index=frame.index, name="pareto")


def _spec_value(hardware: str, attr: str) -> float:
    from codesign.errors import CodesignError
    from codesign.hw import load_hw

    try:
        hw = load_hw(hardware)
    except CodesignError:
        return float("nan")
    return float(hw.cost.per_hour if attr == "cost.per_hour" else hw.power.tdp)


def _per_chip(frame: pd.DataFrame, attr: str) -> pd.Series:
    spec = frame["hardware"].map(lambda h: _spec_value(str(h), attr))
    if attr in frame.columns:
        return frame[attr].astype(float).fillna(spec)
    return spec.astype(float)


def with_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `usd_per_mtok`, `power_w` and `tokens_per_joule` (computed where missing)."""
    out = frame.copy()
    tok = out["output_tokens_per_s"].astype(float).where(lambda s: s > 0)
    chips = out["chips"].astype(float)
    if "usd_per_mtok" not in out.columns:
        out["usd_per_mtok"] = chips * _per_chip(out, "cost.per_hour") / 3600.0 / tok * 1e6
    if "power_w" not in out.columns:
        out["power_w"] = chips * _per_chip(out, "power.tdp")
    if "tokens_per_joule" not in out.columns:
        out["tokens_per_joule"] = tok / out["power_w"].astype(float)
    return out


__all__ = ["pareto_front", "with_costs", "DEFAULT_MAXIMIZE", "DEFAULT_MINIMIZE", "THROUGHPUT"]
