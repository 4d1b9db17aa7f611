"""Mapping options: the named knobs of how a plan runs, beyond the plan itself.

Each field is a modelling assumption with a default that matches how production engines run
(docs/mapping.md), reachable from a scenario's `mapping:` section and from `simulate(mapping=...)`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from codesign.mapping.collectives import ALGORITHMS


class MappingOptions(BaseModel):
    """How the mapping places experts, sends tokens and reduces partial results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Two-batch overlap (each layer as two half micro-batches so that one's communication hides
    # under the other's compute; SGLang's and DeepSeek's EP decode run it): True, False, or None =
    # "auto" (per layer kind, used when it is faster; codesign/sim/engine.py).
    two_batch_overlap: bool | None = None
    # Pipeline micro-batches in flight (steady-state modes: decode, offline, batch, prefill): a plan
    # of pp > 1 stages runs each step as pp micro-batches of ceil(batch / pp) sequences per engine
    # instance, one in every stage, and a step takes the pipeline period, pp x the slowest stage at
    # the micro-batch (TensorRT-LLM's in-flight batching and vLLM's pipeline parallelism). False:
    # one batch passes the stages in turn (their sum). Server mode refuses True (not yet
    # supported). docs/mapping.md "Pipeline micro-batches".
    pipeline_microbatches: bool = False
    # Expert placement over EP ranks: contiguous blocks, round robin, or an explicit rank per expert.
    placement: Literal["contiguous", "round_robin"] | tuple[int, ...] = "contiguous"
    # EP dispatch payload in FP8 (DeepEP's default with FP8 activations). None: FP8 when the
    # activations are FP8 or FP4, else the activation dtype.
    dispatch_fp8: bool | None = None
    # Dispatch sends a token once per distinct destination rank (DeepEP), not once per expert.
    dispatch_dedup: bool = True
    # EP dispatch/combine kernels (DeepEP's two kinds): "normal" (deduplicated per destination rank;
    # across scale-up domains once per destination node over the NIC, then forwarded over NVLink:
    # prefill-class throughput kernels), "low_latency" (one message per (token, expert), no
    # deduplication, `efficiency.low_latency_collective` and `low_latency_overhead`: decode-class
    # kernels) or "auto" (low-latency for a step that only decodes, normal otherwise: SGLang's
    # `--deepep-mode auto`, its default). docs/mapping.md "Expert-parallel all-to-all".
    all_to_all_mode: Literal["normal", "low_latency", "auto"] = "normal"
    # How tokens reach their experts at expert parallelism with attention data parallelism:
    # "all_to_all" (dispatch/combine above: each token to the ranks of its experts) or "all_gather"
    # (every attention group's tokens all-gathered to every EP rank before the experts and the
    # outputs reduce-scattered back after them, whatever the routing: TensorRT-LLM's attention-DP
    # MoE where its one-sided all-to-all is unavailable, i.e. without multi-node NVLink, as on one
    # 8x H200 node). The all-gather carries the hidden states in BF16 unless `dispatch_fp8` is
    # True (FP8 with its scales); needs attention_dp > 1 and moe_tp 1. docs/mapping.md
    # "Expert-parallel all-to-all".
    ep_exchange: Literal["all_to_all", "all_gather"] = "all_to_all"
    # All-reduce algorithm: None / "auto" = the fastest per message of NCCL's choice (ring, or NVLS
    # where the spec's collective curves have it), two-shot and one-shot (the serving engines'
    # tuners); "nccl" = NCCL's choice only; or force one of codesign.mapping.collectives.ALGORITHMS.
    allreduce_algorithm: str | None = None
    # Dtype of reductions (all-reduce, reduce-scatter, EP combine, logits gather).
    reduce_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    # Fraction of HBM held back for the runtime, CUDA-graph pools and fragmentation.
    reserve_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    # How the KV-cache pool of a request stream (server mode) is sized: "reserve" = HBM minus
    # weights, one step's activations and `reserve_fraction` (the default); "vllm" = vLLM V1's
    # start-up rule, `gpu_memory_utilization` x HBM - weights - the peak of its profiling pass
    # (a forward of max_num_batched_tokens tokens and a sampler run of max_num_seqs rows) -
    # `kv_pool_non_torch_gib`, with vLLM's refusal to start unless one `max_model_len` sequence
    # fits (codesign/mapping/kv_pool.py; docs/cost-model.md "vLLM's KV pool").
    kv_pool: Literal["reserve", "vllm"] = "reserve"
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)  # vLLM's default 0.9
    # Memory outside torch's allocator that appears while vLLM profiles (not computable from the
    # model; 0 makes the pool an upper bound).
    kv_pool_non_torch_gib: float = Field(default=0.0, ge=0.0, le=1024.0)
    # Bytes live per (sampled row, vocabulary entry) at the peak of vLLM's dummy sampler run: 14 =
    # 16-bit logits + fp32 copy + two fp32 working tensors (FlashInfer top-k/top-p in v0.11.0,
    # v0.17.1's native path); ~28 for v0.11.0's sort-based path without FlashInfer.
    sampler_bytes_per_logit: float = Field(default=14.0, ge=0.0, le=1024.0)
    # vLLM's `--max-model-len` (None: the model's max_position_embeddings, vLLM's default), for
    # its start check.
    max_model_len: int | None = Field(default=None, ge=1, le=1 << 24)

    @model_validator(mode="after")
    def _pool_fields_act(self) -> "MappingOptions":
        # a value other than the default where it does not act is refused (a dumped point re-validates
        # with every field set, so the test is on the value, not on which fields were given)
        def moved(name: str) -> bool:
            return getattr(self, name) != type(self).model_fields[name].default

        vllm_only = ("gpu_memory_utilization", "kv_pool_non_torch_gib", "sampler_bytes_per_logit", "max_model_len")
        if self.kv_pool == "reserve":
            for name in vllm_only:
                if moved(name):
                    raise ValueError(f"{name} acts only with kv_pool 'vllm' (vLLM's pool rule); found kv_pool 'reserve'")
        elif moved("reserve_fraction"):
            raise ValueError("reserve_fraction acts only with kv_pool 'reserve'; kv_pool 'vllm' holds back "
                             "1 - gpu_memory_utilization instead")
        return self

    @field_validator("allreduce_algorithm")
    @classmethod
    def _algorithm(cls, algo: str | None) -> str | None:
        if algo is not None and algo not in ALGORITHMS:
            raise ValueError(f"expected one of {', '.join(ALGORITHMS)}")
        return algo

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "mapping") -> "MappingOptions":
        """Options from a scenario's `mapping:` mapping; errors name the field."""
        if data is None:
            return cls()
        if isinstance(data, MappingOptions):
            return data
        from codesign import spec_files

        return spec_files.validate(cls, data, source)

    def map_kwargs(self) -> dict:
        """Keyword arguments of `codesign.mapping.map_step`."""
        return {"placement": self.placement, "dispatch_fp8": self.dispatch_fp8, "dispatch_dedup": self.dispatch_dedup,
                "all_to_all_mode": self.all_to_all_mode, "allreduce_algorithm": self.allreduce_algorithm,
                "reduce_dtype": self.reduce_dtype, "ep_exchange": self.ep_exchange}


__all__ = ["MappingOptions"]
