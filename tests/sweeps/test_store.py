"""The results store: resumable after SIGKILL, safe with concurrent writers, corrupt files
reported and never overwritten."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from codesign.errors import CodesignError
from codesign.sweeps import Store, recover, sweep_file
from tests.sweeps.conftest import write_sweep

ROOT = Path(__file__).resolve().parents[2]


def table(folder: Path) -> pd.DataFrame:
    """The stored table without wall-clock time, sorted by point hash (insertion order varies)."""
    conn = sqlite3.connect(folder / "results.sqlite")
    df = pd.read_sql("select * from results", conn)
    conn.close()
    js = [json.loads(s) for s in df["result_json"]]
    for d in js:
        d.pop("sim_wall_s")
    df["result_json"] = [json.dumps(d) for d in js]
    return df.drop(columns=["sim_wall_s"]).sort_values("point_hash").reset_index(drop=True)


def computations(folder: Path) -> pd.Series:
    conn = sqlite3.connect(folder / "results.sqlite")
    df = pd.read_sql("select point_hash from computations", conn)
    conn.close()
    return df["point_hash"].value_counts()


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "codesign.cli", "sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kw)


def count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        n = conn.execute("select count(*) from results").fetchone()[0]
        conn.close()
        return n
    except sqlite3.Error:
        return 0


def test_sigkill_part_way_then_rerun(tmp_path, base):
    grid = {"chip.hbm.bandwidth": [f"{2 + i / 100:.2f} TB/s" for i in range(100)], "price.per_hour": [1.0, 2.0]}
    spec = write_sweep(tmp_path / "s.yaml", base, grid)
    out = tmp_path / "killed"
    db = out / "results.sqlite"
    proc = cli(str(spec), "--out", str(out), "--executor", "local:2")
    seen = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        seen = count(db)
        if seen >= 20:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = count(db)
    assert 0 < at_kill < 200, f"the kill came at {at_kill} of 200 stored points"
    rerun = cli(str(spec), "--out", str(out), "--executor", "local:2")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    whole = tmp_path / "whole"
    sweep_file(spec, whole, executor="serial")
    killed, reference = table(out), table(whole)
    assert len(killed) == 200 and len(reference) == 200
    pd.testing.assert_frame_equal(killed, reference)
    c = computations(out)
    assert len(c) == 200 and c.max() == 1, "a finished point was computed twice"


def _writer(folder: str, k: int, n: int) -> None:
    store = Store.open(folder)
    for i in range(n):
        h = f"w{k:02d}-{i:04d}"
        store.put(h, {"name": h, "feasible": True, "output_tokens_per_s": float(i), "plan.tp": 1}, {"name": h},
                  worker=str(k))
    store.close()


def test_eight_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k, 60)) for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    store = Store.open(tmp_path)
    assert store.count() == 480 and len(store.hashes()) == 480
    assert len(store.computations()) == 480
    df = store.frame()
    assert set(df["point_hash"]) == {f"w{k:02d}-{i:04d}" for k in range(8) for i in range(60)}


def test_corrupt_store_is_reported_and_kept(tmp_path, base):
    spec = write_sweep(tmp_path / "s.yaml", base, {"price.per_hour": [1.0]})
    (tmp_path / "out").mkdir()
    db = tmp_path / "out" / "results.sqlite"
    db.write_bytes(b"this is not a results store" * 100)
    before = db.read_bytes()
    with pytest.raises(CodesignError, match=r"results\.sqlite: corrupt results store .*0 stored row\(s\) can be "
                                            r"read back; the file was left as it is: `codesign sweep --recover"):
        sweep_file(spec, tmp_path / "out", executor="serial")
    assert db.read_bytes() == before
    dest, n = recover(tmp_path / "out")
    assert n == 0 and dest.name == "results.recovered.sqlite" and db.read_bytes() == before


def test_damaged_page_reports_and_recovers_the_rest(tmp_path):
    _writer(str(tmp_path), 0, 400)
    Store.open(tmp_path).conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = tmp_path / "results.sqlite"
    data = bytearray(db.read_bytes())
    page = 4096
    mid = len(data) // page // 2  # a leaf of the results table (its rows fill almost every page)
    data[mid * page: (mid + 1) * page] = b"\xff" * page
    db.write_bytes(bytes(data))
    with pytest.raises(CodesignError, match=r"corrupt results store \(database disk image is malformed\); "
                                            r"(\d+) stored row\(s\) can be read back") as e:
        Store.open(tmp_path)
    said = int(str(e.value).split("); ")[1].split(" ")[0])
    dest, n = recover(tmp_path)
    assert 0 < n == said < 400
    assert db.read_bytes() == bytes(data)  # the damaged file is left as it was
    got = Store.open(dest).frame()
    assert set(got["point_hash"]) <= {f"w00-{i:04d}" for i in range(400)} and len(got) == n


def test_recover_copies_a_sound_store(tmp_path):
    _writer(str(tmp_path), 0, 25)
    dest, n = recover(tmp_path)
    assert n == 25 and Store.open(dest).count() == 25
    with pytest.raises(CodesignError, match=r"already exists; move it away first"):
        recover(tmp_path)


def test_other_sqlite_file_is_not_overwritten(tmp_path):
    db = tmp_path / "results.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("create table mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CodesignError, match=r"an SQLite file but not a sweep results store \(tables: mine\)"):
        Store.open(tmp_path)
