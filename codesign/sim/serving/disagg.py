"""Prefill/decode disaggregation: separate pools, KV and state sent between them, xPyD search.

`workload.disaggregation: {prefill: {instances, chips, parallel, precision}, decode: {...},
network, search}` (`DisaggregationConfig`). Each request is a simpy process:

1. the **prefill pool** (x instances of p chips, its own plan and precision) runs the prompt with
   the scheduler of `scheduler.py` (chunked prefill, no decodes) and samples the first token;
2. its KV cache and GatedDeltaNet state are **sent** to the decode pool over `network`
   (scale-out NICs by default, else the scale-up links): bytes = the whole sequence's KV at the
   prefill pool's KV dtype plus its recurrent and conv state, sent by min(p, d) chips in parallel at
   the link's bandwidth x `efficiency.collective`, plus the link latency. One transfer at a time per
   prefill instance (a `simpy.Resource` of x slots);
3. the **decode pool** (y instances of d chips) admits it straight to decoding when its pages fit.

TTFT is when the first token reaches the decode pool (prefill + transfer); TPOT the decode pool's.
A pool of several instances is one engine with the instance's limits and KV pool x instances
(named assumption: requests spread evenly); its step lasts as long as its slowest instance's share
(prefill chunks dealt round-robin, decodes split evenly). Series in the row are the decode pool's;
`serving.pools` gives each pool's utilisation (busy time / run duration), steps and KV use.

`search: true` tries every split of the scenario's chips into x prefill and y decode instances of
the given sizes (x, y >= 1) and keeps the highest goodput under the SLO (output tokens/s without
one). Attention/FFN (expert) disaggregation is not modelled.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import simpy

from codesign import mapping
from codesign.errors import CodesignError
from codesign.gc_pause import gc_paused
from codesign.graph.shape import Group, StepShape
from codesign.mapping.memory import kv_bytes_per_sequence, state_bytes_per_sequence
from codesign.results import Result, infeasible
from codesign.scenario import SLO, Workload
from codesign.sim.serving.arrivals import RequestStream
from codesign.sim.serving.config import DisaggregationConfig, PoolConfig, scheduler_config
from codesign.sim.serving.kv import KVCapacity
from codesign.sim.serving.metrics import ServingMetrics, summarise
from codesign.sim.serving.scheduler import Engine, Recorder
from codesign.sim.serving.server import check_stream, meets, stream_of, serving_point
from codesign.sim.serving.steptime import StepTimeModel
from codesign.sim.stepper import Stepper
from codesign.units import GiB


@dataclass
class Pool:
    """One pool: its instance's stepper and step-time model, instance count, KV pool."""

    name: str
    cfg: PoolConfig
    stepper: Stepper
    model: StepTimeModel
    capacity: KVCapacity  # of the whole pool (instances x one instance's)

    @property
    def instances(self) -> int:
        return self.cfg.instances

    def step_time(self, shape: StepShape) -> float:
        x = self.instances
        if x == 1:
            return self.model.step_time(shape)
        per: list[list[Group]] = [[] for _ in range(x)]
        chunks = [g for g in shape.groups if not (g.new_tokens == 1 or g.seqs > 1)]
        for i, g in enumerate(chunks):
            per[i % x].append(g)
        for g in shape.groups:
            if g.new_tokens == 1 or g.seqs > 1:
                s = math.ceil(g.seqs / x)
                for p in per:
                    p.append(Group(s, g.new_tokens, g.cached_tokens, g.logits))
        return max(self.model.step_time(StepShape(tuple(p))) for p in per if p)


def _pool(name: str, pc: PoolConfig, base: Stepper, wl: Workload) -> Pool:
    plan = mapping.ParallelPlan.from_dict(pc.parallel or {"tp": pc.chips})
    why = mapping.check_plan(base.config, plan, pc.chips)
    if why is not None:
        raise CodesignError(f"workload.disaggregation.{name}: {why}")
    prec = mapping.Precision.from_dict(pc.precision) if pc.precision is not None else base.precision
    st = Stepper(base.hw, base.config, plan, prec, base.cost, base.options, base.router, base.cache, base.hw_digest)
    pt = serving_point(st, wl.model_copy(update={"disaggregation": {}}))
    one = pt.capacity
    cap = dataclasses.replace(one, free_bytes=one.free_bytes * pc.instances, replicas=one.replicas * pc.instances)
    return Pool(name, pc, st, pt.model, cap)


