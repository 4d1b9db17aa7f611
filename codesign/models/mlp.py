"""Dense SwiGLU feed-forward (Llama/Qwen `*MLP`: gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codesign.models.config import ModelConfig


class MLP(nn.Module):
    """down(act(gate(x)) * up(x)). Width from config.intermediate_size unless given (MoE shared expert)."""

    block = "mlp"

    def __init__(self, config: ModelConfig, layer_idx: int, intermediate_size: int | None = None) -> None:
        super().__init__()
        width = intermediate_size or config.intermediate_size
        if width is None:
            raise ValueError("MLP needs config.intermediate_size or an explicit intermediate_size")
        self.layer_idx = layer_idx
        self.activation = config.activation
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=config.mlp_bias)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.activation == "gpt_oss_swiglu":
            # gpt-oss clamped SwiGLU (same constants as kernels._expert_act, from transformers gpt_oss)
            gate = gate.clamp(max=7.0)
            up = up.clamp(min=-7.0, max=7.0)
            h = (up + 1) * (gate * torch.sigmoid(gate * 1.702))
        else:
            h = F.silu(gate) * up
        return self.down_proj(h)
