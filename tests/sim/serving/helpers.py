"""Synthetic inputs for scheduler tests: an analytic step time and a hand-sized KV pool."""

from __future__ import annotations

from codesign.graph.shape import StepShape
from codesign.mapping.memory import MemoryBreakdown
from codesign.sim.serving.kv import KVCapacity

A, B, C = 0.01, 1e-5, 1e-9  # seconds per group, per new token, per (sequence x cached token)


def step_time(shape: StepShape) -> float:
    """A + B x new tokens + C x sequences x cached tokens, per group (bilinear: interpolates exactly)."""
    return sum(A + B * g.tokens + C * g.seqs * g.cached_tokens for g in shape.groups)


def capacity(tokens: float = 1e12, seq_bytes: float = 0.0, block_size: int = 16, replicas: int = 1) -> KVCapacity:
    """A pool holding `tokens` cached tokens at 1 byte per token."""
    mem = MemoryBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return KVCapacity(tokens, 1.0, seq_bytes, block_size, replicas, mem)
