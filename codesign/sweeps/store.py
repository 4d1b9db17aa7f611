"""The sweep results store: one SQLite file in WAL mode, `DIR/results.sqlite`.

Table `results`: one row per design point, keyed by `point_hash` (codesign.point_hash), holding
the flattened result columns (as `codesign.results.results_to_dataframe`: `plan.tp`,
`ttft_s.p99`, ...), the sweep's derived columns (`deployment_power_w`, `deployment_usd_per_hour`),
one column per swept dotted path (`chip.hbm.bandwidth`, ...) and `result_json`, the whole row
(`Result.to_dict()`, breakdown included). Table `computations` logs every evaluation that was
stored (point hash, worker, wall seconds): a point computed twice shows twice there. Table `points`
keeps each stored point's inputs (`codesign.point.canonical_json`), so that a report draws a row
at exactly the point it was evaluated at. Table `meta` holds the store format version. docs/sweep.md describes the format.

Each finished point is committed in its own transaction (`BEGIN IMMEDIATE`), so a sweep killed at
any moment keeps every point it finished; WAL mode lets readers (reports, notebooks) read while a
sweep writes and lets several writers (processes) take turns, waiting up to `BUSY_TIMEOUT_S` for
the write lock. A file that is not a readable store is reported with what can be recovered and is
never overwritten (`recover` copies the readable rows into a new file).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from codesign.errors import CodesignError

FILENAME = "results.sqlite"
FORMAT_VERSION = "1"
BUSY_TIMEOUT_S = 120.0
KEY = "point_hash"
JSON_COLUMN = "result_json"
POINT_COLUMN = "point_json"


def _q(name: str) -> str:
    """An SQL identifier quoted (column names hold dots)."""
    return '"' + name.replace('"', '""') + '"'


def _cell(v: Any) -> Any:
    """A value SQLite stores as is: numbers, text, None; lists and mappings as JSON text."""
    if isinstance(v, bool):
        return int(v)
    if v is None or isinstance(v, (str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return json.dumps(v, sort_keys=True, default=list)


class Store:
    """A results store at `path` (a file, or ":memory:"). Open with `Store.open(dir_or_file)`."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path, self.conn = path, conn
        self._columns: list[str] = self._table_columns()

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, where: str | Path | None) -> "Store":
        """The store in folder `where` (created if missing); None: an in-memory store."""
        if where is None:
            conn = sqlite3.connect(":memory:", isolation_level=None)
            store = cls(":memory:", conn)
            store._init()
            return store
        folder = Path(where)
        if folder.suffix == ".sqlite":
            folder, path = folder.parent, folder
        else:
            path = folder / FILENAME
        if folder.exists() and not folder.is_dir():
            raise CodesignError(f"{folder}: expected a folder for the sweep results, found a file")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CodesignError(f"{folder}: cannot create the results folder ({e.strerror})") from None
        existed = path.exists() and path.stat().st_size > 0
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            if existed:
                _check(conn, path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            store = cls(str(path), conn)
            store._init()
        except sqlite3.DatabaseError as e:
            raise corrupt(path, e) from None
        return store

    def _init(self) -> None:
        with self._write():
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS results ({_q(KEY)} TEXT PRIMARY KEY, {_q(JSON_COLUMN)} TEXT)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS computations (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                              f"{_q(KEY)} TEXT NOT NULL, worker TEXT, wall_s REAL)")
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS points ({_q(KEY)} TEXT PRIMARY KEY, {_q(POINT_COLUMN)} TEXT)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        self._columns = self._table_columns()

    def _table_columns(self) -> list[str]:
        return [r[1] for r in self.conn.execute("PRAGMA table_info(results)")]

    def close(self) -> None:
        self.conn.close()

    # -- writing ---------------------------------------------------------------------------------
    def _write(self):
        return _Transaction(self.conn)

    def ensure_columns(self, names: Iterable[str]) -> None:
        """Add the columns the table lacks (a store grows with the sweeps written to it)."""
        missing = [n for n in names if n not in self._columns]
        if not missing:
            return
        with self._write():
            have = set(self._table_columns())  # another writer may have added some meanwhile
            for n in missing:
                if n not in have:
                    self.conn.execute(f"ALTER TABLE results ADD COLUMN {_q(n)}")
        self._columns = self._table_columns()

    def put(self, point_hash: str, columns: dict[str, Any], result: dict[str, Any], worker: str = "",
            wall_s: float = 0.0, point_json: str | None = None) -> bool:
        """Store one finished point (its row, its inputs `point_json` when given, and one
        `computations` entry) in one transaction. False when the point was already stored (the
        row is kept; the computation is logged)."""
        self.ensure_columns(columns)
        names = [KEY, JSON_COLUMN, *columns]
        values = [point_hash, json.dumps(result, sort_keys=False, allow_nan=False)] + [_cell(v) for v in columns.values()]
        sql = (f"INSERT OR IGNORE INTO results ({', '.join(_q(n) for n in names)}) "
               f"VALUES ({', '.join('?' for _ in names)})")
        with self._write():
            cur = self.conn.execute(sql, values)
            self.conn.execute(f"INSERT INTO computations ({_q(KEY)}, worker, wall_s) VALUES (?, ?, ?)",
                              (point_hash, worker, float(wall_s)))
            if point_json is not None:
                self.conn.execute("INSERT OR IGNORE INTO points VALUES (?, ?)", (point_hash, point_json))
        return cur.rowcount == 1

    def fill(self, rows: dict[str, dict[str, Any]], points: dict[str, str] | None = None) -> None:
        """Set columns that stored rows lack (NULL), e.g. the swept paths of a later sweep that
        reuses a stored point, and the inputs (`points`: hash -> point JSON) of stored points that
        lack them (stores written before the `points` table); one transaction for all of them."""
        if not rows:
            return
        self.ensure_columns({c for cols in rows.values() for c in cols})
        with self._write():
            for h, js in (points or {}).items():
                self.conn.execute("INSERT OR IGNORE INTO points VALUES (?, ?)", (h, js))
            for h, cols in rows.items():
                for c, v in cols.items():
                    self.conn.execute(f"UPDATE results SET {_q(c)} = ? WHERE {_q(KEY)} = ? AND {_q(c)} IS NULL",
                                      (_cell(v), h))

    # -- reading ---------------------------------------------------------------------------------
    def hashes(self) -> set[str]:
        return {r[0] for r in self.conn.execute(f"SELECT {_q(KEY)} FROM results")}

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM results").fetchone()[0])

    def computations(self) -> pd.DataFrame:
        return pd.read_sql("SELECT * FROM computations ORDER BY seq", self.conn)

    def frame(self, hashes: Sequence[str] | None = None) -> pd.DataFrame:
        """The results table (all rows, or those of `hashes` in that order), without result_json."""
        cols = ", ".join(_q(c) for c in self._table_columns() if c != JSON_COLUMN)
        df = pd.read_sql(f"SELECT {cols} FROM results", self.conn)
        if hashes is not None:
            df = df.set_index(KEY, drop=False).reindex(list(hashes)).reset_index(drop=True)
        return df

    def point_json(self, hashes: Sequence[str]) -> dict[str, str]:
        """Stored points' inputs (canonical JSON) by point hash."""
        rows = dict(self.conn.execute(f"SELECT {_q(KEY)}, {_q(POINT_COLUMN)} FROM points"))
        return {h: rows[h] for h in hashes if h in rows}

    def results(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored rows (Result.to_dict()) by point hash."""
        out: dict[str, dict[str, Any]] = {}
        for h, js in self.conn.execute(f"SELECT {_q(KEY)}, {_q(JSON_COLUMN)} FROM results"):
            out[h] = json.loads(js)
        return {h: out[h] for h in hashes if h in out}


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), retried while another writer holds the lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise CodesignError(f"results store: the write lock stayed taken for {BUSY_TIMEOUT_S:.0f} s") from None
                time.sleep(0.01)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


# ---- corruption ----------------------------------------------------------------------------------

def _check(conn: sqlite3.Connection, path: Path) -> None:
    """Raise `corrupt` unless the file is a readable store."""
    try:
        ok = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise corrupt(path, e) from None
    if ok != "ok":
        raise corrupt(path, ok)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "results" not in tables:
        raise CodesignError(f"{path}: an SQLite file but not a sweep results store (tables: {', '.join(sorted(tables))}); "
                            "it was left as it is: give another --out folder")


def _scan(conn: sqlite3.Connection) -> Iterable[tuple[list[str], tuple]]:
    """(column names, row) of every `results` row that can still be read, skipping damaged pages:
    rows are asked for one at a time by rowid, and a rowid whose page cannot be read is passed."""
    try:
        names = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
    except sqlite3.DatabaseError:
        return
    if not names:
        return
    try:
        top = conn.execute("SELECT max(rowid) FROM results").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = int(conn.execute("PRAGMA page_count").fetchone()[0]) * 256  # at most this many rows fit
    cols = ", ".join(_q(n) for n in names)
    rowid = 0
    while rowid < top:
        try:
            row = conn.execute(f"SELECT rowid, {cols} FROM results WHERE rowid > ? ORDER BY rowid LIMIT 1",
                               (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            rowid += 1
            continue
        if row is None:
            return
        rowid = row[0]
        yield names, row[1:]


def _readonly(path: Path) -> sqlite3.Connection | None:
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None


def readable_rows(path: Path) -> int:
    """How many rows of `results` can still be read from a damaged store (0 when none)."""
    conn = _readonly(path)
    if conn is None:
        return 0
    try:
        return sum(1 for _ in _scan(conn))
    except sqlite3.DatabaseError:
        return 0
    finally:
        conn.close()


def corrupt(path: Path, why: Any) -> CodesignError:
    n = readable_rows(path)
    return CodesignError(f"{path}: corrupt results store ({why}); {n} stored row(s) can be read back; "
                         f"the file was left as it is: `codesign sweep --recover {path.parent}` copies them into "
                         f"{path.with_name('results.recovered.sqlite')}")


def recover(folder: str | Path) -> tuple[Path, int]:
    """Copy the readable rows of a damaged `folder/results.sqlite` into
    `folder/results.recovered.sqlite` (never touching the original). Returns (new file, rows)."""
    src = Path(folder)
    src = src if src.suffix == ".sqlite" else src / FILENAME
    if not src.exists():
        raise CodesignError(f"{src}: no results store to recover")
    dest = src.with_name("results.recovered.sqlite")
    if dest.exists():
        raise CodesignError(f"{dest}: already exists; move it away first (it is never overwritten)")
    out = Store.open(dest)
    n = 0
    conn = _readonly(src)
    try:
        for names, row in _scan(conn) if conn is not None else ():
            d = dict(zip(names, row))
            h, js = d.pop(KEY, None), d.pop(JSON_COLUMN, None)
            if h is None or js is None:
                continue
            out.ensure_columns(d)
            with out._write():
                out.conn.execute(f"INSERT OR IGNORE INTO results ({', '.join(_q(k) for k in [KEY, JSON_COLUMN, *d])}) "
                                 f"VALUES ({', '.join('?' for _ in range(len(d) + 2))})", [h, js, *d.values()])
            n += 1
    except sqlite3.DatabaseError:
        pass
    try:  # the stored points' inputs, where readable (a report draws rows at them)
        for h, js in conn.execute(f"SELECT {_q(KEY)}, {_q(POINT_COLUMN)} FROM points") if conn is not None else ():
            with out._write():
                out.conn.execute("INSERT OR IGNORE INTO points VALUES (?, ?)", (h, js))
    except sqlite3.DatabaseError:
        pass
    finally:
        if conn is not None:
            conn.close()
    out.close()
    return dest, n


__all__ = ["Store", "recover", "readable_rows", "FILENAME", "KEY", "JSON_COLUMN", "POINT_COLUMN"]
