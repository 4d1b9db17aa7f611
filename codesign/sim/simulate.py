"""`simulate(hw, model, ...)`: one design point (or a plan search) -> `Result` rows, one per context.

Pipeline per step: `codesign.graph.trace` (the model's own torch code on the meta device) ->
`codesign.mapping.map_step` (per-chip graph, collectives inserted) -> `engine.simulate_step`
(SimPy). Workload modes (`workload.py`) turn step times into throughput and latency; memory fit and
the largest batch come from `codesign.mapping.memory_per_chip` / `max_batch`.

Defaults (named; see docs/simulator.md):
* ``DEFAULT_MODEL`` qwen3.5-397b-a17b, ``DEFAULT_CONTEXTS`` 32K and 256K.
* ``DEFAULT_PRECISION``: fp8 weights and activations, bf16 KV cache (fp32 GatedDeltaNet state):
  how these MoE models are served on H100/H200-class GPUs (Qwen's FP8 checkpoints; SGLang/vLLM keep
  KV in bf16 unless asked).
* ``DEFAULT_WORKLOAD``: steady-state decode (`mode: decode`) at input = context tokens of KV, 1K
  output tokens per request: the decode-dominated long-context serving the Qwen3.5 claims are about.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Iterator

from codesign import mapping
from codesign.gc_pause import gc_paused
from codesign.errors import CodesignError
from codesign.hw import HardwareSpec, load_hw
from codesign.models import ModelConfig, load_model
from codesign.results import Result, check_row, infeasible
from codesign.scenario import SLO, Scenario, Workload
from codesign.sim.arguments import check_arguments
from codesign.sim.cost import CostOptions
from codesign.sim.engine import StepResult, simulate_step
from codesign.sim.workload import ModeResult, capped_batch, decode_mode, prefill_mode, serving_mode
from codesign.units import GiB, parse_tokens

DEFAULT_MODEL = "qwen3.5-397b-a17b"
DEFAULT_CONTEXTS = (32_768, 262_144)
DEFAULT_PRECISION = {"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"}
DEFAULT_OUTPUT_TOKENS = 1024
SERVER_UNSUPPORTED = "server mode not yet supported"


def _plan_dict(plan: Any) -> dict[str, int]:
    return {k: int(getattr(plan, k, 1)) for k in ("tp", "ep", "pp", "dp", "attention_dp")}


def _ctx_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


# ---- memoised steps ------------------------------------------------------------------------------

class BoundedCache:
    """A least-recently-used mapping with at most `size` entries, and hit/miss counts."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def info(self) -> dict[str, int]:
        return {"entries": len(self._data), "size": self.size, "hits": self.hits, "misses": self.misses}


# Step results, keyed by everything a step depends on: hardware (its full spec), model (config
# hash), plan, precision, cost options, router, phase, batch, tokens and context. A StepResult is a
# few small dicts, so thousands are cheap; they make batch and plan searches, the TTFT step shared
# by every plan, and repeated calls (a sweep, a notebook re-run) reuse earlier simulations.
STEP_CACHE = BoundedCache("steps", 4096)
# Traced graphs by (config hash, phase, batch, tokens, context, router): a trace does not depend on
# the plan, so every candidate plan of a search maps the same one. Graphs are large (5-7k ops,
# several MB each for a 60-layer MoE model), hence few. The mapping never modifies its input graph.
TRACE_CACHE = BoundedCache("traces", 8)


def clear_caches() -> None:
    """Forget memoised steps and traces (e.g. after editing a cost model or tracer in place)."""
    STEP_CACHE.clear()
    TRACE_CACHE.clear()


def cache_info() -> dict[str, dict[str, int]]:
    """Entries, bound, hits and misses of the step and trace caches."""
    return {c.name: c.info() for c in (STEP_CACHE, TRACE_CACHE)}


def _router_key(router: Any) -> Hashable | None:
    """A cache key part for `router`, or None when it cannot be keyed safely (unhashable)."""
    if router is None or isinstance(router, str):
        return ("router", router)
    try:
        hash(router)
    except TypeError:
        return None
    return router  # frozen dataclasses compare by value


