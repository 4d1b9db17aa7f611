"""Request streams: Poisson gaps, seeded lengths, bursts, trace replay and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.scenario import TokenDist
from codesign.sim.serving.arrivals import (burst_stream, constant_stream, draw_lengths, load_trace, poisson_stream,
                                           rng)


def test_poisson_gaps_have_the_rate_and_scale_exactly():
    s = poisson_stream(20_000, 4.0, 100, 10, seed=3)
    t = np.array([r.arrival_s for r in s.requests])
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() == pytest.approx(0.25, rel=0.03)  # exponential: std = mean
    fast = poisson_stream(20_000, 8.0, 100, 10, seed=3)
    assert np.allclose([r.arrival_s for r in fast.requests], t / 2, rtol=1e-12)  # common random numbers
    again = poisson_stream(20_000, 4.0, 100, 10, seed=3)
    assert again == s  # deterministic
    assert poisson_stream(100, 4.0, 100, 10, seed=4).requests[0].arrival_s != s.requests[0].arrival_s


def test_constant_stream_sends_request_i_at_i_over_the_rate():
    """guidellm's constant profile: request i (1..n) at start + i / rate; lengths as the Poisson
    stream's at the same seed (one independent generator per quantity)."""
    lengths = TokenDist(mean=1000, dist="lognormal")
    s = constant_stream(100, 4.0, lengths, 10, seed=3)
    assert s.kind == "constant" and s.rate_per_s == 4.0 and s.n == 100
    assert [r.arrival_s for r in s.requests] == [(i + 1) / 4.0 for i in range(100)]
    p = poisson_stream(100, 4.0, lengths, 10, seed=3)
    assert [r.input_tokens for r in s.requests] == [r.input_tokens for r in p.requests]
    assert constant_stream(100, 4.0, lengths, 10, seed=3) == s  # deterministic
    with pytest.raises(CodesignError, match="workload.rate_per_s: expected a positive request rate"):
        constant_stream(10, 0.0, 100, 10)


@pytest.mark.parametrize("dist,cv", [("uniform", None), ("normal", 0.2), ("lognormal", None), ("lognormal", 0.5),
                                     ("exponential", None)])
def test_length_distributions_have_their_mean_and_cv(dist, cv):
    x = draw_lengths(TokenDist(mean=1000, dist=dist, cv=cv), 40_000, rng(0, 1))
    want_cv = cv if cv is not None else {"uniform": 1 / math.sqrt(3), "lognormal": 1.0, "exponential": 1.0}[dist]
    assert x.mean() == pytest.approx(1000, rel=0.03)
    assert x.std() / x.mean() == pytest.approx(want_cv, rel=0.05)
    assert x.min() >= 1 and x.dtype == np.int64


def test_fixed_lengths_and_clipping():
    assert (draw_lengths(512, 5, rng(0, 1)) == 512).all()
    assert draw_lengths(TokenDist(mean=100, dist="lognormal", cv=3.0), 5000, rng(0, 1), max_tokens=300).max() <= 300
    with pytest.raises(CodesignError, match="exponential.*cv is 1"):
        draw_lengths(TokenDist(mean=100, dist="exponential", cv=0.5), 5, rng(0, 1))


def test_burst_stream_sends_all_at_zero():
    s = burst_stream(7, 100, TokenDist(mean=50, dist="uniform"), seed=1, concurrency=3)
    assert s.kind == "burst" and s.concurrency == 3 and s.n == 7
    assert all(r.arrival_s == 0.0 for r in s.requests)
    # lengths come from the same seeded streams as a Poisson run's
    p = poisson_stream(7, 1.0, 100, TokenDist(mean=50, dist="uniform"), seed=1)
    assert [r.output_tokens for r in s.requests] == [r.output_tokens for r in p.requests]


def test_bad_rates_and_counts():
    for rate in (0, -1.0, float("inf")):
        with pytest.raises(CodesignError, match="rate_per_s: expected a positive request rate"):
            poisson_stream(10, rate, 10, 10)
    with pytest.raises(CodesignError, match="requests: expected a positive number"):
        burst_stream(0, 10, 10)


def test_trace_replay(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("# a trace\narrival_s,input_tokens,output_tokens\n0.0, 100, 20\n0.5 200 30  # spaces work\n\n1.25,50,1\n")
    s = load_trace(p, concurrency=2)
    assert s.kind == "trace" and s.concurrency == 2
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in s.requests] == [(0.0, 100, 20), (0.5, 200, 30),
                                                                                     (1.25, 50, 1)]


@pytest.mark.parametrize("line,msg", [("0.5, 100", r"t\.csv:3: expected 'arrival_s, input_tokens, output_tokens'"),
                                      ("0.5, ten, 4", r"t\.csv:3: expected"),
                                      ("0.5, 100, 0", r"t\.csv:3: expected"),
                                      ("-1, 100, 3", r"t\.csv:3: expected"),
                                      ("0.1, 100, 3", r"t\.csv:3: arrival_s: expected times in non-decreasing order")])
def test_malformed_trace_line_is_named(tmp_path, line, msg):
    p = tmp_path / "t.csv"
    p.write_text(f"0.0,10,10\n0.2,10,10\n{line}\n")
    with pytest.raises(CodesignError, match=msg):
        load_trace(p)


def test_missing_and_empty_trace(tmp_path):
    with pytest.raises(CodesignError, match="no such trace file"):
        load_trace(tmp_path / "nope.csv")
    (tmp_path / "e.csv").write_text("# nothing\n")
    with pytest.raises(CodesignError, match="empty trace"):
        load_trace(tmp_path / "e.csv")
