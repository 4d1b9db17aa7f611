"""Pareto fronts and the cost columns they are drawn over.

`pareto_front(frame, maximize=..., minimize=...)`: True for the feasible rows no other feasible row
dominates (at least as good in every objective and better in one): `codesign.sweep.pareto`'s front
(codesign/sweeps/pareto.py) over the feasible rows, with the report's default objectives. Rows with
a missing objective are never on the front; equal rows are all kept.

`with_costs(frame)` adds, where missing, the derived columns the Pareto plots use, taken from the
rows' own columns when they have them (result rows carry `usd_per_million_output_tokens` and
`output_tokens_per_joule`, sweep rows `deployment_power_w`; docs/point.md), else computed the same way:
* `usd_per_mtok` = chips x `price.per_hour` (USD per chip-hour) / 3600 / output tokens/s x 1e6;
* `power_w` = chips x `power.tdp` x `power.utilisation` (named assumption: chips draw that while serving);
* `tokens_per_joule` = output tokens/s / `power_w`.
`price.per_hour` (also read as `cost.per_hour`, the spec's own name), `power.tdp` and
`power.utilisation` come from the row's own columns when a sweep varied them, else from the named
hardware spec (`hw_specs/<hardware>.yaml`).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

THROUGHPUT = "output_tokens_per_s_per_chip"
DEFAULT_MAXIMIZE = (THROUGHPUT,)
DEFAULT_MINIMIZE = ("usd_per_mtok", "power_w")


def pareto_front(frame: pd.DataFrame, maximize: Sequence[str] = DEFAULT_MAXIMIZE,
                 minimize: Sequence[str] = DEFAULT_MINIMIZE) -> pd.Series:
    """Boolean Series (index of `frame`): the non-dominated feasible rows (`codesign.sweep.pareto`'s
    front over the feasible rows; the defaults are the report's objectives)."""
    from codesign.sweeps.pareto import pareto_mask

    on = pd.Series(False, index=frame.index, name="pareto")
    ok = frame["feasible"].astype(bool) if "feasible" in frame.columns else pd.Series(True, index=frame.index)
    mask = pareto_mask(frame[ok], maximize=list(maximize), minimize=list(minimize))
    on[mask.index[mask.to_numpy()]] = True
    return on


def _spec_value(hardware: str, attr: str) -> float:
    from codesign.errors import CodesignError
    from codesign.hw import load_hw

    try:
        hw = load_hw(hardware)
    except CodesignError:
        return float("nan")
    return float({"price.per_hour": hw.cost.per_hour, "power.tdp": hw.power.tdp,
                  "power.utilisation": hw.power.utilisation}[attr])


def _per_chip(frame: pd.DataFrame, attr: str, *aliases: str) -> pd.Series:
    """A spec value per row: the row's own column (`attr` or an alias) where set, else the spec's."""
    spec = frame["hardware"].map(lambda h: _spec_value(str(h), attr)).astype(float)
    for name in (attr, *aliases):
        if name in frame.columns:
            return pd.to_numeric(frame[name], errors="coerce").astype(float).fillna(spec)
    return spec


def _own(out: pd.DataFrame, column: str, computed: pd.Series) -> pd.Series:
    """The rows' own `column` where present and set, else `computed`."""
    if column in out.columns:
        return pd.to_numeric(out[column], errors="coerce").astype(float).fillna(computed)
    return computed


def with_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `usd_per_mtok`, `power_w` and `tokens_per_joule` (see module docstring)."""
    out = frame.copy()
    tok = out["output_tokens_per_s"].astype(float).where(lambda s: s > 0)
    chips = out["chips"].astype(float)
    if "usd_per_mtok" not in out.columns:
        usd = chips * _per_chip(out, "price.per_hour", "cost.per_hour") / 3600.0 / tok * 1e6
        out["usd_per_mtok"] = _own(out, "usd_per_million_output_tokens", usd)
    if "power_w" not in out.columns:
        watts = chips * _per_chip(out, "power.tdp") * _per_chip(out, "power.utilisation")
        out["power_w"] = _own(out, "deployment_power_w", watts)
    if "tokens_per_joule" not in out.columns:
        out["tokens_per_joule"] = _own(out, "output_tokens_per_joule", tok / out["power_w"].astype(float))
    return out


__all__ = ["pareto_front", "with_costs", "DEFAULT_MAXIMIZE", "DEFAULT_MINIMIZE", "THROUGHPUT"]