def transfer_seconds(pre: Pool, dec: Pool, network: str | None) -> Callable[[int], float]:
    """Seconds to send a `tokens`-token sequence's KV and state from the prefill to the decode pool."""
    hw, cfg, prec = pre.stepper.hw, pre.stepper.config, pre.stepper.precision
    kv_b, st_b = prec.bytes_per_element(prec.kv_cache), prec.bytes_per_element(prec.state)
    so = hw.system.scale_out
    net = network or ("scale_out" if so is not None else "scale_up")
    if net == "scale_out":
        if so is None:
            raise CodesignError(f"workload.disaggregation.network: {hw.name} describes no scale-out network")
        bw, lat = so.nic_bandwidth, so.latency
    else:
        bw, lat = hw.system.scale_up.chip_bandwidth, hw.system.scale_up.latency
    lanes = min(pre.cfg.chips, dec.cfg.chips) * bw * hw.efficiency.collective
    state = state_bytes_per_sequence(cfg, None, st_b, 2.0, 1)

    def seconds(tokens: int) -> float:
        return lat + (kv_bytes_per_sequence(cfg, tokens, None, kv_b, 1) + state) / lanes

    return seconds


@dataclass
class DisaggRun:
    metrics: ServingMetrics
    pools: dict[str, dict[str, Any]]
    transfer_s: dict[str, float | None]


def _request(env, pre: Engine, dec: Engine, link: simpy.Resource, rid: int, at: float, prompt: int, out: int,
             transfer: Callable[[int], float], first: np.ndarray, moved: list[float], slots):
    if at > env.now:
        yield env.timeout(at - env.now)
    slot = slots.request() if slots is not None else None
    if slot is not None:
        yield slot
    yield pre.submit(rid, prompt, 1)
    with link.request() as lk:
        yield lk
        t = transfer(prompt)
        yield env.timeout(t)
    moved.append(t)
    first[rid] = env.now
    if out > 1:
        yield dec.submit(rid, prompt, out, prefilled=True)
    if slot is not None:
        slots.release(slot)


def run_disagg(stream: RequestStream, pre: Pool, dec: Pool, wl: Workload, network: str | None,
               slo: SLO | None) -> DisaggRun:
    sched = scheduler_config(wl.scheduler, hw=pre.stepper.hw)
    env = simpy.Environment()
    n = stream.n
    rp, rd = Recorder(n), Recorder(n)
    o = pre.model.options
    e_pre = Engine(env, sched, pre.capacity, pre.step_time, rp, stretch=(o.stretch_drift, o.stretch_max))
    e_dec = Engine(env, sched, dec.capacity, dec.step_time, rd, stretch=(o.stretch_drift, o.stretch_max))
    link = simpy.Resource(env, capacity=pre.instances)
    slots = simpy.Resource(env, capacity=stream.concurrency) if stream.concurrency else None
    first = np.full(n, np.nan)
    moved: list[float] = []
    transfer = transfer_seconds(pre, dec, network)
    procs = [env.process(_request(env, e_pre, e_dec, link, r.id, r.arrival_s, r.input_tokens, r.output_tokens,
                                  transfer, first, moved, slots)) for r in stream.requests]
    env.process(e_pre.run())
    env.process(e_dec.run())
    try:
        with gc_paused():  # as scheduler.run_stream
            env.run(until=simpy.AllOf(env, procs))
    except RuntimeError as e:
        if "No scheduled events left" not in str(e):
            raise
        raise CodesignError("serving: the disaggregated run stalled with requests unfinished") from None
    out = np.array([r.output_tokens for r in stream.requests], dtype=float)
    merged = rd
    merged.sent, merged.admitted, merged.first_token = rp.sent, rp.admitted, first
    merged.finish = np.where(out > 1, rd.finish, first)
    merged.output = out
    merged.preemptions = rp.preemptions + rd.preemptions
    m = summarise(merged, np.array([r.input_tokens for r in stream.requests]),
                  slo.ttft_s if slo else None, slo.tpot_s if slo else None)
    # Little's L over both pools and the link, from the per-request intervals (the series are the
    # decode pool's alone)
    m.mean_in_system = float(np.nansum(merged.finish - merged.sent) / m.duration_s) if m.duration_s else 0.0
    pools = {}
    for name, p, rec in (("prefill", pre, rp), ("decode", dec, rd)):
        busy = float(np.dot(rec.step_dt, rec.step_count)) if rec.step_dt else 0.0
        kv = np.asarray(rec.step_kv_use) if rec.step_kv_use else np.zeros(1)
        pools[name] = {"instances": p.instances, "chips_per_instance": p.cfg.chips,
                       "plan": {k: int(getattr(p.stepper.plan, k)) for k in ("tp", "ep", "pp", "dp", "attention_dp")},
                       "utilisation": busy / m.duration_s if m.duration_s else 0.0, "steps": int(sum(rec.step_count)),
                       "kv_pool_gib": p.capacity.free_bytes / GiB, "peak_kv_use": float(kv.max())}
    tr = np.asarray(moved)
    return DisaggRun(m, pools, {"mean": float(tr.mean()) if len(tr) else None,
                                "p99": float(np.percentile(tr, 99)) if len(tr) else None})


