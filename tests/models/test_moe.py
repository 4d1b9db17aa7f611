"""MoE router (every routing mode) against brute force; SparseMoE against a per-token loop; meta device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from codesign.errors import CodesignError
from codesign.models.config import ModelConfig
from codesign.models.moe import Experts, SparseMoE, TopKRouter, gpt_oss_experts_state

H = 16


def _config(activation: str = "silu", **moe) -> ModelConfig:
    base = {"num_experts": 8, "top_k": 2, "intermediate_size": 12}
    return ModelConfig(
        name="moe-test",
        sources=["test"],
        hidden_size=H,
        num_layers=1,
        vocab_size=32,
        max_position_embeddings=64,
        activation=activation,
        attention={"num_heads": 2, "num_kv_heads": 1, "head_dim": 8},
        moe={**base, **moe},
    )


def _brute_route(logits: torch.Tensor, cfg: ModelConfig, corr: torch.Tensor | None) -> list[dict[int, float]]:
    """Per token, in plain Python: {expert: weight} following each family's published rule."""
    moe = cfg.moe
    out = []
    for row in logits.double().tolist():
        E = len(row)
        if moe.scoring == "sigmoid":
            scores = [1 / (1 + math.exp(-z)) for z in row]
        elif moe.softmax_order == "softmax_then_topk":
            m = max(row)
            s = sum(math.exp(z - m) for z in row)
            scores = [math.exp(z - m) / s for z in row]
        else:
            scores = list(row)
        choice = [s + (0.0 if corr is None else float(corr[e])) for e, s in enumerate(scores)]
        eligible = list(range(E))
        if moe.n_group > 1:
            size = E // moe.n_group
            gscore = [sum(sorted(choice[g * size : (g + 1) * size], reverse=True)[:2]) for g in range(moe.n_group)]
            groups = sorted(range(moe.n_group), key=lambda g: -gscore[g])[: moe.topk_group]
            eligible = [e for e in range(E) if e // size in groups]
        picked = sorted(eligible, key=lambda e: -choice[e])[: moe.top_k]
        w = [scores[e] for e in picked]
        if moe.scoring == "softmax" and moe.softmax_order == "topk_then_softmax":
            m = max(w)
            w = [math.exp(x - m) for x in w]
            w = [x / sum(w) for x in w]
        elif moe.norm_topk_prob:
            w = [x / sum(w) for x in w]
        out.append({e: x * moe.routed_scaling_factor for e, x in zip(picked, w)})
    return out


ROUTING_MODES = {
    "qwen_softmax_norm": {},
    "softmax_no_norm": {"norm_topk_prob": False},
    "gpt_oss_topk_softmax": {"softmax_order": "topk_then_softmax", "bias": True, "top_k": 3},
    "deepseek_v3_groups": {
        "scoring": "sigmoid", "n_group": 4, "topk_group": 2, "score_correction_bias": True,
        "routed_scaling_factor": 2.5, "top_k": 3,
    },
    "sigmoid_no_groups": {"scoring": "sigmoid", "norm_topk_prob": False},
}


@pytest.mark.parametrize("mode", sorted(ROUTING_MODES))
def test_router_matches_brute_force(mode: str) -> None:
    cfg = _config(**ROUTING_MODES[mode])
    torch.manual_seed(0)
    router = TopKRouter(cfg, 0)
    with torch.no_grad():
        if router.bias is not None:
            router.bias.normal_()
        if router.e_score_correction_bias is not None:
            router.e_score_correction_bias.normal_(0, 0.3)  # big enough to change picks
        x = torch.randn(40, H)
        logits, weights, ids = router(x)
    torch.testing.assert_close(logits, F.linear(x, router.weight, router.bias))
    expected = _brute_route(logits, cfg, router.e_score_correction_bias)
    for t, exp in enumerate(expected):
        got = dict(zip(ids[t].tolist(), weights[t].tolist()))
        assert sorted(got) == sorted(exp), f"token {t}"
        for e in exp:
            assert got[e] == pytest.approx(exp[e], rel=1e-5, abs=1e-6)


def test_correction_bias_changes_selection_not_weights() -> None:
    """DeepSeek-V3: a large bias on one expert forces its pick; its weight is its raw score."""
    cfg = _config(**ROUTING_MODES["deepseek_v3_groups"] | {"norm_topk_prob": False, "routed_scaling_factor": 1.0})
    torch.manual_seed(1)
    router = TopKRouter(cfg, 0)
    x = torch.randn(10, H)
    with torch.no_grad():
        router.e_score_correction_bias[5] = 100.0
        logits, weights, ids = router(x)
    assert (ids == 5).any(dim=-1).all()
    col = (ids == 5).float().argmax(dim=-1)
    torch.testing.assert_close(weights.gather(1, col[:, None]).squeeze(1), torch.sigmoid(logits[:, 5]))


def _per_token_reference(moe: SparseMoE, x: torch.Tensor, gpt_oss: bool = False) -> torch.Tensor:
    """Loop over tokens and their chosen experts with separate gate/up/down matmuls."""
    flat = x.reshape(-1, H)
    _, weights, ids = moe.gate(flat)
    ex = moe.experts
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for slot in range(ids.shape[1]):
            e = int(ids[t, slot])
            I = ex.intermediate_dim
            gu = ex.gate_up_proj[e] @ flat[t]
            if ex.gate_up_proj_bias is not None:
                gu = gu + ex.gate_up_proj_bias[e]
            if gpt_oss:
                g, u = gu[0::2].clamp(max=7.0), gu[1::2].clamp(-7.0, 7.0)
                h = (u + 1) * g * torch.sigmoid(1.702 * g)
            else:
                h = F.silu(gu[:I]) * gu[I:]
            y = ex.down_proj[e] @ h
            if ex.down_proj_bias is not None:
                y = y + ex.down_proj_bias[e]
            out[t] += weights[t, slot] * y
    if moe.shared_expert is not None:
        se = moe.shared_expert
        s = se.down_proj(F.silu(se.gate_proj(flat)) * se.up_proj(flat))
        if moe.shared_expert_gate is not None:
            s = torch.sigmoid(flat @ moe.shared_expert_gate.weight.t()) * s
        out = out + s
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shared_expert_intermediate_size": 10, "shared_expert_gate": True},  # Qwen3.5-MoE
        {"shared_expert_intermediate_size": 10},  # DeepSeek-style ungated shared expert
        {},  # Qwen3-MoE: no shared expert
    ],
)
def test_sparse_moe_matches_per_token_loop(kwargs: dict) -> None:
    torch.manual_seed(2)
    moe = SparseMoE(_config(**kwargs), 0)
    x = torch.randn(2, 7, H)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), _per_token_reference(moe, x), atol=1e-5, rtol=1e-5)
    assert (moe.shared_expert is None) == ("shared_expert_intermediate_size" not in kwargs)
    if moe.shared_expert is not None:
        assert moe.shared_expert.block == "moe_shared"


