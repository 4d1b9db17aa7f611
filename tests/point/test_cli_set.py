"""`codesign simulate --set PATH=VALUE`: any input by its dotted path from the command line."""

from __future__ import annotations

import json

from codesign.cli import main

ARGS = ["simulate", "--hw", "h200", "--model", "qwen3-8b", "--chips", "1", "--plan", "tp=1", "--context", "4k", "--json"]


def test_set_overrides_and_is_recorded(capsys):
    assert main(ARGS) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(ARGS + ["--set", "chip.hbm.bandwidth=8 TB/s", "--set", "workload.max_batch=32"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["overrides"] == {"chip.hbm.bandwidth": 8e12, "workload.max_batch": 32}
    assert d["concurrency"] == 32 and d["point_hash"] != base["point_hash"]


def test_bad_set_and_scenario_with_flags_are_one_line(tmp_path, capsys):
    assert main(ARGS + ["--set", "chip.hbm.bandwith=1"]) == 2
    assert "chip.hbm.bandwith: unknown path; nearest valid: chip.hbm.bandwidth" in capsys.readouterr().err
    assert main(ARGS + ["--set", "novalue"]) == 2
    assert "--set: expected PATH=VALUE" in capsys.readouterr().err
    s = tmp_path / "s.yaml"
    s.write_text("name: s\nhardware: h200\nchips: 1\nmodel: qwen3-8b\nparallel: {tp: 1}\n")
    assert main(["simulate", "--scenario", str(s), "--chips", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with a scenario file (it gives them itself; change its fields with --set" in err
    assert err.rstrip().endswith("found --chips 8")
