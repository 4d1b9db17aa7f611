"""Softmax attention: cache consistency, a brute-force reference for window + sinks + bias + gate,
and agreement with transformers' Qwen3-Next attention (output gate layout, partial RoPE)."""

from __future__ import annotations

import math

import pytest
import torch

from codesign.models.attention import Attention
from tests.conftest import jitter, make_config

pytestmark = pytest.mark.usefixtures("one_thread")

ATTN_FAMILIES = ["llama", "qwen3", "qwen3.5-gated", "gpt-oss"]


def _attn(family: str, layer_idx: int, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    m = Attention(make_config(family), layer_idx).eval()
    jitter(m, seed)
    return m


@pytest.mark.parametrize("family", ATTN_FAMILIES)
@pytest.mark.parametrize("layer_idx", [0, 1])
def test_prefill_then_decode_matches_full_forward(family: str, layer_idx: int) -> None:
    m = _attn(family, layer_idx)
    x = torch.randn(2, 11, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x)
        cache = m.make_cache(2, 16)
        parts = [m(x[:, :4], 0, cache)] + [m(x[:, t : t + 1], t, cache) for t in range(4, 11)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    # the cache holds exactly the 11 written positions; the rest is untouched
    assert cache.k.shape == (2, m.num_kv_heads, 16, 16)
    assert cache.k[:, :, 11:].abs().sum() == 0 and cache.k[:, :, :11].abs().sum() > 0


def _reference(m: Attention, x: torch.Tensor) -> torch.Tensor:
    """Position-by-position attention in float64 from the module's weights (no kernels, no RoPE helper)."""
    x = x.double()
    B, T, _ = x.shape
    H, Hkv, D, rd = m.num_heads, m.num_kv_heads, m.head_dim, m.rotary_dim

    def lin(layer, inp):
        y = inp @ layer.weight.double().t()
        return y if layer.bias is None else y + layer.bias.double()

    def rms(w, v, offset):
        v = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
        return v * ((1 + w.double()) if offset else w.double())

    def rope(v, pos):  # v (..., D): rotate pairs (i, i + rd/2) of the first rd dims
        out = v.clone()
        for i in range(rd // 2):
            ang = pos * m.rope_theta ** (-2 * i / rd)
            a, b = v[..., i], v[..., i + rd // 2]
            out[..., i] = a * math.cos(ang) - b * math.sin(ang)
            out[..., i + rd // 2] = b * math.cos(ang) + a * math.sin(ang)
        return out

    qg = lin(m.q_proj, x)
    if m.output_gate:
        qg = qg.view(B, T, H, 2 * D)
        q, gate = qg[..., :D], qg[..., D:].reshape(B, T, H * D)
    else:
        q, gate = qg.view(B, T, H, D), None
    k = lin(m.k_proj, x).view(B, T, Hkv, D)
    v = lin(m.v_proj, x).view(B, T, Hkv, D)
    if m.q_norm is not None:
        q, k = rms(m.q_norm.weight, q, m.q_norm.offset), rms(m.k_norm.weight, k, m.k_norm.offset)
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            for t in range(T):
                qt = rope(q[b, t, h], t)
                keys = range(max(0, t - m.window + 1) if m.window else 0, t + 1)
                logits = [float(qt @ rope(k[b, s, g], s)) / math.sqrt(D) for s in keys]
                if m.sinks is not None:
                    logits.append(float(m.sinks[h]))
                p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                out[b, t, h] = sum(p[j] * v[b, s, g] for j, s in enumerate(keys))
    o = out.reshape(B, T, H * D)
    if gate is not None:
        o = o * torch.sigmoid(gate)
    return lin(m.o_proj, o)


@pytest.mark.parametrize("family,layer_idx", [("gpt-oss", 0), ("gpt-oss", 1), ("qwen3.5-gated", 0), ("qwen3", 0)])
def test_against_brute_force_reference(family: str, layer_idx: int) -> None:
    m = _attn(family, layer_idx, seed=3)
    if m.sinks is not None:  # make the sinks matter: logits comparable to the scores
        with torch.no_grad():
            m.sinks.copy_(torch.linspace(-1.0, 2.0, m.num_heads))
    assert m.window == (4 if (family, layer_idx) == ("gpt-oss", 0) else 0)
    x = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = m(x)
        want = _reference(m, x)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_window_and_sinks_change_the_output() -> None:
    # guards the reference test against a vacuous pass: both features must move the numbers
    m = _attn("gpt-oss", 0)
    x = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = m(x)
        m.window = 0
        assert (m(x) - base).abs().max() > 1e-3
        m.window = 4
        m.sinks.add_(3.0)
        assert (m(x) - base).abs().max() > 1e-3


def test_matches_transformers_qwen3_next_attention() -> None:
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextAttention, Qwen3NextRotaryEmbedding

    ours = _attn("qwen3.5-gated", 0, seed=5)
    hf_cfg = Qwen3NextConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.25,
        rms_norm_eps=1e-6, num_hidden_layers=1, layer_types=["full_attention"], vocab_size=256,
    )
    hf_cfg._attn_implementation = "eager"
    hf = Qwen3NextAttention(hf_cfg, 0).eval()
    hf.load_state_dict(ours.state_dict())
    T = 7
    x = torch.randn(2, T, 64, generator=torch.Generator().manual_seed(4))
    pos = torch.arange(T)[None].expand(2, T)
    cos, sin = Qwen3NextRotaryEmbedding(hf_cfg)(x, pos)
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None].expand(2, 1, T, T)
    with torch.no_grad():
        want, _ = hf(x, position_embeddings=(cos, sin), attention_mask=mask)
        got = ours(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_qwen3_model_matches_transformers() -> None:
    # q/k RMSNorm per head with plain (non-offset) weights, through transformers' whole Qwen3 model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from codesign.models.decoder import CausalLM

    cfg = make_config("qwen3")
    a = cfg.attention
    hf_cfg = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads,
                         head_dim=a.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=a.rope_theta, tie_word_embeddings=False)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(hf_cfg).eval()
    jitter(hf, 2)
    ours = CausalLM(cfg, dtype=torch.float32).eval()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in hf.state_dict().items()})
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
