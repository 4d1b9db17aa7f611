"""Result rows: exact JSON keys of the design brief, DataFrame flattening, infeasible rows."""

from __future__ import annotations

import json

from codesign.results import Distribution, Result, infeasible, results_to_dataframe

BRIEF_KEYS = ["name", "feasible", "reason", "hardware", "model", "chips", "plan", "output_tokens_per_s",
              "input_tokens_per_s", "output_tokens_per_s_per_chip", "ttft_s", "tpot_s", "concurrency",
              "memory_per_chip_gib", "bottleneck", "sim_wall_s"]


def test_json_has_brief_keys_in_order():
    r = Result(name="x", feasible=True, reason=None, hardware="h200", model="m", chips=8)
    d = json.loads(r.to_json())
    assert list(d)[: len(BRIEF_KEYS)] == BRIEF_KEYS
    assert set(d["plan"]) == {"tp", "ep", "pp", "dp", "attention_dp"}
    assert list(d["ttft_s"]) == list(d["tpot_s"]) == ["mean", "p50", "p90", "p99"]
    assert list(d["memory_per_chip_gib"]) == ["weights", "kv_cache", "state", "activations", "total", "capacity"]


def test_infeasible_is_a_row():
    r = infeasible("x", "does not fit: short by 3.00 GiB per chip at batch 1", "h200", "m", 8, {"tp": 8},
                   reason_code="capacity")
    d = r.to_dict()
    assert d["feasible"] is False and d["reason"].startswith("does not fit")
    assert d["plan"] == {"tp": 8, "ep": 1, "pp": 1, "dp": 1, "attention_dp": 1}
    assert d["bottleneck"] == "capacity" and d["reason_code"] == "capacity"
    # the code is what the caller says, never read from the text
    other = infeasible("x", "does not fit: short by 3.00 GiB", "h200", "m", 8, reason_code="unsupported")
    assert other.reason_code == "unsupported" and other.bottleneck is None
    df = results_to_dataframe([r, Result(name="y", feasible=True, reason=None, hardware="h200", model="m", chips=8)])
    assert list(df["feasible"]) == [False, True]
    assert "plan.tp" in df.columns and "memory_per_chip_gib.total" in df.columns


def test_wall_time_is_not_part_of_the_deterministic_row():
    a = Result(name="x", feasible=True, reason=None, hardware="h200", model="m", chips=8, sim_wall_s=1.0)
    b = Result(name="x", feasible=True, reason=None, hardware="h200", model="m", chips=8, sim_wall_s=2.0)
    assert a == b and a.deterministic_dict() == b.deterministic_dict() and "sim_wall_s" not in a.deterministic_dict()
    assert a.to_dict()["sim_wall_s"] == 1.0


def test_round_trip_through_dict():
    r = Result(name="x", feasible=True, reason=None, hardware="h200", model="m", chips=8, overrides={"chips": 8})
    r.ttft_s = Distribution(0.1, 0.1, 0.2, 0.3)
    back = Result.from_dict(json.loads(r.to_json()))
    assert back == r and back.ttft_s["p90"] == 0.2


def test_distribution_is_the_mapping_it_always_was():
    d = Distribution(0.1, 0.2, 0.3, 0.4)
    assert isinstance(d, dict) and d == {"mean": 0.1, "p50": 0.2, "p90": 0.3, "p99": 0.4}
    assert (d.mean, d.p50, d.p90, d.p99) == (0.1, 0.2, 0.3, 0.4) and d["p99"] == 0.4
    assert Distribution({"mean": 1.0, "p50": 1.0, "p99": 2.0}).p90 is None
    assert Distribution.single(0.5) == {"mean": 0.5, "p50": 0.5, "p90": 0.5, "p99": 0.5}
    r = Result(name="x", feasible=True, reason=None, hardware="h200", model="m", chips=8, ttft_s=d)
    assert type(r.to_dict()["ttft_s"]) is Distribution and r.to_dict()["ttft_s"] == d
