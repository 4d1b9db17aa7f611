"""The request path in front of a serving engine (`workload.frontend:` in a server-mode scenario).

An OpenAI-compatible server does CPU work for every request before its engine's scheduler sees it
and after the engine samples its tokens: the HTTP request is parsed, the chat template applied and
the prompt tokenised in the API-server process, the request handed to the engine-core process
(vLLM V1: over ZeroMQ), and the sampled tokens detokenised and streamed back as server-sent events.
None of it runs on the accelerator, and server mode charges none of it unless a scenario says so.
Two named parts, both off by default (every result unchanged):

* ``latency_s`` -- a **fixed latency** added to every request's path, not shared between requests
  (transit, hand-off and streaming that overlap other requests' work): each request reaches the
  scheduler ``latency_s`` after it is sent, so its TTFT and end-to-end latency grow by exactly that
  and its TPOT not at all;
* ``per_request_s`` -- a **serial ingest cost** per request in one API-server process (template,
  tokenisation, request set-up: Python work that holds the process): requests queue for one of
  ``processes`` API-server processes (vLLM's ``--api-server-count``, default 1) and hold it for
  ``per_request_s`` each, first come first served, so the k-th request (k = 1..N) of a burst
  reaches the scheduler at ``latency_s + ceil(k / processes) x per_request_s``, and a stream cannot enter the engine faster than ``processes / per_request_s`` requests a second.

How the API-server processes order that work (``discipline``):

* ``fifo`` (the default) -- one request at a time, first come first served, as above;
* ``shared`` -- **processor sharing**: the requests in the frontend share its processes equally
  (each progresses at ``min(1, processes / n)`` with ``n`` present), so a burst of N requests
  sent at once reaches the scheduler together, at ``latency_s + N x per_request_s / processes``,
  and a request alone still takes ``per_request_s``. It stands for one asyncio event loop
  (vLLM's API server) whose handlers run to their next ``await`` in turn: every request of a
  burst passes HTTP parsing before any passes the chat template and tokenisation, and so on, so
  none reaches the engine until nearly all have been through the earlier stages (named
  approximation: the stages' split of the cost is not modelled, only its limit of equal shares).
  Requests all cost the same, so they leave in the order they came (the shared server's finish
  order), tracked by a virtual clock: no pass over the requests present per event.

At one request at a time the request path adds ``latency_s + per_request_s`` to TTFT. Requests
are "sent" (the clock of TTFT, end-to-end latency and queueing delay) when the client sends them,
before the frontend; the engine's "in system" count (`Recorder.in_system_area`) counts requests
at the engine only. Named assumptions: the per-request cost does not depend on the prompt's length
(tokenisation grows with it; no published per-token figure for the v0.11-era server was found),
and the outbound share (detokenisation, streaming) is part of ``latency_s`` rather than a cost
that competes with ingest for the same process.

No engine figure is built in: the validation rows leave it unset (docs/cost-model.md, "GPUStack
H100 rows", states what each would read at given figures).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generator, Literal

import simpy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codesign.errors import CodesignError, format_validation_error


class FrontendConfig(BaseModel):
    """`workload.frontend:` -- seconds per request on the path in front of the engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float = Field(default=0.0, ge=0.0, le=60.0)
    per_request_s: float = Field(default=0.0, ge=0.0, le=60.0)
    processes: int = Field(default=1, gt=0, le=1024)
    discipline: Literal["fifo", "shared"] = "fifo"

    @property
    def active(self) -> bool:
        return self.latency_s > 0.0 or self.per_request_s > 0.0

    @property
    def max_rate_per_s(self) -> float | None:
        """The most requests a second the frontend passes (None: unbounded)."""
        return self.processes / self.per_request_s if self.per_request_s > 0 else None


def frontend_config(data: dict[str, Any] | FrontendConfig | None,
                    source: str = "workload.frontend") -> FrontendConfig | None:
    """The validated frontend, or None when it adds nothing (unset, or every figure zero); errors
    name `source` and the field."""
    if isinstance(data, FrontendConfig):
        return data if data.active else None
    if not data:
        return None
    try:
        cfg = FrontendConfig.model_validate(data)
    except ValidationError as e:
        raise CodesignError(format_validation_error(source, e)) from None
    return cfg if cfg.active else None


class Frontend:
    """The API-server processes of one run: a simpy resource of `processes` slots."""

    def __init__(self, env: simpy.Environment, cfg: FrontendConfig) -> None:
        self.env, self.cfg = env, cfg
        self.servers = simpy.Resource(env, capacity=cfg.processes)
        self.shared = _Shared(env, cfg.per_request_s, cfg.processes) if cfg.discipline == "shared" else None

    def through(self) -> Generator[simpy.Event, Any, None]:
        """A request's way through the frontend (a simpy process body: ``yield from``)."""
        cfg = self.cfg
        if cfg.latency_s > 0:
            yield self.env.timeout(cfg.latency_s)
        if cfg.per_request_s <= 0:
            return
        if self.shared is not None:
            yield self.shared.enter()
            return
        with self.servers.request() as slot:
            yield slot
            yield self.env.timeout(cfg.per_request_s)


class _Shared:
    """Processor sharing of `processes` servers among the requests present, each needing `work`
    seconds of one: with n present each is served at rate min(1, processes / n). `v` is the
    service every present request has received since the clock began (a virtual clock), so a
    request entering at v0 leaves when v reaches v0 + work; equal work makes that FIFO."""

    def __init__(self, env: simpy.Environment, work: float, processes: int) -> None:
        self.env, self.work, self.m = env, work, processes
        self.v, self.t = 0.0, 0.0  # virtual service and the time it was last brought up to date
        self.queue: deque[tuple[float, simpy.Event]] = deque()  # (leaving virtual time, event), FIFO
        self.epoch = 0  # the departure timer armed last (an older one is stale)

    def _rate(self) -> float:
        n = len(self.queue)
        return min(1.0, self.m / n) if n else 0.0

    def _advance(self) -> None:
        now = self.env.now
        self.v += (now - self.t) * self._rate()
        self.t = now

    def _arm(self) -> None:
        self.epoch += 1
        if not self.queue:
            return
        wait = max(0.0, (self.queue[0][0] - self.v) / self._rate())
        epoch = self.epoch
        self.env.timeout(wait).callbacks.append(lambda _e: self._leave(epoch))

    def _leave(self, epoch: int) -> None:
        if epoch != self.epoch:
            return  # an arrival re-armed the timer since
        self._advance()
        self.v = max(self.v, self.queue[0][0])  # exact: the head has had all its work
        while self.queue and self.queue[0][0] <= self.v * (1 + 1e-12):
            self.queue.popleft()[1].succeed()
        self._arm()

    def enter(self) -> simpy.Event:
        self._advance()
        done = self.env.event()
        self.queue.append((self.v + self.work, done))
        self._arm()
        return done


__all__ = ["Frontend", "FrontendConfig", "frontend_config"]
