"""Agreement with transformers' LlamaForCausalLM: same state dict (less HF's `model.` prefix), same
logits; and the same module runs on the meta device."""

from __future__ import annotations

import pytest
import torch

from codesign.models.config import ModelConfig
from codesign.models.decoder import CausalLM
from tests.conftest import jitter

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF causal-LM names -> CausalLM names: only the `model.` prefix differs."""
    return {k.removeprefix("model."): v for k, v in state_dict.items()}


def _configs(tied: bool):
    from transformers import LlamaConfig

    hf = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=512,
        rope_theta=500_000.0, tie_word_embeddings=tied,
    )
    hf._attn_implementation = "eager"
    ours = ModelConfig(
        name="llama-tiny", sources=["test"], hidden_size=64, num_layers=3, vocab_size=256, max_position_embeddings=512,
        intermediate_size=128, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        attention=dict(num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=500_000.0),
    )
    return hf, ours


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers_llama(tied: bool) -> None:
    from transformers import LlamaForCausalLM

    hf_cfg, cfg = _configs(tied)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_cfg).eval()
    jitter(hf, 1)  # norm weights away from 1
    ours = CausalLM(cfg, dtype=torch.float32).eval()
    missing, unexpected = ours.load_state_dict(hf_to_native(hf.state_dict()), strict=False)
    assert not unexpected and not missing
    if tied:
        assert ours.lm_head.weight is ours.embed_tokens.weight
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
        # and cached: prefill 6, decode 7 one by one, against HF's full forward
        caches = ours.make_caches(2, 16)
        inc = torch.cat([ours(ids[:, :6], 0, caches)] + [ours(ids[:, t : t + 1], t, caches) for t in range(6, 13)], 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(inc, want, atol=1e-4, rtol=1e-4)


def test_runs_on_meta_device() -> None:
    _, cfg = _configs(False)
    model = CausalLM(cfg, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.embed_tokens.weight.dtype == torch.bfloat16  # the default build dtype (traced bytes)
    ids = torch.zeros(2, 7, dtype=torch.long, device="meta")
    logits = model(ids)
    assert logits.shape == (2, 7, 256) and logits.device.type == "meta"
    caches = model.make_caches(2, 32, device="meta")
    assert model(ids[:, :1], 7, caches).shape == (2, 1, 256)