def _hw_key(hw: HardwareSpec) -> str:
    """The full spec's digest: two specs with the same name but other numbers never share steps."""
    return hashlib.sha256(hw.model_dump_json().encode()).hexdigest()


# Stands in for a prefill step a decode-mode plan search does not need (see `simulate`).
_DEFERRED = StepResult(time_s=math.nan, bottleneck="deferred", breakdown={})


@dataclass
class _Point:
    """One (hardware, model, plan, precision) whose step simulations are memoised (`STEP_CACHE`
    unless `cache` is False)."""

    hw: HardwareSpec
    config: ModelConfig
    plan: Any
    precision: Any
    cost: CostOptions
    router: Any = None
    cache: bool = True
    hw_key: str | None = None
    # During a plan search in decode mode: prefill steps (TTFT only) answer `_DEFERRED` unsimulated.
    defer_prefill: bool = False

    def __post_init__(self) -> None:
        self._steps: dict[tuple, StepResult] = {}
        router = _router_key(self.router)
        self._key: tuple | None = None
        if self.cache and router is not None:
            try:
                hash((self.plan, self.precision, self.cost))
            except TypeError:
                return
            self._key = (self.hw_key or _hw_key(self.hw), self.config.config_hash(), self.plan, self.precision,
                         self.cost, router)
            self._trace_key = (self.config.config_hash(), router)

    def step(self, phase: str, batch: int, context: int, tokens: int) -> StepResult:
        """One step for `batch` sequences of the whole deployment (the mapping gives the busiest
        chip its share; replicas run at the same time, so the step time is one chip's)."""
        if self.defer_prefill and phase == "prefill":
            return _DEFERRED
        key = (phase, batch, context, tokens)
        hit = self._steps.get(key)
        if hit is None:
            gkey = None if self._key is None else self._key + key
            hit = STEP_CACHE.get(gkey) if gkey is not None else None
            if hit is None:
                hit = self._simulate(phase, batch, context, tokens)
                if gkey is not None:
                    STEP_CACHE.put(gkey, hit)
            self._steps[key] = hit
        return hit

    def _trace(self, phase: str, batch: int, context: int, tokens: int):
        from codesign.graph import trace

        tkey = None if self._key is None else self._trace_key + (phase, batch, tokens, context)
        g = TRACE_CACHE.get(tkey) if tkey is not None else None
        if g is None:
            g = trace(self.config, phase=phase, batch=batch, tokens=tokens, context=context, router=self.router)
            if tkey is not None:
                TRACE_CACHE.put(tkey, g)
        return g

    def _simulate(self, phase: str, batch: int, context: int, tokens: int) -> StepResult:

        m = mapping
        with gc_paused():
            g = self._trace(phase, batch, context, tokens)
            mapped = m.map_step(g, self.config, self.hw, self.plan, self.precision)
            return simulate_step(mapped, self.hw, self.cost)

    def memory(self, batch: int, context: int, tokens_per_seq: int = 1):
        return mapping.memory_per_chip(self.config, None, self.hw, self.plan, self.precision, batch, context,
                                          tokens_per_seq=tokens_per_seq)

    def max_batch(self, context: int) -> int:
        return mapping.max_batch(self.config, None, self.hw, self.plan, self.precision, context)


# ---- progress --------------------------------------------------------------------------------------

# A run shows a progress bar only once it has taken this long (short runs stay silent).
PROGRESS_DELAY_S = 2.0


