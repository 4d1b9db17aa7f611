"""The SLO search's ceiling: the engine's **steady-state offline throughput** (the saturated-window rule).

A finite offline run (every request sent at t = 0) ends in a drain: once the queue is empty the
running batch shrinks request by request, and with spread-out lengths (lognormal, cv ~0.8, as the
MLPerf data sets have) the last requests run almost alone for a long time. Its requests / duration
is then far below what the engine sustains while it is kept full (measured: 24% below for 400
requests of Qwen3-8B on one H200 at 2K / 256 tokens, cv 0.8). A server stream at a rate between the
two is stable, so that figure must not cap the search.

**The saturated-window rule.** While requests wait in the queue, every iteration is as full as
the scheduler's limits allow (sequences, KV pages, token budget): the engine runs at its
capacity, as in a long offline run or a closed loop of endless clients. The ceiling is the
completion rate over that part of an offline run, past its warm-up:

* it starts at the completion of the first ``warmup_turnovers`` x C requests, C the most requests
  the run held running at once (one turnover of the batch: by then the batch holds requests
  admitted as others left, as in steady state, not the first fill, whose short requests all finish
  early), and ends at the completion of ``window_turnovers`` x C more, or of as many whole
  batches as hold ``window_requests`` if that is more (a batch of few requests turns over fast:
  its window still averages over that many requests' lengths);
* it must end while requests still wait (at or before the last first admission; after it the
  queue is empty and the run drains);
* throughput = the window's completions / its length, requests per
  second; the output tokens per second reported beside it are that rate x the mean output tokens
  of the workload's requests (what the search's streams carry), so server throughput at any rate up
  to the ceiling is at most it.

Bounded by completion counts, not times, the window holds whole turnovers of the batch: with fixed
lengths the batch turns over in cohorts and the completion rate oscillates with a period of about
one turnover (by +-50% on Qwen3-8B at 2K / 256), which a window cut at arbitrary times would
sample by phase (measured: +5% at 4.5 turnovers), while C completions span about one period
whatever the phase.
The offline run sends enough requests of the workload's distributions and seed that the queue
cannot empty first (the window's last completion + 2.5 batches at the scheduler's running limit,
and at least the workload's `requests`), and stops half a batch after the window's last
completion: the drain is never simulated, nor more of the saturated part than the window needs
(if the window ends after the last admission, C having grown late, the run is repeated to stop a
window later). Fixed lengths work the same way.
`serving.offline_window` in the row reports the run measured and its window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codesign.errors import CodesignError, format_validation_error

if TYPE_CHECKING:  # the scenario validates `workload.slo_search` here without importing the simulator
    from codesign.sim.serving.scheduler import Recorder

MAX_REQUESTS = 1 << 20  # the largest offline run the rule sizes (beyond: an error naming it)


class CeilingConfig(BaseModel):
    """The saturated-window rule's knobs (`workload.slo_search:` in a scenario)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_turnovers: float = Field(default=4.0, ge=1.0)  # completions in the window, in batches C
    window_requests: int = Field(default=1000, ge=1)  # and at least this many
    warmup_turnovers: float = Field(default=1.0, ge=0.0)  # completions before it, in batches C


def ceiling_config(data: dict[str, Any] | CeilingConfig | None, source: str = "workload.slo_search") -> CeilingConfig:
    if isinstance(data, CeilingConfig):
        return data
    try:
        return CeilingConfig.model_validate(data or {})
    except ValidationError as e:
        raise CodesignError(format_validation_error(source, e)) from None


@dataclass(frozen=True)
class Window:
    """The saturated window of one offline run."""

    start_s: float  # the warm-up's last completion
    end_s: float  # the window's last completion
    completions: int  # completions in (start, end] (0: no window while saturated)
    running: int  # C: the most requests running at once

    @property
    def request_rate_per_s(self) -> float:
        return self.completions / (self.end_s - self.start_s) if self.end_s > self.start_s else 0.0

    @property
    def turnovers(self) -> float:
        return self.completions / self.running if self.running else 0.0


def window_counts(cfg: CeilingConfig, running: int) -> tuple[int, int]:
    """The completions (a, b) that open and close the window when C = `running`: a after the
    warm-up, b after max(window_turnovers, the whole batches that hold window_requests) more."""
    a = int(math.ceil(cfg.warmup_turnovers * running))
    if running <= 0:
        return a, a
    turns = max(cfg.window_turnovers, math.ceil(cfg.window_requests / running))
    return a, a + int(math.ceil(turns * running))


def saturated_window(rec: "Recorder", cfg: CeilingConfig) -> Window:
    """The window of the rule (see module docstring) in an offline run's records; no completions
    when the run has none that long while saturated."""
    running = max(rec.step_running, default=0)
    finish = np.sort(rec.finish[np.isfinite(rec.finish)])
    last_admission = float(np.nanmax(rec.admitted)) if np.isfinite(rec.admitted).any() else 0.0
    a, b = window_counts(cfg, running)
    if running == 0 or b > len(finish) or b <= a:
        return Window(0.0, 0.0, 0, running)
    start = float(finish[a - 1]) if a > 0 else 0.0
    end = float(finish[b - 1])
    if end > last_admission or end <= start:  # the queue had emptied: the run was draining
        return Window(start, end, 0, running)
    return Window(start, end, b - a, running)


@dataclass(frozen=True)
class Ceiling:
    """The steady-state offline throughput and where it was measured."""

    request_rate_per_s: float
    output_tokens_per_s: float
    window: Window
    requests: int  # sent in the offline run measured (it stops once its window is long enough)
    runs: int  # offline runs simulated

    def to_dict(self) -> dict[str, Any]:
        w = self.window
        return {"rule": "saturated_window", "requests": self.requests, "runs": self.runs,
                "window_s": [w.start_s, w.end_s], "completions": w.completions, "running": w.running,
                "turnovers": w.turnovers}


def steady_state(run: Callable[[int, Callable[[int], float]], "Recorder"], n: int, mean_output: float,
                 cfg: CeilingConfig, max_running: int) -> Ceiling:
    """The ceiling from an offline run `run(requests, stop)`: that many requests of the workload's
    distributions and seed all sent at t = 0, stopped once stop(C) have finished while others
    still wait (`run_stream`'s stop_saturated): the window's last completion and half a batch
    more. The run sends enough that the queue never empties first (`max_running`: the scheduler's
    limit on running requests, C's bound), and at least the workload's `n`; if its window still
    ends after the last admission (C grew late), it is run again to stop a window later."""
    later, runs = 0.5, 0
    while True:
        def stop(c: int, later: float = later) -> float:
            return window_counts(cfg, c)[1] + later * c

        size = max(n, int(math.ceil(stop(max_running) + 2 * max_running)))
        if size > MAX_REQUESTS:
            raise CodesignError(f"slo search: the offline run's saturated window (workload.slo_search) needs more than "
                                f"{MAX_REQUESTS} requests (the scheduler runs up to {max_running} at once)")
        rec, runs = run(size, stop), runs + 1
        w = saturated_window(rec, cfg)
        if w.completions > 0:
            break
        later += cfg.window_turnovers
    rate = w.request_rate_per_s
    return Ceiling(rate, rate * mean_output, w, size, runs)


__all__ = ["CeilingConfig", "ceiling_config", "Ceiling", "Window", "saturated_window", "window_counts", "steady_state", "MAX_REQUESTS"]
