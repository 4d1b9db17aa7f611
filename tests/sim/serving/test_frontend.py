"""The request path in front of the engine (`workload.frontend`) against hand calculations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from codesign.errors import CodesignError
from codesign.scenario import parse_scenarios
from codesign.sim.serving.arrivals import Request, RequestStream, burst_stream
from codesign.sim.serving.config import SchedulerConfig
from codesign.sim.serving.frontend import Frontend, FrontendConfig, frontend_config
from codesign.sim.serving.metrics import summarise
from codesign.sim.serving.scheduler import run_stream
from tests.sim.serving.helpers import A, B, capacity, step_time


def _through(n: int, cfg: FrontendConfig) -> list[float]:
    """When each of `n` requests sent at t = 0 leaves the frontend."""
    env = simpy.Environment()
    front, out = Frontend(env, cfg), [math.nan] * n

    def req(i: int):
        yield from front.through()
        out[i] = env.now

    for i in range(n):
        env.process(req(i))
    env.run()
    return out


def test_a_burst_leaves_one_process_at_k_times_the_cost():
    p = 0.009
    assert _through(5, FrontendConfig(per_request_s=p)) == pytest.approx([k * p for k in range(1, 6)], rel=1e-12)
    # the fixed latency is not shared: every request pays it once, before the serial part
    assert _through(3, FrontendConfig(latency_s=0.047, per_request_s=p)) == pytest.approx(
        [0.047 + k * p for k in range(1, 4)], rel=1e-12)
    # two API-server processes take two requests at a time: ceil(k / 2) x p
    assert _through(5, FrontendConfig(per_request_s=p, processes=2)) == pytest.approx(
        [math.ceil(k / 2) * p for k in range(1, 6)], rel=1e-12)
    assert FrontendConfig(per_request_s=0.004, processes=2).max_rate_per_s == pytest.approx(500.0)


def test_burst_reaches_the_scheduler_at_k_times_p():
    # steps (~10 ms) much shorter than the frontend's 1 s: each request is scheduled the moment it
    # arrives at an idle engine, i.e. at k x p after it was sent, and its TTFT is that plus one step
    p, n, prompt = 1.0, 4, 100
    s = burst_stream(n, prompt, 3, seed=0)
    rec = run_stream(s, SchedulerConfig(), capacity(), step_time, frontend=FrontendConfig(per_request_s=p))
    assert np.array_equal(rec.sent, np.zeros(n))  # sent by the client at t = 0, before the frontend
    assert rec.admitted == pytest.approx([k * p for k in range(1, n + 1)], rel=1e-12)
    assert rec.first_token - rec.sent == pytest.approx([k * p + A + B * prompt for k in range(1, n + 1)], rel=1e-12)


def test_ttft_floor_added_exactly_and_tpot_unchanged():
    stream = RequestStream("burst", (Request(0, 0.0, 2000, 6),))
    base = summarise(run_stream(stream, SchedulerConfig(), capacity(), step_time), np.array([2000]))
    front = FrontendConfig(latency_s=0.047, per_request_s=0.002)
    m = summarise(run_stream(stream, SchedulerConfig(), capacity(), step_time, frontend=front), np.array([2000]))
    assert base.ttft_s["mean"] == pytest.approx(A + B * 2000, rel=1e-12)
    assert m.ttft_s["mean"] == pytest.approx(base.ttft_s["mean"] + 0.049, rel=1e-12)
    assert m.tpot_s["mean"] == pytest.approx(base.tpot_s["mean"], rel=1e-12)


def test_a_client_limit_waits_for_the_frontend_too():
    # one at a time: each request's cycle is latency + one prefill step + 2 decode steps
    s = burst_stream(3, 100, 3, seed=0, concurrency=1)
    rec = run_stream(s, SchedulerConfig(), capacity(), step_time, frontend=FrontendConfig(latency_s=0.5))
    gaps = np.diff(rec.sent)
    assert gaps == pytest.approx(rec.finish[:2] - rec.sent[:2], rel=1e-12)
    assert rec.first_token - rec.sent == pytest.approx([0.5 + A + B * 100] * 3, rel=1e-12)


def test_unset_or_zero_frontend_changes_nothing():
    s = burst_stream(30, 500, 20, seed=3)
    base = run_stream(s, SchedulerConfig(), capacity(), step_time)
    for f in (None, FrontendConfig(), frontend_config({"latency_s": 0, "processes": 4})):
        rec = run_stream(s, SchedulerConfig(), capacity(), step_time, frontend=f)
        assert np.array_equal(rec.first_token, base.first_token) and np.array_equal(rec.finish, base.finish)
    assert frontend_config({}) is None and frontend_config({"per_request_s": 0.0}) is None


def _scenario(**workload):
    wl = {"mode": "server", "input_tokens": 128, "output_tokens": 4, "requests": 8, **workload}
    return {"name": "x", "hardware": "h100", "model": "qwen3-8b", "workload": wl}


@pytest.mark.parametrize("front, msg", [
    ({"latency_s": -0.1}, "s.yaml: workload.frontend: latency_s: .*greater than or equal to 0"),
    ({"per_request_s": "fast"}, "workload.frontend: per_request_s: .*valid number"),
    ({"processes": 0}, "workload.frontend: processes: .*greater than 0"),
    ({"latency": 0.05}, "workload.frontend: latency: Extra inputs"),
])
def test_bad_frontend_refused_in_one_line(front, msg):
    with pytest.raises(CodesignError, match=msg) as e:
        parse_scenarios(_scenario(frontend=front), "s.yaml")
    assert "\n" not in str(e.value)


def test_frontend_outside_server_mode_or_with_disaggregation_refused():
    with pytest.raises(CodesignError, match="workload.frontend: only acts in mode 'server'"):
        parse_scenarios({**_scenario(frontend={"latency_s": 0.05}), "workload": {"mode": "offline",
                                                                                 "frontend": {"latency_s": 0.05}}},
                        "s.yaml")
    dis = {"prefill": {"chips": 1}, "decode": {"chips": 1}}
    with pytest.raises(CodesignError, match="workload.frontend: not yet supported with workload.disaggregation"):
        parse_scenarios(_scenario(frontend={"latency_s": 0.05}, disaggregation=dis), "s.yaml")


def test_a_server_row_carries_the_floor_exactly():
    from codesign.sim import simulate_scenario

    def row(**front):
        (s,) = parse_scenarios(_scenario(concurrency=1, requests=3, **({"frontend": front} if front else {})), "s.yaml")
        (r,) = simulate_scenario(s)
        return r

    base, with_front = row(), row(latency_s=0.047, per_request_s=0.004, processes=2)
    assert with_front.ttft_s["mean"] == pytest.approx(base.ttft_s["mean"] + 0.051, rel=1e-9)
    assert with_front.tpot_s["mean"] == pytest.approx(base.tpot_s["mean"], rel=1e-12)
    assert with_front.serving["frontend"] == {"latency_s": 0.047, "per_request_s": 0.004, "processes": 2,
                                              "discipline": "fifo", "max_rate_per_s": pytest.approx(500.0)}
    assert "frontend" not in base.serving


def _through_at(times: list[float], cfg: FrontendConfig) -> list[float]:
    """When requests sent at `times` leave the frontend."""
    env = simpy.Environment()
    front, out = Frontend(env, cfg), [math.nan] * len(times)

    def req(i: int, at: float):
        yield env.timeout(at)
        yield from front.through()
        out[i] = env.now

    for i, at in enumerate(times):
        env.process(req(i, at))
    env.run()
    return out


def test_shared_frontend_serves_a_burst_together():
    p = 0.009
    # processor sharing: five requests sent at once each get a fifth of the process, all leave at 5p
    assert _through(5, FrontendConfig(per_request_s=p, discipline="shared")) == pytest.approx([5 * p] * 5, rel=1e-12)
    # two processes: each request at rate 2/5 until all leave, at 5p / 2; the latency comes first
    assert _through(5, FrontendConfig(latency_s=0.047, per_request_s=p, processes=2, discipline="shared")) == \
        pytest.approx([0.047 + 2.5 * p] * 5, rel=1e-12)
    # staggered, by hand (1 s each): the first alone for 0.5 s, then both at half rate; the first's
    # remaining 0.5 s of work takes 1 s (leaves at 1.5), the second has had 0.5 then and runs alone
    # (leaves at 2.0); the third, sent at 3, finds the process idle (leaves at 4.0)
    assert _through_at([0.0, 0.5, 3.0], FrontendConfig(per_request_s=1.0, discipline="shared")) == \
        pytest.approx([1.5, 2.0, 4.0], rel=1e-12)
    assert _through_at([0.0, 0.5, 3.0], FrontendConfig(per_request_s=1.0)) == pytest.approx([1.0, 2.0, 4.0], rel=1e-12)


def test_shared_frontend_hands_a_burst_to_the_scheduler_at_once():
    # 4 requests of 100 tokens through a shared 1 s frontend: all reach the idle engine at 4 s and
    # are prefilled together in one step (400 tokens), so each TTFT is 4 s + that step
    p, n, prompt = 1.0, 4, 100
    s = burst_stream(n, prompt, 3, seed=0)
    rec = run_stream(s, SchedulerConfig(), capacity(), step_time,
                     frontend=FrontendConfig(per_request_s=p, discipline="shared"))
    assert rec.admitted == pytest.approx([n * p] * n, rel=1e-12)
    assert rec.first_token - rec.sent == pytest.approx([n * p + A + B * n * prompt] * n, rel=1e-12)


def test_frontend_discipline_is_validated():
    with pytest.raises(CodesignError, match="workload.frontend: discipline: Input should be 'fifo' or 'shared'"):
        frontend_config({"per_request_s": 0.01, "discipline": "lifo"})
