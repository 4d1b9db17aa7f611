"""Serving configuration: the scheduler's policy knobs and the request stream, validated by pydantic.

This module imports nothing from the simulator, so `codesign.scenario` can validate a scenario's
`workload.scheduler` mapping through it (the pattern precision and cost options follow).

Scheduler defaults are **vLLM V1's** for `vllm serve` (the OpenAI API server) on GPUs with at
least 70 GiB of memory other than A100 (H100, H200, MI300X, B200), from
`vllm/engine/arg_utils.py` (`EngineArgs.get_batch_defaults`, vLLM 0.9-0.11) and
`vllm/config` (`CacheConfig.block_size`):

* ``max_num_seqs`` = 1024 sequences in flight per engine;
* ``max_num_batched_tokens`` = 8192 tokens per step per engine (the chunked-prefill budget; vLLM
  V1 always chunks prefills);
* on chips with less than 70 GiB of memory, and on A100s, vLLM's defaults are 256 and 2048
  (`engine_defaults` applies the same rule to the hardware spec: HBM capacity and name);
* ``block_size`` = 16 tokens per KV-cache page;
* preemption by **recompute** (V1's only mode: a preempted request frees its blocks and is
  prefilled again, prompt and generated tokens, when it is rescheduled);
* scheduling FCFS; prefix caching on in vLLM, with a hit rate that depends on the prompts: here
  ``prefix_cache_hit_rate`` = 0 (random prompts, as `vllm bench serve --dataset-name random`);
* ``chunked_prefill`` on (vLLM V1 always chunks prompts to the token budget);
* ``capacity_policy`` ``max_utilization``: admit while the pages a request needs *now* fit and
  preempt when a running request cannot grow (vLLM's only policy; TensorRT-LLM's
  ``MAX_UTILIZATION``, which pauses requests).
* ``admit_after_preemption`` false: an iteration that preempted a running request admits no
  waiting request (`vllm/v1/core/sched/scheduler.py`, `Scheduler.schedule`: the waiting loop runs
  under ``if not preempted_reqs:``, v0.11.0 and v0.17.1);
* ``stalled_prefill`` ``wait``: a partially prefilled request whose next chunk cannot get pages,
  with no newer request left to preempt, keeps its pages and retries next step. vLLM V1 pops the
  newest running request, itself included, until the allocation fits; with prefix caching (on by
  default) its computed pages stay cached and its readmission, first in the queue, cannot be
  placed until its cached pages and the next chunk fit, so it resumes where it stopped: the same
  schedule. ``preempt`` frees its pages for a full recompute: vLLM V1 without prefix caching.

Two knobs exist for other engines' settings (named by what they do, validated here, acting in
`codesign.sim.serving.scheduler`):

* ``chunked_prefill: false`` -- a prompt is computed whole in one step, admitted only when all of
  it fits the step's remaining token budget (TensorRT-LLM without ``enable_chunked_context``, the
  default of its executor and of the NVIDIA MLPerf harness); a prompt longer than the budget is
  refused up front, as TensorRT-LLM refuses one above ``max_num_tokens`` without chunking;
* ``capacity_policy: guaranteed_no_evict`` -- a request is admitted only when the pages for its
  whole sequence (prompt + every output token) fit beside the whole sequences of the requests
  already admitted, so nothing is ever preempted (TensorRT-LLM's default
  ``CapacitySchedulerPolicy.GUARANTEED_NO_EVICT``, used by `trtllm-bench` and `trtllm-serve`).

Limits are **per engine** (one per data-parallel / attention-data-parallel replica, as vLLM runs
one scheduler per DP rank). Attention-DP ranks of a MoE deployment are scheduled each as its own
engine, stepping in lock step (``attention_dp_lockstep``, on by default;
`codesign.sim.serving.lockstep`; requests sent to ranks by ``attention_dp_dispatch``); ``dp``
replicas, and attention-DP ranks with the option off, are one engine with the limits multiplied
by their count (named assumption: requests are balanced evenly over replicas).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from codesign.errors import CodesignError, format_validation_error

ENGINE = "vllm-v1"  # whose defaults these are (see module docstring)


class SchedulerConfig(BaseModel):
    """Continuous batching with chunked prefill (`workload.scheduler:` in a scenario)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_num_seqs: int = Field(default=1024, gt=0)
    max_num_batched_tokens: int = Field(default=8192, gt=0)
    block_size: int = Field(default=16, gt=0)
    preemption: Literal["recompute"] = "recompute"
    prefix_cache_hit_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    chunked_prefill: bool = True
    capacity_policy: Literal["max_utilization", "guaranteed_no_evict"] = "max_utilization"
    # Attention-DP ranks in lock step (codesign.sim.serving.lockstep): None (the default) and true
    # schedule each attention-DP rank of a MoE deployment as its own engine, stepping together;
    # false: one engine with the limits x ranks, each step's tokens spread evenly over the ranks.
    attention_dp_lockstep: bool | None = None
    # Which rank a request goes to: the fewest requests in its system (TensorRT-LLM, vLLM) or in turn (SGLang).
    attention_dp_dispatch: Literal["balanced", "round_robin"] = "balanced"
    # A step that preempted a running request admits no waiting one (vLLM V1: `if not
    # preempted_reqs:` before its waiting loop); true: admit while budget and pages last anyway.
    admit_after_preemption: bool = False
    # A partially prefilled request that cannot get pages for its next chunk, with nothing newer
    # to preempt: "wait" keeps its pages and retries next step (vLLM V1 with prefix caching, its
    # default: the request pops itself, but its computed pages stay cached and its readmission
    # waits at the queue's head until they fit, resuming where it was); "preempt" frees its pages
    # and queues it first for a full recompute (vLLM V1 without prefix caching).
    stalled_prefill: Literal["preempt", "wait"] = "wait"

    @model_validator(mode="after")
    def _budget_covers_seqs(self) -> "SchedulerConfig":
        # vLLM refuses the same (SchedulerConfig: max_num_batched_tokens must be >= max_num_seqs):
        # every running sequence must be able to decode in one step.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                             f"max_num_seqs ({self.max_num_seqs})")
        return self


