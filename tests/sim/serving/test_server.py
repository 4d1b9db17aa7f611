"""Server mode end to end on small models: rows, Little's law, the SLO search, MTP, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import codesign as cs
from codesign import mapping
from codesign.cli import main
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.models import load_model
from codesign.scenario import SLO, Workload, parse_scenarios
from codesign.graph.shape import Group, StepShape
from codesign.sim.serving import server as S
from codesign.sim.stepper import Stepper

PREC = {"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"}


def stepper(model: str) -> Stepper:
    return Stepper(load_hw("h200"), load_model(model), mapping.ParallelPlan.from_dict({"tp": 1}),
                   mapping.Precision.from_dict(PREC))


@pytest.fixture(scope="module")
def st8() -> Stepper:
    return stepper("qwen3-8b")


def test_server_row_has_distributions_and_obeys_littles_law():
    wl = {"mode": "server", "rate_per_s": 6.0, "requests": 60, "input_tokens": 512, "output_tokens": 32}
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1}, workload=wl)
    assert r.feasible and r.mode == "server" and r.context == 512
    for d in (r.ttft_s, r.tpot_s):
        assert set(d) == {"mean", "p50", "p90", "p99"} and d["p50"] <= d["p90"] <= d["p99"]
    sv = r.serving
    assert sv["stream"] == "poisson" and sv["requests"] == 60 and sv["engine"] == "vllm-v1"
    for k in ("itl_s", "e2e_s", "queue_s"):
        assert sv[k]["p99"] >= sv[k]["p50"] > 0 or k == "queue_s"
    assert sv["mean_in_system"] == pytest.approx(sv["request_rate_per_s"] * sv["e2e_s"]["mean"], rel=0.05)
    assert r.output_tokens_per_s == pytest.approx(60 * 32 / sv["duration_s"])
    assert len(sv["series"]["t_s"]) == len(sv["series"]["kv_use"]) <= 200
    json.loads(r.to_json())  # serialisable
    # the KV pool: HBM less weights, activations and reserve, over the model's per-token KV
    cfg = load_model("qwen3-8b")
    per_token = 2 * cfg.num_layers * cfg.attention.num_kv_heads * cfg.attention.head_dim * 2  # K and V, bf16
    m = r.memory_per_chip_gib
    pool = (m["capacity"] - m["weights"] - m["activations"]) * 2**30 * 1.0 - 0.05 * m["capacity"] * 2**30  # 5% reserve
    assert sv["kv_blocks"] == int(pool // (16 * per_token))


def test_slo_search_meets_at_the_rate_and_misses_above(st8):
    wl = Workload(mode="server", requests=80, input_tokens=512, output_tokens=64)
    slo = SLO(ttft_s=0.1, tpot_s=0.006)
    pt = S.serving_point(st8, wl)
    m, extra, reason = S.serve(pt, wl, slo)
    assert reason is None and m is not None and extra["stream"] == "poisson"
    assert m.ttft_s["p99"] <= slo.ttft_s and m.tpot_s["p99"] <= slo.tpot_s
    assert extra["above_rate"]["meets_slo"] is False and extra["rate_at_offline_ceiling"] is False
    assert extra["above_rate"]["rate_per_s"] == pytest.approx(1.1 * extra["rate_per_s"])
    assert m.output_tokens_per_s <= extra["offline_output_tokens_per_s"]
    # the same run again at the reported rate reproduces it (seeded)
    again = pt.run(S.stream_of(wl, rate=extra["rate_per_s"]), slo)
    assert again.ttft_s == m.ttft_s and again.tpot_s == m.tpot_s
    assert m.goodput_requests_per_s == pytest.approx(m.request_rate_per_s, rel=0.05)


def test_an_slo_no_rate_meets_is_an_infeasible_row():
    wl = {"mode": "server", "requests": 20, "input_tokens": 256, "output_tokens": 16}
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1}, workload=wl, slo={"tpot_s": 1e-5})
    assert not r.feasible and r.reason.startswith("no arrival rate meets the SLO (tpot_s 1e-05)")
    assert r.serving["search_runs"] == 1


def test_mtp_acceptance_zero_is_slower_and_high_acceptance_faster():
    st = stepper("qwen3.5-35b-a3b")
    base = dict(mode="server", requests=4, concurrency=4, input_tokens=128, output_tokens=48)
    out = {}
    for key, mtp in (("none", None), ("zero", {"tokens": 1, "acceptance": 0.0}), ("high", {"tokens": 1, "acceptance": 0.9})):
        wl = Workload(**base, mtp=mtp)
        pt = S.serving_point(st, wl)
        out[key] = (pt.run(S.stream_of(wl)), pt)
    none, zero, high = (out[k][0] for k in ("none", "zero", "high"))
    assert zero.output_tokens_per_s < none.output_tokens_per_s < high.output_tokens_per_s
    assert out["high"][1].draft.expected_tokens == pytest.approx(1.9)
    # the MTP head's weights and KV count: a smaller pool
    assert out["zero"][1].capacity.free_bytes < out["none"][1].capacity.free_bytes
    assert out["zero"][1].capacity.memory.weights > out["none"][1].capacity.memory.weights


def test_mtp_on_a_model_without_heads_is_an_error(st8):
    with pytest.raises(CodesignError, match="qwen3-8b has no MTP heads"):
        S.serving_point(st8, Workload(mode="server", mtp={"tokens": 1, "acceptance": 0.5}))


def test_no_room_for_kv_is_an_infeasible_row():
    from tests.sim.helpers import make_hw

    hw = make_hw(**{"chip.hbm.capacity": "9 GB"})
    (r,) = cs.simulate(hw, "qwen3-8b", chips=1, plan={"tp": 1}, workload={"mode": "server", "rate_per_s": 1.0})
    assert not r.feasible and ("leave no KV pool" in r.reason or "does not fit" in r.reason)


def test_request_longer_than_the_model_is_an_infeasible_row(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("0 50000 100\n")
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1},
                       workload={"mode": "server", "trace": str(p), "input_tokens": 4096})
    assert not r.feasible and "request 0 needs 50100 tokens" in r.reason


@pytest.mark.parametrize("workload,msg", [
    ({"mode": "server", "rate_per_s": 0}, "workload.rate_per_s: Input should be greater than 0"),
    ({"mode": "server", "rate_per_s": -2}, "workload.rate_per_s: Input should be greater than 0"),
    ({"mode": "decode", "requests": 10}, "workload.requests: only acts in mode 'server'"),
    ({"mode": "server", "scheduler": {"block_size": 0}}, "workload.scheduler: block_size: Input should be greater than 0"),
    ({"mode": "server", "mtp": {"tokens": 2, "acceptance": [0.5]}}, "workload.mtp.acceptance: expected 2 values"),
    ({"mode": "server", "mtp": {"tokens": 1, "acceptance": 1.5}}, "acceptance: Value error, expected a probability|expected a probability"),
    ({"mode": "server", "arrival": "uniform", "rate_per_s": 1}, "workload.arrival: Input should be 'poisson' or 'constant'"),
    ({"mode": "server", "arrival": "constant"}, "workload.arrival: 'constant' needs workload.rate_per_s"),
    ({"mode": "server", "arrival": "constant", "trace": "t.txt"}, "workload.arrival: 'constant' with workload.trace"),
    ({"mode": "decode", "arrival": "constant"}, "workload.arrival: not yet supported in steady-state mode 'decode'"),
])
def test_bad_server_workloads(workload, msg):
    with pytest.raises(CodesignError, match=msg):
        parse_scenarios({"name": "x", "hardware": "h200", "model": "qwen3-8b", "workload": workload}, "s.yaml")


def test_constant_arrivals_below_saturation_queue_no_request(st8):
    """At fixed intervals longer than a request's whole life, no request waits for another: every
    request's latency is the one-request latency and the run ends one latency after the last
    arrival. Poisson arrivals at the same mean rate bunch up, so some requests queue."""
    wl = {"mode": "server", "requests": 20, "input_tokens": 512, "output_tokens": 16}
    (alone,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1}, workload={**wl, "requests": 1})
    one = alone.serving["e2e_s"]["mean"]
    rate = 0.5 / one  # one arrival every two request lifetimes
    (c,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1},
                       workload={**wl, "rate_per_s": rate, "arrival": "constant"})
    sv = c.serving
    assert sv["stream"] == "constant"
    assert sv["e2e_s"]["p99"] == pytest.approx(one, rel=1e-6) and sv["e2e_s"]["p50"] == pytest.approx(one, rel=1e-6)
    assert sv["duration_s"] == pytest.approx(20 / rate + one, rel=1e-6)
    (p,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1},
                       workload={**wl, "rate_per_s": rate, "requests": 200, "seed": 1})
    assert p.serving["stream"] == "poisson" and p.serving["e2e_s"]["p99"] > one * (1 + 1e-3)


def test_cli_scenario_with_a_trace(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("".join(f"{0.1 * i:.1f},{256 + 8 * i},{8 + i}\n" for i in range(12)))
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"name": "replay", "hardware": "h200", "chips": 1, "model": "qwen3-8b",
                                  "parallel": {"tp": 1}, "precision": PREC,
                                  "workload": {"mode": "server", "trace": str(trace), "input_tokens": 300}}))
    assert main(["simulate", "--scenario", str(sc), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == "server" and d["serving"]["stream"] == "trace" and d["serving"]["requests"] == 12
    assert d["output_tokens_per_s"] == pytest.approx(sum(8 + i for i in range(12)) / d["serving"]["duration_s"])
    trace.write_text("0.0,10,10\nbroken line\n")
    assert main(["simulate", "--scenario", str(sc)]) != 0
    assert "trace.csv:2: expected 'arrival_s, input_tokens, output_tokens'" in capsys.readouterr().err


def test_progress_and_table(capsys):
    from codesign import progress
    from codesign.commands.simulate import print_server_table, print_table

    c = progress.Counter()
    with progress.observe(c):
        rows = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1},
                           workload={"mode": "server", "requests": 30, "concurrency": 8, "input_tokens": 256,
                                     "output_tokens": 16})
    assert c.total == c.done == 1 + 10 and not c.active  # the plan, then ten tenths of the run
    assert rows[0].serving["stream"] == "burst" and rows[0].serving["peak_running"] <= 8
    print_table(rows)
    print_server_table(rows)
    out = capsys.readouterr().out
    assert "server mode" in out and "burst" in out


def test_verify_groups_of_gated_deltanet_models_cost_recurrent_state_updates():
    """The core runs a verify group's GatedDeltaNet layers with the fused recurrent kernel (the
    state read once for all k + 1 tokens): more than a decode of the same sequences, less than
    k + 1 decodes each (which read the state k + 1 times). A prompt chunk of 12 tokens takes the
    chunked path: as the fused chunk kernel (a whole padded 64-token chunk per sequence and head,
    in waves of 132 blocks on H200) more than the 8-token verify; as the eager decomposition
    (`fused_gdn_chunk: false`) far more."""
    import dataclasses

    from codesign.sim.cost import CostOptions

    st = stepper("qwen3.5-35b-a3b")
    eager = dataclasses.replace(stepper("qwen3.5-35b-a3b"), cost=CostOptions(fused_gdn_chunk=False))
    n, cached = 16, 1000

    def la(shape, s=st):
        return s.step(shape).breakdown["block"]["linear_attention"]

    verify = StepShape.verify(n, cached, 1)
    assert la(StepShape.decode(n, cached + 2)) < la(verify) < la(StepShape.decode(2 * n, cached + 2))
    chunked = StepShape.prefill(n, 12, cached)  # beyond the recurrent path's 8 tokens: chunked
    verify7 = StepShape.verify(n, cached, 7)
    assert la(verify7) < la(chunked) < 2 * la(verify7)
    assert la(chunked, eager) > 3 * la(verify7, eager)


def test_validate_runs_server_rows(tmp_path):
    """A server row of a validation file is simulated (its SLO search) and compared like any row."""
    from codesign.commands.validate import validate_file

    f = tmp_path / "v.yaml"
    f.write_text("- name: s\n  hardware: h200\n  chips: 1\n  model: qwen3-8b\n  parallel: {tp: 1}\n"
                 "  workload: {mode: server, requests: 60, input_tokens: 256, output_tokens: 32}\n"
                 "  slo: {ttft_s: 0.5, tpot_s: 0.02}\n  measured: {output_tokens_per_s: 1000}\n")
    (row,) = validate_file(str(f))
    assert row.status == "ok" and row.predicted > 0
    assert row.error == pytest.approx((row.predicted - 1000) / 1000)  # a fraction


def test_validate_compares_every_metric_of_a_benchmark_client_row(tmp_path, st8):
    """A `vllm bench serve`-style row (3 requests, one outstanding at a time) compared on throughput,
    mean TTFT, mean and median TPOT; each prediction against a hand calculation from the core's
    exact steps: alone on the engine, a request's TTFT is its prompt's step, its TPOT the mean of
    its decode steps at cached lengths 256..263."""
    from codesign.commands.validate import validate_file

    f = tmp_path / "v.yaml"
    f.write_text("- name: client\n  hardware: h200\n  chips: 1\n  model: qwen3-8b\n  parallel: {tp: 1}\n"
                 f"  precision: {json.dumps(PREC)}\n"
                 "  workload: {mode: server, requests: 3, concurrency: 1, input_tokens: 256, output_tokens: 9,\n"
                 "             step_model: {exact: true}}\n"
                 "  measured: {output_tokens_per_s: 100, ttft_s: 0.01, tpot_s: 0.005, tpot_p50_s: 0.005,\n"
                 "             e2e_s: 0.05, requests_per_s: 20}\n")
    rows = validate_file(str(f))
    assert [r.metric for r in rows] == ["output_tokens_per_s", "requests_per_s", "tpot_s", "ttft_s", "tpot_p50_s",
                                        "e2e_s"]
    assert all(r.status == "ok" and r.name == "client" for r in rows)
    got = {r.metric: r.predicted for r in rows}
    ttft = st8.step(StepShape.prefill(1, 256, 0)).time_s
    decodes = [st8.step(StepShape.decode(1, kv)).time_s for kv in range(256, 264)]
    tpot = sum(decodes) / 8
    assert got["ttft_s"] == pytest.approx(ttft, rel=1e-6)
    assert got["tpot_s"] == pytest.approx(tpot, rel=1e-4) and got["tpot_p50_s"] == pytest.approx(tpot, rel=1e-4)
    assert got["output_tokens_per_s"] == pytest.approx(27 / (3 * (ttft + sum(decodes))), rel=1e-4)
    assert got["e2e_s"] == pytest.approx(ttft + sum(decodes), rel=1e-4)  # each request alone, start to finish
    assert got["requests_per_s"] == pytest.approx(1 / (ttft + sum(decodes)), rel=1e-4)


def test_request_stream_metrics_of_a_steady_state_row_are_reported_not_predicted(tmp_path):
    from codesign.commands.validate import mape, validate_file

    f = tmp_path / "v.yaml"
    f.write_text("- name: b\n  hardware: h200\n  chips: 1\n  model: qwen3-8b\n  parallel: {tp: 1}\n"
                 "  workload: {mode: batch, concurrency: 4, input_tokens: 256, output_tokens: 16}\n"
                 "  measured: {tpot_s: 0.005, e2e_s: 1.0}\n")
    tpot, e2e = validate_file(str(f))
    assert tpot.status == "ok" and tpot.predicted > 0
    assert e2e.predicted is None and e2e.status == "not predicted: e2e_s needs workload.mode 'server' (a request stream)"
    assert mape([tpot, e2e]) == pytest.approx(abs(tpot.error))


def test_validate_compares_an_slo_row_by_its_sustained_throughput(tmp_path):
    """An SLO-search row: its throughput is the rate found x mean output tokens (what a long run at
    that stable rate completes); the finite run's tokens / duration is lower by its drain. A stream
    at a rate of the workload's own is compared by its run's figure (it may exceed capacity)."""
    from codesign.commands.validate import validate_file

    f = tmp_path / "v.yaml"
    f.write_text("- name: s\n  hardware: h200\n  chips: 1\n  model: qwen3-8b\n  parallel: {tp: 1}\n"
                 "  workload: {mode: server, requests: 60, input_tokens: 256, output_tokens: 32}\n"
                 "  slo: {ttft_s: 0.5, tpot_s: 0.02}\n  measured: {output_tokens_per_s: 1000}\n")
    (row,) = validate_file(str(f))
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1}, slo={"ttft_s": 0.5, "tpot_s": 0.02},
                       workload={"mode": "server", "requests": 60, "input_tokens": 256, "output_tokens": 32})
    assert row.predicted == pytest.approx(r.serving["rate_per_s"] * 32, rel=1e-12)
    if r.serving["rate_at_offline_ceiling"]:  # the SLO did not bind: the rate is the offline one
        assert r.serving["rate_per_s"] == pytest.approx(r.serving["offline_request_rate_per_s"], rel=1e-12)
    assert r.output_tokens_per_s < row.predicted <= r.serving["offline_output_tokens_per_s"] * (1 + 1e-12)
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1},
                       workload={"mode": "server", "rate_per_s": 4, "requests": 40, "input_tokens": 256, "output_tokens": 32})
    assert "sustained_output_tokens_per_s" not in r.serving


def test_measured_latency_fields_are_validated(tmp_path):
    from codesign.scenario import load_scenarios

    f = tmp_path / "v.yaml"
    f.write_text("name: s\nhardware: h200\nmodel: qwen3-8b\nmeasured: {tpot_p50_s: -1}\n")
    with pytest.raises(CodesignError, match=r"v\.yaml: measured\.tpot_p50_s: Input should be greater than 0"):
        load_scenarios(f)


def test_a_prompt_above_the_budget_without_chunked_prefill_is_an_infeasible_row():
    wl = {"mode": "server", "requests": 4, "input_tokens": 5000, "output_tokens": 8,
          "scheduler": {"max_num_batched_tokens": 4096, "max_num_seqs": 64, "chunked_prefill": False}}
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1}, workload=wl)
    assert not r.feasible
    assert "5000 input tokens, above workload.scheduler.max_num_batched_tokens = 4096, and chunked_prefill is false" in r.reason
    wl["scheduler"]["chunked_prefill"] = True  # chunked, the same prompt runs
    (r,) = cs.simulate("h200", "qwen3-8b", chips=1, plan={"tp": 1}, workload=wl)
    assert r.feasible


def test_a_lax_slo_stops_at_the_offline_rate(st8):
    """Above the rate the engine sustains offline a stream is unstable: a lax SLO that a short run
    would still meet there reports the offline request rate, flagged as the ceiling."""
    wl = Workload(mode="server", requests=40, input_tokens=256, output_tokens=16)
    pt = S.serving_point(st8, wl)
    m, extra, reason = S.serve(pt, wl, SLO(ttft_s=100.0, tpot_s=10.0))
    assert reason is None and extra["rate_at_offline_ceiling"] is True
    assert extra["rate_per_s"] == pytest.approx(extra["offline_request_rate_per_s"], rel=1e-12)
    assert extra["sustained_output_tokens_per_s"] == pytest.approx(extra["rate_per_s"] * 16, rel=1e-12)
    assert extra["search_runs"] == 3  # the lowest rate, the ceiling, the check at 1.1x


def test_validate_reports_a_refused_scenario_and_runs_the_others(tmp_path, capsys):
    """A scenario the simulator refuses (here an option server mode does not support) is reported on
    its own rows with the error, outside the MAPE; the other rows still run; the command exits 1."""
    import argparse

    from codesign.commands.validate import mape, run, validate_file

    good = ("- name: good\n  hardware: h200\n  chips: 1\n  model: qwen3-8b\n  parallel: {tp: 1}\n"
            "  workload: {mode: decode, input_tokens: 1024}\n  measured: {output_tokens_per_s: 1000}\n")
    bad = ("- name: bad\n  hardware: h200\n  chips: 2\n  model: qwen3-8b\n  parallel: {pp: 2}\n"
           "  mapping: {pipeline_microbatches: true}\n"
           "  workload: {mode: server, requests: 10, input_tokens: 256, output_tokens: 8}\n"
           "  measured: {output_tokens_per_s: 100, ttft_s: 0.1}\n")
    f = tmp_path / "v.yaml"
    f.write_text(bad + good)
    rows = validate_file(str(f))
    assert [(r.name, r.metric) for r in rows] == [("bad", "output_tokens_per_s"), ("bad", "ttft_s"),
                                                  ("good", "output_tokens_per_s")]
    assert all(r.status.startswith("refused: ") and "pipeline_microbatches" in r.status for r in rows[:2])
    assert rows[2].status == "ok" and mape(rows) == pytest.approx(abs(rows[2].error))
    assert run(argparse.Namespace(kernels=False, file=str(f), json=False)) == 1
    assert "1 scenario(s) refused, not in the MAPE: bad" in capsys.readouterr().out
