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
from codesign.hw import HardwareSpec, load_hw
from codesign.mapping.options import MappingOptions
from codesign.models import ModelConfig, load_model
from codesign.results import Result, infeasible
from codesign.scenario import SLO, Scenario, Workload
from codesign.sim.cost import CostOptions
from codesign.sim.search import Outcome, best_plan
from codesign.sim.stepper import STEP_CACHE, TRACE_CACHE, BoundedCache, Stepper, cache_info, clear_caches, hw_key
from codesign.units import parse_tokens

DEFAULT_MODEL = "qwen3.5-397b-a17b"
DEFAULT_CONTEXTS = (32_768, 262_144)
DEFAULT_PRECISION = {"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"}
DEFAULT_OUTPUT_TOKENS = 1024


def _plan_dict(plan: Any) -> dict[str, int]:
    return {k: int(getattr(plan, k, 1)) for k in ("tp", "ep", "pp", "dp", "attention_dp")}


def _ctx_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _to_result(name: str, out: Outcome, chips: int, context: int, mode: str, slo: SLO | None, wall: float) -> Result:
    st, mr = out.stepper, out.metrics
    mem = st.memory(mr.batch, out.fit_kv_len).gib()
    feasible, reason = True, None
    if slo and slo.tpot_s and mr.tpot_s is not None and mr.tpot_s > slo.tpot_s:
        feasible, reason = False, f"TPOT {mr.tpot_s:.4g} s misses slo.tpot_s {slo.tpot_s:g} s even at batch {mr.batch}"
    step = mr.decode or mr.prefill
    return Result(
        name=name, feasible=feasible, reason=reason, hardware=st.hw.name, model=st.config.name, chips=chips,
        plan=_plan_dict(st.plan), output_tokens_per_s=mr.output_tokens_per_s, input_tokens_per_s=mr.input_tokens_per_s,
        output_tokens_per_s_per_chip=mr.output_tokens_per_s / chips,
        ttft_s={"mean": mr.ttft_s, "p50": mr.ttft_s, "p99": mr.ttft_s},
        tpot_s={"mean": mr.tpot_s, "p50": mr.tpot_s, "p99": mr.tpot_s},
        concurrency=mr.batch, memory_per_chip_gib=mem, bottleneck=mr.bottleneck, sim_wall_s=wall,
        context=context, mode=mode,
        # a copy: the StepResult may be memoised and shared by later results
        breakdown={k: dict(v) for k, v in step.breakdown.items()} if step else {},
    )


def _infeasible_row(name: str, out: Outcome, chips: int, context: int, mode: str, wall: float) -> Result:
    st = out.stepper
    mem = None
    try:
        mem = st.memory(1, out.fit_kv_len).gib()
    except CodesignError:
        pass
    return infeasible(name, out.reason, st.hw.name, st.config.name, chips, _plan_dict(st.plan), mem,
                      context=context, mode=mode, sim_wall_s=wall)


def _as_workload(workload: Workload | dict | None) -> Workload:
    if workload is None:
        return Workload(mode="decode", output_tokens=DEFAULT_OUTPUT_TOKENS)
    if isinstance(workload, Workload):
        return workload
    from codesign.scenario import parse_scenarios  # reuse the scenario validation for one-line errors

    s = parse_scenarios({"name": "api", "hardware": "-", "model": "-", "workload": workload}, "workload")[0]
    return s.workload


def _contexts(context: int | str | Iterable | None, workload: Workload, explicit_workload: bool) -> list[int]:
    if context is None:
        return [workload.input_mean] if explicit_workload else list(DEFAULT_CONTEXTS)
    if isinstance(context, (int, str)):
        context = [context]
    try:
        return [parse_tokens(c) for c in context]
    except ValueError as e:
        raise CodesignError(f"context: {e}") from None


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
    """
    hw = load_hw(hw)
    config = load_model(model)
    chips = int(chips or hw.system.chips)
    prec = precision if (precision is not None and not isinstance(precision, dict)) else mapping.Precision.from_dict(
        DEFAULT_PRECISION if precision is None else precision)
    opts = cost if isinstance(cost, CostOptions) else CostOptions.from_dict(cost)
    mopts = MappingOptions.from_dict(mapping_options)
    explicit = workload is not None
    wl = _as_workload(workload)
    slo_m = SLO.model_validate(slo) if isinstance(slo, dict) else slo
    contexts = _contexts(context, wl, explicit)
    base = name or f"{hw.name}-{config.name}-{chips}x"
    plans = _plans(config, hw, chips, plan)
    digest = hw_key(hw) if cache else None
    steppers = [Stepper(hw, config, p, prec, opts, mopts, router, cache, digest) for p in plans]

    obs = progress.current()
    if obs is not None:
        obs.start(len(contexts) * max(1, len(plans)))
    try:
        return [_simulate_context(steppers, wl, slo_m, ctx, _row_name(base, ctx, contexts, name), hw, config, chips)
                for ctx in contexts]
    finally:
        if obs is not None:
            obs.stop()


def _row_name(base: str, ctx: int, contexts: list[int], name: str | None) -> str:
    return f"{base}-{_ctx_label(ctx)}" if (len(contexts) > 1 or name is None) else base


def _simulate_context(steppers: list[Stepper], wl: Workload, slo: SLO | None, ctx: int, row_name: str,
                      hw: HardwareSpec, config: ModelConfig, chips: int) -> Result:
    """`simulate`'s row for one context."""
    t0 = time.perf_counter()
    if not steppers:
        return infeasible(row_name, f"no parallel plan of {config.name} divides {chips} chips", hw.name,
                          config.name, chips, context=ctx, mode=wl.mode)
    if wl.mode == "server":
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
    return simulate(
        s.hardware, s.model, context=None, chips=s.chips, plan=s.parallel, precision=s.precision or None,
        workload=s.workload, slo=s.slo, name=s.name, cost=s.cost or None,
    )


__all__ = ["simulate", "simulate_scenario", "clear_caches", "cache_info", "STEP_CACHE", "TRACE_CACHE", "BoundedCache",
           "DEFAULT_MODEL", "DEFAULT_CONTEXTS", "DEFAULT_PRECISION"]