def _splits(total: int, cfg: DisaggregationConfig) -> list[tuple[int, int]]:
    if not cfg.search:
        return [(cfg.prefill.instances, cfg.decode.instances)]
    p, d = cfg.prefill.chips, cfg.decode.chips
    return [(x, (total - x * p) // d) for x in range(1, total // p + 1) if (total - x * p) // d >= 1]


def _score(run: DisaggRun, slo: SLO | None) -> float:
    m = run.metrics
    return m.goodput_output_tokens_per_s if slo is not None and m.goodput_output_tokens_per_s is not None \
        else m.output_tokens_per_s


def disagg_row(name: str, base: Stepper, wl: Workload, slo: SLO | None, chips: int, context: int,
               cfg: DisaggregationConfig) -> Result:
    """The Result row of a disaggregated server-mode workload (see module docstring)."""
    t0 = time.perf_counter()
    splits = _splits(chips, cfg)
    used = cfg.prefill.instances * cfg.prefill.chips + cfg.decode.instances * cfg.decode.chips
    if not splits or (not cfg.search and used > chips):
        need = (f"{cfg.prefill.instances} x {cfg.prefill.chips} prefill + {cfg.decode.instances} x "
                f"{cfg.decode.chips} decode chips" if not cfg.search else
                f"at least {cfg.prefill.chips} prefill + {cfg.decode.chips} decode chips")
        return infeasible(name, f"disaggregation: no chips left for a pool: {need} > the deployment's {chips}",
                          base.hw.name, base.config.name, chips, context=context, mode="server")
    stream = stream_of(wl, max_tokens=base.config.max_position_embeddings)
    if wl.mtp is not None:
        raise CodesignError("workload.mtp: not yet supported with workload.disaggregation")
    if wl.rate_per_s is None and wl.trace is None and slo is not None:
        raise CodesignError("workload.disaggregation: the SLO search is not yet supported with disaggregation; give "
                            "workload.rate_per_s (the run reports goodput under the SLO)")
    runs = []
    for x, y in splits:
        pre = _pool("prefill", cfg.prefill.model_copy(update={"instances": x}), base, wl)
        dec = _pool("decode", cfg.decode.model_copy(update={"instances": y}), base, wl)
        for p in (pre, dec):
            if p.capacity.free_bytes <= 0:
                return infeasible(name, f"disaggregation: the {p.name} pool's weights leave no KV pool",
                                  base.hw.name, base.config.name, chips, context=context, mode="server")
        why = check_stream(_as_point(dec, wl), stream)
        if why is not None:
            return infeasible(name, f"decode pool: {why}", base.hw.name, base.config.name, chips, context=context,
                              mode="server")
        runs.append(((x, y), pre, dec, run_disagg(stream, pre, dec, wl, cfg.network, slo)))
    (x, y), pre, dec, best = max(runs, key=lambda r: _score(r[3], slo))
    m = best.metrics
    lat = lambda d: {k: d[k] for k in ("mean", "p50", "p90", "p99")}  # noqa: E731
    reason = None
    if slo is not None and not meets(m, slo):
        reason = f"p99 misses the SLO at this stream (TTFT {m.ttft_s['p99']:.4g} s, TPOT {m.tpot_s['p99']}) "
    serving = {"stream": stream.kind, "requests": stream.n, "seed": wl.seed, "rate_per_s": stream.rate_per_s,
               "disaggregation": f"{x}P{y}D", "pools": best.pools, "transfer_s": best.transfer_s,
               "splits": [{"split": f"{a}P{b}D", "output_tokens_per_s": r.metrics.output_tokens_per_s,
                           "goodput_output_tokens_per_s": r.metrics.goodput_output_tokens_per_s}
                          for (a, b), _, _, r in runs],
               **{k: v for k, v in m.to_dict().items() if k not in ("ttft_s", "tpot_s")}}
    mem = dec.capacity.memory
    return Result(
        name=name, feasible=reason is None, reason=reason, hardware=base.hw.name, model=base.config.name, chips=chips,
        plan=best.pools["decode"]["plan"], output_tokens_per_s=m.output_tokens_per_s,
        input_tokens_per_s=m.input_tokens_per_s, output_tokens_per_s_per_chip=m.output_tokens_per_s / chips,
        ttft_s=lat(m.ttft_s), tpot_s=lat(m.tpot_s), concurrency=int(round(m.mean_running)),
        memory_per_chip_gib={"weights": mem.weights / GiB, "kv_cache": None, "state": None,
                             "activations": mem.activations / GiB, "total": None, "capacity": mem.capacity / GiB},
        bottleneck=None, sim_wall_s=time.perf_counter() - t0, context=context, mode="server", serving=serving)


def _as_point(p: Pool, wl: Workload):
    """The fields `check_stream` reads, for a pool."""
    from types import SimpleNamespace

    return SimpleNamespace(stepper=p.stepper, capacity=p.capacity, scheduler=scheduler_config(wl.scheduler, hw=p.stepper.hw))


__all__ = ["Pool", "run_disagg", "disagg_row", "transfer_seconds", "DisaggRun"]