class _ProgressReporter:
    """Counts plan evaluations; draws a transient rich bar on stderr (terminals only) once the
    block has lasted `delay_s`, and only while a `simulate()` call runs (so tables and JSON printed
    between calls never interleave with it). A timer makes the bar appear during a single long
    evaluation too."""

    def __init__(self, description: str, delay_s: float) -> None:
        import threading

        from rich.console import Console

        self.description = description
        self.total = self.done = 0
        self.label = description
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._due = self._active = False
        self._console = Console(stderr=True)
        self._timer = threading.Timer(delay_s, self._on_timer) if self._console.is_terminal else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._due = True
            if self._active:
                self._show()

    def _show(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if self._bar is None:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self._console, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None, completed=self.done)

    def _hide(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def enter(self, evaluations: int) -> None:
        """A simulate() call starts with `evaluations` more plan evaluations to come."""
        with self._lock:
            self._active = True
            self.total += evaluations
            if self._due:
                self._show()
            self._update()

    def leave(self) -> None:
        with self._lock:
            self._active = False
            self._hide()

    def advance(self, label: str) -> None:
        """One more evaluation starts (counted as done: the bar reads "n of total under way"); `label`
        names it."""
        with self._lock:
            self.done += 1
            self.label = label
            self._update()

    def _update(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=self.total or None, completed=self.done, description=self.label)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._active = False
            self._hide()


_REPORTERS: list[_ProgressReporter] = []


@contextmanager
def progress(description: str = "simulating", delay_s: float | None = None) -> Iterator[None]:
    """Within this block `simulate()` reports its plan evaluations to one shared progress bar
    (rich, on stderr, terminals only), shown once the block has run `delay_s` (default
    `PROGRESS_DELAY_S`). The library is silent outside such a block; the CLI opens one."""
    rep = _ProgressReporter(description, PROGRESS_DELAY_S if delay_s is None else delay_s)
    _REPORTERS.append(rep)
    try:
        yield
    finally:
        _REPORTERS.remove(rep)
        rep.close()


def _reporter() -> _ProgressReporter | None:
    return _REPORTERS[-1] if _REPORTERS else None


def _run_mode(pt: _Point, workload: Workload, context: int, slo: SLO | None) -> tuple[ModeResult | None, str | None, int]:
    """(metrics, reason if infeasible, KV length memory was fitted at)."""
    mode = workload.mode
    out_tokens = workload.output_mean
    tpot_slo = slo.tpot_s if slo else None
    if mode == "decode":
        fit_ctx = context
        mb = capped_batch(pt.max_batch(fit_ctx), workload.max_batch)
        if mb == 0:
            return None, None, fit_ctx
        return decode_mode(pt.step, mb, context, context, tpot_slo), None, fit_ctx
    if mode == "prefill":
        mb = capped_batch(pt.max_batch(context), workload.max_batch)
        if mb == 0:
            return None, None, context
        return prefill_mode(pt.step, mb, context), None, context
    fit_ctx = context + out_tokens // 2
    fits = pt.max_batch(fit_ctx)
    mb = capped_batch(fits, workload.max_batch)
    if mb == 0:
        return None, None, fit_ctx
    if mode == "batch":
        want = workload.concurrency or 1
        if want > fits:
            short = pt.memory(want, fit_ctx).short_by / GiB
            return None, f"concurrency {want} does not fit: short by {short:.2f} GiB per chip (largest batch {fits})", fit_ctx
        return serving_mode(pt.step, want, context, out_tokens, None), None, fit_ctx
    return serving_mode(pt.step, mb, context, out_tokens, tpot_slo, max_batch=mb), None, fit_ctx


def _short_reason(pt: _Point, context: int) -> str:
    m = pt.memory(1, context)
    return (f"does not fit: short by {m.short_by / GiB:.2f} GiB per chip at batch 1 "
            f"(weights {m.weights / GiB:.2f} + kv {m.kv_cache / GiB:.2f} + state {m.state / GiB:.2f} "
            f"+ activations {m.activations / GiB:.2f} + reserve {m.reserve / GiB:.2f} > "
            f"capacity {m.capacity / GiB:.2f} GiB)")


def _evaluate(pt: _Point, workload: Workload, context: int, slo: SLO | None) -> tuple[ModeResult | None, str | None, int]:
    mr, reason, fit_ctx = _run_mode(pt, workload, context, slo)
    if mr is None and reason is None:
        reason = _short_reason(pt, fit_ctx)
    return mr, reason, fit_ctx


def _score(mode: str, mr: ModeResult) -> float:
    return mr.input_tokens_per_s if mode == "prefill" else mr.output_tokens_per_s


def _to_result(name: str, pt: _Point, chips: int, mr: ModeResult, fit_ctx: int, context: int, mode: str,
               slo: SLO | None, wall: float) -> Result:
    mem = pt.memory(mr.batch, fit_ctx).gib()
    feasible, reason = True, None
    if slo and slo.tpot_s and mr.tpot_s is not None and mr.tpot_s > slo.tpot_s:
        feasible, reason = False, f"TPOT {mr.tpot_s:.4g} s misses slo.tpot_s {slo.tpot_s:g} s even at batch {mr.batch}"
    step = mr.decode or mr.prefill
    return check_row(Result(
        name=name, feasible=feasible, reason=reason, hardware=pt.hw.name, model=pt.config.name, chips=chips,
        plan=_plan_dict(pt.plan), output_tokens_per_s=mr.output_tokens_per_s, input_tokens_per_s=mr.input_tokens_per_s,
        output_tokens_per_s_per_chip=mr.output_tokens_per_s / chips,
        ttft_s={"mean": mr.ttft_s, "p50": mr.ttft_s, "p99": mr.ttft_s},
        tpot_s={"mean": mr.tpot_s, "p50": mr.tpot_s, "p99": mr.tpot_s},
        concurrency=mr.batch, memory_per_chip_gib=mem, bottleneck=mr.bottleneck, sim_wall_s=wall,
        context=context, mode=mode,
        # a copy: the StepResult may be memoised and shared by later results
        breakdown={k: dict(v) for k, v in step.breakdown.items()} if step else {},
    ))


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


def _search(points: list[_Point], wl: Workload, ctx: int, slo: SLO | None, chips: int,
            rep: _ProgressReporter | None, label: str, defer_prefill: bool
            ) -> tuple[tuple[float, _Point, ModeResult, int] | None, tuple[str, _Point, int] | None]:
    """The highest-scoring feasible point (score, point, metrics, KV length fitted) and the first
    reason a point was infeasible; ties keep the earlier plan."""
    m = mapping
    best: tuple[float, _Point, ModeResult, int] | None = None
    first_reason: tuple[str, _Point, int] | None = None
    for pt in points:
        if rep is not None:
            rep.advance(f"{label}, plan {{{pt.plan}}}")
        why = m.check_plan(pt.config, pt.plan, chips)
        if why is not None:
            first_reason = first_reason or (why, pt, ctx)
            continue
        pt.defer_prefill = defer_prefill
        mr, reason, fit_ctx = _evaluate(pt, wl, ctx, slo)
        if mr is None:
            first_reason = first_reason or (reason, pt, fit_ctx)
            continue
        score = _score(wl.mode, mr)
        if best is None or score > best[0]:
            best = (score, pt, mr, fit_ctx)
    return best, first_reason


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
) -> list[Result]:
    """Simulate `model` on `hw`: one `Result` per context (default 32K and 256K).

    `plan`: "auto" (every candidate plan; the highest-throughput one that fits is kept), a
    `ParallelPlan` or a dict such as {"tp": 8}. `precision`: a `Precision` or dict (default
    fp8/fp8/bf16 KV). `workload`: a scenario `workload:` mapping (default steady-state decode at
    input = context). `context` overrides the workload's input_tokens (the KV length).
    `cache`: reuse and keep step simulations and traces (`STEP_CACHE`, `TRACE_CACHE`); the results
    are identical either way.
    """
    m = mapping
    context = check_arguments(hw, model, context, chips, plan, precision, workload, slo, name, cost, router, cache)
    hw = load_hw(hw)
    config = load_model(model)
    chips = hw.system.chips if chips is None else chips
    prec = precision if (precision is not None and not isinstance(precision, dict)) else m.Precision.from_dict(
        DEFAULT_PRECISION if precision is None else precision)
    opts = cost if isinstance(cost, CostOptions) else CostOptions.from_dict(cost)
    explicit = workload is not None
    wl = _as_workload(workload)
    slo_m = SLO.model_validate(slo) if isinstance(slo, dict) else slo
    contexts = _contexts(context, wl, explicit)
    base = name or f"{hw.name}-{config.name}-{chips}x"

    if isinstance(plan, str):
        if plan != "auto":
            raise CodesignError(f"parallel: expected 'auto' or a mapping such as {{tp: 8}}, found {plan!r}")
        plans = m.candidate_plans(config, chips, max_tp=hw.system.scale_up.size)
        if not plans:
            plans = m.candidate_plans(config, chips)
    elif isinstance(plan, dict):
        plans = [m.ParallelPlan.from_dict(plan)]
    else:
        plans = [plan]

    rep = _reporter()
    if rep is None:
        return _simulate_contexts(hw, config, chips, plans, prec, opts, wl, slo_m, contexts, base, name, router,
                                  cache, None)
    rep.enter(len(contexts) * max(1, len(plans)))
    try:
        return _simulate_contexts(hw, config, chips, plans, prec, opts, wl, slo_m, contexts, base, name, router,
                                  cache, rep)
    finally:
        rep.leave()


