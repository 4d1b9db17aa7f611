"""MLA under tensor parallelism: the down-projections (q_a_proj, kv_a_proj_with_mqa) and their norms
run whole on every TP rank, as vLLM (DeepSeekV2FusedQkvAProjLinear, disable_tp=True) and SGLang
(fused_qkv_a_proj_with_mqa, ReplicatedLinear) run them; the up-projections and o_proj split.
Checked against hand counts from the config's dimensions."""

from __future__ import annotations

import pytest

import codesign as cs
from codesign.mapping import ParallelPlan, Precision, map_step, memory_per_chip
from codesign.models.config import ModelConfig
from tests.mapping.helpers import make_hw

H, HEADS, QL, KVL, NOPE, ROPE, V, I, VOCAB, LAYERS = 256, 8, 64, 32, 16, 8, 16, 512, 512, 2
TOKENS = 32


def mla_tiny() -> ModelConfig:
    return ModelConfig(
        name="mla-tiny", sources=["test: DeepSeek-V3's MLA layout at small widths"],
        hidden_size=H, num_layers=LAYERS, vocab_size=VOCAB, max_position_embeddings=4096, intermediate_size=I,
        mla={"num_heads": HEADS, "q_lora_rank": QL, "kv_lora_rank": KVL, "qk_nope_head_dim": NOPE,
             "qk_rope_head_dim": ROPE, "v_head_dim": V})


def _mapped_ops(tp: int) -> dict[str, object]:
    cfg, hw = mla_tiny(), make_hw()
    g = cs.trace(cfg, phase="prefill", batch=1, tokens=TOKENS, context=0)
    m = map_step(g, cfg, hw, ParallelPlan(tp=tp), Precision())
    return {d["op"].name.split("/")[0]: d["op"] for _, d in m.graph.nodes(data=True)
            if d["op"].layer == 0 and d["op"].kind == "gemm"}


@pytest.mark.parametrize("tp", [2, 4])
def test_down_projections_whole_on_every_rank_up_projections_split(tp):
    one, many = _mapped_ops(1), _mapped_ops(tp)
    p = "layers.0.self_attn."
    # q_a: H -> q_lora_rank and kv_a: H -> kv_lora_rank + rope, for all 32 tokens on every rank
    assert many[p + "q_a_proj"].flops == pytest.approx(2 * TOKENS * H * QL)
    assert many[p + "kv_a_proj_with_mqa"].flops == pytest.approx(2 * TOKENS * H * (KVL + ROPE))
    assert many[p + "kv_a_proj_with_mqa"].gemm == (1, TOKENS, KVL + ROPE, H)
    for name in ("q_a_proj", "kv_a_proj_with_mqa"):
        assert many[p + name].bytes_read["weight"] == one[p + name].bytes_read["weight"]
    # q_b: q_lora_rank -> heads x (nope + rope), kv_b: kv_lora_rank -> heads x (nope + v), o: heads x v -> H
    assert many[p + "q_b_proj"].flops == pytest.approx(2 * TOKENS * QL * HEADS * (NOPE + ROPE) / tp)
    assert many[p + "kv_b_proj"].flops == pytest.approx(2 * TOKENS * KVL * HEADS * (NOPE + V) / tp)
    assert many[p + "o_proj"].flops == pytest.approx(2 * TOKENS * HEADS * V * H / tp)
    assert many[p + "q_b_proj"].bytes_read["weight"] == pytest.approx(one[p + "q_b_proj"].bytes_read["weight"] / tp)


def test_weights_per_chip_keep_the_down_projections_whole():
    cfg, hw = mla_tiny(), make_hw()
    w = {tp: memory_per_chip(cfg, None, hw, ParallelPlan(tp=tp), Precision(), 1, 64).weights for tp in (2, 4)}
    # parameters split over tp, by hand: per layer MLA up-projections and o_proj, the dense MLP; plus
    # embedding and LM head (vocab-parallel). Replicated: q_a / kv_a (H x (QL + KVL + ROPE)), norms.
    mla_split = QL * HEADS * (NOPE + ROPE) + KVL * HEADS * (NOPE + V) + HEADS * V * H
    split = LAYERS * (mla_split + 3 * H * I) + 2 * VOCAB * H
    assert w[2] - w[4] == pytest.approx(split * 2 * (1 / 2 - 1 / 4))  # bf16: 2 bytes a parameter
