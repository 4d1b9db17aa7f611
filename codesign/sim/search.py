"""Plan search: evaluate a workload mode at each candidate plan and keep the best feasible one.

Search is kept apart from evaluation (Timeloop's mapper/model split): `codesign.mapping.candidate_plans`
enumerates, `evaluate` runs one workload mode at one `Stepper`, `best_plan` ranks.

Decode mode ranks plans by decode throughput alone, which does not use the prefill (TTFT) step, so
TTFT is simulated for the winning plan only. Checked: the winner re-evaluated in full must score
the same, else the search runs again with every step (so a mode whose score used TTFT stays exact).
"""

from __future__ import annotations

from dataclasses import dataclass

from codesign import mapping, progress
from codesign.scenario import SLO, Workload
from codesign.sim.host_overhead import engine_profile
from codesign.sim.stepper import Stepper
from codesign.sim.workload import (ModeResult, StepFn, capped_batch, decode_context, decode_mode, pipelined,
                                   prefill_mode, serving_mode)
from codesign.units import GiB


@dataclass
class Outcome:
    """One plan's evaluation: metrics (None when infeasible), the reason, the KV length memory was
    fitted at."""

    stepper: Stepper
    metrics: ModeResult | None
    reason: str | None
    fit_kv_len: int
    # codesign.results.REASON_CODES entry of an infeasible outcome, set where the reason is made
    reason_code: str | None = None

    @property
    def score(self) -> float:
        m = self.metrics
        if m is None:
            return float("-inf")
        return m.input_tokens_per_s if m.decode is None else m.output_tokens_per_s


def _short_reason(st: Stepper, kv_len: int) -> str:
    m = st.memory(1, kv_len)
    return (f"does not fit: short by {m.short_by / GiB:.2f} GiB per chip at batch 1 "
            f"(weights {m.weights / GiB:.2f} + kv {m.kv_cache / GiB:.2f} + state {m.state / GiB:.2f} "
            f"+ activations {m.activations / GiB:.2f} + reserve {m.reserve / GiB:.2f} > "
            f"capacity {m.capacity / GiB:.2f} GiB)")


def _run_mode(st: Stepper, wl: Workload, context: int, slo: SLO | None) -> tuple[ModeResult | None, str | None, int]:
    mode, out_tokens = wl.mode, wl.output_mean
    tpot_slo = slo.tpot_s if slo else None
    # the engine's host overhead (codesign.sim.host_overhead), per engine instance: one per
    # data-parallel replica of the plan
    host = {"host": engine_profile(wl.engine), "replicas": _replicas(st)}
    step = _step_fn(st)
    if mode in ("decode", "prefill"):
        mb = capped_batch(st.max_batch(context), wl.max_batch)
        if mb == 0:
            return None, None, context
        if mode == "decode":
            return decode_mode(step, mb, context, context, tpot_slo, **host), None, context
        return prefill_mode(step, mb, context, prefill_budget=wl.prefill_tokens_per_step, **host), None, context
    fit_ctx = decode_context(context, wl.output_tokens)  # the running batch's mean KV length
    fits = st.max_batch(fit_ctx)
    mb = capped_batch(fits, wl.max_batch)
    if mb == 0:
        return None, None, fit_ctx
    if mode == "batch":
        want = wl.concurrency or 1
        if want > fits:
            short = st.memory(want, fit_ctx).short_by / GiB
            return None, (f"concurrency {want} does not fit: short by {short:.2f} GiB per chip "
                          f"(largest batch {fits})"), fit_ctx
        return (serving_mode(step, want, context, out_tokens, None, mean_context=fit_ctx,
                             prefill_budget=wl.prefill_tokens_per_step, **host), None, fit_ctx)
    return (serving_mode(step, mb, context, out_tokens, tpot_slo, max_batch=mb, mean_context=fit_ctx,
                         prefill_budget=wl.prefill_tokens_per_step, **host), None, fit_ctx)


def _step_fn(st: Stepper) -> StepFn:
    """The plan's steady-state step: with `mapping.pipeline_microbatches` and pp > 1 the pipeline
    period of micro-batches in flight (`codesign.sim.workload.pipelined`), else the step itself."""
    pp = int(getattr(st.plan, "pp", 1) or 1)
    if st.options.pipeline_microbatches and pp > 1:
        return pipelined(st.step, pp, _replicas(st))
    return st.step


def _replicas(st: Stepper) -> int:
    """Engine instances the deployment's sequences are spread over: each data-parallel replica
    (``dp``, and each attention-data-parallel rank) runs its own scheduler."""
    return max(1, int(getattr(st.plan, "dp", 1) or 1)) * max(1, int(getattr(st.plan, "attention_dp", 1) or 1))


def evaluate(st: Stepper, wl: Workload, context: int, slo: SLO | None, chips: int) -> Outcome:
    """The workload mode at one plan on `chips` chips (a plan that does not divide is an outcome
    with its reason)."""
    why = mapping.check_plan(st.config, st.plan, chips)
    if why is not None:
        return Outcome(st, None, why, context, "divisibility")
    longest = context if wl.mode in ("decode", "prefill") else context + wl.output_mean
    if longest > st.config.max_position_embeddings:
        what = "context" if wl.mode in ("decode", "prefill") else "input + output tokens"
        return Outcome(st, None, f"{what} {longest} exceeds {st.config.name}'s maximum of "
                                 f"{st.config.max_position_embeddings} tokens", context, "unsupported")
    mr, reason, fit_ctx = _run_mode(st, wl, context, slo)
    if mr is None and reason is None:
        reason = _short_reason(st, fit_ctx)
    # every infeasible outcome of a mode run is memory: nothing fits, or the concurrency does not
    return Outcome(st, mr, reason, fit_ctx, "capacity" if mr is None else None)


def _search(steppers: list[Stepper], wl: Workload, ctx: int, slo: SLO | None, chips: int, label: str,
            announce: bool) -> tuple[Outcome | None, Outcome | None]:
    """(best feasible outcome, first infeasible outcome); ties keep the earlier plan."""
    best: Outcome | None = None
    first_bad: Outcome | None = None
    obs = progress.current() if announce else None
    for st in steppers:
        if obs is not None:
            obs.advance(f"{label}, plan {{{st.plan}}}")
        out = evaluate(st, wl, ctx, slo, chips)
        if out.metrics is None:
            first_bad = first_bad or out
        elif best is None or out.score > best.score:
            best = out
    return best, first_bad


def best_plan(steppers: list[Stepper], wl: Workload, ctx: int, slo: SLO | None, chips: int,
              label: str) -> tuple[Outcome | None, Outcome | None]:
    """The best plan's outcome (None if none is feasible) and the first infeasible one."""
    defer = wl.mode == "decode" and len(steppers) > 1
    for st in steppers:
        st.defer_prefill = defer
    best, first_bad = _search(steppers, wl, ctx, slo, chips, label, announce=True)
    if defer:
        for st in steppers:
            st.defer_prefill = False
        if best is not None:
            full = evaluate(best.stepper, wl, ctx, slo, chips)
            if full.metrics is not None and full.score == best.score:
                return full, first_bad
            best, first_bad = _search(steppers, wl, ctx, slo, chips, label, announce=False)
    return best, first_bad


__all__ = ["Outcome", "evaluate", "best_plan"]
