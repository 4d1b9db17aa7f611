"""Rotary position embedding (RoPE), HF convention: `rotate_half` over the first `rotary_dim` dims.

cos/sin are computed on the fly for the positions actually used (start_pos .. start_pos+T), never
for max_position_embeddings, so tracing a 256K-context decode step costs the same as a short one.
Partial rotary (Qwen3-Next/3.5 rotate 25% of each head, GLM/Phi similar) rotates the first
`rotary_dim` dims and passes the rest through, as `apply_rotary_pos_emb` in transformers'
models/qwen3_next/modeling_qwen3_next.py. No frequency scaling (YaRN/Llama-3 scaling) is modelled:
it changes numbers, not shapes or costs.
"""

from __future__ import annotations

import torch


def rope_cos_sin(
    start_pos: int, T: int, rotary_dim: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, rotary_dim) in fp32 for positions start_pos .. start_pos+T-1."""
    # inv_freq as in transformers' default rope init: theta ** -(2i / d), i = 0 .. d/2-1
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float() / rotary_dim))
    pos = torch.arange(start_pos, start_pos + T, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # (T, rotary_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, rotary_dim): HF duplicates, rotate_half pairs i with i+d/2
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (..., T, D); cos/sin (T, rotary_dim) broadcast over heads."""
    rd = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if rd == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
