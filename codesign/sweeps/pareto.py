"""Pareto fronts of a result table: the rows no other row beats on every objective.

`pareto_mask(df, maximize=[...], minimize=[...])` is a boolean Series (True on the front);
`pareto(df, ...)` returns a copy of the table with that Series as a column (default `pareto`).
Rows missing any objective (infeasible rows have no throughput) are never on the front. Row a
dominates row b when a is at least as good on every objective and better on one; equal rows do
not dominate each other, so ties are all kept.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from codesign.errors import CodesignError


def _objectives(df: pd.DataFrame, maximize: Sequence[str], minimize: Sequence[str]) -> np.ndarray:
    if isinstance(maximize, str) or isinstance(minimize, str):
        raise CodesignError("pareto: maximize and minimize take lists of column names")
    cols = list(maximize) + list(minimize)
    if not cols:
        raise CodesignError("pareto: give at least one column to maximize or minimize")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CodesignError(f"pareto: unknown column {missing[0]!r}; columns: {', '.join(map(str, df.columns))}")
    x = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        x[:, j] = -v if j < len(maximize) else v  # everything minimised
    return x


def pareto_mask(df: pd.DataFrame, maximize: Sequence[str] = (), minimize: Sequence[str] = ()) -> pd.Series:
    """True for the rows on the Pareto front of the given objectives (see module docstring)."""
    x = _objectives(df, maximize, minimize)
    ok = np.isfinite(x).all(axis=1)
    idx = np.flatnonzero(ok)
    on = np.zeros(len(df), dtype=bool)
    if idx.size:
        sub = x[idx]
        order = np.lexsort(sub.T[::-1])  # by the first objective, then the next: a dominator comes first
        front: list[int] = []
        for i in order:
            row = sub[i]
            if front:
                f = sub[front]
                if np.any(np.all(f <= row, axis=1) & np.any(f < row, axis=1)):
                    continue
            front.append(i)
        on[idx[front]] = True
    return pd.Series(on, index=df.index, name="pareto")


def pareto(df: pd.DataFrame, maximize: Sequence[str] = (), minimize: Sequence[str] = (),
           column: str = "pareto") -> pd.DataFrame:
    """A copy of `df` with a boolean `column` marking its Pareto front."""
    out = df.copy()
    out[column] = pareto_mask(df, maximize, minimize).to_numpy()
    return out


__all__ = ["pareto", "pareto_mask"]
