"""Serving-engine host overhead: the time per scheduler iteration that the accelerator does not run
model kernels because the engine's CPU side is working.

Every iteration of a continuous-batching engine does CPU work besides launching the model: it
schedules the next batch, prepares its inputs (token ids, positions, block tables, slot mappings),
copies the sampled tokens back, turns them into per-request objects, checks stop conditions and
(optionally) detokenises. Part of it is per iteration, part grows with the running sequences. How
much of it the accelerator waits for depends on the engine:

* **synchronous** engines (vLLM V0 up to 0.5.x) do it between two forward passes: the step takes
  ``gpu + host``;
* **overlapping** engines (an overlap scheduler: the next step is launched before the previous
  step's outputs are processed; SGLang's zero-overhead scheduler, TensorRT-LLM's PyTorch overlap
  scheduler, vLLM V1 ``--async-scheduling``) hide it behind the previous step, except what exceeds
  it: the step takes ``max(gpu, host)``;
* **multi-step** scheduling (vLLM 0.6 ``num_scheduler_steps``) runs ``n`` forward passes per
  scheduler call: the host time is divided by ``n`` before the rule above (``multi_step_outputs:
  amortized``, the default), or only its per-iteration part is, with the per-sequence output
  processing paid every forward pass (``per_step``: vLLM V0's multi-step output processor appends
  and stop-checks every token of every sequence, and without asynchronous output processing the
  GPU waits for it).

``host = step_s + per_seq_s x (running sequences of one engine instance)``. Each data-parallel
replica (``parallel.dp`` x ``parallel.attention_dp``) runs its own engine and scheduler on its own
CPU process, so the per-sequence term counts one replica's sequences, and replicas overlap each
other. A prefill of ``n`` prompts in ``k`` chunked iterations pays ``k x step_s + n x per_seq_s``.

Each `ENGINES` entry names its figures' sources (docs/cost-model.md, "Engine effect: host
overhead"); an engine whose per-step host time is not published is **neutral** (zero) and says so.
A scenario names its engine in ``workload.engine`` (a name, or a mapping with ``name`` and any of
``step_s``, ``per_seq_s``, ``detokenize_per_seq_s``, ``overlap``, ``multi_step``, ``detokenize``,
``multi_step_outputs`` to override its figures; a mapping without a name is a custom engine). ``detokenize: false`` (requests
that return token ids only) removes the engine's detokenisation share from ``per_seq_s``. No engine:
no host overhead (the model's kernels back to back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from codesign.errors import CodesignError, format_validation_error
from codesign.scenario import EngineSpec


@dataclass(frozen=True)
class EngineProfile:
    """One serving engine's host-side cost per scheduler iteration (module docstring)."""

    name: str
    step_s: float  # host seconds per iteration, independent of the batch
    per_seq_s: float  # host seconds per running sequence of one engine instance, per iteration
    overlap: bool  # host work hidden behind the accelerator's previous step (except the excess)
    multi_step: int = 1  # forward passes per scheduler call (host time divided by it)
    # incremental detokenisation per running sequence per iteration, on the critical path (part of
    # per_seq_s as measured; requests with detokenize off skip it)
    detokenize_per_seq_s: float = 0.0
    detokenize: bool = True  # whether the requests are detokenised (vLLM's default: yes)
    # "amortized": multi_step divides the whole host time; "per_step": it divides step_s only and
    # the per-sequence term is paid every forward pass (module docstring)
    multi_step_outputs: str = "amortized"
    source: str = ""

    @property
    def neutral(self) -> bool:
        return self.step_s == 0.0 and self.per_seq_s == 0.0

    @property
    def seq_s(self) -> float:
        """Host seconds per running sequence per iteration, detokenisation removed when off."""
        return self.per_seq_s if self.detokenize else max(0.0, self.per_seq_s - self.detokenize_per_seq_s)

    def host_s(self, seqs: float, iterations: int = 1) -> float:
        """Host seconds of `iterations` scheduler iterations over `seqs` running sequences (one
        engine instance), per forward pass: amortised over `multi_step` forward passes, all of it
        (`multi_step_outputs` "amortized") or the per-iteration term only ("per_step")."""
        if self.multi_step_outputs == "per_step":
            return iterations * self.step_s / self.multi_step + seqs * self.seq_s
        return (iterations * self.step_s + seqs * self.seq_s) / self.multi_step

    def step_time(self, gpu_s: float, seqs: float, iterations: int = 1) -> float:
        """Wall time of a step whose accelerator time is `gpu_s`: ``gpu + host`` for a synchronous
        engine, ``max(gpu, host)`` for an overlapping one."""
        host = self.host_s(seqs, iterations)
        return max(gpu_s, host) if self.overlap else gpu_s + host


def _mean_us(*us: float) -> float:
    """Seconds: the mean of microsecond timings as a source prints them."""
    return sum(us) / len(us) * 1e-6


