"""vLLM's KV-cache pool rule (`mapping.kv_pool: vllm`), as vLLM V1 computes it at start-up.

vLLM v0.11.0 and v0.17.1 (`vllm/v1/worker/gpu_worker.py`, `Worker.determine_available_memory`;
`vllm/utils` `memory_profiling`) give the KV cache

    pool = gpu_memory_utilization x total memory - weights - torch peak increase - non-torch increase

where the torch peak increase is the peak of `torch.cuda` allocated bytes over `profile_run` (above
the weights): one dummy forward pass of `max_num_batched_tokens` tokens split over
`min(max_num_batched_tokens, max_num_seqs)` requests (`_dummy_run(self.max_num_tokens,
is_profile=True)`, no attention metadata, so the attention kernels do not run and no CUDA graph is
used), then `_dummy_sampler_run` on the last token of each request while the forward's hidden
states are still held. The non-torch increase is memory outside torch's allocator that appeared
between the worker's first snapshot (taken *after* the CUDA context and NCCL set-up, so neither is
charged) and the end of profiling. CUDA-graph memory is not charged in either version: graphs are
captured after the pool is allocated (`compile_or_warm_up_model`; v0.17.1 only logs it as a
suggested `--kv-cache-memory`), out of the `1 - gpu_memory_utilization` margin.

What this module computes, per chip (each a named assumption, docs/cost-model.md "vLLM's KV pool"):

* *Forward peak*: ``T x 2 bytes x (2 H + W)`` for ``T`` = `max_num_batched_tokens` tokens per
  engine instance (every TP rank holds all of them): the residual and the layer's input (``2 H``)
  plus the widest set of intermediates one block holds at once (``W``), in the checkpoint's 16-bit
  dtype (vLLM keeps activations in the model dtype between kernels; FP8 rows quantise inside each
  linear): attention ``qkv_proj`` output plus the attention output; dense MLP ``gate_up_proj``
  output plus ``SiluAndMul``'s (``3 I / tp``); Triton fused MoE (`fused_experts_impl`) its
  ``cache13`` (``top_k x max(2 I / tp, H)``), ``cache2`` (``top_k x I / tp``) and output (``H``) a
  token; MLA and GatedDeltaNet blocks their projections' widths (as `codesign.mapping.memory`).
* *Sampler peak*: the forward's hidden states (``T x H``) plus ``sampler_bytes_per_logit`` bytes for
  each of the ``N x V`` logits of ``N = min(max_num_seqs, T)`` rows, the whole vocabulary on every
  TP rank (the vocab-parallel logits are gathered). 14 by default: the 16-bit logits the caller
  keeps (2), their fp32 copy (`Sampler.forward`, 4), and two fp32 working tensors of the
  top-k/top-p sampler (4 + 4: FlashInfer's `top_k_top_p_sampling_from_logits`, masked logits and
  probabilities, in v0.11.0 where FlashInfer is installed; v0.17.1's default native path, softmax
  probabilities and the exponential draws of `random_sample`). vLLM v0.11.0 without FlashInfer
  sorts the logits (values 4 + int64 indices 8 + masks and the scattered copy): about 28.
* *Non-torch increase*: `kv_pool_non_torch_gib`, 0 by default (not computable from the model;
  the pool is then an upper bound).
* *Total memory*: the spec's HBM capacity (the runtime's `memory.total`; torch's
  `mem_get_info` total is a few hundred MiB lower on the same part).

vLLM refuses to start unless one `max_model_len` sequence fits the pool
(`vllm/v1/core/kv_cache_utils.py`, `check_enough_kv_cache_memory`): `check_start` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from codesign.mapping.plan import ParallelPlan
from codesign.models.config import ModelConfig
from codesign.units import GiB

ACTIVATION_BYTES = 2.0  # vLLM's activations between kernels: the checkpoint's bf16 / fp16
FUSED_MOE_CHUNK = 64 * 1024  # VLLM_FUSED_MOE_CHUNK_SIZE default (v0.11.0 envs.py): tokens per fused_moe pass


@dataclass(frozen=True)
class VllmProfile:
    """Bytes per chip of vLLM's profiling pass (module docstring)."""

    forward: float  # peak live activations of the dummy forward pass
    sampler: float  # the dummy sampler run's peak, the forward's hidden states held

    @property
    def peak(self) -> float:
        """The torch peak increase vLLM subtracts from its pool."""
        return max(self.forward, self.sampler)


