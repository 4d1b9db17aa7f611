"""`sweep(...)`: evaluate a base point under many dotted-path overrides, into a results store.

1. The base point and the grid (codesign.sweeps.spec) give one override mapping per point; each
   becomes a validated `Point` and its hash. A base with several contexts sweeps them as the path
   `context` (one row per point).
2. Constraints that name only input columns (the swept paths, `chips`, `deployment_power_w`,
   `deployment_usd_per_hour`) drop points before they are evaluated.
3. Points already in the store (same hash: same inputs, same code) are not evaluated again; the
   rest go to the executor (codesign.sweeps.executors) and are committed one by one as they finish.
4. The sweep's rows are read back from the store; the remaining constraints filter them, a Pareto
   column is added when asked, and the table is returned (the store keeps every row).

Constraints are pandas query expressions (`DataFrame.query`: comparisons, arithmetic, and/or; no
function calls), over the table's columns; a column name with dots is written in backticks:
"`chip.hbm.bandwidth` <= 8e12 and usd_per_million_output_tokens < 2".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from codesign import progress
from codesign.errors import CodesignError
from codesign.point import Point, canonical_json, get, override, point_hash
from codesign.results import Result, flat_row
from codesign.sweeps import executors
from codesign.sweeps.pareto import pareto as add_pareto
from codesign.sweeps.spec import Range, base_point, variations
from codesign.sweeps.store import KEY, Store

INPUT_COLUMNS = ("deployment_power_w", "deployment_usd_per_hour")


def input_columns(p: Point, paths: Sequence[str]) -> dict[str, Any]:
    """A point's input columns: each swept path's resolved value, the chips, and the deployment's
    power (chips x power.tdp x power.utilisation, W) and rent (chips x price.per_hour, USD/h)."""
    chips = p.resolved_chips
    cols: dict[str, Any] = {}
    for path in paths:
        if path in ("hw", "model"):  # a whole spec or model: its name
            cols[path] = p.hw.name if path == "hw" else p.model.name
            continue
        v = get(p, path)
        cols[path] = v[0] if path == "context" and isinstance(v, (list, tuple)) and len(v) == 1 else v
    cols.setdefault("chips", chips)
    cols["deployment_power_w"] = chips * p.hw.power.serving_watts
    cols["deployment_usd_per_hour"] = chips * p.hw.cost.per_hour
    return cols


def _query(df: pd.DataFrame, expr: str) -> pd.DataFrame:
    try:
        out = df.query(expr, engine="python")
    except pd.errors.UndefinedVariableError:
        raise
    except Exception as e:  # pandas raises many types for a malformed expression
        raise CodesignError(f"constraint {expr!r}: cannot evaluate ({type(e).__name__}: {e})") from None
    if not isinstance(out, pd.DataFrame):
        raise CodesignError(f"constraint {expr!r}: expected a true/false condition")
    return out


def _apply(df: pd.DataFrame, constraints: Sequence[str], stage: str, strict: bool) -> tuple[pd.DataFrame, list[str]]:
    """Apply the constraints the columns can answer; return the rest (unless `strict`)."""
    rest = []
    for expr in constraints:
        if not isinstance(expr, str) or not expr.strip():
            raise CodesignError(f"constraint: expected a pandas query expression, found {expr!r}")
        try:
            kept = _query(df, expr)
        except pd.errors.UndefinedVariableError as e:
            if strict:
                import difflib

                cols = [str(c) for c in df.columns]
                word = str(e).split("'")[1] if "'" in str(e) else expr
                near = difflib.get_close_matches(word, cols, n=5, cutoff=0.4) or cols
                raise CodesignError(f"constraint {expr!r}: {e}; nearest columns: {', '.join(near)} "
                                    "(write a column with dots in backticks: `chip.hbm.bandwidth`)") from None
            rest.append(expr)
            continue
        if kept.empty and not df.empty:
            raise CodesignError(f"constraint {expr!r} removes every point ({len(df)} {stage})")
        df = kept
    return df, rest


def sweep(base: Any = None, model: Any = None, grid: dict[str, list[Any] | Range | dict] | None = None,
          samples: int | None = None, seed: int = 0, constraints: Sequence[str] = (),
          executor: Any = "local", out: str | Path | None = None, pareto: dict | None = None,
          workers: int | None = None, name: str = "sweep", **point_kwargs: Any) -> pd.DataFrame:
    """Evaluate `base` under every override of `grid` (or `samples` seeded draws from it).

    `base`: a `Point`, a scenario (object, mapping, one-entry file) or a hardware name/spec, with
    `model` and `simulate()`'s keyword arguments. `out`: the results folder (`out/results.sqlite`;
    None: in memory). `executor`: "local" (processes over all cores), "local:N", "serial",
    "dask://HOST:PORT", an Executor or a distributed.Client. `pareto`: {"maximize": [...],
    "minimize": [...]} adds a boolean `pareto` column. Returns one row per point that meets the
    constraints, in grid order: the flattened result columns, `point_hash`, one column per swept
    path and the derived columns (docs/sweep.md)."""
    if base is None:
        raise CodesignError("sweep: give a base point (a Point, a scenario, or a hardware name with model=...)")
    if model is not None:
        point_kwargs["model"] = model
    root = base_point(base, "sweep", name, **point_kwargs)
    grid = dict(grid or {})
    if len(root.contexts) > 1 and "context" not in grid:
        grid = {"context": list(root.contexts), **grid}
    points, paths = _points(root, grid, samples, seed)
    inputs = pd.DataFrame([{KEY: h, **input_columns(p, paths)} for h, p in points])
    inputs, later = _apply(inputs, list(constraints), "before evaluation", strict=False)
    keep = set(inputs[KEY])
    points = [(h, p) for h, p in points if h in keep]
    store = Store.open(out)
    try:
        _evaluate(store, points, paths, executor, workers, name)
        df = store.frame([h for h, _ in points])
    finally:
        if out is not None:
            store.close()
    df["feasible"] = df["feasible"].astype(bool)
    df, _ = _apply(df, later, "evaluated", strict=True)
    if pareto:
        df = add_pareto(df, maximize=pareto.get("maximize", ()), minimize=pareto.get("minimize", ()))
    return df.reset_index(drop=True)


def _points(root: Point, grid: dict[str, Any], samples: int | None, seed: int) -> tuple[list[tuple[str, Point]], list[str]]:
    """(hash, point) per distinct point, in grid order, and the swept paths."""
    seen: set[str] = set()
    out: list[tuple[str, Point]] = []
    for v in variations(root, grid, samples, seed):
        p = override(root, v)
        h = point_hash(p)
        if h not in seen:
            seen.add(h)
            out.append((h, p))
    return out, list(grid)


def _evaluate(store: Store, points: list[tuple[str, Point]], paths: list[str], executor: Any,
              workers: int | None, name: str) -> None:
    done = store.hashes()
    todo = [(h, p) for h, p in points if h not in done]
    # stored points reused by this sweep get this sweep's input columns where they lack them
    store.fill({h: input_columns(p, paths) for h, p in points if h in done},
               {h: canonical_json(p) for h, p in points if h in done})
    by_hash = dict(todo)
    obs = progress.current()
    if obs is not None:
        obs.start(len(todo))
    try:
        for h, rows, wall, worker in executors.run([p for _, p in todo], executor, workers):
            if h not in by_hash:
                raise CodesignError(f"sweep: a worker returned point {h[:12]}, which is not in this sweep "
                                    "(is it running another version of codesign?)")
            if len(rows) != 1:
                raise CodesignError(f"sweep: point {h[:12]} gave {len(rows)} rows, expected one")
            r = Result.from_dict(rows[0])
            cols = flat_row(r)  # result columns first; an input column of the same name (chips) agrees
            for k, v in input_columns(by_hash[h], paths).items():
                cols.setdefault(k, v)
            cols.pop(KEY, None)
            store.put(h, cols, rows[0], worker=worker, wall_s=wall, point_json=canonical_json(by_hash[h]))
            if obs is not None:
                obs.advance(f"{name}: point {h[:10]}")
    finally:
        if obs is not None:
            obs.stop()


def sweep_file(path: str | Path, out: str | Path | None, executor: Any = None, workers: int | None = None) -> pd.DataFrame:
    """`sweep(...)` of a sweep YAML file (codesign.sweeps.spec)."""
    from codesign.sweeps.spec import load_sweep

    f = load_sweep(path)
    base: Any = f.base
    if isinstance(base, str):
        p = Path(base)
        base = p if p.is_absolute() or p.exists() else Path(path).parent / p
        base = str(base)
    return sweep(base=base, grid=dict(f.grid), samples=f.samples, seed=f.seed, constraints=f.constraints,
                 executor=executor or f.executor or "local", out=out, workers=workers, name=f.name,
                 pareto=f.pareto.model_dump() if f.pareto else None)


__all__ = ["sweep", "sweep_file", "input_columns", "INPUT_COLUMNS"]