# The engines the validation rows ran and the figures published for them. Seconds; sources in
# docs/cost-model.md ("Engine effect: host overhead"), where each figure is quoted with its URL.
ENGINES: dict[str, EngineProfile] = {
    # vLLM V0 LLMEngine before v0.6.0 (mid-2024): scheduler, input preparation, sampler output
    # and output processing run between forward passes, blocking the GPU.
    # step_s: ~4 ms GPU bubble per decode step in the multi-step RFC's trace (5-13 ms quoted),
    #   Llama-3-8B on one H100 (github.com/vllm-project/vllm/issues/6854).
    # per_seq_s: `_process_model_outputs` 0.2 ms at batch 1 and 3.4 ms at batch 32, Llama-3-70B FP8
    #   on 4x H100 (github.com/vllm-project/vllm/issues/6913): (3.4 - 0.2) / 31 = 0.103 ms per
    #   sequence (detokenisation and RequestOutput creation included: vllm PR #7049 discussion).
    # detokenize_per_seq_s: `detokenize_incrementally` per call after vllm PR #5207 (June 2024), the
    #   mean of the nine timings printed in github.com/vllm-project/vllm/issues/5206: 26 us.
    "vllm-0.5": EngineProfile("vllm-0.5", step_s=4.0e-3, per_seq_s=(3.4e-3 - 0.2e-3) / 31, overlap=False,
                              detokenize_per_seq_s=_mean_us(18.12, 17.88, 17.64, 37.91, 29.56, 55.55, 22.17, 17.88,
                                                            17.17),
                              source="vllm-project/vllm issues 6854 (step), 6913 (per sequence), 5206 "
                                     "(detokenisation)"),
    # TensorRT-LLM as NVIDIA's MLPerf Inference harness ran it (C++ runtime, CUDA graphs), v4.1
    # (2024) and v5.0 (2025) rounds: no per-step host figure is published for either.
    "tensorrt-llm-mlperf-v4.1": EngineProfile("tensorrt-llm-mlperf-v4.1", 0.0, 0.0, overlap=False,
                                              source="none published: neutral"),
    "tensorrt-llm-mlperf-v5.0": EngineProfile("tensorrt-llm-mlperf-v5.0", 0.0, 0.0, overlap=False,
                                              source="none published: neutral"),
    # vLLM 0.11 (V1 engine core; detokenisation in the front-end process): no per-step host figure
    # is published for this version (the V1 blog gives only throughput ratios vs V0).
    "vllm-0.11": EngineProfile("vllm-0.11", 0.0, 0.0, overlap=False, source="none published: neutral"),
    # vLLM 0.14 and later (0.17.1 ran the Qwen3.5-35B-A3B rows): asynchronous scheduling is on by
    # default ("Async scheduling has been enabled by default since v0.14.0",
    # github.com/vllm-project/vllm/pull/33352; it turns it off only for Mamba-style models with
    # prefix caching, which hybrid models keep off by default until vllm PR #50991, 2026-08), so
    # the host work of step n+1 runs while step n computes: max(gpu, host). No per-iteration host
    # figure of a GPU build is published for these versions: neutral.
    "vllm-0.17": EngineProfile("vllm-0.17", 0.0, 0.0, overlap=True,
                               source="async scheduling by default (vllm PR 33352); no figure published: neutral"),
    # DeepSeek's production inference system (Feb 2025 overview): its own engine, no host figure.
    "deepseek-production": EngineProfile("deepseek-production", 0.0, 0.0, overlap=False,
                                         source="none published: neutral"),
}


def engine_profile(spec: str | EngineSpec | dict[str, Any] | None) -> EngineProfile | None:
    """The profile `workload.engine` names (None: no engine, no host overhead). An unknown name is
    a `CodesignError` listing the known ones."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        try:
            spec = EngineSpec.model_validate(spec)
        except ValidationError as e:
            raise CodesignError(format_validation_error("workload.engine", e)) from None
    name = spec if isinstance(spec, str) else spec.name
    if name is not None and name not in ENGINES:
        raise CodesignError(f"workload.engine: expected one of {', '.join(sorted(ENGINES))} "
                            f"(or a mapping with step_s / per_seq_s), found {name!r}")
    if isinstance(spec, str):
        return ENGINES[spec]
    base = ENGINES[name] if name is not None else EngineProfile("custom", 0.0, 0.0, overlap=False, source="scenario")
    figures = ("step_s", "per_seq_s", "detokenize_per_seq_s")
    overridden = any(getattr(spec, f) is not None for f in figures)
    pick = lambda f: getattr(base, f) if getattr(spec, f) is None else getattr(spec, f)  # noqa: E731
    return EngineProfile(
        name=f"{base.name} (overridden)" if (overridden and name is not None) else base.name,
        step_s=pick("step_s"), per_seq_s=pick("per_seq_s"), overlap=pick("overlap"), multi_step=pick("multi_step"),
        detokenize_per_seq_s=pick("detokenize_per_seq_s"), detokenize=pick("detokenize"),
        multi_step_outputs=pick("multi_step_outputs"),
        source=base.source if name is not None else "scenario",
    )


def prefill_iterations(prompts: int, input_tokens: int, tokens_per_step: int) -> int:
    """Scheduler iterations that prefill `prompts` prompts of `input_tokens` with a budget of
    `tokens_per_step` prompt tokens per iteration (at least one)."""
    return max(1, math.ceil(prompts * max(input_tokens, 1) / max(tokens_per_step, 1)))


__all__ = ["ENGINES", "EngineProfile", "EngineSpec", "engine_profile", "prefill_iterations"]
