"""The results folder a report reads: `DIR/results.sqlite`, table `results`.

The format (what `codesign report DIR` expects, and what a sweep writes):

* one SQLite database `DIR/results.sqlite` with a table `results`, one row per design point;
* its columns are those of `codesign.results.results_to_dataframe` (`name`, `feasible`, `reason`,
  `hardware`, `model`, `chips`, `plan.tp` .. `plan.attention_dp`, `output_tokens_per_s`,
  `output_tokens_per_s_per_chip`, `ttft_s.mean`, `tpot_s.mean`, `concurrency`,
  `memory_per_chip_gib.weights` .. `memory_per_chip_gib.capacity`, `bottleneck`, `context`,
  `mode`, ...), dotted names as column names. Required: `name`, `feasible`, `hardware`, `model`,
  `chips`, `output_tokens_per_s`;
* optional columns the report uses when present: the swept fields under their dotted paths
  (`chip.hbm.bandwidth`, `system.scale_up.link_bandwidth`, `model.moe.num_experts`, ...: applied to
  the named spec when a point's detail is re-derived), `usd_per_mtok`, `power_w` (the deployment's
  power), `tokens_per_joule`, `pareto` (bool), `breakdown.block.<block>` and
  `breakdown.resource.<resource>` (seconds per decode step), `point_hash`.

Any other columns are kept and shown in the summary table. A sweep store also has a table `points`
(`point_hash`, `point_json`: the point's inputs, `codesign.point.canonical_json`); `read_points`
reads it, so that detail sections are drawn at exactly the point a row was evaluated at. WAL mode and concurrent writers are the
writer's business; the report opens the file read-only and never writes to it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import pandas as pd

from codesign.errors import CodesignError

RESULTS_FILE = "results.sqlite"
RESULTS_TABLE = "results"
REQUIRED_COLUMNS = ("name", "feasible", "hardware", "model", "chips", "output_tokens_per_s")


def read_results(folder: str | Path) -> pd.DataFrame:
    """The result rows of a results folder (see the module docstring), as a DataFrame.
    CodesignError with the path and what is wrong when the folder, file, table or columns are not
    as expected."""
    folder = Path(folder)
    db = folder / RESULTS_FILE
    if not folder.is_dir():
        raise CodesignError(f"{folder}: not a folder (expected a results folder holding {RESULTS_FILE})")
    if not db.is_file():
        raise CodesignError(f"{folder}: no {RESULTS_FILE} in it (a results folder holds {RESULTS_FILE} "
                            f"with a table {RESULTS_TABLE!r}; see docs/report.md)")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if RESULTS_TABLE not in tables:
                raise CodesignError(f"{db}: no table {RESULTS_TABLE!r} (found: {', '.join(sorted(tables)) or 'none'})")
            df = pd.read_sql_query(f'SELECT * FROM "{RESULTS_TABLE}"', con)
    except sqlite3.DatabaseError as e:
        raise CodesignError(f"{db}: not a readable SQLite database ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CodesignError(f"{db}: table {RESULTS_TABLE!r} lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise CodesignError(f"{db}: table {RESULTS_TABLE!r} has no rows")
    df["feasible"] = df["feasible"].astype(bool)
    return df


class StoredPoints(Mapping):
    """Point hash -> `codesign.point.Point`, read from a store's `points` table and validated on
    first access (a point that no longer validates under this code is a CodesignError naming it)."""

    def __init__(self, db: Path, raw: dict[str, str]) -> None:
        self.db, self.raw, self._cache = db, raw, {}

    def __getitem__(self, h: str):
        from codesign.point import Point

        if h not in self._cache:
            js = self.raw[h]
            try:
                self._cache[h] = Point.model_validate_json(js)
            except Exception as e:  # pydantic.ValidationError, or a point refused by this code
                first = str(e).splitlines()[:3]
                raise CodesignError(f"{self.db}: stored point {h[:12]} does not validate under this version "
                                    f"({' '.join(first)})") from None
        return self._cache[h]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def read_points(folder: str | Path) -> StoredPoints:
    """The stored points of a results folder (empty when its store has no `points` table)."""
    db = Path(folder) / RESULTS_FILE
    raw: dict[str, str] = {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "points" in tables:
                raw = {str(h): str(js) for h, js in con.execute("SELECT point_hash, point_json FROM points")
                       if h is not None and js is not None}
    except sqlite3.DatabaseError as e:
        raise CodesignError(f"{db}: not a readable SQLite database ({e})") from None
    return StoredPoints(db, raw)


def write_results(frame: pd.DataFrame, folder: str | Path) -> Path:
    """Write `frame` as a results folder (replacing its table): the reference writer of the format,
    for tests and small scripts. Returns the database path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / RESULTS_FILE
    with sqlite3.connect(db) as con:
        frame.to_sql(RESULTS_TABLE, con, if_exists="replace", index=False)
    return db


__all__ = ["read_results", "read_points", "StoredPoints", "write_results", "RESULTS_FILE", "RESULTS_TABLE", "REQUIRED_COLUMNS"]
