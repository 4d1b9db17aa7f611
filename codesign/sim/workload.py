"""Workload modes: from step times to serving metrics.

A mode turns a `StepFn` (`StepShape` -> StepResult; a shape's sequences are the whole
deployment's concurrent sequences) and a fit function (batch, context -> bool) into throughput and
latency. All modes are steady-state (no arrival process): every latency's mean, p50 and p99 are the
same value.

* ``decode``  -- steady-state decode at ``input_tokens`` of context. Batch = the largest that fits
  (bounded by ``workload.max_batch``, `capped_batch`), or (with ``slo.tpot_s``) the largest that
  meets it. TTFT = prefill of one request alone.
* ``offline`` -- maximum throughput with prefill and decode interleaved continuously (continuous
  batching): batch = the largest that fits at the mean decode context (`decode_context`), bounded
  by ``workload.max_batch`` (`capped_batch`; the caller applies it to the fit); a batch of
  requests costs one prefill of all their prompts plus ``output`` decode steps at the mean
  decode context; TPOT is that time per output token (prefill interference included).
  The mean decode context is ``input + output / 2`` when every request has the mean output length;
  with an output-length distribution (``output_tokens: {mean, dist, cv}``) it is token-weighted:
  a request with o output tokens holds a batch slot for o steps at KV lengths input .. input+o-1,
  so long outputs dominate the running batch (the inspection paradox), and the slot-average KV
  length is ``input + (E[o^2] / E[o] - 1) / 2 = input + (mean (1 + cv^2) - 1) / 2`` (input and
  output lengths taken as independent).
* ``batch``   -- as offline with the batch fixed at ``concurrency``.
* ``prefill`` -- prompts only: ``PREFILL_TOKENS_PER_STEP`` prompt tokens per step and engine
  instance (`chunk_prompts`: each data-parallel replica and attention-DP rank runs its own
  scheduler with its own chunked-prefill budget, as vLLM and SGLang do per DP rank), at least one
  whole prompt each.
* ``server``  -- Poisson arrivals with SLOs: not supported yet (an infeasible row says so).

Pipeline micro-batches (``mapping.pipeline_microbatches``, off by default; `pipelined`): a plan of
``pp`` > 1 stages runs each step as ``pp`` micro-batches of ``ceil(b / pp)`` sequences per engine
instance, one per stage, and a step's time is the pipeline period, ``pp x`` the slowest stage at
the micro-batch (TensorRT-LLM's and vLLM's pipeline parallelism in steady state). Off: one batch
passes the stages in turn (their sum).

Engine host overhead (``workload.engine``, `codesign.sim.host_overhead`): each mode takes an
optional `EngineProfile` and the number of engine instances (data-parallel replicas) the batch is
spread over; every decode step then takes ``profile.step_time(gpu, batch / replicas)`` and a
prefill of ``b`` prompts ``profile.step_time(gpu, b / replicas, k)`` with ``k`` its chunked
iterations per replica (``PREFILL_TOKENS_PER_STEP`` prompt tokens each). A row whose host time
exceeds its accelerator time reports the bottleneck ``host``. No profile: the steps as simulated.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable

from typing import TYPE_CHECKING

from codesign.graph.shape import Group, StepShape
from codesign.sim.engine import StepResult, pipeline_period
from codesign.sim.host_overhead import EngineProfile, prefill_iterations

# Prompt tokens batched into one prefill step per engine instance in `prefill` mode and for TTFT:
# vLLM's and SGLang's default chunked-prefill budgets are 8-16K tokens per step and engine
# (max_num_batched_tokens / chunked_prefill_size, per DP rank); named assumption.
PREFILL_TOKENS_PER_STEP = 16_384


def chunk_prompts(input_tokens: int, replicas: int = 1, budget: int | None = None) -> int:
    """Whole prompts of `input_tokens` in one prefill step of the deployment: the budget's worth
    (at least one) on each of its `replicas` engine instances (`budget`: prompt tokens per step and
    engine instance, ``workload.prefill_tokens_per_step``; None: `PREFILL_TOKENS_PER_STEP`)."""
    per_engine = PREFILL_TOKENS_PER_STEP if budget is None else budget
    return max(1, replicas) * max(1, per_engine // max(input_tokens, 1))


def chunked_prefill(step: "StepFn", prompts: int, input_tokens: int, replicas: int, budget: int) -> "StepResult":
    """The prefill of `prompts` whole prompts as an engine runs it under a token budget per step
    (``workload.prefill_tokens_per_step``): steps of `chunk_prompts` prompts (the budget's worth on
    each of the `replicas` engine instances), ``prompts / per_step`` of them (the mean over a
    steady run, so a fraction counts), each costed as its own step (its weights read again, its
    kernels at the step's size). The result is one full step times that count (breakdown scaled
    alike); fewer prompts than a step's worth are one step of them."""
    per_step = chunk_prompts(input_tokens, replicas, budget)
    if prompts <= per_step:
        return step(StepShape.prefill(prompts, input_tokens))
    r = step(StepShape.prefill(per_step, input_tokens))
    n = prompts / per_step
    if math.isnan(r.time_s):
        return r
    return _repeated(r, n, r.time_s * n, [t * n for t in r.stage_times_s])