def _simulate_contexts(hw: HardwareSpec, config: ModelConfig, chips: int, plans: list, prec: Any, opts: CostOptions,
                       wl: Workload, slo_m: SLO | None, contexts: list[int], base: str, name: str | None,
                       router: Any, cache: bool, rep: _ProgressReporter | None) -> list[Result]:
    """`simulate`'s rows, one per context, once its inputs are resolved."""
    hw_key = _hw_key(hw) if cache else None
    results: list[Result] = []
    for ctx in contexts:
        t0 = time.perf_counter()
        row_name = f"{base}-{_ctx_label(ctx)}" if (len(contexts) > 1 or name is None) else base
        if wl.mode == "server":
            results.append(infeasible(row_name, SERVER_UNSUPPORTED, hw.name, config.name, chips,
                                      _plan_dict(plans[0]) if plans else None, context=ctx, mode=wl.mode))
            continue
        if not plans:
            results.append(infeasible(row_name, f"no parallel plan of {config.name} divides {chips} chips", hw.name,
                                      config.name, chips, context=ctx, mode=wl.mode))
            continue
        points = [_Point(hw, config, p, prec, opts, router, cache, hw_key) for p in plans]
        label = f"{hw.name} {config.name} {_ctx_label(ctx)}"
        # Decode mode ranks plans by decode throughput alone; the prefill step (TTFT) is simulated
        # for the winner only. Checked: the winner re-evaluated in full must score the same, else
        # the search runs again with every step (so a mode whose score used TTFT stays exact).
        defer = wl.mode == "decode" and len(points) > 1
        best, first_reason = _search(points, wl, ctx, slo_m, chips, rep, label, defer)
        if defer and best is not None:
            score, pt, _, _ = best
            pt.defer_prefill = False
            mr, _, fit_ctx = _evaluate(pt, wl, ctx, slo_m)
            if mr is not None and _score(wl.mode, mr) == score:
                best = (score, pt, mr, fit_ctx)
            else:
                for q in points:
                    q.defer_prefill = False
                best, first_reason = _search(points, wl, ctx, slo_m, chips, None, label, False)
        wall = time.perf_counter() - t0
        if best is None:
            reason, pt, fit_ctx = first_reason
            mem = None
            try:
                mem = pt.memory(1, fit_ctx).gib()
            except CodesignError:
                pass
            results.append(infeasible(row_name, reason, hw.name, config.name, chips, _plan_dict(pt.plan), mem,
                                      context=ctx, mode=wl.mode, sim_wall_s=wall))
            continue
        _, pt, mr, fit_ctx = best
        results.append(_to_result(row_name, pt, chips, mr, fit_ctx, ctx, wl.mode, slo_m, wall))
    return results


def simulate_scenario(s: Scenario) -> list[Result]:
    """A scenario file entry -> its result rows (one; the context is the workload's input_tokens)."""
    return simulate(
        s.hardware, s.model, context=None, chips=s.chips, plan=s.parallel, precision=s.precision or None,
        workload=s.workload, slo=s.slo, name=s.name, cost=s.cost or None,
    )


__all__ = ["simulate", "simulate_scenario", "progress", "clear_caches", "cache_info", "STEP_CACHE", "TRACE_CACHE",
           "DEFAULT_MODEL", "DEFAULT_CONTEXTS", "DEFAULT_PRECISION"]