def test_gpt_oss_experts_with_biases() -> None:
    torch.manual_seed(3)
    moe = SparseMoE(_config(activation="gpt_oss_swiglu", softmax_order="topk_then_softmax", bias=True), 0)
    with torch.no_grad():
        moe.experts.gate_up_proj_bias.normal_()
        moe.experts.down_proj_bias.normal_()
        moe.experts.gate_up_proj.mul_(8)  # reach the +-7 clamps
        x = torch.randn(1, 9, H)
        torch.testing.assert_close(moe(x), _per_token_reference(moe, x, gpt_oss=True), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # imports transformers' modeling code (seconds on two cores)
def test_gpt_oss_state_conversion_matches_transformers() -> None:
    mod = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    cfg_mod = pytest.importorskip("transformers.models.gpt_oss.configuration_gpt_oss")
    hf_cfg = cfg_mod.GptOssConfig(hidden_size=H, intermediate_size=12, num_local_experts=8, num_experts_per_tok=2)
    torch.manual_seed(4)
    hf = mod.GptOssExperts(hf_cfg)
    ours = Experts(_config(activation="gpt_oss_swiglu", bias=True), 0)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.5)
        ours.load_state_dict(gpt_oss_experts_state(hf.gate_up_proj, hf.gate_up_proj_bias, hf.down_proj, hf.down_proj_bias))
        x = torch.randn(6, H)
        ids = torch.tensor([[0, 3], [1, 2], [7, 0], [5, 6], [4, 4 - 1], [2, 7]])
        w = torch.rand(6, 2)
        torch.testing.assert_close(ours(x, ids, w), hf(x, ids, w), atol=1e-5, rtol=1e-5)


def test_runs_on_meta_device() -> None:
    cfg = _config(shared_expert_intermediate_size=10, shared_expert_gate=True, **ROUTING_MODES["deepseek_v3_groups"])
    with torch.device("meta"):
        moe = SparseMoE(cfg, 0).to(torch.bfloat16)
        y = moe(torch.empty(3, 5, H, dtype=torch.bfloat16))
    assert y.shape == (3, 5, H) and y.device.type == "meta" and y.dtype == torch.bfloat16


def test_block_tags() -> None:
    moe = SparseMoE(_config(shared_expert_intermediate_size=4, shared_expert_gate=True), 0)
    assert (moe.gate.block, moe.experts.block, moe.shared_expert.block) == ("moe_router", "moe_experts", "moe_shared")
    assert moe.shared_expert_gate.block == "moe_shared"
    assert tuple(moe.experts.gate_up_proj.shape) == (8, 24, H) and tuple(moe.experts.down_proj.shape) == (8, H, 12)


def test_user_errors() -> None:
    with pytest.raises(CodesignError, match=r"moe\.shared_expert_gate: expected a shared expert"):
        SparseMoE(_config(shared_expert_gate=True), 0)
    dense = ModelConfig(
        name="dense", sources=["test"], hidden_size=8, num_layers=1, vocab_size=8, max_position_embeddings=8,
        intermediate_size=8, attention={"num_heads": 1, "num_kv_heads": 1, "head_dim": 8},
    )
    with pytest.raises(CodesignError, match="moe: expected a section for layer 0, found none"):
        SparseMoE(dense, 0)
