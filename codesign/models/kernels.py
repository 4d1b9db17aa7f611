"""Fused and data-dependent kernels of the models, each recorded as ONE op when traced.

Three things here would trace badly as plain torch code:

* softmax attention: the math path materialises a T x S score matrix, which a fused kernel
  (FlashAttention) never writes to memory, so its bytes would be wrong; and causal/windowed masking
  halves or caps the FLOPs, which torch's own SDPA FLOP formula does not count.
* MoE expert dispatch: which tokens go to which expert depends on the router's values, which do not
  exist on the meta device. Expert work is one grouped op; the tracer takes its per-expert token
  counts from a router model (uniform, Zipf-skewed, or a recorded histogram).
* the GatedDeltaNet chunk loop: a sequential loop over T/64 chunks. `chunk_loop` runs it natively;
  under a tracer it runs the body once and the tracer scales what it recorded by the trip count.

The custom ops below have a real CPU/GPU implementation (used natively, numerics checked by the
tests) and a fake (meta) implementation that only produces shapes.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# Attention: causal, optional sliding window and sink logits, GQA by head groups.
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("codesign::attention", mutates_args=())
def attention(
    q: torch.Tensor,  # (B, Hq, T, D)   queries at absolute positions q_offset .. q_offset+T-1
    k: torch.Tensor,  # (B, Hkv, S, D)  keys at positions 0 .. S-1 (S = q_offset + T)
    v: torch.Tensor,  # (B, Hkv, S, Dv)
    q_offset: int,
    window: int,  # 0 = unlimited; else a key s is visible to query p only if p - s < window
    scale: float,
    sinks: torch.Tensor | None = None,  # (Hq,) learned sink logits: extra softmax mass, no value
) -> torch.Tensor:  # (B, Hq, T, Dv)
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = Hq // Hkv
    if group > 1:  # GQA: each kv head serves `group` query heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, Hq, T, S)
    qpos = torch.arange(q_offset, q_offset + T, device=q.device)[:, None]
    kpos = torch.arange(S, device=q.device)[None, :]
    visible = kpos <= qpos
    if window > 0:
        visible = visible & (qpos - kpos < window)
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        sink = sinks.float().view(1, Hq, 1, 1).expand(B, Hq, T, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :S]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.float()).to(q.dtype)


@attention.register_fake
def _attention_fake(q, k, v, q_offset, window, scale, sinks=None):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def attention_pairs(T: int, q_offset: int, window: int) -> int:
    """(query, key) pairs a causal kernel computes for T queries after q_offset cached tokens."""
    S = q_offset + T
    if window <= 0:
        # query t sees q_offset + t + 1 keys
        return T * q_offset + T * (T + 1) // 2
    total = 0
    # keys visible to query at absolute position p: min(p + 1, window)
    first_full = max(window - 1, q_offset)  # from this position on, the window is full
    n_partial = max(0, min(S, first_full) - q_offset)
    if n_partial:
        a, b = q_offset + 1, q_offset + n_partial
        total += (a + b) * n_partial // 2
    total += (T - n_partial) * window
    return total


# --------------------------------------------------------------------------------------------------
# MoE: grouped expert FFN over routed tokens.
# --------------------------------------------------------------------------------------------------


def _expert_act(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gpt_oss_swiglu":
        # gpt-oss: interleaved gate/up, clamped, alpha=1.702, (up + 1) * glu
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(max=7.0)
        up = up.clamp(min=-7.0, max=7.0)
        return (up + 1) * (gate * torch.sigmoid(gate * 1.702))
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@torch.library.custom_op("codesign::moe_experts", mutates_args=())
def moe_experts(
    x: torch.Tensor,  # (N, H) tokens
    topk_ids: torch.Tensor,  # (N, k) int64 expert index per token and slot
    topk_weights: torch.Tensor,  # (N, k) routing weights
    w_gate_up: torch.Tensor,  # (E, 2I, H) stacked gate and up projections
    w_down: torch.Tensor,  # (E, H, I)
    b_gate_up: torch.Tensor | None = None,  # (E, 2I)
    b_down: torch.Tensor | None = None,  # (E, H)
    activation: str = "silu",
) -> torch.Tensor:  # (N, H) weighted sum of the k expert outputs
    N, k = topk_ids.shape
    out = torch.zeros(N, x.shape[1], dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)  # slots grouped by expert
    counts = torch.bincount(flat_ids, minlength=w_gate_up.shape[0]).tolist()
    token_of_slot = order // k
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        slots = order[start : start + n]
        tok = token_of_slot[start : start + n]
        start += n
        h = x[tok] @ w_gate_up[e].t()
        if b_gate_up is not None:
            h = h + b_gate_up[e]
        y = _expert_act(h, activation) @ w_down[e].t()
        if b_down is not None:
            y = y + b_down[e]
        w = topk_weights.reshape(-1)[slots].unsqueeze(-1)
        out.index_add_(0, tok, (y * w).float())
    return out.to(x.dtype)


@moe_experts.register_fake
def _moe_experts_fake(x, topk_ids, topk_weights, w_gate_up, w_down, b_gate_up=None, b_down=None, activation="silu"):
    return torch.empty_like(x)


# --------------------------------------------------------------------------------------------------
# Trace-aware sequential loops.
# --------------------------------------------------------------------------------------------------

# Installed by the tracer: called with the trip count, returns a context manager under which the
# loop body's ops are recorded once with that multiplicity.
_LOOP_HANDLER: contextvars.ContextVar[Callable[[int], contextlib.AbstractContextManager] | None] = (
    contextvars.ContextVar("codesign_loop_handler", default=None)
)


def chunk_loop(n: int) -> Iterator[int]:
    """`range(n)` natively; under a tracer, the body runs once (index 0) and counts n times.

    The body must not change shapes with the index (true of a chunked recurrence over equal chunks).
    """
    handler = _LOOP_HANDLER.get()
    if handler is None or n <= 1:
        yield from range(n)
        return
    with handler(n):
        yield 0


@contextlib.contextmanager
def loop_handler(handler: Callable[[int], contextlib.AbstractContextManager]):
    token = _LOOP_HANDLER.set(handler)
    try:
        yield
    finally:
        _LOOP_HANDLER.reset(token)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
