"""`codesign validate FILE --only PATTERN` and `--baseline JSON`: the scenarios a glob selects, the
comparisons that moved against an earlier `--json` run, and their bad input (one line, exit 2)."""

from __future__ import annotations

import json

import pytest

from codesign import cli
from codesign.commands.validate import MOVED, Row, moved, validate_file

ROWS = """\
- name: a-decode
  hardware: h200
  chips: 1
  model: qwen3-8b
  parallel: {tp: 1}
  workload: {mode: decode, input_tokens: 1024, max_batch: 8}
  measured: {output_tokens_per_s: 1000}
- name: b-decode
  hardware: h200
  chips: 1
  model: qwen3-8b
  parallel: {tp: 1}
  workload: {mode: decode, input_tokens: 2048, max_batch: 8}
  measured: {output_tokens_per_s: 1000}
"""


@pytest.fixture
def vfile(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text(ROWS)
    return f


def test_only_selects_by_glob(vfile):
    assert [r.name for r in validate_file(str(vfile), ["b-*"])] == ["b-decode"]
    assert [r.name for r in validate_file(str(vfile), ["b-*", "a-decode"])] == ["a-decode", "b-decode"]


def test_only_without_a_match_is_one_line(vfile, capsys):
    assert cli.main(["validate", str(vfile), "--only", "c-*"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"codesign: error: validate --only: no scenario of {vfile} matches 'c-*' (glob on scenario names, "
        "e.g. 'mlperf-v4.1-*')"]


def test_baseline_lists_what_moved(vfile, tmp_path, capsys):
    """A baseline whose a-decode error is 10 points off today's and whose b-decode error is today's:
    only a-decode is listed, with both errors; the baseline's MAPE is over the shared comparisons."""
    rows = validate_file(str(vfile))
    a, b = rows
    base = {"rows": [{"name": "a-decode", "metric": "output_tokens_per_s", "error": a.error - 0.1},
                     {"name": "b-decode", "metric": "output_tokens_per_s", "error": b.error}], "mape": None}
    bf = tmp_path / "before.json"
    bf.write_text(json.dumps(base))
    assert cli.main(["validate", str(vfile), "--baseline", str(bf)]) == 0
    out = capsys.readouterr().out
    then = (abs(a.error - 0.1) + abs(b.error)) / 2
    assert f"baseline {bf}: {then:.1%} over the 2 comparisons it shares" in out
    assert f"{a.error - 0.1:+.1%} -> {a.error:+.1%}  a-decode output_tokens_per_s" in out
    assert "b-decode output_tokens_per_s\n" not in out.split("baseline")[1]


def test_moved_orders_by_size_and_keeps_new_rows():
    rows = [Row("x", "m", 1.0, 1.5, "ok"), Row("y", "m", 1.0, 1.2, "ok"), Row("z", "m", 1.0, 1.1, "ok"),
            Row("w", "m", 1.0, None, "infeasible: no")]
    base = {("x", "m"): 0.45, ("y", "m"): 0.0, ("z", "m"): 0.1 + MOVED / 2}
    assert [(r.name, before) for r, before in moved(rows, base)] == [("y", 0.0), ("x", 0.45)]
    assert [r.name for r, _ in moved(rows[:1], {})] == ["x"]  # not in the baseline: new


@pytest.mark.parametrize("text, found", [
    ("not json", "found text that is not JSON"),
    ('{"rows": [{"name": "a"}]}', "found another document"),
    ("[1, 2]", "found another document"),
])
def test_bad_baseline_is_one_line(vfile, tmp_path, capsys, text, found):
    bf = tmp_path / "before.json"
    bf.write_text(text)
    assert cli.main(["validate", str(vfile), "--baseline", str(bf)]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert out == "" and line.startswith(f"codesign: error: validate --baseline {bf}: expected the JSON of "
                                         "`codesign validate FILE --json`") and found in line
