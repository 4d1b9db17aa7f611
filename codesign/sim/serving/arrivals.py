"""Request streams: who sends what, when.

Four kinds, as serving benchmarks drive a server:

* ``poisson`` -- N requests with exponential inter-arrival gaps at ``rate_per_s`` (MLPerf Server,
  `vllm bench serve --request-rate R`);
* ``constant`` -- N requests at fixed intervals of 1 / ``rate_per_s`` (`workload.arrival: constant`;
  guidellm `--profile constant --rate R`, which sends request i at i / R after its start);
* ``burst`` -- N requests all sent at t = 0, optionally with at most ``concurrency`` outstanding
  at a time (`vllm bench serve --max-concurrency C`, `trtllm-bench`, MLPerf Offline): the client
  sends the next request when one completes;
* ``trace`` -- replay of a file, one request per line: ``arrival_s, input_tokens, output_tokens``
  (commas or whitespace; ``#`` comments and blank lines skipped; one optional header line).

Lengths are fixed or drawn from a named distribution (`TokenDist.dist`) with mean ``mean`` and
coefficient of variation ``cv`` (defaults in `DEFAULT_CV`), rounded to integers and clipped to
[1, max_tokens] (server mode passes the model's maximum length; a request whose input plus output
still exceeds it is an infeasible row naming it). Every draw comes from a numpy Generator seeded by ``workload.seed`` with one
independent stream per quantity (gaps, input lengths, output lengths), so changing the rate leaves
the lengths unchanged and scales the arrival times exactly (common random numbers: what the SLO
search bisects over).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from codesign.errors import CodesignError
from codesign.scenario import TokenDist

Kind = Literal["poisson", "constant", "burst", "trace"]

# Coefficient of variation when `cv` is not given (named assumptions, overridable per field):
# uniform over [1, 2 mean - 1] (`vllm bench serve --random-range-ratio 1`, cv = 1/sqrt(3));
# normal with std = mean / 4; lognormal with cv 1 (the heavy tail of chat output lengths);
# exponential has cv 1 by definition.
DEFAULT_CV = {"uniform": 1 / math.sqrt(3), "normal": 0.25, "lognormal": 1.0, "exponential": 1.0}

_STREAM_GAPS, _STREAM_INPUT, _STREAM_OUTPUT = 0, 1, 2


@dataclass(frozen=True)
class Request:
    """One request: id, when it is sent (seconds; burst runs: 0), prompt and output tokens."""

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class RequestStream:
    """The requests of one run and how the client sends them."""

    kind: Kind
    requests: tuple[Request, ...]
    rate_per_s: float | None = None
    concurrency: int | None = None  # the client's limit on outstanding requests (None: no limit)

    @property
    def n(self) -> int:
        return len(self.requests)


def rng(seed: int, stream: int) -> np.random.Generator:
    """The independent generator of one quantity of one seeded run."""
    return np.random.default_rng([seed, stream])


def draw_lengths(spec: int | TokenDist, n: int, gen: np.random.Generator, max_tokens: int | None = None) -> np.ndarray:
    """`n` token counts: fixed, or drawn from `spec.dist` with mean `spec.mean` and cv `spec.cv`."""
    if isinstance(spec, int) or spec.dist == "fixed":
        mean = spec if isinstance(spec, int) else spec.mean
        if not isinstance(spec, int) and spec.cv is not None:
            raise CodesignError(f"token distribution 'fixed': cv: expected none, found {spec.cv}")
        x = np.full(n, float(mean))
    else:
        m, cv = float(spec.mean), spec.cv if spec.cv is not None else DEFAULT_CV[spec.dist]
        if spec.dist == "exponential":
            if spec.cv is not None and not math.isclose(spec.cv, 1.0):
                raise CodesignError(f"token distribution 'exponential': cv is 1 by definition, found {spec.cv}")
            x = gen.exponential(m, n)
        elif spec.dist == "uniform":
            half = math.sqrt(3.0) * cv * m
            x = gen.uniform(m - half, m + half, n)
        elif spec.dist == "normal":
            x = gen.normal(m, cv * m, n)
        else:  # lognormal with the given mean and cv
            s2 = math.log1p(cv * cv)
            x = gen.lognormal(math.log(m) - s2 / 2, math.sqrt(s2), n)
    x = np.clip(np.rint(x), 1, max_tokens if max_tokens else None)
    return x.astype(np.int64)


def _make(kind: Kind, times: np.ndarray, inp: np.ndarray, out: np.ndarray, rate: float | None,
          concurrency: int | None) -> RequestStream:
    reqs = tuple(Request(i, float(t), int(a), int(b)) for i, (t, a, b) in enumerate(zip(times, inp, out)))
    return RequestStream(kind, reqs, rate, concurrency)


def _check_rate(rate_per_s: float) -> None:
    if not (isinstance(rate_per_s, (int, float)) and rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise CodesignError(f"workload.rate_per_s: expected a positive request rate, found {rate_per_s!r}")


def _timed(kind: Kind, times: np.ndarray, rate_per_s: float, input_tokens: int | TokenDist,
           output_tokens: int | TokenDist, seed: int, max_tokens: int | None, concurrency: int | None) -> RequestStream:
    """A stream sent at `times` at a nominal `rate_per_s`, its lengths drawn from the seed's streams."""
    n = len(times)
    inp = draw_lengths(input_tokens, n, rng(seed, _STREAM_INPUT), max_tokens)
    out = draw_lengths(output_tokens, n, rng(seed, _STREAM_OUTPUT), max_tokens)
    return _make(kind, times, inp, out, float(rate_per_s), concurrency)


