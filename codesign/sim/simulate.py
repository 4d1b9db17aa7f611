"""`simulate(hw, model, ...)`: one design point (or a plan search) -> `Result` rows, one per context.

Pipeline per step (`codesign.sim.stepper.Stepper`): `codesign.graph.trace` (the model's own torch
code on the meta device) -> `codesign.mapping.map_step` (per-chip graph, collectives inserted) ->
`engine.simulate_step` (SimPy). Workload modes (`workload.py`) turn step times into throughput and
latency; `search.py` picks the plan; this module resolves the inputs and assembles the rows.

Defaults (named; see docs/simulator.md):
* ``DEFAULT_MODEL`` qwen3.5-397b-a17b, ``DEFAULT_CONTEXTS`` 32K and 256K.
* ``DEFAULT_PRECISION``: fp8 weights and activations, bf16 KV cache (fp32 GatedDeltaNet state):
  how these MoE models are served on H100/H200-class GPUs (Qwen's FP8 checkpoints; SGLang/vLLM keep
  KV in bf16 unless asked).
* ``DEFAULT_WORKLOAD``: steady-state decode (`mode: decode`) at input = context tokens of KV, 1K
  output tokens per request: the decode-dominated long-context serving the Qwen3.5 claims are about.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from codesign import mapping, progress
from codesign.errors import CodesignError
from codesign.hw import HardwareSpec
from codesign.mapping.options import MappingOptions
from codesign.models import ModelConfig
from codesign.results import Distribution, Result, check_row, infeasible
from codesign.sim.arguments import check_arguments
from codesign.scenario import SLO, Scenario, Workload
from codesign.sim.cost import CostOptions
from codesign.sim.search import Outcome, best_plan
from codesign.sim.stepper import STEP_CACHE, TRACE_CACHE, BoundedCache, Stepper, cache_info, clear_caches, hw_key

DEFAULT_MODEL = "qwen3.5-397b-a17b"
DEFAULT_CONTEXTS = (32_768, 262_144)
DEFAULT_PRECISION = {"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"}
DEFAULT_OUTPUT_TOKENS = 1024


def _plan_dict(plan: Any) -> dict[str, int]:
    return {k: int(getattr(plan, k, 1)) for k in ("tp", "ep", "pp", "dp", "attention_dp")}


def _ctx_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _per_token_economics(hw: HardwareSpec, chips: int, out_rate: float | None) -> tuple[float | None, float | None]:
    """(USD per million output tokens, output tokens per joule): the spec's `cost.per_hour` per chip
    rented by the hour and kept busy at `out_rate`; `power.tdp` x `power.utilisation` per chip
    (named assumptions, docs/point.md). None without output tokens."""
    if not out_rate or out_rate <= 0:
        return None, None
    usd = hw.cost.per_hour * chips / (out_rate * 3600.0) * 1e6
    per_joule = out_rate / (chips * hw.power.serving_watts)
    return usd, per_joule


def _slo_miss(mr: Any, slo: SLO | None) -> str | None:
    """One line saying which SLO the row misses, or None."""
    if slo is None:
        return None
    if slo.tpot_s and mr.tpot_s is not None and mr.tpot_s > slo.tpot_s:
        return f"TPOT {mr.tpot_s:.4g} s misses slo.tpot_s {slo.tpot_s:g} s even at batch {mr.batch}"
    if slo.ttft_s and mr.ttft_s is not None and mr.ttft_s > slo.ttft_s:
        return f"TTFT {mr.ttft_s:.4g} s misses slo.ttft_s {slo.ttft_s:g} s at batch {mr.batch}"
    return None


def _to_result(name: str, out: Outcome, chips: int, context: int, mode: str, slo: SLO | None, wall: float) -> Result:
    st, mr = out.stepper, out.metrics
    mem = st.memory(mr.batch, out.fit_kv_len).gib()
    reason = _slo_miss(mr, slo)
    step = mr.decode or mr.prefill
    usd, per_joule = _per_token_economics(st.hw, chips, mr.output_tokens_per_s)
    return check_row(Result(
        name=name, feasible=reason is None, reason=reason, hardware=st.hw.name, model=st.config.name, chips=chips,
        plan=_plan_dict(st.plan), output_tokens_per_s=mr.output_tokens_per_s, input_tokens_per_s=mr.input_tokens_per_s,
        output_tokens_per_s_per_chip=mr.output_tokens_per_s / chips,
        ttft_s=Distribution.single(mr.ttft_s), tpot_s=Distribution.single(mr.tpot_s),
        concurrency=mr.batch, memory_per_chip_gib=mem, bottleneck=mr.bottleneck, sim_wall_s=wall,
        context=context, mode=mode, reason_code=None if reason is None else "slo",
        usd_per_million_output_tokens=usd, output_tokens_per_joule=per_joule,
        # a copy: the StepResult may be memoised and shared by later results
        breakdown={k: dict(v) for k, v in step.breakdown.items()} if step else {},
    ))


def _infeasible_row(name: str, out: Outcome, chips: int, context: int, mode: str, wall: float) -> Result:
    st = out.stepper
    mem = None
    try:
        mem = st.memory(1, out.fit_kv_len).gib()
    except CodesignError:
        pass
    return infeasible(name, out.reason, st.hw.name, st.config.name, chips, _plan_dict(st.plan), mem,
                      context=context, mode=mode, sim_wall_s=wall, reason_code=out.reason_code or "capacity")


def _plans(config: ModelConfig, hw: HardwareSpec, chips: int, plan: str | dict | Any) -> list[mapping.ParallelPlan]:
    if isinstance(plan, str):
        if plan != "auto":
            raise CodesignError(f"parallel: expected 'auto' or a mapping such as {{tp: 8}}, found {plan!r}")
        return (mapping.candidate_plans(config, chips, max_tp=hw.system.scale_up.size)
                or mapping.candidate_plans(config, chips))
    if isinstance(plan, dict):
        return [mapping.ParallelPlan.from_dict(plan)]
    return [plan]


def simulate(
    hw: HardwareSpec | str,
    model: ModelConfig | str = DEFAULT_MODEL,
    context: int | str | Iterable[int | str] | None = None,
    chips: int | None = None,
    plan: str | dict | Any = "auto",
    precision: dict | Any | None = None,
    workload: Workload | dict | None = None,
    slo: SLO | dict | None = None,
    name: str | None = None,
    cost: CostOptions | dict | None = None,
    router: Any = None,
    cache: bool = True,
    mapping_options: MappingOptions | dict | None = None,
) -> list[Result]:
    """Simulate `model` on `hw`: one `Result` per context (default 32K and 256K).

    `plan`: "auto" (every candidate plan; the highest-throughput one that fits is kept), a
    `ParallelPlan` or a dict such as {"tp": 8}. `precision`: a `Precision` or dict (default
    fp8/fp8/bf16 KV). `workload`: a scenario `workload:` mapping (default steady-state decode at
    input = context). `context` overrides the workload's input_tokens (the KV length).
    `mapping_options`: `MappingOptions` or a dict (two-batch overlap, placement, dispatch dtype,
    all-reduce algorithm, memory reserve). `cache`: reuse and keep step simulations and traces
    (`STEP_CACHE`, `TRACE_CACHE`); the results are identical either way.

    The arguments resolve to one `codesign.point.Point` (validated like a file), evaluated by
    `simulate_point`; rows carry its `point_hash`.
    """
    from codesign.point import Point

    context = check_arguments(hw, model, context, chips, plan, precision, workload, slo, name, cost, router, cache)

    pt = Point.from_kwargs(hw, model, context=context, chips=chips, plan=plan, precision=precision,
                           workload=workload, slo=slo, name=name, cost=cost, mapping_options=mapping_options,
                           source="simulate")
    return simulate_point(pt, router=router, cache=cache)


def simulate_point(pt: Any, router: Any = None, cache: bool = True) -> list[Result]:
    """A `codesign.point.Point`'s rows, one per context, stamped with its hash and overrides
    (no hash with a custom `router` object: it is not part of the point)."""
    from codesign.point import point_hash

    hw, config, chips = pt.hw, pt.model, pt.resolved_chips
    contexts = pt.contexts
    base = pt.name or f"{hw.name}-{config.name}-{chips}x"
    plans = _plans(config, hw, chips, pt.parallel)
    digest = hw_key(hw) if cache else None
    steppers = [Stepper(hw, config, p, pt.precision, pt.cost, pt.mapping, router, cache, digest) for p in plans]
    slo = pt.slo if (pt.slo.ttft_s is not None or pt.slo.tpot_s is not None) else None
    phash = point_hash(pt) if router is None else None
    overrides = pt.overrides

    obs = progress.current()
    if obs is not None:
        obs.start(len(contexts) * max(1, len(plans)))
    try:
        rows = [_simulate_context(steppers, pt.workload, slo, ctx, _row_name(base, ctx, contexts, pt.name), hw, config,
                                  chips) for ctx in contexts]
    finally:
        if obs is not None:
            obs.stop()
    for r in rows:
        r.point_hash, r.overrides = phash, dict(overrides)
    return rows


def _row_name(base: str, ctx: int, contexts: list[int], name: str | None) -> str:
    return f"{base}-{_ctx_label(ctx)}" if (len(contexts) > 1 or name is None) else base


def _simulate_context(steppers: list[Stepper], wl: Workload, slo: SLO | None, ctx: int, row_name: str,
                      hw: HardwareSpec, config: ModelConfig, chips: int) -> Result:
    """`simulate`'s row for one context."""
    t0 = time.perf_counter()
    if not steppers:
        return infeasible(row_name, f"no parallel plan of {config.name} divides {chips} chips", hw.name,
                          config.name, chips, context=ctx, mode=wl.mode, reason_code="divisibility")
    if wl.mode != "server" and steppers[0].options.kv_pool != "reserve":
        raise CodesignError(f"{row_name}: mapping.kv_pool: {steppers[0].options.kv_pool!r} is not yet supported in "
                            f"mode {wl.mode!r}: it sizes the KV pool of a request stream's scheduler (server mode); "
                            "expected 'reserve' here")
    if wl.mode == "server":
        if steppers[0].options.pipeline_microbatches:
            raise CodesignError(f"{row_name}: mapping.pipeline_microbatches: not yet supported in server mode (its request "
                                "streams run one batch through the stages in turn); set it false or use a "
                                "steady-state mode (decode, offline, batch, prefill)")
        return _server_context(steppers, wl, slo, ctx, row_name, chips, f"{hw.name} {config.name} {_ctx_label(ctx)}")
    best, first_bad = best_plan(steppers, wl, ctx, slo, chips, f"{hw.name} {config.name} {_ctx_label(ctx)}")
    wall = time.perf_counter() - t0
    if best is None:
        return _infeasible_row(row_name, first_bad, chips, ctx, wl.mode, wall)
    return _to_result(row_name, best, chips, ctx, wl.mode, slo, wall)


