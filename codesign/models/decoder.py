"""Decoder layer and causal LM: the one model code path for every family in model_graphs/.

Per-layer variation comes from `config.layer_types[i]` / `config.mlp_types[i]` (as transformers'
Qwen3-Next decoder layer), never from subclasses. Attribute names follow the HF checkpoints
(`embed_tokens`, `layers.N.self_attn` / `linear_attn`, `input_layernorm`, `post_attention_layernorm`,
`mlp`, `norm`, `lm_head`), minus HF's `model.` prefix. Nothing in a forward pass reads tensor
values into Python, so the same code runs on the meta device for tracing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from codesign.models.config import ModelConfig
from codesign.models.norms import BlockNorm


def mixer_class(layer_type: str) -> type[nn.Module]:
    """The token-mixer class of a layer type. Imported lazily: families without GDN/MLA need neither."""
    if layer_type in ("full_attention", "sliding_attention"):
        from codesign.models.attention import Attention

        return Attention
    if layer_type == "mla":
        from codesign.models.mla import MLA

        return MLA
    if layer_type == "linear_attention":
        from codesign.models.gated_deltanet import GatedDeltaNet

        return GatedDeltaNet
    raise ValueError(f"unknown layer type {layer_type!r}")


def ffn_class(mlp_type: str) -> type[nn.Module]:
    """The feed-forward class of an mlp type (SparseMoE imported lazily)."""
    if mlp_type == "dense":
        from codesign.models.mlp import MLP

        return MLP
    if mlp_type == "moe":
        from codesign.models.moe import SparseMoE

        return SparseMoE
    raise ValueError(f"unknown mlp type {mlp_type!r}")


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then + ffn(norm(.))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        eps, offset = config.rms_norm_eps, config.norm_offset
        self.input_layernorm = BlockNorm(config.hidden_size, eps, offset)
        mixer = mixer_class(self.layer_type)(config, layer_idx)
        # HF names: GDN layers hold `linear_attn`, every softmax/latent attention `self_attn`
        self.mixer_name = "linear_attn" if self.layer_type == "linear_attention" else "self_attn"
        setattr(self, self.mixer_name, mixer)
        self.post_attention_layernorm = BlockNorm(config.hidden_size, eps, offset)
        self.mlp = ffn_class(config.mlp_types[layer_idx])(config, layer_idx)

    @property
    def mixer(self) -> nn.Module:
        return getattr(self, self.mixer_name)

    def make_cache(self, batch: int, max_len: int, device=None, dtype=None):
        return self.mixer.make_cache(batch, max_len, device, dtype)

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache=None) -> torch.Tensor:  # (B, T, H)
        h = x + self.mixer(self.input_layernorm(x), start_pos, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Embedding(nn.Embedding):
    block = "embed"


class LMHead(nn.Linear):
    block = "lm_head"


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Build parameters directly in the target dtype (a 397B model on meta, or bf16 weights on a GPU,
    # without a float32 copy first). Modules that pin a dtype explicitly (fp32 state) keep theirs.
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


class CausalLM(nn.Module):
    """embed_tokens -> layers -> norm -> lm_head; `mtp` holds the multi-token-prediction heads."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.bfloat16, device=None) -> None:
        super().__init__()
        self.config = config
        with _default_dtype(dtype), (torch.device(device) if device is not None else contextlib.nullcontext()):
            self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
            self.norm = BlockNorm(config.hidden_size, config.rms_norm_eps, config.norm_offset)
            self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
            if config.tie_word_embeddings:
                self.lm_head.weight = self.embed_tokens.weight
            self.mtp = nn.ModuleList(self._mtp_layers(config))

    @staticmethod
    def _mtp_layers(config: ModelConfig) -> list[nn.Module]:
        if config.mtp_layers == 0:
            return []
        from codesign.models.mtp import MTPLayer  # lazy: only families with MTP need it

        return [MTPLayer(config, i) for i in range(config.mtp_layers)]

    def make_caches(self, batch: int, max_len: int, device=None, dtype=None) -> list:
        """One cache per layer (KV, latent or GDN state), each from its mixer's make_cache."""
        return [layer.make_cache(batch, max_len, device, dtype) for layer in self.layers]

    def hidden_states(self, input_ids: torch.Tensor, start_pos: int = 0, caches: list | None = None) -> torch.Tensor:
        """Last layer's output (B, T, H), before the final norm."""
        x = self.embed_tokens(input_ids)  # (B, T, H)
        for i, layer in enumerate(self.layers):
            x = layer(x, start_pos, None if caches is None else caches[i])
        return x

    def forward(self, input_ids: torch.Tensor, start_pos: int = 0, caches: list | None = None) -> torch.Tensor:
        """Logits (B, T, V) for input_ids (B, T) at positions start_pos .. start_pos+T-1."""
        return self.lm_head(self.norm(self.hidden_states(input_ids, start_pos, caches)))

    def mtp_forward(
        self, hidden: torch.Tensor, next_ids: torch.Tensor, start_pos: int = 0, caches: list | None = None
    ) -> list[torch.Tensor]:
        """Logits (B, T, V) of each MTP depth, through the shared lm_head.

        hidden: the main model's last hidden state after the final norm, (B, T, H) (the convention of
        vLLM's qwen3_next_mtp / deepseek_mtp: `self.norm(self.hidden_states(...))`). next_ids:
        (B, mtp_layers, T), row j holding the tokens j+1 ahead of each position (DeepSeek-V3 report,
        section 2.2). Each depth consumes the previous depth's normed output. caches: one per depth
        (from `make_mtp_caches`) or None.
        """
        out = []
        for j, layer in enumerate(self.mtp):
            hidden = layer(hidden, self.embed_tokens(next_ids[:, j]), start_pos, None if caches is None else caches[j])
            out.append(self.lm_head(hidden))
        return out

    def make_mtp_caches(self, batch: int, max_len: int, device=None, dtype=None) -> list:
        """One cache per MTP depth (each depth holds one decoder layer)."""
        return [layer.make_cache(batch, max_len, device, dtype) for layer in self.mtp]