def engine_defaults(hbm_bytes: float | None = None, chip_name: str = "") -> dict[str, int]:
    """vLLM V1's `vllm serve` batch defaults for a chip: 1024 sequences and 8192 tokens per step with
    at least 70 GiB of memory (A100s excepted, vLLM PR #17885), else 256 and 2048. None: the former."""
    if hbm_bytes is None or (hbm_bytes >= 70 * 2**30 and "a100" not in chip_name.lower()):
        return {"max_num_seqs": 1024, "max_num_batched_tokens": 8192}
    return {"max_num_seqs": 256, "max_num_batched_tokens": 2048}


def scheduler_config(data: dict[str, Any] | SchedulerConfig | None, source: str = "workload.scheduler",
                     hw: Any = None) -> SchedulerConfig:
    """A validated `SchedulerConfig`: the fields given over the engine defaults for `hw` (a
    HardwareSpec; None: the large-GPU defaults); errors name `source` and the field."""
    if isinstance(data, SchedulerConfig):
        return data
    base = engine_defaults(hw.chip.hbm.capacity, hw.name) if hw is not None else {}
    try:
        return SchedulerConfig.model_validate({**base, **(data or {})})
    except ValidationError as e:
        raise CodesignError(format_validation_error(source, e)) from None


# Requests of a server run when the workload names neither `requests` nor a trace: enough for
# stable p99s at moderate load (MLPerf Server asks for far more; override with `requests:`).
DEFAULT_REQUESTS = 2000




