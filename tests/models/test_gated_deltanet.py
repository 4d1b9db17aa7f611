"""GatedDeltaNet: chunked == recurrent kernel, cached prefill+decode == full forward, meta device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codesign.errors import CodesignError
from codesign.models.config import ModelConfig
from codesign.models.gated_deltanet import (
    GatedDeltaNet,
    chunk_gated_delta_rule,
    l2norm,
    recurrent_gated_delta_rule,
    split_qwen3_next_in_proj,
)


def _config(chunk_size: int = 8, **la) -> ModelConfig:
    return ModelConfig(
        name="gdn-test",
        sources=["test"],
        hidden_size=32,
        num_layers=1,
        vocab_size=64,
        max_position_embeddings=128,
        intermediate_size=64,
        layer_types=["linear_attention"],
        linear_attention={
            "num_key_heads": 2,
            "num_value_heads": 4,
            "key_head_dim": 8,
            "value_head_dim": 6,
            "chunk_size": chunk_size,
            **la,
        },
    )


def _inputs(B: int, T: int, Hk: int = 2, Hv: int = 4, dk: int = 8, dv: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = l2norm(torch.randn(B, T, Hk, dk, generator=gen))
    k = l2norm(torch.randn(B, T, Hk, dk, generator=gen))
    v = torch.randn(B, T, Hv, dv, generator=gen)
    g = -F.softplus(torch.randn(B, T, Hv, generator=gen))  # log decay <= 0
    beta = torch.sigmoid(torch.randn(B, T, Hv, generator=gen))
    s0 = torch.randn(B, Hv, dk, dv, generator=gen)
    return q, k, v, g, beta, s0


def _naive(q, k, v, g, beta, s0):
    """The delta rule written from its definition, one (batch, head, token) at a time."""
    B, T, Hk, dk = q.shape
    Hv, dv = v.shape[2], v.shape[3]
    r = Hv // Hk
    out = torch.zeros(B, T, Hv, dv, dtype=torch.float64)
    S = torch.zeros(B, Hv, dk, dv, dtype=torch.float64) if s0 is None else s0.double().clone()
    for b in range(B):
        for h in range(Hv):
            for t in range(T):
                qt, kt = q[b, t, h // r].double() * dk**-0.5, k[b, t, h // r].double()
                S[b, h] = torch.exp(g[b, t, h].double()) * S[b, h]
                S[b, h] = S[b, h] + beta[b, t, h].double() * torch.outer(kt, v[b, t, h].double() - kt @ S[b, h])
                out[b, t, h] = qt @ S[b, h]
    return out, S


@pytest.mark.parametrize("T", [1, 5, 8, 13, 24])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent_and_definition(T: int, with_state: bool) -> None:
    q, k, v, g, beta, s0 = _inputs(2, T, seed=T)
    init = s0 if with_state else None
    oc, sc = chunk_gated_delta_rule(q, k, v, g, beta, init, chunk_size=8)
    orr, sr = recurrent_gated_delta_rule(q, k, v, g, beta, init)
    on, sn = _naive(q, k, v, g, beta, init)
    torch.testing.assert_close(oc, orr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sc, sr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(orr.double(), on, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sr.double(), sn, atol=1e-5, rtol=1e-5)
    assert sc.dtype == torch.float32 and oc.shape == (2, T, 4, 6)


@pytest.mark.slow  # imports transformers' modeling code (seconds on two cores)
def test_chunked_matches_transformers_reference() -> None:
    mod = pytest.importorskip("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe")
    q, k, v, g, beta, s0 = _inputs(1, 21, seed=3)
    ours, s_ours = chunk_gated_delta_rule(q, k, v, g, beta, s0, chunk_size=64)
    ref, s_ref = mod.torch_chunk_gated_delta_rule(q, k, v, g, beta, 64, s0, output_final_state=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_ours, s_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefill,conv_kernel", [(1, 4), (5, 4), (8, 4), (11, 4), (5, 1), (5, 2)])
def test_prefill_then_decode_equals_full_forward(prefill: int, conv_kernel: int) -> None:
    # conv_kernel 1 (a pointwise conv) keeps no history: an empty conv state, not the whole input
    torch.manual_seed(0)
    layer = GatedDeltaNet(_config(chunk_size=4, conv_kernel=conv_kernel), 0)
    with torch.no_grad():
        layer.conv1d.weight.normal_(0, 0.5)  # make the conv history matter
        x = torch.randn(2, prefill + 14, 32)
        full = layer(x, 0, None)
        cache = layer.make_cache(2, 64, torch.device("cpu"), torch.float32)
        parts = [layer(x[:, :prefill], 0, cache)]
        pos = prefill
        parts.append(layer(x[:, pos : pos + 2], pos, cache))  # 2 tokens from a warm state: recurrent
        pos += 2
        parts.append(layer(x[:, pos : pos + 10], pos, cache))  # 10 tokens from a warm state: chunked
        pos += 10
        for _ in range(2):  # single-token decode: the recurrent form
            parts.append(layer(x[:, pos : pos + 1], pos, cache))
            pos += 1
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.recurrent_state.dtype == torch.float32
    assert cache.conv_state.shape == (2, layer.conv_dim, conv_kernel - 1)
    assert cache.recurrent_state.shape == (2, 4, 8, 6)


def test_start_pos_zero_ignores_stale_cache() -> None:
    torch.manual_seed(1)
    layer = GatedDeltaNet(_config(), 0)
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        cache = layer.make_cache(1, 16, torch.device("cpu"), torch.float32)
        layer(torch.randn(1, 6, 32), 0, cache)  # leaves a state behind
        again = layer(x, 0, cache)
        torch.testing.assert_close(again, layer(x, 0, None))


def test_runs_on_meta_device() -> None:
    cfg = _config(chunk_size=4)
    with torch.device("meta"):
        layer = GatedDeltaNet(cfg, 0).to(torch.bfloat16)
        cache = layer.make_cache(3, 32, torch.device("meta"), torch.bfloat16)
        y = layer(torch.empty(3, 10, 32, dtype=torch.bfloat16), 0, cache)
        y1 = layer(torch.empty(3, 1, 32, dtype=torch.bfloat16), 10, cache)
    assert y.shape == (3, 10, 32) and y.device.type == "meta" and y.dtype == torch.bfloat16
    assert y1.shape == (3, 1, 32)
    assert cache.recurrent_state.dtype == torch.float32


def test_chunk_loop_traces_one_iteration() -> None:
    from contextlib import contextmanager

    from codesign.models import kernels

    seen: list[int] = []

    @contextmanager
    def handler(n: int):
        seen.append(n)
        yield

    q, k, v, g, beta, _ = _inputs(1, 20)
    with kernels.loop_handler(handler):
        out, _ = chunk_gated_delta_rule(q, k, v, g, beta, None, chunk_size=8)
    assert seen == [3] and out.shape == (1, 20, 4, 6)


@pytest.mark.slow  # imports transformers' modeling code (seconds on two cores)
def test_qwen3_next_layout_conversion() -> None:
    """The fused Qwen3-Next projections give the same q, k, v, z, b, a as transformers' split."""
    mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    cfg_mod = pytest.importorskip("transformers.models.qwen3_next.configuration_qwen3_next")
    hf_cfg = cfg_mod.Qwen3NextConfig(
        hidden_size=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=6, num_hidden_layers=1, layer_types=["linear_attention"],
    )
    torch.manual_seed(2)
    hf = mod.Qwen3NextGatedDeltaNet(hf_cfg, 0)
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        q, k, v, z, b, a = hf.fix_query_key_value_ordering(hf.in_proj_qkvz(x), hf.in_proj_ba(x))
        w = split_qwen3_next_in_proj(hf.in_proj_qkvz.weight, hf.in_proj_ba.weight, _config().linear_attention)
        qkv = x @ w["in_proj_qkv.weight"].t()
    torch.testing.assert_close(qkv, torch.cat([t.reshape(1, 3, -1) for t in (q, k, v)], -1))
    torch.testing.assert_close(x @ w["in_proj_z.weight"].t(), z.reshape(1, 3, -1))
    torch.testing.assert_close(x @ w["in_proj_b.weight"].t(), b)
    torch.testing.assert_close(x @ w["in_proj_a.weight"].t(), a)


def test_missing_section_is_a_user_error() -> None:
    cfg = ModelConfig(
        name="dense", sources=["test"], hidden_size=8, num_layers=1, vocab_size=8,
        max_position_embeddings=8, intermediate_size=8, attention={"num_heads": 1, "num_kv_heads": 1, "head_dim": 8},
    )
    with pytest.raises(CodesignError, match="linear_attention: expected a section for layer 0, found none"):
        GatedDeltaNet(cfg, 0)


def test_bf16_layer_keeps_fp32_state_and_tracks_fp32() -> None:
    torch.manual_seed(4)
    layer = GatedDeltaNet(_config(chunk_size=4), 0)
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        ref = layer(x, 0, None)
        half = GatedDeltaNet(_config(chunk_size=4), 0).to(torch.bfloat16)
        half.load_state_dict(layer.state_dict())
        cache = half.make_cache(1, 16)
        y = torch.cat([half(x[:, :8].bfloat16(), 0, cache), half(x[:, 8:].bfloat16(), 8, cache)], dim=1)
    assert y.dtype == torch.bfloat16 and cache.conv_state.dtype == torch.bfloat16
    assert cache.recurrent_state.dtype == torch.float32
    # bf16 weights and activations: agreement to bf16 precision
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=3e-2)