def _repeated(r: "StepResult", n: float, time_s: float, stage_times_s: list[float]) -> "StepResult":
    """`r` as the work of `n` such steps: its breakdown times `n`, the given time and stage times."""
    return StepResult(time_s=time_s, bottleneck=r.bottleneck,
                      breakdown={k: {kk: vv * n for kk, vv in v.items()} for k, v in r.breakdown.items()},
                      stage_times_s=stage_times_s, residency=dict(r.residency),
                      layers_simulated=r.layers_simulated, two_batch_overlap=r.two_batch_overlap)

if TYPE_CHECKING:
    from codesign.scenario import TokenDist

StepFn = Callable[[StepShape], StepResult]
FitFn = Callable[[int, int], bool]


@dataclass
class ModeResult:
    """Metrics of one workload mode at one design point (before they become a `Result` row)."""

    batch: int
    context: int  # KV length the decode step was simulated at
    output_tokens_per_s: float
    input_tokens_per_s: float
    ttft_s: float | None
    tpot_s: float | None
    bottleneck: str
    decode: StepResult | None
    prefill: StepResult | None
    host_s: float = 0.0  # engine host seconds per output token step (prefill share included)


def largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
    """Largest b in [1, hi] with fits(b) (fits monotone: true then false); 0 when none.
    Bisection over the range by the standard library (log2(hi) calls of `fits`)."""
    return bisect.bisect_left(range(1, hi + 1), True, key=lambda b: not fits(b))


def capped_batch(fits: int, cap: int | None) -> int:
    """The running batch: the largest that fits, bounded by the workload's `max_batch` cap (the
    engine's configured maximum; None = no cap). 0 (nothing fits) stays 0."""
    if cap is None or fits <= 0:
        return fits
    return min(fits, cap)


class _Host:
    """An engine profile applied to whole-deployment step shapes (module docstring)."""

    def __init__(self, profile: EngineProfile | None, replicas: int, budget: int | None = None):
        self.profile, self.replicas = profile, max(1, replicas)
        self.budget = PREFILL_TOKENS_PER_STEP if budget is None else budget

    def decode(self, gpu_s: float, batch: int) -> float:
        p = self.profile
        return gpu_s if p is None else p.step_time(gpu_s, batch / self.replicas)

    def prefill(self, gpu_s: float, prompts: int, input_tokens: int) -> float:
        p = self.profile
        if p is None:
            return gpu_s
        per_replica = prompts / self.replicas
        k = prefill_iterations(math.ceil(per_replica), input_tokens, self.budget)
        return p.step_time(gpu_s, per_replica, k)


