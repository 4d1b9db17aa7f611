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

* the window ends at the last first admission (``t_q``; after it the queue holds no new request
  and the run drains);
* it starts after the warm-up (``t_w``), the completion of the first ``warmup_turnovers`` x C
  requests, C the most requests the run held running at once (one turnover of the batch: by then
  the batch holds requests admitted as others left, as in steady state, not the first fill, whose
  short requests all finish early);
* throughput = completions in (t_w, t_q] / (t_q - t_w), requests per second; the output tokens
  per second reported beside it are that rate x the mean output tokens of the workload's requests
  (what the search's streams carry), so server throughput at any rate up to the ceiling is at most
  it.

The window must hold at least ``window_turnovers`` x C completions (the batch's population at its
ends moves the count by at most about C, so the error is at most ~1 / window_turnovers and in
practice far less). The workload's own offline run is used when it is long enough; otherwise the
offline run is repeated with more requests of the same distributions and seed, (warm-up +
window + 2) x C at a time, C from the run before (doubling when the batch was not yet full),
until the window is long enough. Fixed lengths work the same way.
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

    start_s: float  # t_w: end of the warm-up
    end_s: float  # t_q: the last first admission
    completions: int  # completions in (start, end]
    running: int  # C: the most requests running at once

    @property
    def request_rate_per_s(self) -> float:
        return self.completions / (self.end_s - self.start_s) if self.end_s > self.start_s else 0.0

    @property
    def turnovers(self) -> float:
        return self.completions / self.running if self.running else 0.0


def saturated_window(rec: "Recorder", cfg: CeilingConfig) -> Window:
    """The window of the rule (see module docstring) in a finished offline run's records."""
    running = max(rec.step_running, default=0)
    finish = np.sort(rec.finish[np.isfinite(rec.finish)])
    end = float(np.nanmax(rec.admitted)) if len(rec.admitted) else 0.0
    k = int(math.ceil(cfg.warmup_turnovers * running))
    if running == 0 or k > len(finish):
        return Window(end, end, 0, running)
    start = float(finish[k - 1]) if k > 0 else 0.0
    done = int(np.searchsorted(finish, end, side="right") - np.searchsorted(finish, start, side="right"))
    return Window(start, end, max(done, 0) if end > start else 0, running)


@dataclass(frozen=True)
class Ceiling:
    """The steady-state offline throughput and where it was measured."""

    request_rate_per_s: float
    output_tokens_per_s: float
    window: Window
    requests: int  # of the offline run measured
    runs: int  # offline runs simulated
    finite_request_rate_per_s: float  # the workload's own offline run: requests / duration (drain included)

    def to_dict(self) -> dict[str, Any]:
        w = self.window
        return {"rule": "saturated_window", "requests": self.requests, "runs": self.runs,
                "window_s": [w.start_s, w.end_s], "completions": w.completions, "running": w.running,
                "turnovers": w.turnovers, "finite_run_request_rate_per_s": self.finite_request_rate_per_s}


def steady_state(run: Callable[[int], "Recorder"], n: int, mean_output: float, cfg: CeilingConfig,
                 max_running: int) -> Ceiling:
    """The ceiling from offline runs `run(requests)` (all sent at t = 0, the workload's
    distributions and seed), starting with the workload's `n` requests; `max_running`: the
    scheduler's limit on running requests (sizes the next run when the batch never filled)."""
    rec = run(n)
    finite = n / float(np.nanmax(rec.finish))
    size, runs = n, 1
    grow = cfg.warmup_turnovers + cfg.window_turnovers + 2
    while True:
        w = saturated_window(rec, cfg)
        need = int(math.ceil(cfg.window_turnovers * w.running))
        if w.completions >= need and w.completions > 0:
            break
        if w.running >= size:  # every request ran at once: the batch never filled, C is not known yet
            size = int(math.ceil(grow * min(max_running, int(math.ceil(grow * size)))))
        else:  # C is the engine's: enough for the window, and a batch more than the run before lacked
            size = max(int(math.ceil(grow * w.running)), size + need - w.completions + w.running)
        if size > MAX_REQUESTS:
            raise CodesignError(f"slo search: the offline run's saturated window (workload.slo_search) needs more than "
                                f"{MAX_REQUESTS} requests (the engine holds {w.running} at once)")
        rec, runs = run(size), runs + 1
    rate = w.request_rate_per_s
    return Ceiling(rate, rate * mean_output, w, size, runs, finite)


__all__ = ["CeilingConfig", "ceiling_config", "Ceiling", "Window", "saturated_window", "steady_state", "MAX_REQUESTS"]
