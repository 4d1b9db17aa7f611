"""Sweeps: grids and seeded samples over dotted paths, constraints, derived columns, Pareto fronts,
the Dask executor, and the errors bad sweeps get."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.results import results_to_dataframe
from codesign.sweeps import load_sweep, pareto_mask, sweep_file
from codesign.sweeps.spec import variations
from tests.sweeps.conftest import write_sweep

GRID = {"chip.hbm.bandwidth": ["3 TB/s", "4.8 TB/s", "8 TB/s"], "workload.max_batch": [16, 64]}


def run(base, **kw):
    return cs.sweep(base=base, executor=kw.pop("executor", "serial"), **kw)


def test_grid_rows_columns_and_derived_values(base, tmp_path):
    df = run(base, grid=GRID, out=tmp_path)
    assert len(df) == 6 and df["point_hash"].is_unique
    assert list(df["chip.hbm.bandwidth"]) == [3e12, 3e12, 4.8e12, 4.8e12, 8e12, 8e12]
    assert list(df["workload.max_batch"]) == [16, 64] * 3 and list(df["concurrency"]) == [16, 64] * 3
    # derived columns against their own arithmetic (fixture chip: 3.5 USD/h, 700 W, one chip)
    assert np.allclose(df["usd_per_million_output_tokens"], 3.5 / (df["output_tokens_per_s"] * 3600) * 1e6)
    assert np.allclose(df["output_tokens_per_joule"], df["output_tokens_per_s"] / 700.0)
    assert (df["deployment_power_w"] == 700.0).all() and (df["deployment_usd_per_hour"] == 3.5).all()
    assert np.allclose(df["output_tokens_per_s_per_chip"], df["output_tokens_per_s"])
    # more HBM bandwidth, more decode throughput at the same batch
    for mb in (16, 64):
        rates = df[df["workload.max_batch"] == mb]["output_tokens_per_s"].tolist()
        assert rates == sorted(rates) and rates[0] < rates[-1]
    # the store reads back as the brief's flattened columns plus the hash and the swept paths
    stored = pd.read_sql("select * from results", sqlite3.connect(tmp_path / "results.sqlite"))
    point = cs.override(cs.Point.from_scenario(cs_scenario(base)), {"chip.hbm.bandwidth": "3 TB/s",
                                                                       "workload.max_batch": 16})
    ref = results_to_dataframe(cs.evaluate(point))
    for col in ref.columns:
        assert col in stored.columns, col
    row = stored[stored["point_hash"] == cs.point_hash(point)].iloc[0]
    assert row["output_tokens_per_s"] == ref["output_tokens_per_s"][0]
    assert json.loads(row["overrides"]) == {"chip.hbm.bandwidth": 3e12, "workload.max_batch": 16}
    assert json.loads(row["result_json"])["point_hash"] == cs.point_hash(point)


def cs_scenario(base):
    from codesign.scenario import parse_scenarios

    return parse_scenarios({"name": "sweep", **base}, "base")[0]


def test_rerun_computes_nothing(base, tmp_path):
    run(base, grid=GRID, out=tmp_path)
    again = run(base, grid=GRID, out=tmp_path)
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    assert conn.execute("select count(*) from computations").fetchone()[0] == 6 and len(again) == 6


def test_input_constraints_prune_before_evaluation(base, tmp_path):
    df = run(base, grid=GRID, out=tmp_path, constraints=["`chip.hbm.bandwidth` < 5e12", "output_tokens_per_s > 0"])
    assert len(df) == 4 and (df["chip.hbm.bandwidth"] < 5e12).all()
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    assert conn.execute("select count(*) from computations").fetchone()[0] == 4


def test_result_constraint_filters_after(base):
    df = run(base, grid=GRID)
    cut = float(df["usd_per_million_output_tokens"].median())
    kept = run(base, grid=GRID, constraints=[f"usd_per_million_output_tokens <= {cut!r}"])
    assert len(kept) == (df["usd_per_million_output_tokens"] <= cut).sum() and 0 < len(kept) < 6


def test_constraint_removing_every_point_says_so(base):
    with pytest.raises(CodesignError, match=r"constraint 'deployment_power_w < 1' removes every point \(6 before evaluation\)"):
        run(base, grid=GRID, constraints=["deployment_power_w < 1"])
    with pytest.raises(CodesignError, match=r"constraint 'output_tokens_per_s < 0' removes every point \(6 evaluated\)"):
        run(base, grid=GRID, constraints=["output_tokens_per_s < 0"])
    with pytest.raises(CodesignError, match=r"constraint 'nonsense_column > 1': name 'nonsense_column' is not defined"):
        run(base, grid=GRID, constraints=["nonsense_column > 1"])
    with pytest.raises(CodesignError, match=r"constraint 'output_tokens_per_s >': cannot evaluate"):
        run(base, grid=GRID, constraints=["output_tokens_per_s >"])


def test_unknown_path_lists_neighbours(base):
    with pytest.raises(CodesignError, match=r"chip\.hbm\.bandwith: unknown path; nearest valid: chip\.hbm\.bandwidth"):
        run(base, grid={"chip.hbm.bandwith": ["8 TB/s"]})


def test_empty_grid_says_so(base, tmp_path):
    with pytest.raises(CodesignError, match=r"empty grid"):
        run(base, grid={})
    with pytest.raises(CodesignError, match=r"s\.yaml: grid: Value error, empty grid|s\.yaml: grid: empty grid"):
        load_sweep(write_sweep(tmp_path / "s.yaml", base, {}))
    with pytest.raises(CodesignError, match=r"grid: chip\.hbm\.bandwidth: empty list of values"):
        load_sweep(write_sweep(tmp_path / "s.yaml", base, {"chip.hbm.bandwidth": []}))


def test_seeded_samples(base):
    p = cs.Point.from_scenario(cs_scenario(base))
    grid = {"chip.hbm.bandwidth": {"low": "2 TB/s", "high": "16 TB/s", "log": True}, "workload.max_batch": {"low": 8, "high": 128},
            "price.per_hour": [1.0, 2.0, 3.0]}
    a = variations(p, grid, samples=50, seed=7)
    assert a == variations(p, grid, samples=50, seed=7) and a != variations(p, grid, samples=50, seed=8)
    bw = [v["chip.hbm.bandwidth"] for v in a]
    assert all(2e12 <= x <= 16e12 for x in bw) and min(bw) < 4e12 and max(bw) > 8e12
    assert all(isinstance(v["workload.max_batch"], int) and 8 <= v["workload.max_batch"] <= 128 for v in a)
    assert {v["price.per_hour"] for v in a} == {1.0, 2.0, 3.0}
    with pytest.raises(CodesignError, match=r"grid\.chip\.hbm\.bandwidth: a range needs `samples`"):
        variations(p, {"chip.hbm.bandwidth": {"low": 1e12, "high": 2e12}}, samples=None, seed=0)


def test_samples_run(base):
    df = run(base, grid={"chip.hbm.bandwidth": {"low": "2 TB/s", "high": "8 TB/s"}}, samples=5, seed=1)
    assert len(df) == 5 and df["chip.hbm.bandwidth"].between(2e12, 8e12).all()


def test_several_contexts_sweep_as_a_path(base):
    b = {**base, "workload": {"mode": "decode", "max_batch": 64}}
    p = cs.design_point(b["hardware"], b["model"], chips=1, plan={"tp": 1}, context=[1024, 2048],
                        workload=b["workload"])
    df = cs.sweep(base=p, grid={"price.per_hour": [1.0, 2.0]}, executor="serial")
    assert sorted(df["context"].tolist()) == [1024, 1024, 2048, 2048]


def test_pareto_against_brute_force():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.integers(0, 20, 300).astype(float), "b": rng.integers(0, 20, 300).astype(float),
                       "c": rng.random(300)})
    df.loc[5, "a"] = np.nan
    mask = pareto_mask(df, maximize=["a", "c"], minimize=["b"])
    x = np.c_[-df["a"], df["b"], -df["c"]]
    for i in range(len(df)):
        if not np.isfinite(x[i]).all():
            assert not mask[i]
            continue
        ok = np.isfinite(x).all(axis=1)
        dominated = np.any(ok & np.all(x <= x[i], axis=1) & np.any(x < x[i], axis=1))
        assert mask[i] == (not dominated), i
    out = cs.sweep.pareto(df, maximize=["a"], minimize=["b"])
    assert out["pareto"].dtype == bool and out["pareto"].sum() >= 1
    with pytest.raises(CodesignError, match=r"pareto: unknown column 'zz'"):
        pareto_mask(df, maximize=["zz"])


def test_sweep_file_and_pareto_column(base, tmp_path):
    spec = write_sweep(tmp_path / "s.yaml", base, GRID, constraints=["feasible"],
                       pareto={"maximize": ["output_tokens_per_s_per_chip"], "minimize": ["chip.hbm.bandwidth"]})
    df = sweep_file(spec, tmp_path / "out", executor="serial")
    assert df["pareto"].dtype == bool
    # at each bandwidth the larger batch is faster, so the front is the max_batch 64 row of each
    assert sorted(df[df["pareto"]]["workload.max_batch"].tolist()) == [64, 64, 64]


def test_dask_gives_the_same_table_as_local(base, tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = {"chip.hbm.bandwidth": ["3 TB/s", "4.8 TB/s", "8 TB/s"], "price.per_hour": [1.0, 2.0]}
    local = run(base, grid=grid, out=tmp_path / "local", executor="local:2")
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = run(base, grid=grid, out=tmp_path / "dask", executor=client)
        by_address = run(base, grid=grid, out=tmp_path / "dask2", executor=f"dask://{cluster.scheduler_address}")
    for other in (remote, by_address):
        pd.testing.assert_frame_equal(local.drop(columns="sim_wall_s"), other.drop(columns="sim_wall_s"))

    def stored(d):
        t = pd.read_sql("select * from results", sqlite3.connect(d / "results.sqlite")).sort_values("point_hash")
        js = [json.loads(s) for s in t["result_json"]]
        for j in js:
            j.pop("sim_wall_s")
        return t.drop(columns=["sim_wall_s", "result_json"]).reset_index(drop=True), js

    a, b = stored(tmp_path / "local"), stored(tmp_path / "dask")
    pd.testing.assert_frame_equal(a[0], b[0])
    assert a[1] == b[1]


def test_bad_executor(base):
    with pytest.raises(CodesignError, match=r"executor: expected 'local'"):
        run(base, grid=GRID, executor="cloud")
    with pytest.raises(CodesignError, match=r"executor: expected local:N with N >= 1"):
        run(base, grid=GRID, executor="local:0")


def test_numpy_grids_and_tuples(base):
    p = cs.Point.from_scenario(cs_scenario(base))
    v = variations(p, {"chip.hbm.bandwidth": np.linspace(2e12, 4e12, 3), "workload.max_batch": (np.int64(8), 16)},
                   samples=None, seed=0)
    assert v[0] == {"chip.hbm.bandwidth": 2e12, "workload.max_batch": 8} and len(v) == 6
    assert type(v[0]["workload.max_batch"]) is int
    with pytest.raises(CodesignError, match=r"grid\.chip\.hbm\.bandwidth: expected a list of values"):
        variations(p, {"chip.hbm.bandwidth": "8 TB/s"}, samples=None, seed=0)


def test_a_refused_point_is_a_row(base, monkeypatch):
    from codesign.sweeps import executors

    def refuse(p, **kw):
        raise CodesignError("step shape: not yet supported")

    monkeypatch.setattr("codesign.point.evaluate", refuse)
    df = run(base, grid={"price.per_hour": [1.0, 2.0]})
    assert list(df["feasible"]) == [False, False] and set(df["reason_code"]) == {"unsupported"}
    assert set(df["reason"]) == {"step shape: not yet supported"}
    assert executors.evaluate_one  # the executor's own function caught it


def test_sweep_whole_specs_by_name(base, inputs):
    df = run(base, grid={"hw": [inputs["hardware"], "h200"], "price.per_hour": [1.0]})
    assert list(df["hw"]) == ["sweep-chip", "h200"] and list(df["hardware"]) == ["sweep-chip", "h200"]


def test_cli_bad_input_is_one_line(base, tmp_path, capsys):
    from codesign.cli import main

    assert main(["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"codesign: error: {tmp_path / 'missing.yaml'}: no such sweep file"
    spec = write_sweep(tmp_path / "s.yaml", base, {"chip.hbm.bandwith": ["8 TB/s"]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chip.hbm.bandwith: unknown path; nearest valid: chip.hbm.bandwidth" in err[0]
    assert main(["sweep", str(spec)]) == 2
    assert "give a sweep file and --out DIR" in capsys.readouterr().err


def test_cli_runs_and_resumes(base, tmp_path, capsys):
    from codesign.cli import main

    spec = write_sweep(tmp_path / "s.yaml", base, {"price.per_hour": [1.0, 2.0]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "serial"]) == 0
    out = capsys.readouterr()
    assert "2 points meet the constraints, 2 feasible" in out.err and "codesign sweep" in out.out
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "serial"]) == 0
    conn = sqlite3.connect(tmp_path / "o" / "results.sqlite")
    assert conn.execute("select count(*) from computations").fetchone()[0] == 2


def test_a_later_sweep_reusing_stored_points_fills_its_columns(base, tmp_path):
    run(base, grid={"chip.hbm.bandwidth": ["3 TB/s", "4.8 TB/s"]}, out=tmp_path)
    df = run(base, grid={"chip.hbm.bandwidth": ["3 TB/s", "4.8 TB/s"], "price.per_hour": [3.5, 7.0]}, out=tmp_path)
    assert len(df) == 4 and df["price.per_hour"].notna().all()  # 3.5 is the base price: two points reused
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    assert conn.execute("select count(*) from computations").fetchone()[0] == 4
