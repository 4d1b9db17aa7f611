"""Server mode: request streams through the scheduler at one design point, the SLO search, and the
`Result` row.

`workload.mode: server` runs, by what the workload names:

* ``trace: FILE`` -- the trace replayed;
* ``rate_per_s: R`` -- ``requests`` (default `DEFAULT_REQUESTS`) Poisson arrivals at R;
* neither, without an SLO -- ``requests`` sent at once, at most ``concurrency`` outstanding
  (a benchmark client's finite run; all at once is MLPerf Offline);
* neither, with ``slo: {ttft_s, tpot_s}`` -- the **SLO search**: the highest Poisson rate whose
  p99 TTFT and p99 TPOT both meet the limits (MLPerf Server's rule), by bisection on the rate with
  the arrivals' seed fixed (the same requests, arrival times scaled). The row reports that rate's
  run, with the runs at 1.1x the rate and the offline (all-at-once) run of the same requests.

With ``parallel: auto`` the plan is the one the steady-state offline search ranks first at the
same lengths (named assumption: the best plan for throughput serves the stream; name a plan to
serve another).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from codesign import mapping, progress
from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape
from codesign.results import Result, infeasible
from codesign.scenario import SLO, TokenDist, Workload
from codesign.sim.serving.arrivals import RequestStream, burst_stream, constant_stream, load_trace, poisson_stream
from codesign.sim.serving.config import DEFAULT_REQUESTS, ENGINE, SchedulerConfig, scheduler_config
from codesign.sim.serving.frontend import FrontendConfig, frontend_config
from codesign.sim.serving.kv import KVCapacity, kv_capacity
from codesign.sim.serving.lockstep import LockStepTimer, lockstep_ranks, rank_capacity
from codesign.sim.serving.metrics import ServingMetrics, summarise
from codesign.sim.serving.ceiling import Ceiling, ceiling_config, steady_state
from codesign.sim.serving.scheduler import Draft, Recorder, run_stream
from codesign.sim.serving.steptime import StepTimeModel, StepTimeOptions
from codesign.sim.stepper import Stepper
from codesign.sim.mixed_gdn import mixed_gdn
from codesign.units import GiB

SEARCH_TOLERANCE = 0.01  # the SLO search stops when hi / lo < 1 + this
SEARCH_LOW = 1 / 64  # lowest rate tried, as a fraction of the offline request rate
RATE_CHECK = 1.1  # the row also reports the run at this multiple of the found rate


@dataclass
class ServingPoint:
    """Everything one design point needs to serve streams: the stepper, the scheduler, the pool,
    the step-time model and the MTP draft."""

    stepper: Stepper
    scheduler: SchedulerConfig
    capacity: KVCapacity
    model: StepTimeModel
    draft: Draft | None
    draft_model: StepTimeModel | None
    # attention-DP ranks in lock step (codesign.sim.serving.lockstep), or None: one engine
    lock: LockStepTimer | None = None
    # the request path in front of the engine (codesign.sim.serving.frontend), or None: none
    frontend: FrontendConfig | None = None
    last_sample: list[StepShape] | None = None
    last_iterations: int = 0  # simulated iterations of the last run

    def draft_time(self, seqs: int, cached: int) -> float:
        """One drafted token of the MTP head(s) for `seqs` sequences (see `mtp_head_step`)."""
        assert self.draft_model is not None
        return max(0.0, self.draft_model.group_time(Group(seqs, 1, cached)))

    def run(self, stream: RequestStream, slo: SLO | None = None, on_progress: Callable[[int], None] | None = None,
            sample_every: int = 0) -> ServingMetrics:
        """Simulate `stream`; `sample_every` > 0 keeps every that many iterations' step unpooled in
        `last_sample` (the benchmark measures the step-time model's error on them)."""
        rec = self.record(stream, on_progress, sample_every)
        return summarise(rec, np.array([r.input_tokens for r in stream.requests]),
                         slo.ttft_s if slo else None, slo.tpot_s if slo else None)

    def record(self, stream: RequestStream, on_progress: Callable[[int], None] | None = None,
               sample_every: int = 0, stop_saturated: Callable[[int], float] | None = None) -> Recorder:
        """Simulate `stream`: the run's records (`run` summarises them; `stop_saturated`: see
        `run_stream`)."""
        o = self.model.options
        rec = run_stream(stream, self.scheduler, self.capacity, self.model.step_time, self.draft,
                         self.draft_time if self.draft_model is not None else None, on_progress,
                         (o.stretch_drift, o.stretch_max), sample_every, timer=self.model,
                         stop_saturated=stop_saturated, lock=self.lock, frontend=self.frontend)
        self.last_sample, self.last_iterations = rec.sample, len(rec.step_end)
        return rec


def draft_of(wl: Workload) -> Draft | None:
    if wl.mtp is None:
        return None
    acc = wl.mtp.acceptance
    vals = tuple(acc) if isinstance(acc, list) else (acc,) * wl.mtp.tokens
    return Draft(wl.mtp.tokens, tuple(float(a) for a in vals))


def mtp_head_step(st: Stepper) -> Callable[[StepShape], Any]:
    """A step function for the MTP head alone: a decode step traced with the model's MTP layers
    (`include_mtp`) minus the same step without them, through the same mapping and engine. The core's
    steps do not include the heads; this is one decode-step-equivalent of the MTP layer(s) and
    their LM-head pass, from the traced graph's MTP ops."""
    from codesign.gc_pause import gc_paused
    from codesign.graph import trace
    from codesign.sim.engine import StepResult, simulate_step

    def step(shape: StepShape) -> StepResult:
        (g,) = shape.groups
        with gc_paused():
            graph = trace(st.config, phase="decode", batch=g.seqs, tokens=1, context=g.kv_len, router=st.router,
                          include_mtp=True)
            mapped = mapping.map_step(graph, st.config, st.hw, st.plan, st.precision, **st.options.map_kwargs())
            with_heads = simulate_step(mapped, st.hw, st.cost, two_batch_overlap=st.options.two_batch_overlap)
        base = st.step(shape)
        return StepResult(time_s=with_heads.time_s - base.time_s, bottleneck=with_heads.bottleneck, breakdown={})

    return step


def serving_point(st: Stepper, wl: Workload, options: StepTimeOptions | None = None) -> ServingPoint:
    options = options or StepTimeOptions.from_dict(wl.step_model)
    sched = scheduler_config(wl.scheduler, hw=st.hw)
    draft = draft_of(wl)
    mtp = draft is not None and st.config.mtp_layers > 0
    if draft is not None and not st.config.mtp_layers:
        raise CodesignError(f"workload.mtp: {st.config.name} has no MTP heads (mtp_layers = 0) to draft with")
    cap = kv_capacity(st, sched.block_size, sched.max_num_batched_tokens, mtp=mtp, max_num_seqs=sched.max_num_seqs)
    max_len = st.config.max_position_embeddings
    # verify groups: the core's recurrent GatedDeltaNet path; `extra`: what mixed steps add where the
    # engine runs their GatedDeltaNet decodes in the chunk kernel (cost.gdn_mixed_decodes)
    model = StepTimeModel(st.step, max_len, options, extra=mixed_gdn(st))
    draft_model = StepTimeModel(mtp_head_step(st), max_len, options) if mtp else None
    ranks = lockstep_ranks(st.plan, st.config, sched)
    lock = LockStepTimer(st.step, ranks, max_len, options, even=model) if ranks > 1 else None
    return ServingPoint(st, sched, cap, model, draft, draft_model, lock, frontend_config(wl.frontend))


def pool_of(pt: ServingPoint) -> KVCapacity:
    """The KV pool one scheduler allocates from: the deployment's, or one lock-stepped rank's."""
    lock = getattr(pt, "lock", None)  # a disaggregated pool (its own namespace) runs as one engine
    return rank_capacity(pt.capacity, lock.ranks) if lock is not None else pt.capacity


def stream_of(wl: Workload, rate: float | None = None, max_tokens: int | None = None) -> RequestStream:
    """The workload's request stream (a rate given here overrides the workload's)."""
    n = wl.requests or DEFAULT_REQUESTS
    if wl.trace and rate is None:
        return load_trace(wl.trace, wl.concurrency)
    rate = rate if rate is not None else wl.rate_per_s
    if rate is not None:
        make = constant_stream if wl.arrival == "constant" else poisson_stream
        return make(n, rate, wl.input_tokens, wl.output_tokens, wl.seed, max_tokens, wl.concurrency)
    return burst_stream(n, wl.input_tokens, wl.output_tokens, wl.seed, max_tokens, wl.concurrency)


def check_stream(pt: ServingPoint, stream: RequestStream) -> str | None:
    """Why the stream cannot run at this point (a request too long for the model or the pool)."""
    cfg = pt.stepper.config
    longest = max(stream.requests, key=lambda r: r.input_tokens + r.output_tokens)
    total = longest.input_tokens + longest.output_tokens
    if total > cfg.max_position_embeddings:
        return (f"request {longest.id} needs {total} tokens (input {longest.input_tokens} + output "
                f"{longest.output_tokens}), above {cfg.name}'s maximum of {cfg.max_position_embeddings}")
    sched = pt.scheduler
    if not sched.chunked_prefill:
        big = max(stream.requests, key=lambda r: r.input_tokens)
        if big.input_tokens > sched.max_num_batched_tokens:
            return (f"request {big.id} has {big.input_tokens} input tokens, above workload.scheduler.max_num_batched_tokens "
                    f"= {sched.max_num_batched_tokens}, and chunked_prefill is false (a prompt is computed in one step)")
    pool = pool_of(pt)
    need = pool.seq_footprint(total + pt.scheduler.block_size)
    if need > pool.free_bytes:
        where = "" if pool is pt.capacity else f" of one of {pt.lock.ranks} attention-DP ranks"
        return (f"does not fit: request {longest.id} ({total} tokens) needs {need / GiB:.2f} GiB of KV and state per "
                f"chip, the pool{where} holds {pool.free_bytes / GiB:.2f} GiB ({pool.describe()})")
    return None


def meets(m: ServingMetrics, slo: SLO) -> bool:
    """MLPerf Server's rule: p99 TTFT and p99 TPOT both within their limits."""
    ok = True
    if slo.ttft_s is not None:
        ok &= m.ttft_s["p99"] is not None and m.ttft_s["p99"] <= slo.ttft_s
    if slo.tpot_s is not None:
        ok &= m.tpot_s["p99"] is None or m.tpot_s["p99"] <= slo.tpot_s
    return bool(ok)


@dataclass
class SearchOutcome:
    rate: float | None  # highest rate found meeting the SLO (None: none does)
    at_rate: ServingMetrics | None
    above: ServingMetrics | None  # at RATE_CHECK x rate
    lowest: ServingMetrics  # at the lowest rate tried (reported when nothing meets)
    low_rate: float
    runs: int
    capped: bool = False  # the SLO still met at the ceiling (the offline rate): the rate is the ceiling


def slo_search(run_at: Callable[[float], ServingMetrics], slo: SLO, offline_rate: float) -> SearchOutcome:
    """The highest Poisson rate meeting `slo`, by bisection in log(rate) between
    `SEARCH_LOW x offline_rate` and `offline_rate`, the engine's steady-state offline request rate
    (`offline_ceiling`). It is the ceiling (named assumption: a server stream is long, MLPerf
    Server's runs last 10 minutes or more; above the rate the engine sustains with every request
    queued, the queue grows without bound and no long run meets a TTFT limit, although a short
    simulated run can drain such an overload and would meet it)."""
    runs = 0

    def at(r: float) -> ServingMetrics:
        nonlocal runs
        runs += 1
        return run_at(r)

    lo = offline_rate * SEARCH_LOW
    m_lo = at(lo)
    if not meets(m_lo, slo):
        return SearchOutcome(None, None, None, m_lo, lo, runs)
    hi = offline_rate  # the ceiling: a stream above what the engine sustains offline is unstable
    m_hi = at(hi)
    capped = meets(m_hi, slo)
    if capped:
        lo, m_lo = hi, m_hi
    else:
        while hi / lo > 1 + SEARCH_TOLERANCE:
            mid = math.sqrt(lo * hi)
            m = at(mid)
            if meets(m, slo):
                lo, m_lo = mid, m
            else:
                hi = mid
    above = at(lo * RATE_CHECK)
    return SearchOutcome(lo, m_lo, above, m_lo, offline_rate * SEARCH_LOW, runs, capped)


class _RunProgress:
    """Reports one run as 10 units (each tenth of its requests finished) to the progress observer."""

    UNITS = 10

    def __init__(self, label: str, n: int) -> None:
        self.obs, self.label, self.n, self.done = progress.current(), label, n, 0
        if self.obs is not None:
            self.obs.start(self.UNITS)

    def __call__(self, finished: int) -> None:
        if self.obs is None:
            return
        while self.done < self.UNITS and finished * self.UNITS >= (self.done + 1) * self.n:
            self.done += 1
            self.obs.advance(f"{self.label}: {finished}/{self.n} requests")

    def close(self) -> None:
        if self.obs is not None:
            while self.done < self.UNITS:
                self.done += 1
                self.obs.advance(f"{self.label}: done")


def _run(pt: ServingPoint, stream: RequestStream, slo: SLO | None, label: str) -> ServingMetrics:
    p = _RunProgress(label, stream.n)
    try:
        return pt.run(stream, slo, p)
    finally:
        p.close()


def serve(pt: ServingPoint, wl: Workload, slo: SLO | None, label: str = "server") -> tuple[ServingMetrics | None, dict[str, Any], str | None]:
    """Run the workload's stream (or the SLO search) at one point: (metrics of the reported run,
    the row's extra `serving` figures, the reason it is infeasible or None)."""
    max_len = pt.stepper.config.max_position_embeddings
    base = stream_of(wl, max_tokens=max_len)
    why = check_stream(pt, base)
    if why is not None:
        return None, {}, why
    extra: dict[str, Any] = {"stream": base.kind, "requests": base.n, "seed": wl.seed}
    if base.kind == "trace" or wl.rate_per_s is not None or slo is None or (slo.ttft_s is None and slo.tpot_s is None):
        m = _run(pt, base, slo, f"{label}, {base.kind} stream")
        extra["rate_per_s"] = base.rate_per_s
        reason = None
        if slo is not None and base.kind != "burst" and not meets(m, slo):
            reason = f"p99 misses the SLO at this stream: {_p99s(m)} vs {_slo_text(slo)}"
        return m, extra, reason
    ceiling = offline_ceiling(pt, wl, base, label)
    extra["offline_output_tokens_per_s"] = ceiling.output_tokens_per_s
    extra["offline_request_rate_per_s"] = ceiling.request_rate_per_s
    extra["offline_window"] = ceiling.to_dict()
    out = slo_search(lambda r: _run(pt, stream_of(wl, rate=r, max_tokens=max_len), slo, f"{label}, rate {r:.3g}/s"),
                     slo, ceiling.request_rate_per_s)
    extra["search_runs"] = out.runs
    if out.rate is None:
        return None, extra, (f"no arrival rate meets the SLO ({_slo_text(slo)}): even at {out.low_rate:.3g} req/s "
                             f"(1/64 of the offline rate) {_p99s(out.lowest)}")
    extra["rate_per_s"] = out.rate
    extra["rate_at_offline_ceiling"] = out.capped  # True: the SLO did not bind below the offline rate
    extra["stream"] = "poisson"  # the reported run: Poisson arrivals at the rate found
    sustained(extra, base)
    extra["above_rate"] = {"rate_per_s": out.rate * RATE_CHECK, "meets_slo": meets(out.above, slo),
                           "ttft_p99_s": out.above.ttft_s["p99"], "tpot_p99_s": out.above.tpot_s["p99"]}
    return out.at_rate, extra, None


def offline_ceiling(pt: ServingPoint, wl: Workload, base: RequestStream, label: str = "server") -> Ceiling:
    """The SLO search's ceiling: the steady-state offline throughput of the workload's requests by
    the saturated-window rule (`codesign.sim.serving.ceiling`), from offline runs (every request
    at t = 0) of the workload's length distributions and seed."""
    max_len = pt.stepper.config.max_position_embeddings

    def run(n: int, stop: Callable[[int], float]) -> Recorder:
        stream = burst_stream(n, wl.input_tokens, wl.output_tokens, wl.seed, max_len, None)
        p = _RunProgress(f"{label}, offline run (up to {n} requests)", n)
        try:
            return pt.record(stream, p, stop_saturated=stop)
        finally:
            p.close()

    mean_out = float(np.mean([r.output_tokens for r in base.requests]))
    return steady_state(run, base.n, mean_out, ceiling_config(wl.slo_search),
                        pt.scheduler.max_num_seqs * pt.capacity.replicas)


def sustained(extra: dict[str, Any], stream: RequestStream) -> None:
    """Add the long-run output throughput of the SLO search's stream to `extra`: the rate found x
    the mean output tokens per request. That rate is at most the offline rate, so the stream is
    stable and completes what arrives: a long run (MLPerf Server's 10+ minutes) sustains exactly
    this, while a finite simulated run's own tokens / duration is lower by its drain (the tail
    after the last arrival, about one mean latency). Not given for a stream at a rate of the
    workload's own (it may exceed what the engine sustains) or with a client concurrency limit."""
    if extra.get("stream") == "poisson" and extra.get("rate_per_s") and stream.concurrency is None:
        mean_out = float(np.mean([r.output_tokens for r in stream.requests]))
        extra["sustained_output_tokens_per_s"] = extra["rate_per_s"] * mean_out


def _p99s(m: ServingMetrics) -> str:
    t, p = m.ttft_s["p99"], m.tpot_s["p99"]
    return f"p99 TTFT {t:.4g} s, p99 TPOT {p:.4g} s" if p is not None else f"p99 TTFT {t:.4g} s"


def _slo_text(slo: SLO) -> str:
    parts = [f"ttft_s {slo.ttft_s:g}" if slo.ttft_s else "", f"tpot_s {slo.tpot_s:g}" if slo.tpot_s else ""]
    return ", ".join(p for p in parts if p)


def _memory_gib(pt: ServingPoint, m: ServingMetrics) -> dict[str, float]:
    cap, mem = pt.capacity, pt.capacity.memory
    pool_chip = cap.free_bytes / cap.replicas
    state = min(m.peak_running / cap.replicas * cap.seq_bytes, m.peak_kv_use * pool_chip)
    kv = m.peak_kv_use * pool_chip - state
    total = mem.weights + kv + state + mem.activations + mem.reserve
    return {"weights": mem.weights / GiB, "kv_cache": kv / GiB, "state": state / GiB,
            "activations": mem.activations / GiB, "total": total / GiB, "capacity": mem.capacity / GiB}


def _lat(d: dict[str, float | None]) -> dict[str, float | None]:
    return {"mean": d["mean"], "p50": d["p50"], "p90": d["p90"], "p99": d["p99"]}


def server_row(name: str, st: Stepper, wl: Workload, slo: SLO | None, chips: int, context: int,
               options: StepTimeOptions | None = None) -> Result:
    """The `Result` row of a server-mode workload at one plan."""
    from codesign.sim.serving.config import disaggregation_config

    dis = disaggregation_config(wl.disaggregation)
    if dis is not None:
        from codesign.sim.serving.disagg import disagg_row

        return disagg_row(name, st, wl, slo, chips, context, dis)
    t0 = time.perf_counter()
    plan = {k: int(getattr(st.plan, k, 1)) for k in ("tp", "ep", "pp", "dp", "attention_dp")}
    why = mapping.check_plan(st.config, st.plan, chips)
    if why is not None:
        return infeasible(name, why, st.hw.name, st.config.name, chips, plan, context=context, mode="server")
    try:
        pt = serving_point(st, wl, options)
    except CodesignError as e:  # e.g. vLLM's start check (mapping.kv_pool: vllm): name the row
        raise CodesignError(f"{name}: {e}") from None
    if pt.capacity.free_bytes <= 0:
        mem = pt.capacity.memory
        return infeasible(name, f"does not fit: weights {mem.weights / GiB:.2f} + activations {mem.activations / GiB:.2f} + "
                          f"reserve {mem.reserve / GiB:.2f} GiB leave no KV pool in {mem.capacity / GiB:.2f} GiB per chip",
                          st.hw.name, st.config.name, chips, plan, context=context, mode="server",
                          sim_wall_s=time.perf_counter() - t0)
    m, extra, reason = serve(pt, wl, slo, name)
    wall = time.perf_counter() - t0
    if m is None:
        r = infeasible(name, reason or "infeasible", st.hw.name, st.config.name, chips, plan, context=context,
                       mode="server", sim_wall_s=wall)
        r.serving = extra
        return r
    mean_ctx = context + wl.output_mean // 2
    step = st.step(StepShape.decode(max(1, int(round(m.mean_running))), min(mean_ctx, st.config.max_position_embeddings)))
    extra.update({
        "engine": ENGINE, "scheduler": pt.scheduler.model_dump(), "kv_pool_gib": pt.capacity.free_bytes / GiB,
        "kv_blocks": pt.capacity.blocks, "mtp_tokens_per_step": pt.draft.expected_tokens if pt.draft else None,
        "step_model": {"evaluations": (pt.lock.evaluations if pt.lock is not None else pt.model.evaluations)
                       + (pt.draft_model.evaluations if pt.draft_model else 0), "steps": m.steps},
        **{k: v for k, v in m.to_dict().items() if k not in ("ttft_s", "tpot_s")},
    })
    if pt.frontend is not None:  # the request path in front of the engine (codesign.sim.serving.frontend)
        extra["frontend"] = {**pt.frontend.model_dump(), "max_rate_per_s": pt.frontend.max_rate_per_s}
    if pt.lock is not None:  # attention-DP ranks in lock step (codesign.sim.serving.lockstep)
        extra["attention_dp_lockstep"] = {"ranks": pt.lock.ranks, "dispatch": pt.scheduler.attention_dp_dispatch}
    return Result(
        name=name, feasible=reason is None, reason=reason, hardware=st.hw.name, model=st.config.name, chips=chips,
        plan=plan, output_tokens_per_s=m.output_tokens_per_s, input_tokens_per_s=m.input_tokens_per_s,
        output_tokens_per_s_per_chip=m.output_tokens_per_s / chips, ttft_s=_lat(m.ttft_s), tpot_s=_lat(m.tpot_s),
        concurrency=int(round(m.mean_running)), memory_per_chip_gib=_memory_gib(pt, m), bottleneck=step.bottleneck,
        sim_wall_s=wall, context=context, mode="server",
        breakdown={k: dict(v) for k, v in step.breakdown.items()}, serving=extra,
    )


def with_context(wl: Workload, context: int) -> Workload:
    """The workload with its input length's mean set to `context` (distribution kept)."""
    if context == wl.input_mean:
        return wl
    inp = wl.input_tokens
    new = TokenDist(mean=context, dist=inp.dist, cv=inp.cv) if isinstance(inp, TokenDist) else context
    return wl.model_copy(update={"input_tokens": new})


__all__ = ["ServingPoint", "serving_point", "serve", "offline_ceiling", "sustained", "server_row", "slo_search", "meets", "stream_of", "draft_of",
           "with_context", "SearchOutcome", "SEARCH_TOLERANCE", "RATE_CHECK"]
