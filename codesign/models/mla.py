"""Multi-head latent attention (DeepSeek-V2/V3 MLA), names as in transformers' DeepseekV3Attention.

K and V are compressed to a latent c (kv_lora_rank) plus one shared RoPE key (qk_rope_head_dim); the
cache keeps only those: (B, 1, max_len, kv_lora_rank + qk_rope_head_dim), 576 values per token per
layer for DeepSeek-V3 (512 + 64). Two equivalent ways to attend:

* expanded (prefill): k_nope, v = kv_b_proj(c) per head; ordinary MHA over qk_head_dim.
* absorbed (decode): fold W_uk into the query (q_nope @ W_uk -> latent space) and attend over the
  latent cache as MQA with one kv head, then apply W_uv to the latent output. Reads only the latent
  cache, which is why MLA decode is cheap in bytes (DeepSeek-V2 paper, section 2.1.3).

Simplifications (named, numerics only, no effect on shapes or costs): RoPE uses HF's `rotate_half`
layout (DeepSeek's checkpoints interleave pairs; transformers' `rope_interleave` option converts),
and YaRN scaling / its softmax mscale is not applied (scale = qk_head_dim ** -0.5).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from codesign.models import kernels
from codesign.models.config import ModelConfig
from codesign.models.norms import RMSNorm
from codesign.models.rope import apply_rope, rope_cos_sin


class LatentCache(nn.Module):
    """Compressed KV cache of MLA: `kv` (B, 1, max_len, kv_lora_rank + qk_rope_head_dim), in place."""

    def __init__(self, batch: int, max_len: int, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer("kv", torch.zeros(batch, 1, max_len, dim, device=device, dtype=dtype), persistent=False)

    def update(self, start_pos: int, latent: torch.Tensor) -> torch.Tensor:
        """Write latent (B, 1, T, dim) at [start_pos, start_pos+T); return the view of [:start_pos+T]."""
        end = start_pos + latent.shape[2]
        self.kv[:, :, start_pos:end] = latent
        return self.kv[:, :, :end]


class MLA(nn.Module):
    block = "mla"

    # When to use the absorbed form: "decode" (T == 1 with a cache; DeepSeek's own inference code
    # and vLLM do this), "always" or "never". Both forms give the same logits (tests check it).
    absorb: Literal["decode", "always", "never"] = "decode"

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        m = config.mla
        assert m is not None, "MLA needs config.mla"  # guaranteed by ModelConfig validation
        self.layer_idx = layer_idx
        self.num_heads = m.num_heads
        self.q_lora_rank = m.q_lora_rank
        self.kv_lora_rank = m.kv_lora_rank
        self.qk_nope_head_dim = m.qk_nope_head_dim
        self.qk_rope_head_dim = m.qk_rope_head_dim
        self.qk_head_dim = m.qk_head_dim
        self.v_head_dim = m.v_head_dim
        self.rope_theta = m.rope_theta
        self.scale = kernels.default_scale(m.qk_head_dim)
        H, Hs, eps = m.num_heads, config.hidden_size, config.rms_norm_eps
        if m.q_lora_rank is None:
            self.q_proj = nn.Linear(Hs, H * m.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(Hs, m.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, eps)
            self.q_b_proj = nn.Linear(m.q_lora_rank, H * m.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(Hs, m.kv_lora_rank + m.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, eps)
        self.kv_b_proj = nn.Linear(m.kv_lora_rank, H * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * m.v_head_dim, Hs, bias=False)

    def make_cache(self, batch: int, max_len: int, device=None, dtype=None) -> LatentCache:
        dtype = dtype or self.kv_b_proj.weight.dtype
        device = device or self.kv_b_proj.weight.device
        return LatentCache(batch, max_len, self.kv_lora_rank + self.qk_rope_head_dim, device, dtype)

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache: LatentCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, dn, dr, dc, dv = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank, self.v_head_dim
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, H, dn + dr).transpose(1, 2)  # (B, H, T, dn+dr)
        q_nope, q_rope = q.split([dn, dr], dim=-1)
        c, k_rope = self.kv_a_proj_with_mqa(x).split([dc, dr], dim=-1)  # (B, T, dc), (B, T, dr)
        c = self.kv_a_layernorm(c)
        cos, sin = rope_cos_sin(start_pos, T, dr, self.rope_theta, x.device)
        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope.view(B, 1, T, dr), cos, sin)
        latent = torch.cat([c.view(B, 1, T, dc), k_rope], dim=-1)  # (B, 1, T, dc+dr): what is cached
        if cache is not None:
            latent = cache.update(start_pos, latent)  # (B, 1, S, dc+dr), S = start_pos+T
            q_offset = start_pos
        else:
            q_offset = 0
        absorbed = self.absorb == "always" or (self.absorb == "decode" and cache is not None and T == 1)
        if absorbed:
            w = self.kv_b_proj.weight.view(H, dn + dv, dc)
            w_uk, w_uv = w[:, :dn], w[:, dn:]  # (H, dn, dc), (H, dv, dc)
            q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # (B, H, T, dc)
            qa = torch.cat([q_lat, q_rope], dim=-1)  # (B, H, T, dc+dr)
            # MQA over the latent: key = [c, k_rope], value = c; one kv head for all H query heads
            o = kernels.attention(qa, latent, latent[..., :dc], q_offset, 0, self.scale, None)  # (B, H, T, dc)
            o = torch.einsum("bhtc,hvc->bhtv", o, w_uv)  # (B, H, T, dv)
        else:
            S = latent.shape[2]
            c_all, kr_all = latent.split([dc, dr], dim=-1)  # (B, 1, S, dc), (B, 1, S, dr)
            kv = self.kv_b_proj(c_all.squeeze(1)).view(B, S, H, dn + dv).transpose(1, 2)  # (B, H, S, dn+dv)
            k_nope, v = kv.split([dn, dv], dim=-1)
            k = torch.cat([k_nope, kr_all.expand(B, H, S, dr)], dim=-1)  # (B, H, S, dn+dr)
            qf = torch.cat([q_nope, q_rope], dim=-1)
            o = kernels.attention(qf, k, v, q_offset, 0, self.scale, None)  # (B, H, T, dv)
        o = o.transpose(1, 2).reshape(B, T, H * dv)
        return self.o_proj(o)
