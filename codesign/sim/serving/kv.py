"""KV-cache and state capacity in paged blocks, from the mapping's memory model.

Per chip of the busiest pipeline stage (`codesign.mapping.memory_per_chip`):

    free = HBM capacity - weights (MTP heads included when drafting) - activations of one step of
           `max_num_batched_tokens` tokens - the runtime reserve

with `mapping.kv_pool: reserve` (the default); with `vllm`, vLLM V1's start-up rule
(`codesign.mapping.kv_pool`): ``gpu_memory_utilization x capacity - weights - the peak of its
profiling pass - kv_pool_non_torch_gib``, refused (`CodesignError`) where vLLM would refuse to start
because one `max_model_len` sequence does not fit.

A sequence holding ``L`` tokens uses ``ceil(L / block_size) * block_size * kv_per_token`` bytes of
that (full-attention and MLA layers, the MTP heads' attention when drafting) plus
``seq_bytes``: its GatedDeltaNet recurrent and conv state and its sliding-window layers' KV at the
full window (named approximation: charged from the first token, as an upper bound). Each
data-parallel / attention-data-parallel replica holds its own sequences, so the deployment's pool is
``replicas x free`` in these per-chip bytes (requests balanced evenly over replicas).

`KVPool` does the accounting for the scheduler: bytes held, what a sequence needs to grow, and use
as a fraction of the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from codesign import mapping
from codesign.errors import CodesignError
from codesign.mapping.kv_pool import check_start, vllm_pool_bytes, vllm_profile
from codesign.mapping.memory import kv_bytes_per_sequence, stage_layers, state_bytes_per_sequence
from codesign.sim.stepper import Stepper
from codesign.units import GiB


@dataclass(frozen=True)
class KVCapacity:
    """The deployment's KV/state pool, in bytes per chip of the busiest stage (see module docstring)."""

    free_bytes: float  # the whole deployment's pool: replicas x free bytes per chip
    kv_per_token: float  # bytes per chip per cached token of one sequence
    seq_bytes: float  # fixed bytes per chip per sequence (recurrent state, sliding windows)
    block_size: int
    replicas: int
    memory: mapping.MemoryBreakdown  # the per-chip breakdown the pool was derived from

    @property
    def block_bytes(self) -> float:
        return self.block_size * self.kv_per_token

    @property
    def blocks(self) -> int:
        """KV blocks of the pool if no sequence held state (for reports)."""
        return int(self.free_bytes // self.block_bytes) if self.block_bytes else 0

    def seq_footprint(self, tokens: int | float) -> float:
        """Bytes a sequence of `tokens` cached tokens holds."""
        return math.ceil(tokens / self.block_size) * self.block_bytes + self.seq_bytes

    def describe(self) -> str:
        return (f"KV pool {self.free_bytes / GiB:.2f} GiB per chip-replica set ({self.blocks} blocks of "
                f"{self.block_size} tokens, {self.kv_per_token / 1024:.1f} KiB/token/chip, "
                f"{self.seq_bytes / 2**20:.2f} MiB/sequence state)")


def kv_capacity(st: Stepper, block_size: int, tokens_per_step: int, mtp: bool = False,
                max_num_seqs: int | None = None) -> KVCapacity:
    """The pool of `st`'s design point for an engine stepping `tokens_per_step` tokens (per replica)
    and running at most `max_num_seqs` sequences (the profiling batch of `mapping.kv_pool: vllm`)."""
    cfg, plan, prec = st.config, st.plan, st.precision
    replicas = plan.dp * plan.attention_dp
    mem = mapping.memory_per_chip(cfg, None, st.hw, plan, prec, replicas, 1, tokens_per_seq=tokens_per_step,
                                  reserve_fraction=st.options.reserve_fraction, mtp=mtp)
    kv_b = prec.bytes_per_element(prec.kv_cache)
    st_b = prec.bytes_per_element(prec.state)
    per_token = seq = 0.0
    for layers in stage_layers(cfg, plan.pp):
        full = [i for i in layers if cfg.layer_types[i] in ("full_attention", "mla")]
        sliding = [i for i in layers if cfg.layer_types[i] == "sliding_attention"]
        tok = kv_bytes_per_sequence(cfg, 1, full, kv_b, plan.tp)
        fixed = state_bytes_per_sequence(cfg, layers, st_b, 2.0, plan.tp)
        if sliding:
            fixed += kv_bytes_per_sequence(cfg, cfg.attention.sliding_window, sliding, kv_b, plan.tp)
        per_token, seq = max(per_token, tok), max(seq, fixed)
    if mtp and cfg.mtp_layers:
        # each MTP head is one decoder layer of the last layer's kind, with its own cache
        last = cfg.num_layers - 1
        per_token += cfg.mtp_layers * kv_bytes_per_sequence(cfg, 1, [last], kv_b, plan.tp)
        seq += cfg.mtp_layers * state_bytes_per_sequence(cfg, [last], st_b, 2.0, plan.tp)
    if st.options.kv_pool == "vllm":
        mem = _vllm_breakdown(st, mem, tokens_per_step, max_num_seqs)
    free = mem.capacity - mem.weights - mem.activations - mem.reserve
    cap = KVCapacity(max(0.0, free) * replicas, per_token, seq, block_size, replicas, mem)
    if st.options.kv_pool == "vllm":
        max_len = st.options.max_model_len or cfg.max_position_embeddings
        refused = check_start(free, cap.seq_footprint(max_len), max_len)
        if refused is not None:
            o = st.options
            raise CodesignError(
                f"mapping.kv_pool: vllm: {refused} = gpu_memory_utilization {o.gpu_memory_utilization} x "
                f"{mem.capacity / GiB:.2f} GiB - weights {mem.weights / GiB:.2f} - profiled activations "
                f"{mem.activations / GiB:.2f} - non-torch {o.kv_pool_non_torch_gib:.2f} GiB; expected a smaller "
                "mapping.max_model_len or a larger mapping.gpu_memory_utilization, as vLLM says")
    return cap


def _vllm_breakdown(st: Stepper, mem: mapping.MemoryBreakdown, tokens: int,
                    max_num_seqs: int | None) -> mapping.MemoryBreakdown:
    """`mem` with vLLM's profiled activations and its held-back margin (1 - gpu_memory_utilization of
    HBM, plus the non-torch increase) in place of the simulator's activations and reserve."""
    o = st.options
    if max_num_seqs is None:
        raise CodesignError("mapping.kv_pool: vllm needs the engine's max_num_seqs (its profiling batch)")
    prof = vllm_profile(st.config, st.plan, tokens, max_num_seqs, o.sampler_bytes_per_logit)
    non_torch = o.kv_pool_non_torch_gib * GiB
    pool = vllm_pool_bytes(mem.capacity, mem.weights, prof, o.gpu_memory_utilization, non_torch)
    held = mem.capacity - mem.weights - prof.peak - pool  # (1 - utilization) x capacity + non-torch
    return mapping.MemoryBreakdown(mem.weights, mem.kv_cache, mem.state, prof.peak, held,
                                   mem.weights + mem.kv_cache + mem.state + prof.peak + held, mem.capacity)


class KVPool:
    """Bytes held by sequences out of a `KVCapacity` (the scheduler's allocator)."""

    def __init__(self, cap: KVCapacity) -> None:
        self.cap = cap
        self.used = 0.0

    @property
    def free(self) -> float:
        return self.cap.free_bytes - self.used

    @property
    def use(self) -> float:
        """Fraction of the pool held."""
        return self.used / self.cap.free_bytes if self.cap.free_bytes else 1.0

    def grow_cost(self, held_tokens: int | float, new_tokens: int | float, new_seq: bool = False) -> float:
        """Extra bytes for a sequence holding `held_tokens` to hold `new_tokens` more."""
        c = self.cap
        extra = (math.ceil((held_tokens + new_tokens) / c.block_size) - math.ceil(held_tokens / c.block_size)) * c.block_bytes
        return extra + (c.seq_bytes if new_seq else 0.0)


__all__ = ["KVCapacity", "KVPool", "kv_capacity"]
