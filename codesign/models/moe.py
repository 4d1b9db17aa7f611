"""Sparse mixture of experts, split three ways as in transformers 5.x: router, experts, block.

* `TopKRouter` (`block = "moe_router"`) scores the experts and picks top_k per token. One class
  covers the families through `MoEConfig`:
  - Qwen2/3/3.5-MoE, Mixtral: softmax over all experts, top-k, renormalise (`norm_topk_prob`).
  - gpt-oss: router bias, top-k of the logits, softmax over the k (`topk_then_softmax`).
  - DeepSeek-V3: sigmoid scores; experts in `n_group` groups, a group's score is the sum of its two
    best (bias-corrected) expert scores, only the `topk_group` best groups are eligible; the
    `e_score_correction_bias` steers selection only, weights come from the uncorrected scores;
    renormalise, then multiply by `routed_scaling_factor` (transformers `DeepseekV3TopkRouter`).
* `Experts` (`block = "moe_experts"`): stacked 3-D weights `gate_up_proj` (E, 2I, H) and `down_proj`
  (E, H, I), the layout and names of transformers 5.x Qwen3.5-MoE / DeepSeek-V3 / Mixtral, so those
  state dicts copy directly. gpt-oss stores them transposed ((E, H, 2I), (E, I, H)) with interleaved
  gate/up columns: `gpt_oss_experts_state` converts. All routed work runs through
  `kernels.moe_experts`, which traces as one grouped op.
* `SparseMoE` (`mlp` of a MoE layer): `gate`, `experts`, optional `shared_expert` (dense SwiGLU,
  `block = "moe_shared"`) with an optional sigmoid `shared_expert_gate` (Qwen2/3.5-MoE).

Assumption (named, overridable): router logits and scores are computed in fp32 whatever the model
dtype, as DeepSeek-V3 does (Qwen3.5 computes logits in the model dtype, softmax in fp32); in fp32
models the two agree exactly. `TopKRouter.group_score_topk` (default 2, DeepSeek-V3) sets how many
experts make up a group's score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from codesign.errors import CodesignError
from codesign.models import kernels
from codesign.models.config import ModelConfig, MoEConfig
from codesign.models.mlp import MLP


def _moe_section(config: ModelConfig, layer_idx: int) -> MoEConfig:
    if config.moe is None:
        raise CodesignError(f"model {config.name}: moe: expected a section for layer {layer_idx}, found none")
    return config.moe


def _linear_init_(w: torch.Tensor, fan_in: int) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the scale nn.Linear gives its weights (checkpoints overwrite)."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(w, -bound, bound)


class TopKRouter(nn.Module):
    """Token -> (top_k expert ids, routing weights). forward(x (N, H)) -> (logits, weights, ids)."""

    block = "moe_router"
    group_score_topk = 2  # DeepSeek-V3: a group scores the sum of its best two experts

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        moe = _moe_section(config, layer_idx)
        self.moe = moe
        self.top_k, self.num_experts, self.hidden_dim = moe.top_k, moe.num_experts, config.hidden_size
        self.weight = nn.Parameter(torch.empty(moe.num_experts, config.hidden_size))
        _linear_init_(self.weight, config.hidden_size)
        self.bias = nn.Parameter(torch.zeros(moe.num_experts)) if moe.bias else None
        if moe.score_correction_bias:
            # a buffer, as in transformers: set by the training-time balancer, not by gradients
            self.register_buffer("e_score_correction_bias", torch.zeros(moe.num_experts, dtype=torch.float32))
        else:
            self.e_score_correction_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        moe = self.moe
        x = x.reshape(-1, self.hidden_dim)
        bias = None if self.bias is None else self.bias.float()
        logits = F.linear(x.float(), self.weight.float(), bias)  # (N, E) fp32
        if moe.scoring == "sigmoid":
            scores = torch.sigmoid(logits)
        elif moe.softmax_order == "softmax_then_topk":
            scores = torch.softmax(logits, dim=-1)
        else:  # topk_then_softmax: pick on the logits, normalise over the k picked
            scores = logits
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
        if moe.n_group > 1:
            choice = self._limit_to_groups(choice)
        ids = torch.topk(choice, self.top_k, dim=-1).indices  # (N, k), sorted by choice score
        weights = scores.gather(1, ids)
        if moe.scoring == "softmax" and moe.softmax_order == "topk_then_softmax":
            weights = torch.softmax(weights, dim=-1)
        elif moe.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)  # 1e-20: DeepSeek-V3 guard
        weights = weights * moe.routed_scaling_factor
        return logits, weights, ids

    def _limit_to_groups(self, choice: torch.Tensor) -> torch.Tensor:
        """Mask (to -inf) every expert outside the topk_group best groups of each token."""
        N, E, G = choice.shape[0], self.num_experts, self.moe.n_group
        grouped = choice.view(N, G, E // G)
        group_scores = grouped.topk(min(self.group_score_topk, E // G), dim=-1).values.sum(-1)  # (N, G)
        best = group_scores.topk(self.moe.topk_group, dim=-1).indices
        keep = torch.zeros(N, G, dtype=torch.bool, device=choice.device).scatter_(1, best, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(N, E)


class Experts(nn.Module):
    """Routed experts as stacked weights; forward(x (N, H), ids (N, k), weights (N, k)) -> (N, H)."""

    block = "moe_experts"

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        moe = _moe_section(config, layer_idx)
        E, I, H = moe.num_experts, moe.intermediate_size, config.hidden_size
        self.num_experts, self.intermediate_dim, self.hidden_dim = E, I, H
        self.activation = config.activation
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))  # rows: gate (I) then up (I)
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        _linear_init_(self.gate_up_proj, H)
        _linear_init_(self.down_proj, I)
        if moe.bias:
            self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * I))
            self.down_proj_bias = nn.Parameter(torch.zeros(E, H))
        else:
            self.gate_up_proj_bias = self.down_proj_bias = None

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        return kernels.moe_experts(
            x,
            topk_ids,
            topk_weights,
            self.gate_up_proj,
            self.down_proj,
            self.gate_up_proj_bias,
            self.down_proj_bias,
            self.activation,
        )


class SharedExpert(MLP):
    """The always-on dense expert of a MoE layer: an MLP, tagged apart for the mapping."""

    block = "moe_shared"


class SparseMoE(nn.Module):
    """FFN interface: forward(x (B, T, H)) -> (B, T, H) = routed experts + gated shared expert."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        moe = _moe_section(config, layer_idx)
        self.layer_idx = layer_idx
        self.gate = TopKRouter(config, layer_idx)
        self.experts = Experts(config, layer_idx)
        self.shared_expert: SharedExpert | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if moe.shared_expert_intermediate_size:
            self.shared_expert = SharedExpert(config, layer_idx, moe.shared_expert_intermediate_size)
            if moe.shared_expert_gate:
                self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)
                # its ops belong with the shared expert's for the mapping
                self.shared_expert_gate.block = "moe_shared"
        elif moe.shared_expert_gate:
            raise CodesignError(
                f"model {config.name}: moe.shared_expert_gate: expected a shared expert "
                "(shared_expert_intermediate_size > 0), found 0"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        flat = x.reshape(B * T, H)
        _, weights, ids = self.gate(flat)
        out = self.experts(flat, ids, weights)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared
        return out.reshape(B, T, H)


def gpt_oss_experts_state(
    gate_up_proj: torch.Tensor,  # (E, H, 2I), gate/up interleaved along the last dim
    gate_up_proj_bias: torch.Tensor,  # (E, 2I)
    down_proj: torch.Tensor,  # (E, I, H)
    down_proj_bias: torch.Tensor,  # (E, H)
) -> dict[str, torch.Tensor]:
    """transformers `GptOssExperts` parameters -> `Experts` state dict (activation gpt_oss_swiglu).

    Only the matmul orientation differs; the interleaved gate/up order is kept because
    `kernels.moe_experts` de-interleaves for the gpt_oss_swiglu activation.
    """
    return {
        "gate_up_proj": gate_up_proj.transpose(1, 2).contiguous(),
        "gate_up_proj_bias": gate_up_proj_bias,
        "down_proj": down_proj.transpose(1, 2).contiguous(),
        "down_proj_bias": down_proj_bias,
    }
