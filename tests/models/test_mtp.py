"""MTP head: composition and concat order, cached == uncached, meta device, CausalLM wiring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codesign.models.config import ModelConfig
from codesign.models.mtp import MTPLayer, mtp_layer_config

H = 32


def _config(**kw) -> ModelConfig:
    base = dict(
        name="mtp-test",
        sources=["test"],
        hidden_size=H,
        num_layers=4,
        vocab_size=64,
        max_position_embeddings=256,
        norm_offset=True,
        layer_pattern=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        attention={"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "qk_norm": True, "output_gate": True,
                   "partial_rotary_factor": 0.25},
        linear_attention={"num_key_heads": 2, "num_value_heads": 4, "key_head_dim": 8, "value_head_dim": 8,
                          "chunk_size": 4},
        moe={"num_experts": 4, "top_k": 2, "intermediate_size": 16, "shared_expert_intermediate_size": 16,
             "shared_expert_gate": True},
        mtp_layers=1,
    )
    return ModelConfig(**{**base, **kw})


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)  # zero-centred weights


def test_layer_kinds_and_names() -> None:
    cfg = _config()
    m = MTPLayer(cfg, 0)
    assert m.block == "mtp" and m.layer_idx == 4
    assert m.layer.layer_type == "full_attention" and type(m.layer.mlp).__name__ == "SparseMoE"
    assert tuple(m.fc.weight.shape) == (H, 2 * H) and m.fc.bias is None
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"pre_fc_norm_embedding", "pre_fc_norm_hidden", "fc", "layer", "norm"}
    ext = mtp_layer_config(cfg, 1)
    assert ext.num_layers == 6 and ext.layer_types[4:] == ["full_attention"] * 2 and ext.mlp_types[4:] == ["moe"] * 2
    mla = ModelConfig(
        name="ds", sources=["t"], hidden_size=H, num_layers=2, vocab_size=64, max_position_embeddings=64,
        intermediate_size=32, mla={"num_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
                                   "v_head_dim": 8},
        first_dense_layers=1, moe={"num_experts": 4, "top_k": 2, "intermediate_size": 16},
    )
    assert mtp_layer_config(mla, 0).layer_types[-1] == "mla" and mtp_layer_config(mla, 0).mlp_types[-1] == "moe"


def test_forward_is_norm_concat_fc_layer_norm() -> None:
    """Embedding first in the concat: fc(cat[e, h]) = W[:, :H] e + W[:, H:] h."""
    torch.manual_seed(0)
    m = MTPLayer(_config(), 0)
    with torch.no_grad():
        for norm in (m.pre_fc_norm_embedding, m.pre_fc_norm_hidden, m.norm):
            norm.weight.normal_(0, 0.3)
        h, e = torch.randn(2, 5, H), torch.randn(2, 5, H)
        W = m.fc.weight
        x = _rms(e, m.pre_fc_norm_embedding.weight) @ W[:, :H].t() + _rms(h, m.pre_fc_norm_hidden.weight) @ W[:, H:].t()
        expected = _rms(m.layer(x, 0, None), m.norm.weight)
        torch.testing.assert_close(m(h, e, 0, None), expected, atol=1e-5, rtol=1e-5)


def test_cached_steps_equal_full_forward() -> None:
    torch.manual_seed(1)
    m = MTPLayer(_config(), 0)
    h, e = torch.randn(1, 7, H), torch.randn(1, 7, H)
    with torch.no_grad():
        full = m(h, e, 0, None)
        cache = m.make_cache(1, 16, torch.device("cpu"), torch.float32)
        parts = [m(h[:, :5], e[:, :5], 0, cache), m(h[:, 5:6], e[:, 5:6], 5, cache), m(h[:, 6:], e[:, 6:], 6, cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_runs_on_meta_device() -> None:
    with torch.device("meta"):
        m = MTPLayer(_config(), 0).to(torch.bfloat16)
        y = m(torch.empty(2, 3, H, dtype=torch.bfloat16), torch.empty(2, 3, H, dtype=torch.bfloat16), 0, None)
    assert y.shape == (2, 3, H) and y.device.type == "meta"


def test_causal_lm_mtp_forward_uses_the_mtp_norm_and_shared_head() -> None:
    from codesign.models.decoder import CausalLM

    torch.manual_seed(2)
    model = CausalLM(_config(), dtype=torch.float32)
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)  # norms distinct from identity, so a double norm would show
        hidden = model.hidden_states(ids[:, :-1])
        (logits,) = model.mtp_forward(hidden, ids[:, None, 1:])
        expected = F.linear(model.mtp[0](hidden, model.embed_tokens(ids[:, 1:])), model.lm_head.weight)
    assert logits.shape == (1, 5, 64)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
