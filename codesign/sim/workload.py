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
* ``prefill`` -- prompts only: ``PREFILL_TOKENS_PER_STEP`` prompt tokens per step.
* ``server``  -- Poisson arrivals with SLOs: not supported yet (an infeasible row says so).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

from typing import TYPE_CHECKING

from codesign.graph.shape import StepShape
from codesign.sim.engine import StepResult

# Prompt tokens batched into one prefill step in `prefill` mode and for TTFT: vLLM's and SGLang's
# default chunked-prefill budgets are 8-16K tokens per step (max_num_batched_tokens /
# chunked_prefill_size); named assumption, overridable per call.
PREFILL_TOKENS_PER_STEP = 16_384

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


def decode_mode(step: StepFn, max_batch: int, context: int, input_tokens: int, tpot_slo: float | None) -> ModeResult:
    """Steady-state decode at `context` tokens of KV per sequence."""
    batch = max_batch
    if tpot_slo is not None:
        batch = largest_fitting(lambda b: step(StepShape.decode(b, context)).time_s <= tpot_slo, max_batch)
        if batch == 0:
            batch = 1  # report the smallest batch and let the caller flag the missed SLO
    d = step(StepShape.decode(batch, context))
    ttft = step(StepShape.prefill(1, input_tokens)).time_s
    return ModeResult(batch, context, batch / d.time_s, 0.0, ttft, d.time_s, d.bottleneck, d, None)


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
                 max_batch: int | None = None, mean_context: int | None = None) -> ModeResult:
    """Offline (batch = the largest that fits) or fixed-concurrency serving with continuous batching.
    `mean_context`: the decode steps' KV length (`decode_context`); None = input + output // 2."""
    mean_ctx = mean_context if mean_context is not None else input_tokens + output_tokens // 2

    def costs(b: int) -> tuple[StepResult, StepResult, float]:
        d = step(StepShape.decode(b, mean_ctx))
        p = step(StepShape.prefill(b, input_tokens))
        total = p.time_s + output_tokens * d.time_s
        return d, p, total

    if tpot_slo is not None and max_batch:
        batch = largest_fitting(lambda b: costs(b)[2] / output_tokens <= tpot_slo, max_batch) or 1
    d, p, total = costs(batch)
    out_rate = batch * output_tokens / total
    in_rate = batch * input_tokens / total
    # TTFT: one chunked-prefill step's worth of prompts ahead of a request's first token.
    per_chunk = max(1, min(batch, PREFILL_TOKENS_PER_STEP // max(input_tokens, 1)))
    ttft = p.time_s * per_chunk / batch
    bottleneck = d.bottleneck if output_tokens * d.time_s >= p.time_s else p.bottleneck
    return ModeResult(batch, mean_ctx, out_rate, in_rate, ttft, total / output_tokens, bottleneck, d, p)


def prefill_mode(step: StepFn, max_batch: int, input_tokens: int) -> ModeResult:
    """Prompt processing only: as many whole prompts per step as the chunk budget allows."""
    batch = max(1, min(max_batch, PREFILL_TOKENS_PER_STEP // max(input_tokens, 1)))
    p = step(StepShape.prefill(batch, input_tokens))
    return ModeResult(batch, input_tokens, 0.0, batch * input_tokens / p.time_s, p.time_s, None, p.bottleneck, None, p)


__all__ = ["ModeResult", "capped_batch", "decode_context", "decode_mode", "serving_mode", "prefill_mode", "largest_fitting", "PREFILL_TOKENS_PER_STEP"]
