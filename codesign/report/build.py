"""Assemble a report's `ReportData` from finished results, then render it.

* `from_results(results, ...)`: `codesign.simulate` rows of one design point (`codesign simulate
  ... --report FILE`);
* `from_frame(frame, ...)`: flattened result rows of a sweep (`codesign report DIR`, where
  `codesign.report.store.read_results(DIR)` gives the frame).

Both add what the rows do not carry through the public API (`codesign.report.inputs`): the
throughput-against-context curve and the decode-step detail (roofline, expert load, timeline) of
the chosen rows: every feasible row of a `simulate` run; for a sweep, the fastest feasible row per
model (or the rows named in `detail`). Each is drawn at the `codesign.point.Point` the row was
evaluated at: the points `simulate` ran, or a sweep store's points by `point_hash`
(`codesign.report.store.read_points`); only a row with neither is re-derived from its columns. A
row whose point cannot be re-derived (its hardware is not a spec name, say) gets a note in the
report instead of a detail section.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from codesign.errors import CodesignError
from codesign.point import Point, canonical_json
from codesign.report.inputs import (DesignPoint, ReportData, at_row, context_curve, point_from_result,
                                     point_from_row, step_detail)
from codesign.report.pareto import pareto_front, with_costs
from codesign.results import Result, results_to_dataframe


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def per_row(value: Any, n: int) -> list:
    """`value` for each of `n` rows: a list of n values as is, anything else repeated."""
    if isinstance(value, list):
        if len(value) != n:
            raise CodesignError(f"report: {len(value)} inputs for {n} result rows")
        return value
    return [value] * n


def points_of(results: Sequence[Result], points: Sequence[Point] | None = None, hw: Any = None, model: Any = None,
              precision: Any = None, cost: Any = None) -> list[DesignPoint]:
    """The design points of the feasible rows. `points`: the `Point` each row was evaluated at (one
    per row); without them each row is re-derived from `hw`, `model`, `precision`, `cost` (one
    value or one per row; default: the row's names and the simulator's defaults)."""
    n = len(results)
    if points is not None:
        return [point_from_result(r, p) for r, p in zip(results, per_row(list(points), n))
                if r.feasible and r.concurrency]
    args = zip(results, per_row(hw, n), per_row(model, n), per_row(precision, n), per_row(cost, n))
    return [point_from_result(r, None, h, m, p, c) for r, h, m, p, c in args if r.feasible and r.concurrency]


def from_results(results: Sequence[Result], points: Sequence[Point] | None = None, hw: Any = None,
                 model: Any = None, precision: Any = None, cost: Any = None, title: str | None = None,
                 command: str = "", curves: bool = True, details: bool = True,
                 progress: Callable[[str], None] | None = None) -> ReportData:
    """Report data for `codesign.simulate` rows (one design point, several contexts). `points`: the
    `Point` each row was evaluated at (`codesign.evaluate`), one per row; without them, `hw`,
    `model`, `precision`, `cost` (one value, or a list with one per row; by default the rows'
    hardware and model names and the simulator's defaults) re-derive them."""
    results = list(results)
    if not results:
        raise CodesignError("report: no results to report")
    rows = with_costs(results_to_dataframe(results))
    data = ReportData(title=title or f"{results[0].model} on {results[0].chips}x {results[0].hardware}", rows=rows,
                      breakdowns={r.name: r.breakdown for r in results if r.breakdown}, command=command)
    points = points_of(results, points, hw, model, precision, cost)
    if not points:
        data.notes.append("No feasible row: no curve, roofline, heatmap or timeline to draw.")
        return data
    if curves:
        seen, frames = set(), []
        for p in points:  # one curve per (hardware, model, plan)
            key = canonical_json(p.point.model_copy(update={"context": None, "name": None}))
            if key not in seen:
                seen.add(key)
                _log(progress, f"throughput against context for {p.label}")
                frames.append(context_curve(p))
        frames = [f for f in frames if not f.empty]
        if frames:
            data.curves = pd.concat(frames, ignore_index=True)
    if details:
        for p in points:
            _log(progress, f"decode step of {p.label}")
            data.details.append(step_detail(p))
    return data


def _detail_rows(rows: pd.DataFrame, names: Iterable[str] | None) -> pd.DataFrame:
    ok = rows[rows["feasible"].astype(bool) & rows["concurrency"].notna()] if "concurrency" in rows else rows.iloc[0:0]
    if names is not None:
        names = list(names)
        unknown = [n for n in names if n not in set(rows["name"])]
        if unknown:
            raise CodesignError(f"--detail: no row named {unknown[0]!r} (rows: {', '.join(rows['name'].head(5))}, ...)")
        return ok[ok["name"].isin(names)]
    if ok.empty:
        return ok
    best = ok.sort_values("output_tokens_per_s_per_chip", ascending=False, kind="stable")
    return best.drop_duplicates("model")


def _breakdowns(rows: pd.DataFrame, names: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for _, r in rows[rows["name"].isin(list(names))].iterrows():
        bd: dict[str, dict[str, float]] = {}
        for c in rows.columns:
            if c.startswith("breakdown.") and not pd.isna(r[c]):
                _, group, key = c.split(".", 2)
                bd.setdefault(group, {})[key] = float(r[c])
        if bd:
            out[str(r["name"])] = bd
    return out


def distinct_names(rows: pd.DataFrame) -> pd.Series:
    """Row names that tell the rows apart: a sweep's points share their base's name, so a name
    held by several rows gets the values of the swept dotted-path columns that differ between
    them ("moe-concept-...-256k [16 TB/s, 1 GB]"), and the point hash's first digits where even
    those agree."""
    from codesign.report.html import _SI_UNITS, _si
    from codesign.report.inputs import INPUT_ROOTS

    names = rows["name"].astype(str)
    dup = names.duplicated(keep=False)
    if not dup.any():
        return names
    swept = [c for c in rows.columns if isinstance(c, str) and c.startswith(INPUT_ROOTS)]

    def show(c: str, v: Any) -> str:
        unit = _SI_UNITS.get(c.rsplit(".", 1)[-1])
        if unit and isinstance(v, (int, float)) and not pd.isna(v):
            return _si(float(v), unit)
        return f"{c.rsplit('.', 1)[-1]}={v}"

    out = names.copy()
    for name, group in rows[dup].groupby(names[dup], sort=False):
        varying = [c for c in swept if group[c].nunique(dropna=False) > 1]
        for i, r in group.iterrows():
            out[i] = f"{name} [{', '.join(show(c, r[c]) for c in varying)}]" if varying else name
    again = out.duplicated(keep=False)
    if again.any() and "point_hash" in rows.columns:
        out[again] = out[again] + " #" + rows.loc[again, "point_hash"].astype(str).str[:8]
    return out


def from_frame(frame: pd.DataFrame, title: str = "design-space sweep", command: str = "",
               detail: Iterable[str] | None = None, curves: bool = True, details: bool = True,
               hw: Any = None, model: Any = None, precision: dict | None = None, cost: dict | None = None,
               points: Mapping[str, Point] | None = None,
               progress: Callable[[str], None] | None = None) -> ReportData:
    """Report data for a sweep's flattened rows (see `codesign.report.store` for the columns).
    `points`: point hash -> the `Point` evaluated (`read_points(DIR)`); a chosen row whose
    `point_hash` is there is drawn at its point, any other is re-derived from its columns with
    `hw`, `model`, `precision`, `cost`."""
    if frame.empty:
        raise CodesignError("report: the results table has no rows")
    rows = with_costs(frame)
    rows["name"] = distinct_names(rows)
    if "pareto" not in rows.columns:
        rows["pareto"] = pareto_front(rows)
    rows["pareto"] = rows["pareto"].fillna(False).astype(bool)
    data = ReportData(title=title, rows=rows, sweep=True, command=command)
    chosen = _detail_rows(rows, detail)
    data.breakdowns = _breakdowns(rows, chosen["name"])
    curve_frames = []
    for _, r in chosen.iterrows():
        try:
            row = r.to_dict()
            h = str(row.get("point_hash"))
            if points is not None and h in points:
                try:
                    point = at_row(points[h], row)
                except CodesignError as e:  # a stored point this code no longer reads: re-derive
                    data.notes.append(f"{r['name']}: {e}; drawn at a point re-derived from the row")
                    point = point_from_row(row, hw, model, precision, cost)
            else:
                point = point_from_row(row, hw, model, precision, cost)
        except CodesignError as e:
            data.notes.append(f"{r['name']}: no detail sections ({e})")
            continue
        if curves:
            _log(progress, f"throughput against context for {r['name']}")
            curve = context_curve(point)
            if not curve.empty:
                curve_frames.append(curve)
        if details:
            _log(progress, f"decode step of {r['name']}")
            data.details.append(step_detail(point))
    if curve_frames:
        data.curves = pd.concat(curve_frames, ignore_index=True)
    if chosen.empty:
        data.notes.append("No feasible row: no curve, roofline, heatmap or timeline to draw.")
    return data


__all__ = ["from_results", "from_frame", "points_of", "per_row"]
