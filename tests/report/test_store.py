"""The results folder format: round trip and the errors for bad folders."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from codesign.errors import CodesignError
from codesign.report.store import read_results, write_results


def frame() -> pd.DataFrame:
    return pd.DataFrame({"name": ["a", "b"], "feasible": [True, False], "hardware": ["h200", "h200"],
                         "model": ["m", "m"], "chips": [8, 8], "output_tokens_per_s": [1.5, None],
                         "memory_per_chip_gib.total": [100.0, None], "chip.hbm.bandwidth": [4.8e12, 8e12]})


def test_round_trip_keeps_dotted_columns(tmp_path):
    write_results(frame(), tmp_path)
    got = read_results(tmp_path)
    assert list(got.columns) == list(frame().columns)
    assert got["feasible"].tolist() == [True, False]
    assert got["chip.hbm.bandwidth"].tolist() == [4.8e12, 8e12]
    assert got["output_tokens_per_s"].iloc[0] == 1.5 and pd.isna(got["output_tokens_per_s"].iloc[1])


def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(CodesignError, match="not a folder"):
        read_results(tmp_path / "missing")
    with pytest.raises(CodesignError, match="no results.sqlite in it"):
        read_results(tmp_path)
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("create table other (x)")
    with pytest.raises(CodesignError, match="no table 'results' \\(found: other\\)"):
        read_results(tmp_path)
    with sqlite3.connect(db) as con:
        con.execute("create table results (name, feasible)")
    with pytest.raises(CodesignError, match="lacks column\\(s\\) hardware, model, chips, output_tokens_per_s"):
        read_results(tmp_path)
    write_results(frame().iloc[0:0], tmp_path)
    with pytest.raises(CodesignError, match="has no rows"):
        read_results(tmp_path)


def test_corrupt_database_is_reported_and_left_untouched(tmp_path):
    db = tmp_path / "results.sqlite"
    garbage = b"this is not sqlite" * 100
    db.write_bytes(garbage)
    with pytest.raises(CodesignError, match="not a readable SQLite database"):
        read_results(tmp_path)
    assert db.read_bytes() == garbage