def poisson_stream(n: int, rate_per_s: float, input_tokens: int | TokenDist, output_tokens: int | TokenDist,
                   seed: int = 0, max_tokens: int | None = None, concurrency: int | None = None) -> RequestStream:
    """`n` requests arriving as a Poisson process at `rate_per_s` (first arrival after one gap)."""
    _check_rate(rate_per_s)
    _check_n(n)
    times = np.cumsum(rng(seed, _STREAM_GAPS).exponential(1.0, n)) / float(rate_per_s)
    return _timed("poisson", times, rate_per_s, input_tokens, output_tokens, seed, max_tokens, concurrency)


def constant_stream(n: int, rate_per_s: float, input_tokens: int | TokenDist, output_tokens: int | TokenDist,
                    seed: int = 0, max_tokens: int | None = None, concurrency: int | None = None) -> RequestStream:
    """`n` requests at fixed intervals of 1 / `rate_per_s`, the first after one interval (as the
    Poisson stream's first arrival after one gap, and guidellm's constant profile: request i at
    start + i / rate for i = 1..n). Lengths are the Poisson stream's draws at the same seed."""
    _check_rate(rate_per_s)
    _check_n(n)
    times = np.arange(1, n + 1, dtype=np.float64) / float(rate_per_s)
    return _timed("constant", times, rate_per_s, input_tokens, output_tokens, seed, max_tokens, concurrency)


def burst_stream(n: int, input_tokens: int | TokenDist, output_tokens: int | TokenDist, seed: int = 0,
                 max_tokens: int | None = None, concurrency: int | None = None) -> RequestStream:
    """`n` requests all sent at t = 0, at most `concurrency` outstanding (None: all at once)."""
    _check_n(n)
    inp = draw_lengths(input_tokens, n, rng(seed, _STREAM_INPUT), max_tokens)
    out = draw_lengths(output_tokens, n, rng(seed, _STREAM_OUTPUT), max_tokens)
    return _make("burst", np.zeros(n), inp, out, None, concurrency)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CodesignError(f"workload.requests: expected a positive number of requests, found {n!r}")


_SPLIT = re.compile(r"[,\s]+")


def load_trace(path: str | Path, concurrency: int | None = None) -> RequestStream:
    """Replay a trace file (see module docstring). A malformed line is an error naming the line."""
    p = Path(path)
    if not p.is_file():
        raise CodesignError(f"{p}: no such trace file")
    rows: list[tuple[float, int, int]] = []
    header_allowed = True
    for lineno, raw in enumerate(p.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [x for x in _SPLIT.split(line) if x]
        parsed = _parse_row(parts)
        if parsed is None:
            if header_allowed and not any(_is_number(x) for x in parts):
                header_allowed = False
                continue
            raise CodesignError(f"{p}:{lineno}: expected 'arrival_s, input_tokens, output_tokens' (a time >= 0 "
                                f"and two positive integers), found {raw.strip()!r}")
        header_allowed = False
        if rows and parsed[0] < rows[-1][0]:
            raise CodesignError(f"{p}:{lineno}: arrival_s: expected times in non-decreasing order, found "
                                f"{parsed[0]:g} after {rows[-1][0]:g}")
        rows.append(parsed)
    if not rows:
        raise CodesignError(f"{p}: empty trace; expected one 'arrival_s, input_tokens, output_tokens' line per request")
    t = np.array([r[0] for r in rows])
    return _make("trace", t, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), None, concurrency)


def _is_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _parse_row(parts: list[str]) -> tuple[float, int, int] | None:
    if len(parts) != 3:
        return None
    try:
        t = float(parts[0])
        a, b = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not math.isfinite(t) or t < 0 or a < 1 or b < 1:
        return None
    return t, a, b


__all__ = ["Request", "RequestStream", "poisson_stream", "constant_stream", "burst_stream", "load_trace", "draw_lengths", "DEFAULT_CV", "rng"]
