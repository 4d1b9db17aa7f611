"""Result rows: exact JSON keys of the design brief, DataFrame flattening, infeasible rows."""

from __future__ import annotations

import json

from codesign.results import Result, infeasible, results_to_dataframe

BRIEF_KEYS = ["name", "feasible", "reason", "hardware", "model", "chips", "plan", "output_tokens_per_s",
              "input_tokens_per_s", "output_tokens_per_s_per_chip", "ttft_s", "tpot_s", "concurrency",
              "memory_per_chip_gib", "bottleneck", "sim_wall_s"]


def test_json_has_brief_keys_in_order():
    r = Result(name="x", feasible=True, reason=None, hardware="h200", model="m", chips=8)
    d = json.loads(r.to_json())
    assert list(d)[: len(BRIEF_KEYS)] == BRIEF_KEYS
    assert set(d["plan"]) == {"tp", "ep", "pp", "dp", "attention_dp"}
    assert set(d["ttft_s"]) == set(d["tpot_s"]) == {"mean", "p50", "p99"}
    assert list(d["memory_per_chip_gib"]) == ["weights", "kv_cache", "state", "activations", "total", "capacity"]


def test_infeasible_is_a_row():
    r = infeasible("x", "does not fit: short by 3.00 GiB per chip at batch 1", "h200", "m", 8, {"tp": 8})
    d = r.to_dict()
    assert d["feasible"] is False and d["reason"].startswith("does not fit")
    assert d["plan"] == {"tp": 8, "ep": 1, "pp": 1, "dp": 1, "attention_dp": 1}
    assert d["bottleneck"] == "capacity"
    df = results_to_dataframe([r, Result(name="y", feasible=True, reason=None, hardware="h200", model="m", chips=8)])
    assert list(df["feasible"]) == [False, True]
    assert "plan.tp" in df.columns and "memory_per_chip_gib.total" in df.columns