def microbatch_split(seqs: int, pp: int, replicas: int = 1) -> tuple[int, int]:
    """(sequences per micro-batch of one engine instance, micro-batches in flight) of `seqs`
    deployment sequences over `replicas` engine instances of `pp` stages: each instance's
    ``ceil(seqs / replicas)`` sequences split into micro-batches of ``ceil(b / pp)``, as many as
    that takes (at most `pp`)."""
    b = -(-seqs // max(1, replicas))
    m = -(-b // pp)
    return m, -(-b // m)


def pipelined(step: StepFn, pp: int, replicas: int = 1) -> StepFn:
    """`step` as a pipeline-parallel engine runs it in steady state (`mapping.pipeline_microbatches`,
    docs/simulator.md "Pipeline"): the batch of each of the `replicas` engine instances splits into
    micro-batches of ``ceil(b / pp)`` sequences (prompts, for a prefill), one in each of the `pp`
    stages; each stage's time (its hand-off send included) is evaluated at the micro-batch, and
    the step's `time_s` is the pipeline period (`engine.pipeline_period`) in which every sequence
    of the batch advances one step. The breakdown is the micro-batch's times the micro-batches in
    flight (all work of one period); `stage_times_s` are the micro-batch's. pp 1: `step` itself."""
    if pp <= 1:
        return step
    memo: dict[StepShape, StepResult] = {}

    def run(shape: StepShape) -> StepResult:
        hit = memo.get(shape)
        if hit is not None:
            return hit
        if shape.is_mixed or shape.routed is not None:
            from codesign.errors import CodesignError

            raise CodesignError("mapping.pipeline_microbatches: mixed or lock-step steps are not yet supported "
                                "(steady-state decode, offline, batch and prefill modes only)")
        g = shape.groups[0]
        m, n = microbatch_split(g.seqs, pp, replicas)
        r = step(StepShape((Group(m * max(1, replicas), g.new_tokens, g.cached_tokens, g.logits),)))
        if math.isnan(r.time_s) or not r.stage_times_s:  # a deferred (unsimulated) step
            return r
        hit = memo[shape] = _repeated(r, n, pipeline_period(r.stage_times_s, n), list(r.stage_times_s))
        return hit

    return run


def decode_mode(step: StepFn, max_batch: int, context: int, input_tokens: int, tpot_slo: float | None,
                host: EngineProfile | None = None, replicas: int = 1) -> ModeResult:
    """Steady-state decode at `context` tokens of KV per sequence (`host`: the engine's host
    overhead over `replicas` engine instances, module docstring)."""
    h = _Host(host, replicas)
    batch = max_batch
    if tpot_slo is not None:
        batch = largest_fitting(lambda b: h.decode(step(StepShape.decode(b, context)).time_s, b) <= tpot_slo, max_batch)
        if batch == 0:
            batch = 1  # report the smallest batch and let the caller flag the missed SLO
    d = step(StepShape.decode(batch, context))
    t = h.decode(d.time_s, batch)
    ttft = h.prefill(step(StepShape.prefill(1, input_tokens)).time_s, 1, input_tokens)
    bottleneck = "host" if t - d.time_s > d.time_s else d.bottleneck
    return ModeResult(batch, context, batch / t, 0.0, ttft, t, bottleneck, d, None, t - d.time_s)


def decode_context(input_tokens: int, output: "int | TokenDist") -> int:
    """Mean KV length of a running sequence in steady-state offline/batch serving (module
    docstring): ``input + output // 2`` for a fixed output length; with a distribution of mean m and
    coefficient of variation cv (the distribution's own default cv when none is given), the
    token-weighted ``input + round((m (1 + cv^2) - 1) / 2)``."""
    from codesign.scenario import TokenDist

    if not isinstance(output, TokenDist):
        return input_tokens + int(output) // 2
    if output.dist == "fixed":
        return input_tokens + output.mean // 2
    from codesign.sim.serving.arrivals import DEFAULT_CV

    cv = output.cv if output.cv is not None else DEFAULT_CV[output.dist]
    return input_tokens + max(0, round((output.mean * (1.0 + cv * cv) - 1.0) / 2.0))


def serving_mode(step: StepFn, batch: int, input_tokens: int, output_tokens: int, tpot_slo: float | None,
                 max_batch: int | None = None, mean_context: int | None = None,
                 host: EngineProfile | None = None, replicas: int = 1,
                 prefill_budget: int | None = None) -> ModeResult:
    """Offline (batch = the largest that fits) or fixed-concurrency serving with continuous batching.
    `mean_context`: the decode steps' KV length (`decode_context`); None = input + output // 2.
    `host`: the engine's host overhead over `replicas` engine instances (module docstring).
    `prefill_budget`: prompt tokens per prefill step and engine instance (`chunked_prefill`); None:
    the batch's prompts as one step."""
    mean_ctx = mean_context if mean_context is not None else input_tokens + output_tokens // 2
    h = _Host(host, replicas, prefill_budget)

    def costs(b: int) -> tuple[StepResult, StepResult, float, float, float]:
        d = step(StepShape.decode(b, mean_ctx))
        if prefill_budget is None:
            p = step(StepShape.prefill(b, input_tokens))
        else:
            p = chunked_prefill(step, b, input_tokens, replicas, prefill_budget)
        d_t, p_t = h.decode(d.time_s, b), h.prefill(p.time_s, b, input_tokens)
        return d, p, p_t + output_tokens * d_t, d_t, p_t

    if tpot_slo is not None and max_batch:
        batch = largest_fitting(lambda b: costs(b)[2] / output_tokens <= tpot_slo, max_batch) or 1
    d, p, total, d_t, p_t = costs(batch)
    out_rate = batch * output_tokens / total
    in_rate = batch * input_tokens / total
    # TTFT: one chunked-prefill step's worth of prompts (every engine instance's) ahead of a
    # request's first token.
    per_chunk = max(1, min(batch, chunk_prompts(input_tokens, replicas, prefill_budget)))
    ttft = p_t * per_chunk / batch
    gpu = p.time_s + output_tokens * d.time_s
    if total - gpu > gpu:
        bottleneck = "host"
    else:
        bottleneck = d.bottleneck if output_tokens * d.time_s >= p.time_s else p.bottleneck
    return ModeResult(batch, mean_ctx, out_rate, in_rate, ttft, total / output_tokens, bottleneck, d, p,
                      (total - gpu) / output_tokens)


def prefill_mode(step: StepFn, max_batch: int, input_tokens: int, host: EngineProfile | None = None,
                 replicas: int = 1, prefill_budget: int | None = None) -> ModeResult:
    """Prompt processing only: as many whole prompts per step as the chunk budget of the
    `replicas` engine instances allows (`chunk_prompts`, `prefill_budget` tokens per engine instance
    or `PREFILL_TOKENS_PER_STEP`; `host`: the engine's host overhead, one scheduler iteration per step)."""
    batch = max(1, min(max_batch, chunk_prompts(input_tokens, replicas, prefill_budget)))
    p = step(StepShape.prefill(batch, input_tokens))
    t = host.step_time(p.time_s, batch / max(1, replicas)) if host is not None else p.time_s
    bottleneck = "host" if t - p.time_s > p.time_s else p.bottleneck
    return ModeResult(batch, input_tokens, 0.0, batch * input_tokens / t, t, None, bottleneck, None, p, t - p.time_s)


__all__ = ["ModeResult", "microbatch_split", "pipelined", "capped_batch", "chunk_prompts", "chunked_prefill", "decode_context", "decode_mode", "serving_mode", "prefill_mode", "largest_fitting", "PREFILL_TOKENS_PER_STEP"]
