"""Serving metrics from a run's `Recorder`, as benchmark clients report them.

Per request (`vllm bench serve` definitions): **TTFT** = first token - sent; **TPOT** = (last token
- first token) / (output tokens - 1), requests of one output token excluded; **end-to-end latency**
= finish - sent; **queueing delay** = first scheduled - sent. **ITL** (inter-token latency) is per
streamed emission: each step a sequence decodes in contributes that step's duration (weighted by
the sequences decoding in it), plus the gaps across preemptions; with MTP an emission carries
several tokens, as a streamed chunk does.

Statistics: mean, p50, p90, p99 (numpy's linear-interpolation percentiles; weighted percentiles
for ITL). Throughput = tokens / run duration, the duration from t = 0 to the last completion.
**Goodput** (DistServe's definition): requests per second (and their output tokens per second)
that met both SLO limits individually. Series: requests running in the engine, requests in the
system (queued + running) and KV-pool use, time-weighted into at most `SERIES_POINTS` bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codesign.sim.serving.scheduler import Recorder

SERIES_POINTS = 200
STATS = ("mean", "p50", "p90", "p99")


def stats(x: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float | None]:
    """{mean, p50, p90, p99} of `x` (NaNs dropped; None when empty)."""
    if weights is None:
        x = x[np.isfinite(x)]
        if not len(x):
            return {k: None for k in STATS}
        p = np.percentile(x, [50, 90, 99])
        return {"mean": float(x.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}
    keep = np.isfinite(x) & (weights > 0)
    x, w = x[keep], weights[keep]
    if not len(x):
        return {k: None for k in STATS}
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    cw = np.cumsum(w) / w.sum()

    def q(p: float) -> float:
        return float(x[min(int(np.searchsorted(cw, p)), len(x) - 1)])

    return {"mean": float((x * w).sum() / w.sum()), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}


@dataclass
class ServingMetrics:
    """One run's figures (`to_dict` is the Result row's `serving` entry)."""

    requests: int
    duration_s: float
    request_rate_per_s: float  # completed requests / duration
    output_tokens_per_s: float
    input_tokens_per_s: float
    ttft_s: dict[str, float | None]
    tpot_s: dict[str, float | None]
    itl_s: dict[str, float | None]
    e2e_s: dict[str, float | None]
    queue_s: dict[str, float | None]
    mean_in_system: float  # time-averaged requests queued + running (Little's L)
    mean_running: float
    peak_running: int
    mean_kv_use: float
    peak_kv_use: float
    preemptions: int
    steps: int
    goodput_requests_per_s: float | None = None
    goodput_output_tokens_per_s: float | None = None
    series: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @property
    def littles_law_ratio(self) -> float:
        """Time-averaged requests in the system / (completion rate x mean latency): 1 when the
        series and the per-request times agree (Little's law over the run)."""
        w = self.e2e_s["mean"] or 0.0
        return self.mean_in_system / (self.request_rate_per_s * w) if w else float("nan")


def _time_weighted(end: np.ndarray, dt: np.ndarray, values: np.ndarray, duration: float) -> float:
    return float((values * dt).sum() / duration) if duration > 0 else 0.0


def _series(end: np.ndarray, dt: np.ndarray, cols: dict[str, np.ndarray], duration: float) -> dict[str, list[float]]:
    """Time-weighted means of each column in equal-time bins (at most SERIES_POINTS)."""
    if not len(end) or duration <= 0:
        return {"t_s": [], **{k: [] for k in cols}}
    bins = min(SERIES_POINTS, len(end))
    edges = np.linspace(0.0, duration, bins + 1)
    mid = end - dt / 2
    idx = np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, bins - 1)
    wsum = np.bincount(idx, weights=dt, minlength=bins)
    out: dict[str, list[float]] = {"t_s": [float(x) for x in (edges[:-1] + edges[1:]) / 2]}
    for k, v in cols.items():
        s = np.bincount(idx, weights=v * dt, minlength=bins)
        out[k] = [float(x) for x in np.where(wsum > 0, s / np.where(wsum > 0, wsum, 1), 0.0)]
    return out


def summarise(rec: Recorder, input_tokens: np.ndarray, ttft_slo: float | None = None,
              tpot_slo: float | None = None) -> ServingMetrics:
    """The metrics of a finished run (`input_tokens` per request, in request order)."""
    end = np.asarray(rec.step_end)
    count = np.asarray(rec.step_count, dtype=float)
    step_dt = np.asarray(rec.step_dt)
    dt = step_dt * count  # each entry's duration
    duration = float(np.nanmax(rec.finish)) if len(rec.finish) else 0.0
    n = len(rec.finish)
    ttft = rec.first_token - rec.sent
    out = rec.output
    multi = out > 1
    tpot = np.where(multi, (rec.finish - rec.first_token) / np.maximum(out - 1, 1), np.nan)
    e2e = rec.finish - rec.sent
    queue = rec.admitted - rec.sent
    itl_x = np.concatenate([step_dt, np.asarray(rec.resume_gaps)])
    itl_w = np.concatenate([np.asarray(rec.step_decodes, dtype=float) * count, np.ones(len(rec.resume_gaps))])
    in_sys = np.asarray(rec.step_in_system, dtype=float)
    running = np.asarray(rec.step_running, dtype=float)
    kv = np.asarray(rec.step_kv_use, dtype=float)
    # Little's L from the engine's own count of requests queued + running, integrated over time as
    # it changes (Engine._count), independent of the per-request times that give W
    mean_in_system = rec.in_system_area / duration if duration else 0.0
    m = ServingMetrics(
        requests=n, duration_s=duration, request_rate_per_s=n / duration if duration else 0.0,
        output_tokens_per_s=float(out.sum() / duration) if duration else 0.0,
        input_tokens_per_s=float(np.asarray(input_tokens).sum() / duration) if duration else 0.0,
        ttft_s=stats(ttft), tpot_s=stats(tpot), itl_s=stats(itl_x, itl_w), e2e_s=stats(e2e), queue_s=stats(queue),
        mean_in_system=mean_in_system, mean_running=_time_weighted(end, dt, running, duration),
        peak_running=int(running.max()) if len(running) else 0,
        mean_kv_use=_time_weighted(end, dt, kv, duration), peak_kv_use=float(kv.max()) if len(kv) else 0.0,
        preemptions=int(rec.preemptions.sum()), steps=int(count.sum()),
        series=_series(end, dt, {"running": running, "in_system": in_sys, "kv_use": kv}, duration),
    )
    if ttft_slo is not None or tpot_slo is not None:
        ok = np.ones(n, dtype=bool)
        if ttft_slo is not None:
            ok &= ttft <= ttft_slo
        if tpot_slo is not None:
            ok &= ~(tpot > tpot_slo)  # single-token requests have no TPOT and pass it
        m.goodput_requests_per_s = float(ok.sum() / duration) if duration else 0.0
        m.goodput_output_tokens_per_s = float(out[ok].sum() / duration) if duration else 0.0
    return m


__all__ = ["ServingMetrics", "summarise", "stats", "SERIES_POINTS"]