def _block_widths(config: ModelConfig, plan: ParallelPlan, tokens: int) -> list[float]:
    """Elements a token of a `tokens`-token pass holds at once inside each kind of block on one chip
    (module docstring)."""
    tp = plan.tp
    widths: list[float] = []
    if config.attention is not None:
        a = config.attention
        q = a.num_heads / tp * a.head_dim
        kv = 2 * max(1.0, a.num_kv_heads / tp) * a.head_dim
        widths.append(q * (2 if a.output_gate else 1) + kv + q)  # qkv_proj output + attention output
    if config.mla is not None:
        m = config.mla
        widths.append(m.num_heads * (m.qk_head_dim + m.v_head_dim) / tp + m.kv_lora_rank)
    if config.linear_attention is not None:
        la = config.linear_attention
        widths.append((la.conv_dim + la.num_value_heads * la.value_head_dim) / tp)
    if config.intermediate_size and "dense" in config.mlp_types:
        widths.append(3 * config.intermediate_size / tp)  # gate_up_proj output + SiluAndMul output
    if config.moe is not None:
        moe = config.moe
        i_local = moe.intermediate_size / (plan.moe_tp or tp)
        H = config.hidden_size
        chunk = min(1.0, FUSED_MOE_CHUNK / tokens)  # fused_moe's caches hold one chunk of tokens
        widths.append(moe.top_k * (max(2 * i_local, H) + i_local) * chunk + H)  # cache13 + cache2 + output
        if moe.shared_expert_intermediate_size:
            widths.append(3 * moe.shared_expert_intermediate_size / tp)
    return widths


def profile_forward_bytes(config: ModelConfig, plan: ParallelPlan, tokens: int) -> float:
    """Peak activation bytes per chip of vLLM's dummy forward pass of `tokens` tokens."""
    widths = _block_widths(config, plan, tokens)
    return tokens * ACTIVATION_BYTES * (2 * config.hidden_size + max(widths, default=0.0))


def profile_sampler_bytes(config: ModelConfig, tokens: int, seqs: int, bytes_per_logit: float) -> float:
    """Peak bytes per chip of vLLM's dummy sampler run after a forward pass of `tokens` tokens."""
    rows = min(seqs, tokens)
    H = config.hidden_size
    held = (tokens + 2 * rows) * H * ACTIVATION_BYTES  # hidden states, their last rows, rand_like of them
    return held + rows * config.vocab_size * bytes_per_logit


def vllm_profile(config: ModelConfig, plan: ParallelPlan, tokens: int, seqs: int,
                 bytes_per_logit: float) -> VllmProfile:
    """vLLM's profiling pass at `max_num_batched_tokens` = `tokens`, `max_num_seqs` = `seqs`."""
    return VllmProfile(profile_forward_bytes(config, plan, tokens),
                       profile_sampler_bytes(config, tokens, seqs, bytes_per_logit))


def vllm_pool_bytes(capacity: float, weights: float, profile: VllmProfile, utilization: float,
                    non_torch: float) -> float:
    """KV bytes per chip vLLM allocates: `utilization` x `capacity` - weights - the profiled torch
    peak - `non_torch` (may be negative: then vLLM has no memory for the cache)."""
    return utilization * capacity - weights - profile.peak - non_torch


def check_start(pool: float, one_sequence: float, max_model_len: int) -> str | None:
    """vLLM's start check: None when one `max_model_len` sequence (`one_sequence` bytes a chip) fits
    `pool`, else the reason vLLM gives for refusing to start."""
    if pool <= 0:
        return (f"vLLM would refuse to start: no memory for the KV cache ({pool / GiB:.2f} GiB a chip after "
                "weights and the profiled activations)")
    if one_sequence > pool:
        return (f"vLLM would refuse to start: one max_model_len ({max_model_len}) sequence needs "
                f"{one_sequence / GiB:.2f} GiB of KV cache a chip, larger than the pool ({pool / GiB:.2f} GiB)")
    return None


__all__ = ["ACTIVATION_BYTES", "FUSED_MOE_CHUNK", "VllmProfile", "check_start", "profile_forward_bytes",
           "profile_sampler_bytes", "vllm_pool_bytes", "vllm_profile"]
