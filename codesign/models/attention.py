"""Softmax attention for `full_attention` and `sliding_attention` layers.

One class covers the families in model_graphs/: Llama-style GQA, Qwen3 q/k RMSNorm, Qwen3-Next/3.5
output gate with partial RoPE, gpt-oss sliding window + learned sinks + projection biases. Names
follow the HF checkpoints (q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, sinks), so HF state dicts
load without renames. The attention itself is `kernels.attention`, one op when traced.
"""

from __future__ import annotations

import torch
from torch import nn

from codesign.models import kernels
from codesign.models.config import ModelConfig
from codesign.models.norms import RMSNorm
from codesign.models.rope import apply_rope, rope_cos_sin


class KVCache(nn.Module):
    """Fixed-shape K/V buffers (B, Hkv, max_len, D), written in place (gpt-fast `KVCache`).

    A module with registered buffers so the cache is a first-class tensor (device moves, byte
    accounting). Sliding layers keep the full length too (no ring buffer): simple and exact; the
    kernel's window bounds what is read.
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, v_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(batch, heads, max_len, v_dim, device=device, dtype=dtype), persistent=False)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, T, D) at [start_pos, start_pos+T); return views of [:start_pos+T]."""
        end = start_pos + k.shape[2]
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """GQA with optional q/k norm, partial RoPE, output gate, sliding window, sinks and bias."""

    block = "attention"

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        a = config.attention
        assert a is not None, "Attention needs config.attention"  # guaranteed by ModelConfig validation
        self.layer_idx = layer_idx
        self.num_heads = a.num_heads
        self.num_kv_heads = a.num_kv_heads
        self.head_dim = a.head_dim
        self.rotary_dim = a.rotary_dim
        self.rope_theta = a.rope_theta
        self.output_gate = a.output_gate
        # window only on sliding layers; 0 = unlimited (the kernel's convention)
        self.window = a.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else 0
        self.scale = kernels.default_scale(a.head_dim)
        H, D, Hkv = a.num_heads, a.head_dim, a.num_kv_heads
        # Qwen3-Next/3.5: q_proj emits query and gate per head, interleaved as (head, [q | gate])
        self.q_proj = nn.Linear(config.hidden_size, H * D * (2 if a.output_gate else 1), bias=a.bias)
        self.k_proj = nn.Linear(config.hidden_size, Hkv * D, bias=a.bias)
        self.v_proj = nn.Linear(config.hidden_size, Hkv * D, bias=a.bias)
        self.o_proj = nn.Linear(H * D, config.hidden_size, bias=a.bias)
        if a.qk_norm:
            self.q_norm = RMSNorm(D, config.rms_norm_eps, offset=config.norm_offset)
            self.k_norm = RMSNorm(D, config.rms_norm_eps, offset=config.norm_offset)
        else:
            self.q_norm = self.k_norm = None
        # gpt-oss: one learned logit per head that joins the softmax without a value
        self.sinks = nn.Parameter(torch.zeros(H)) if a.sinks else None

    def make_cache(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache:
        dtype = dtype or self.k_proj.weight.dtype
        device = device or self.k_proj.weight.device
        return KVCache(batch, self.num_kv_heads, max_len, self.head_dim, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x)
        gate = None
        if self.output_gate:
            q, gate = q.view(B, T, H, 2 * D).chunk(2, dim=-1)  # (B, T, H, D) each
            gate = gate.reshape(B, T, H * D)
        q = q.view(B, T, H, D)
        k = self.k_proj(x).view(B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, Hkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        cos, sin = rope_cos_sin(start_pos, T, self.rotary_dim, self.rope_theta, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(start_pos, k, v)  # (B, Hkv, start_pos+T, D)
            q_offset = start_pos
        else:
            q_offset = 0  # full forward from position 0 (start_pos only shifts RoPE)
        o = kernels.attention(q, k, v, q_offset, self.window, self.scale, self.sinks)  # (B, H, T, D)
        o = o.transpose(1, 2).reshape(B, T, H * D)
        if gate is not None:
            o = o * torch.sigmoid(gate)
        return self.o_proj(o)