class PoolConfig(BaseModel):
    """One pool of a disaggregated deployment: `instances` engines of `chips` chips each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instances: int = Field(default=1, gt=0)
    chips: int = Field(gt=0)
    parallel: dict[str, int] | None = None  # a ParallelPlan on `chips` chips (default tp = chips)
    precision: dict[str, Any] | None = None  # default: the scenario's


class DisaggregationConfig(BaseModel):
    """Prefill/decode disaggregation (`workload.disaggregation:`): separate pools, KV and state
    sent over `network` (default: scale-out when the spec has one, else scale-up). `search`: try
    every xPyD split of the scenario's chips into instances of these sizes and keep the best."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill: PoolConfig
    decode: PoolConfig
    network: Literal["scale_out", "scale_up"] | None = None
    search: bool = False


def disaggregation_config(data: dict[str, Any] | None, source: str = "workload.disaggregation") -> DisaggregationConfig | None:
    if not data:
        return None
    try:
        return DisaggregationConfig.model_validate(data)
    except ValidationError as e:
        raise CodesignError(format_validation_error(source, e)) from None


SERVER_ONLY = ("requests", "trace", "scheduler", "disaggregation", "step_model", "slo_search", "frontend")


def check_workload(w: Any, source: str, slo: Any = None) -> None:
    """A scenario's server-mode workload fields, validated through their owners (called by
    `codesign.scenario`; `w` is its `Workload`, `slo` its `SLO` or None)."""
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.sim.serving.ceiling import ceiling_config
    from codesign.sim.serving.frontend import frontend_config
    from codesign.sim.serving.steptime import StepTimeOptions

    scheduler_config(w.scheduler, f"{source}: workload.scheduler")
    ceiling_config(w.slo_search, f"{source}: workload.slo_search")
    searching = w.trace is None and w.rate_per_s is None and slo is not None and (slo.ttft_s or slo.tpot_s)
    if w.slo_search and w.mode == "server" and not searching:
        raise CodesignError(f"{source}: workload.slo_search: only acts in the SLO search (server mode with an slo "
                            "and neither rate_per_s nor trace), found it without one")
    dis = disaggregation_config(w.disaggregation, f"{source}: workload.disaggregation")
    if frontend_config(w.frontend, f"{source}: workload.frontend") is not None and dis is not None:
        raise CodesignError(f"{source}: workload.frontend: not yet supported with workload.disaggregation (its "
                            "pools' request path is not modelled); leave one of them unset")
    if dis is not None and (w.scheduler or {}).get("attention_dp_lockstep") is True:
        raise CodesignError(f"{source}: workload.scheduler.attention_dp_lockstep: true is not yet supported with "
                            "workload.disaggregation (its pools run as one engine each); leave it unset or false")
    for name, pool in (("prefill", dis.prefill), ("decode", dis.decode)) if dis is not None else ():
        try:
            if pool.parallel is not None:
                ParallelPlan.from_dict(pool.parallel)
            if pool.precision is not None:
                Precision.from_dict(pool.precision)
        except (CodesignError, TypeError) as e:
            raise CodesignError(f"{source}: workload.disaggregation.{name}: {e}") from None
    try:
        StepTimeOptions.from_dict(w.step_model)
    except (CodesignError, TypeError) as e:
        raise CodesignError(f"{source}: {e}") from None
    if w.mtp is not None and isinstance(w.mtp.acceptance, list) and len(w.mtp.acceptance) != w.mtp.tokens:
        raise CodesignError(f"{source}: workload.mtp.acceptance: expected {w.mtp.tokens} values (one per drafted "
                            f"token), found {len(w.mtp.acceptance)}")
    if w.mode != "server":
        for f in SERVER_ONLY:
            if getattr(w, f):
                raise CodesignError(f"{source}: workload.{f}: only acts in mode 'server' (request streams), "
                                    f"found it with mode {w.mode!r}")


__all__ = ["check_workload", "SERVER_ONLY", "SchedulerConfig", "scheduler_config", "ENGINE", "DEFAULT_REQUESTS", "PoolConfig", "DisaggregationConfig",
           "disaggregation_config"]
