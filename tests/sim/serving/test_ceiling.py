"""The SLO search's ceiling: the steady-state offline throughput (the saturated-window rule)."""

from __future__ import annotations

import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.scenario import SLO, Workload, parse_scenarios
from codesign.sim.serving import server as S
from codesign.sim.serving.arrivals import burst_stream
from codesign.sim.serving.ceiling import CeilingConfig, saturated_window
from codesign.sim.serving.scheduler import Recorder
from tests.sim.serving.test_server import stepper

SPREAD = {"dist": "lognormal", "cv": 0.8}  # MLPerf-like spread of prompt and output lengths
TOLERANCE = 0.03  # ceiling vs a long constant-concurrency run (the window's request sample: 1-2% measured)


def test_ceiling_is_the_steady_state_throughput_with_spread_out_lengths():
    """With lognormal lengths the finite offline run's drain runs at low occupancy: its requests /
    duration is ~20% below what the engine sustains. The ceiling must be the engine's steady state:
    here against a long run in which a client keeps 64 requests outstanding (the engine's
    max_num_seqs, so the batch stays full), over its 5th to 35th batch of completions."""
    st = stepper("qwen3-8b")
    seqs = 64
    wl = Workload(mode="server", requests=200, input_tokens={"mean": 512, **SPREAD},
                  output_tokens={"mean": 64, **SPREAD}, scheduler={"max_num_seqs": seqs})
    slo = SLO(ttft_s=1.0, tpot_s=0.0132)
    pt = S.serving_point(st, wl)
    m, extra, reason = S.serve(pt, wl, slo)
    assert reason is None and m is not None
    ceiling = extra["offline_request_rate_per_s"]
    win = extra["offline_window"]
    assert win["rule"] == "saturated_window" and win["running"] == seqs
    assert win["completions"] == 16 * seqs  # whole batches that hold window_requests (1000)

    # independent: a long closed-loop run at constant concurrency, tails excluded by its length
    rec = pt.record(burst_stream(40 * seqs, wl.input_tokens, wl.output_tokens, wl.seed, 40960, concurrency=seqs))
    fin = np.sort(rec.finish)
    a, b = fin[5 * seqs - 1], fin[35 * seqs - 1]
    steady = 30 * seqs / (b - a)
    assert ceiling == pytest.approx(steady, rel=TOLERANCE)
    # the finite offline run's requests / duration (the previous ceiling) is the drain's artefact
    finite = pt.run(burst_stream(wl.requests, wl.input_tokens, wl.output_tokens, wl.seed, 40960)).request_rate_per_s
    assert finite < 0.85 * steady
    # the offline run stopped once its window was long enough: no drain simulated
    assert win["completions"] < win["requests"] - win["running"]

    # the search's guarantees: the SLO binds above the finite run's rate, below the ceiling
    rate = extra["rate_per_s"]
    assert finite < rate < ceiling and not extra["rate_at_offline_ceiling"]
    assert m.ttft_s["p99"] <= slo.ttft_s and m.tpot_s["p99"] <= slo.tpot_s
    assert extra["above_rate"]["meets_slo"] is False
    mean_out = np.mean([r.output_tokens for r in S.stream_of(wl).requests])
    assert extra["offline_output_tokens_per_s"] == pytest.approx(ceiling * mean_out, rel=1e-12)
    assert m.output_tokens_per_s <= extra["sustained_output_tokens_per_s"] <= extra["offline_output_tokens_per_s"]


def _records(finish: list[float], admitted: list[float], running: list[int]) -> Recorder:
    rec = Recorder(len(finish))
    rec.finish[:], rec.admitted[:] = finish, admitted
    rec.step_running = running
    return rec


def test_saturated_window_skips_the_warm_up_and_the_drain():
    # 2 running at most; 10 requests: admitted by t = 8, completing at 1, 2, 3, 5, 6, 7, 9, 10, 11, 12
    rec = _records([1, 2, 3, 5, 6, 7, 9, 10, 11, 12], [0, 0, 1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2, 1])
    w = saturated_window(rec, CeilingConfig(warmup_turnovers=1, window_turnovers=2, window_requests=1))
    # from the 2nd completion (t = 2, one batch) to 4 more (the 6th, t = 7): 4 in 5 s
    assert (w.start_s, w.end_s, w.running, w.completions) == (2.0, 7.0, 2, 4)
    assert w.request_rate_per_s == 0.8 and w.turnovers == 2.0
    w0 = saturated_window(rec, CeilingConfig(warmup_turnovers=0, window_turnovers=2, window_requests=1))
    assert (w0.start_s, w0.end_s, w0.completions) == (0.0, 5.0, 4)
    # a window ending after the last admission (t = 8) is in the drain: none
    assert saturated_window(rec, CeilingConfig(warmup_turnovers=1, window_turnovers=3, window_requests=1)).completions == 0
    # window_requests: whole batches that hold them (5 requests: 3 batches of 2, to the 8th, t = 10: drained)
    assert saturated_window(rec, CeilingConfig(window_turnovers=1, window_requests=5)).completions == 0


def test_the_offline_run_is_sized_by_the_running_limit_and_stops_after_its_window():
    """20 requests would fit the engine at once (no saturated window): the offline run sends the
    window's end + 2.5 batches at max_num_seqs and stops half a batch after the window's end."""
    st = stepper("qwen3-8b")
    wl = Workload(mode="server", requests=20, input_tokens=256, output_tokens=16, scheduler={"max_num_seqs": 16},
                  slo_search={"window_turnovers": 2, "window_requests": 20})
    pt = S.serving_point(st, wl)
    c = S.offline_ceiling(pt, wl, S.stream_of(wl))
    # warm-up 16, window max(2, ceil(20 / 16)) = 2 batches: 32; stop at 48 + 8
    assert c.runs == 1 and c.requests == 48 + 8 + 32 and c.window.running == 16 and c.window.completions == 32
    finite = pt.run(S.stream_of(wl)).request_rate_per_s  # the 20 requests' own offline run
    assert c.request_rate_per_s > finite
    # a window of at least window_requests: whole batches that hold them
    wl = wl.model_copy(update={"slo_search": {"window_turnovers": 2, "window_requests": 100}})
    c = S.offline_ceiling(pt, wl, S.stream_of(wl))
    assert c.window.completions == 7 * 16 and c.window.turnovers == 7.0


def _scenario(**workload) -> dict:
    return {"name": "x", "hardware": "h200", "model": "qwen3-8b", "chips": 1,
            "workload": {"mode": "server", "input_tokens": 256, "output_tokens": 16, **workload},
            "slo": {"ttft_s": 1.0}}


@pytest.mark.parametrize("workload, msg", [
    ({"slo_search": {"turnovers": 3}}, "workload.slo_search"),
    ({"slo_search": {"window_turnovers": 0.5}}, "window_turnovers"),
    ({"slo_search": {"window_turnovers": 2}, "rate_per_s": 3.0}, "workload.slo_search: only acts in the SLO search"),
])
def test_bad_slo_search_fields(workload, msg):
    with pytest.raises(CodesignError, match=msg):
        parse_scenarios(_scenario(**workload), "s.yaml")
