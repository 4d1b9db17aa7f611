"""RMSNorm, as in Llama/Qwen (fp32 compute) and the zero-centred variant of Qwen3-Next/Qwen3.5.

Two classes: `RMSNorm` is used inside blocks (q/k norm of attention, the latent norms of MLA) and
carries no block tag, so its ops belong to the enclosing block; `BlockNorm` is the norm between
blocks (input/post-attention layernorm, final norm) and is tagged `block = "norm"`.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in fp32 and cast back to the input dtype.

    offset=True: y = x / rms(x) * (1 + w) with w initialised to zero (Qwen3-Next `Qwen3NextRMSNorm`,
    transformers models/qwen3_next/modeling_qwen3_next.py); numerically the same at init.
    """

    def __init__(self, dim: int, eps: float = 1e-6, offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float()
        if self.offset:
            w = 1.0 + w
        return (xf * w).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, offset={self.offset}"


class BlockNorm(RMSNorm):
    """The RMSNorm between blocks (input_layernorm, post_attention_layernorm, final norm)."""

    block = "norm"
