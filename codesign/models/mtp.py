"""Multi-token prediction (MTP) head of Qwen3.5 / Qwen3-Next and DeepSeek-V3.

One MTP depth predicts the token after next. For position i it combines the main model's last hidden
state h_i with the embedding of token i+1 (DeepSeek-V3 technical report, arXiv:2412.19437, sec. 2.2):

    x = fc( concat( RMSNorm_e(embed(t_{i+1})), RMSNorm_h(h_i) ) )     # 2H -> H, no bias
    x = DecoderLayer(x)                                                # full attention + FFN
    y = RMSNorm(x)           -> the shared lm_head gives the logits of t_{i+2}

Embedding and LM head are the main model's (not part of this module). Names follow the Qwen3.5
checkpoints (`mtp.pre_fc_norm_embedding`, `mtp.pre_fc_norm_hidden`, `mtp.fc`, `mtp.layers.0`,
`mtp.norm`; vLLM qwen3_5_mtp.py); here `CausalLM.mtp[j]` holds `pre_fc_norm_embedding`,
`pre_fc_norm_hidden`, `fc`, `layer`, `norm`. DeepSeek-V3 (`model.layers.61.*`) maps as
enorm -> pre_fc_norm_embedding, hnorm -> pre_fc_norm_hidden, eh_proj -> fc,
shared_head.norm -> norm, the rest -> layer. Both concatenate the embedding first.

Assumptions (named):
* The MTP layer's mixer is the model's full-attention kind (`mla` if the model has MLA layers, else
  `full_attention`) and its FFN is MoE when the model has MoE (dense otherwise); override with the
  class attributes `mixer_type` / `mlp_type`. It is built as layer number num_layers + index.
* `forward` returns the hidden state *after* the final norm (Qwen3.5 / vLLM convention), ready for
  the shared lm_head; the next depth, if any, consumes that. DeepSeek-V3 chains the pre-norm state
  instead; with one depth (every model here) the two agree.
* Unverified for Qwen3.5-397B-A17B: the number of MTP layers (1) and that its FFN is the sparse MoE
  of the main layers (shared/model-architectures.md marks MTP as unverified for 397B; transformers
  5.x ships no MTP module and skips `mtp.*` weights).
"""

from __future__ import annotations

import torch
from torch import nn

from codesign.models.config import ModelConfig
from codesign.models.norms import RMSNorm


def mtp_layer_config(config: ModelConfig, index: int, mixer_type: str | None = None, mlp_type: str | None = None) -> ModelConfig:
    """The model's config extended by MTP layers up to `index`, so the MTP decoder layer is layer
    num_layers + index with the chosen kinds (validated like any config)."""
    mixer = mixer_type or ("mla" if "mla" in config.layer_types else "full_attention")
    mlp = mlp_type or ("moe" if config.moe is not None else "dense")
    extra = index + 1
    data = config.model_dump()
    data.update(
        num_layers=config.num_layers + extra,
        layer_types=list(config.layer_types) + [mixer] * extra,
        mlp_types=list(config.mlp_types) + [mlp] * extra,
    )
    return ModelConfig.model_validate(data)


class MTPLayer(nn.Module):
    """forward(hidden (B, T, H), next_embeds (B, T, H), start_pos, cache) -> normed hidden (B, T, H)."""

    block = "mtp"
    mixer_type: str | None = None  # None: the model's full-attention kind
    mlp_type: str | None = None  # None: "moe" if the model has MoE, else "dense"

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        from codesign.models.decoder import DecoderLayer  # lazy: decoder imports this module lazily too

        H, eps, offset = config.hidden_size, config.rms_norm_eps, config.norm_offset
        self.index = index
        self.layer_idx = config.num_layers + index
        self.pre_fc_norm_embedding = RMSNorm(H, eps, offset)
        self.pre_fc_norm_hidden = RMSNorm(H, eps, offset)
        self.fc = nn.Linear(2 * H, H, bias=False)
        self.layer = DecoderLayer(mtp_layer_config(config, index, self.mixer_type, self.mlp_type), self.layer_idx)
        self.norm = RMSNorm(H, eps, offset)

    def make_cache(self, batch: int, max_len: int, device=None, dtype=None):
        """The cache of the MTP layer's attention (its KV grows with the context like the main model's)."""
        return self.layer.make_cache(batch, max_len, device, dtype)

    def forward(self, hidden: torch.Tensor, next_embeds: torch.Tensor, start_pos: int = 0, cache=None) -> torch.Tensor:
        x = torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], dim=-1)
        x = self.layer(self.fc(x), start_pos, cache)
        return self.norm(x)