def _server_context(steppers: list[Stepper], wl: Workload, slo: SLO | None, ctx: int, row_name: str, chips: int,
                    label: str) -> Result:
    """Server mode (codesign.sim.serving): the stream at the plan the offline search ranks first."""
    from codesign.sim.serving.server import server_row, with_context

    wl = with_context(wl, ctx)
    st = steppers[0]
    if (len(steppers) == 1 or wl.disaggregation) and (obs := progress.current()) is not None:
        for _ in steppers:  # the units simulate() announced for the plans, not searched here
            obs.advance(f"{label}, plan {{{st.plan}}}")
    if len(steppers) > 1 and not wl.disaggregation:  # disaggregated pools name their own plans
        offline = wl.model_copy(update={"mode": "offline", "mtp": None, "requests": None, "trace": None, "scheduler": {}})
        best, first_bad = best_plan(steppers, offline, ctx, None, chips, label)
        if best is None:
            return _infeasible_row(row_name, first_bad, chips, ctx, wl.mode, 0.0)
        st = best.stepper
    return server_row(row_name, st, wl, slo, chips, ctx)


def simulate_scenario(s: Scenario) -> list[Result]:
    """A scenario file entry -> its result rows (one; the context is the workload's input_tokens)."""
    from codesign.point import Point

    return simulate_point(Point.from_scenario(s))


__all__ = ["simulate", "simulate_point", "simulate_scenario", "clear_caches", "cache_info", "STEP_CACHE", "TRACE_CACHE", "BoundedCache",
           "DEFAULT_MODEL", "DEFAULT_CONTEXTS", "DEFAULT_PRECISION"]
