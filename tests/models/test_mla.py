"""Multi-head latent attention: latent cache layout, absorbed == expanded, cached decode == full
forward, decode reads only the latent cache, and agreement with transformers' DeepSeek-V3."""

from __future__ import annotations

import pytest
import torch

from codesign.models import kernels
from codesign.models.config import ModelConfig
from codesign.models.decoder import CausalLM
from codesign.models.mla import MLA
from tests.conftest import jitter, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _mla(family: str = "deepseek-mla", seed: int = 0) -> MLA:
    torch.manual_seed(seed)
    m = MLA(make_config(family), 0).eval()
    jitter(m, seed)
    return m


def test_latent_cache_is_576_values_per_token_at_deepseek_v3_sizes() -> None:
    # DeepSeek-V3 config.json: kv_lora_rank 512, qk_rope_head_dim 64 -> 576 cached values per token
    cfg = ModelConfig(name="ds", sources=["t"], hidden_size=7168, num_layers=1, vocab_size=128, max_position_embeddings=4096,
                      intermediate_size=64, mla=dict(num_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                                                     qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128))
    with torch.device("meta"):
        m = MLA(cfg, 0)
    cache = m.make_cache(3, 1000, device="meta", dtype=torch.bfloat16)
    assert cache.kv.shape == (3, 1, 1000, 576)


@pytest.mark.parametrize("family", ["deepseek-mla", "mla-no-qlora"])
def test_absorbed_equals_expanded(family: str) -> None:
    m = _mla(family)
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.absorb = "never"
        expanded = m(x)
        m.absorb = "always"
        absorbed = m(x)
    torch.testing.assert_close(absorbed, expanded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["deepseek-mla", "mla-no-qlora"])
def test_prefill_then_absorbed_decode_matches_full_forward(family: str) -> None:
    m = _mla(family)
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = m(x)  # expanded, no cache
        cache = m.make_cache(2, 12)
        parts = [m(x[:, :3], 0, cache)] + [m(x[:, t : t + 1], t, cache) for t in range(3, 10)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_decode_attends_over_the_latent_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _mla()
    cache = m.make_cache(1, 8)
    seen: list[tuple] = []
    real = kernels.attention

    def spy(q, k, v, q_offset, window, scale, sinks=None):
        seen.append((q.shape, k.shape, v.shape, k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr()))
        return real(q, k, v, q_offset, window, scale, sinks)

    monkeypatch.setattr(kernels, "attention", spy)
    x = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        m(x[:, :4], 0, cache)
        m(x[:, 4:], 4, cache)
    qs, ks, vs, kp, vp = seen[-1]
    ptr = cache.kv.untyped_storage().data_ptr()
    assert (qs, ks, vs) == ((1, 4, 1, 32 + 8), (1, 1, 5, 32 + 8), (1, 1, 5, 32))  # MQA: one kv head
    assert kp == ptr and vp == ptr  # keys and values are views of the latent cache itself
    assert seen[0][1] == (1, 4, 4, 16 + 8)  # prefill expanded per head (nope + rope)


def test_matches_transformers_deepseek_v3() -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = make_config("deepseek-mla")
    m = cfg.mla
    hf_cfg = DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
        q_lora_rank=m.q_lora_rank, kv_lora_rank=m.kv_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim,
        qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim, rms_norm_eps=cfg.rms_norm_eps,
        first_k_dense_replace=cfg.num_layers,  # every layer dense: MLA is what is compared here
        rope_interleave=False,  # our RoPE layout (rotate_half); see codesign/models/mla.py
        tie_word_embeddings=False, max_position_embeddings=cfg.max_position_embeddings,
    )
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(hf_cfg).eval()
    jitter(hf, 1)
    ours = CausalLM(cfg, dtype=torch.float32).eval()
    sd = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    ours.load_state_dict(sd)
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
