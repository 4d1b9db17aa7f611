"""Agreement with transformers' Qwen3.5-MoE text model (the numerical reference).

A tiny `Qwen3_5MoeForCausalLM` (fp32, seeded random weights; 4 layers: 3 Gated DeltaNet + 1 gated
full attention, all sparse MoE with a sigmoid-gated shared expert) is copied into our `CausalLM`
built from the equivalent `ModelConfig`; the logits must agree, for one full forward and for a
cached prefill followed by single-token decode steps.
"""

from __future__ import annotations

import pytest
import torch

from codesign.models.config import ModelConfig
from codesign.models.decoder import CausalLM

# Importing transformers' qwen3_5_moe alone takes 3-14 s on two busy cores.
pytestmark = pytest.mark.slow

hf_mod = pytest.importorskip("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe")
hf_cfg_mod = pytest.importorskip("transformers.models.qwen3_5_moe.configuration_qwen3_5_moe")

SIZES = dict(
    hidden=64, layers=4, vocab=256, heads=4, kv_heads=2, head_dim=32, gdn_k_heads=2, gdn_v_heads=4, gdn_dim=16,
    experts=8, top_k=2, expert_width=32, shared_width=48, rope_theta=10_000.0,
)


def _hf_config():
    s = SIZES
    return hf_cfg_mod.Qwen3_5MoeTextConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
        linear_num_key_heads=s["gdn_k_heads"], linear_num_value_heads=s["gdn_v_heads"],
        linear_key_head_dim=s["gdn_dim"], linear_value_head_dim=s["gdn_dim"], linear_conv_kernel_dim=4,
        num_experts=s["experts"], num_experts_per_tok=s["top_k"], moe_intermediate_size=s["expert_width"],
        shared_expert_intermediate_size=s["shared_width"], max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": s["rope_theta"], "partial_rotary_factor": 0.25,
                         "mrope_section": [2, 1, 1], "mrope_interleaved": True},
        tie_word_embeddings=False,
    )


def _our_config() -> ModelConfig:
    s = SIZES
    return ModelConfig(
        name="qwen3.5-moe-agreement",
        sources=["transformers Qwen3_5MoeTextConfig at toy sizes"],
        hidden_size=s["hidden"], num_layers=s["layers"], vocab_size=s["vocab"], max_position_embeddings=512,
        rms_norm_eps=1e-6, norm_offset=True,
        layer_pattern=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        attention={"num_heads": s["heads"], "num_kv_heads": s["kv_heads"], "head_dim": s["head_dim"],
                   "rope_theta": s["rope_theta"], "partial_rotary_factor": 0.25, "qk_norm": True, "output_gate": True},
        # chunk 8 (HF uses 64): the same recurrence, and a 20-token prompt spans three chunks
        linear_attention={"num_key_heads": s["gdn_k_heads"], "num_value_heads": s["gdn_v_heads"],
                          "key_head_dim": s["gdn_dim"], "value_head_dim": s["gdn_dim"], "conv_kernel": 4,
                          "chunk_size": 8},
        moe={"num_experts": s["experts"], "top_k": s["top_k"], "intermediate_size": s["expert_width"],
             "shared_expert_intermediate_size": s["shared_width"], "shared_expert_gate": True,
             "scoring": "softmax", "softmax_order": "softmax_then_topk", "norm_topk_prob": True},
    )


def hf_to_ours(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers Qwen3.5-MoE state dict -> CausalLM names: only the `model.` prefix differs.

    Everything else (linear_attn.in_proj_qkv/z/b/a, conv1d, A_log, dt_bias, norm, out_proj; gated
    self_attn with q/k norm; mlp.gate, stacked mlp.experts.gate_up_proj/down_proj, shared_expert,
    shared_expert_gate; zero-centred norms) has the same names, shapes and layout.
    """
    out = {}
    for name, t in hf_state.items():
        if "rotary_emb" in name:  # recomputed from the config, not a weight
            continue
        out[name.removeprefix("model.")] = t
    return out


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """O(1) activations everywhere: weights ~ N(0, 1/fan_in), 1-D params (norms, dt_bias) jittered."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(0.01, 4, generator=g).log())
            elif p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            if name.endswith("mlp.gate.weight"):
                p.mul_(4)  # decisive routing: top-k picks do not sit on near-ties


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, CausalLM]:
    torch.manual_seed(0)
    hf = hf_mod.Qwen3_5MoeForCausalLM(_hf_config()).float().eval()
    _randomise(hf, seed=0)
    ours = CausalLM(_our_config(), dtype=torch.float32).eval()
    missing, unexpected = ours.load_state_dict(hf_to_ours(hf.state_dict()), strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if "rotary" not in m and "inv_freq" not in m], missing
    return hf, ours


def test_layer_layout_matches(models) -> None:
    hf, ours = models
    assert hf.config.layer_types == list(ours.config.layer_types)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())


def test_full_forward_logits_agree(models) -> None:
    hf, ours = models
    ids = torch.randint(0, SIZES["vocab"], (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = ours(ids)
    assert ref.abs().mean() > 0.1  # non-trivial logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_cached_prefill_and_decode_agree_with_full_forward(models) -> None:
    hf, ours = models
    ids = torch.randint(0, SIZES["vocab"], (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        caches = ours.make_caches(2, 32, torch.device("cpu"), torch.float32)
        steps = [ours(ids[:, :11], 0, caches)]
        for pos in range(11, 14):
            steps.append(ours(ids[:, pos : pos + 1], pos, caches))
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, atol=1e-4, rtol=1e-4)
