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
  scheduler call: the host time is divided by ``n`` before the rule above.

``host = step_s + per_seq_s x (running sequences of one engine instance)``. Each data-parallel
replica (``parallel.dp`` x ``parallel.attention_dp``) runs its own engine and scheduler on its own
CPU process, so the per-sequence term counts one replica's sequences, and replicas overlap each
other. A prefill of ``n`` prompts in ``k`` chunked iterations pays ``k x step_s + n x per_seq_s``.

Each `ENGINES` entry names its figures' sources (docs/cost-model.md, "Engine effect: host
overhead"); an engine whose per-step host time is not published is **neutral** (zero) and says so.
A scenario names its engine in ``workload.engine`` (a name, or a mapping with ``name`` and any of
``step_s``, ``per_seq_s``, ``overlap``, ``multi_step`` to override its figures; a mapping without a
name is a custom engine). No engine: no host overhead (the model's kernels back to back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from codesign.errors import CodesignError
from codesign.scenario import EngineSpec


@dataclass(frozen=True)
class EngineProfile:
    """One serving engine's host-side cost per scheduler iteration (module docstring)."""

    name: str
    step_s: float  # host seconds per iteration, independent of the batch
    per_seq_s: float  # host seconds per running sequence of one engine instance, per iteration
    overlap: bool  # host work hidden behind the accelerator's previous step (except the excess)
    multi_step: int = 1  # forward passes per scheduler call (host time divided by it)
    source: str = ""

    @property
    def neutral(self) -> bool:
        return self.step_s == 0.0 and self.per_seq_s == 0.0

    def host_s(self, seqs: float, iterations: int = 1) -> float:
        """Host seconds of `iterations` scheduler iterations over `seqs` running sequences (one
        engine instance), amortised over `multi_step` forward passes."""
        return (iterations * self.step_s + seqs * self.per_seq_s) / self.multi_step

    def step_time(self, gpu_s: float, seqs: float, iterations: int = 1) -> float:
        """Wall time of a step whose accelerator time is `gpu_s`: ``gpu + host`` for a synchronous
        engine, ``max(gpu, host)`` for an overlapping one."""
        host = self.host_s(seqs, iterations)
        return max(gpu_s, host) if self.overlap else gpu_s + host


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
    "vllm-0.5": EngineProfile("vllm-0.5", step_s=4.0e-3, per_seq_s=(3.4e-3 - 0.2e-3) / 31, overlap=False,
                              source="vllm-project/vllm issues 6854 (step) and 6913 (per sequence)"),
    # TensorRT-LLM of MLPerf Inference v4.1 / v5.0 (NVIDIA's C++ harness, CUDA graphs): no per-step
    # host figure is published for it.
    "tensorrt-llm-2024": EngineProfile("tensorrt-llm-2024", 0.0, 0.0, overlap=False,
                                       source="none published: neutral"),
    # vLLM 0.11 (V1 engine core; detokenisation in the front-end process): no per-step host figure
    # is published for this version (the V1 blog gives only throughput ratios vs V0).
    "vllm-0.11": EngineProfile("vllm-0.11", 0.0, 0.0, overlap=False, source="none published: neutral"),
    # DeepSeek's production inference system (Feb 2025 overview): its own engine, no host figure.
    "deepseek-production": EngineProfile("deepseek-production", 0.0, 0.0, overlap=True,
                                         source="none published: neutral"),
}

def engine_profile(spec: str | EngineSpec | dict[str, Any] | None) -> EngineProfile | None:
    """The profile `workload.engine` names (None: no engine, no host overhead). An unknown name is
    a `CodesignError` listing the known ones."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        spec = EngineSpec.model_validate(spec)
    name = spec if isinstance(spec, str) else spec.name
    if name is not None and name not in ENGINES:
        raise CodesignError(f"workload.engine: expected one of {', '.join(sorted(ENGINES))} "
                            f"(or a mapping with step_s / per_seq_s), found {name!r}")
    if isinstance(spec, str):
        return ENGINES[spec]
    base = ENGINES[name] if name is not None else EngineProfile("custom", 0.0, 0.0, overlap=False, source="scenario")
    return EngineProfile(
        name=base.name if (spec.step_s is None and spec.per_seq_s is None) else f"{base.name} (overridden)",
        step_s=base.step_s if spec.step_s is None else spec.step_s,
        per_seq_s=base.per_seq_s if spec.per_seq_s is None else spec.per_seq_s,
        overlap=base.overlap if spec.overlap is None else spec.overlap,
        multi_step=base.multi_step if spec.multi_step is None else spec.multi_step,
        source=base.source if name is not None else "scenario",
    )


def prefill_iterations(prompts: int, input_tokens: int, tokens_per_step: int) -> int:
    """Scheduler iterations that prefill `prompts` prompts of `input_tokens` with a budget of
    `tokens_per_step` prompt tokens per iteration (at least one)."""
    return max(1, math.ceil(prompts * max(input_tokens, 1) / max(tokens_per_step, 1)))


__all__ = ["ENGINES", "EngineProfile", "EngineSpec", "engine_profile", "prefill_iterations"]
