"""The simulate table: the default fits 100 columns, labels say what the numbers are."""

from __future__ import annotations

from codesign.commands.result_table import DEFAULT_WIDTH, compact_lines, plan_label, print_table
from codesign.results import Result, infeasible


def row(name="h200-qwen3.5-397b-a17b-8x-32k", mode="decode", context=32768, plan=None, **kw) -> Result:
    r = Result(name=name, feasible=True, reason=None, hardware="h200", model="qwen3.5-397b-a17b", chips=8,
               context=context, mode=mode, concurrency=560, bottleneck="hbm",
               output_tokens_per_s=13212.4 if mode != "prefill" else 0.0,
               input_tokens_per_s=0.0 if mode != "prefill" else 1_234_567.0,
               ttft_s={"mean": 1.46, "p50": 1.46, "p99": 1.46},
               tpot_s={"mean": 0.0424 if mode != "prefill" else None, "p50": None, "p99": None},
               memory_per_chip_gib={"weights": 54.1, "kv_cache": 65.6, "state": 12.5, "activations": 0.06,
                                    "total": 139.4, "capacity": 140.4}, **kw)
    r.plan = plan or {"tp": 1, "ep": 8, "pp": 1, "dp": 1, "attention_dp": 8}
    return r


def test_default_table_fits_100_columns_and_keeps_each_row_on_one_line():
    rows = [row(), row(name="h200-qwen3.5-397b-a17b-8x-256k", context=262144)]
    lines = compact_lines(rows)
    assert max(map(len, lines)) <= DEFAULT_WIDTH
    assert lines[0] == "codesign simulate: h200, qwen3.5-397b-a17b, 8 chips"  # derived names: one title
    assert lines[1].split() == ["context", "plan", "batch", "out", "tok/s", "tok/s/chip", "TTFT", "s", "TPOT", "ms",
                                "GiB", "used/cap", "bound"]
    assert lines[3].split() == ["32k", "ep8", "adp8", "560", "13,212", "1,651.5", "1.46", "42.4", "139.4/140.4", "hbm"]
    assert lines[4].split()[0] == "256k"


def test_scenario_names_get_their_own_line_and_long_plans_still_fit():
    wide_plan = {"tp": 8, "ep": 144, "pp": 2, "dp": 2, "attention_dp": 18}
    rows = [row(name="a-very-long-scenario-name-" * 4, plan=wide_plan), row(name="other", mode="offline")]
    lines = compact_lines(rows)
    assert max(map(len, lines)) <= DEFAULT_WIDTH + len("a-very-long-scenario-name-" * 4)  # only a name line may be long
    assert "a-very-long-scenario-name-" * 4 + " (decode)" in lines
    figures = [x for x in lines if "13,212" in x]
    assert len(figures) == 2 and all(len(x) <= DEFAULT_WIDTH for x in figures)
    assert "tp8 ep144 pp2 dp2 adp18" in figures[0]


def test_prefill_rate_is_labelled_input_tokens():
    only = compact_lines([row(name="p", mode="prefill")])
    assert "in tok/s" in only[1] and "out tok/s" not in only[1] and "1,234,567" in only[4]
    mixed = compact_lines([row(name="p", mode="prefill"), row(name="d")])
    assert "1,234,567 in" in mixed[4] and "13,212 out" in mixed[6]


def test_rows_that_do_not_run_show_their_reason_under_the_table():
    bad = infeasible("x", "short by 12.3 GiB per chip at batch 1", "h200", "m", 8, {"tp": 8}, context=4096,
                     mode="decode", reason_code="capacity")
    lines = compact_lines([row(), bad])
    assert "not run: x: short by 12.3 GiB per chip at batch 1" in lines
    assert lines[lines.index("x (decode)") + 1].split() == ["4k", "tp8", "-", "-", "-", "-", "-", "-", "capacity"]


def test_plan_labels_and_wide_table(capsys):
    assert plan_label({"tp": 1, "ep": 8, "pp": 1, "dp": 1, "attention_dp": 8}) == "ep8 adp8"
    assert plan_label({"tp": 1, "ep": 1, "pp": 1, "dp": 1, "attention_dp": 1}) == "1"
    print_table([row()], wide=True)
    out = capsys.readouterr().out
    for col in ("weights GiB", "KV GiB", "state GiB", "act GiB", "mode", "reason", "ep8,attention_dp8"):
        assert col in out
