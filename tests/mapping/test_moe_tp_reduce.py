"""At plain tensor parallelism a MoE layer with a shared expert has one all-reduce: the shared
expert's partial output is summed with the routed experts' and reduced once (vLLM's DeepseekV2MoE and
Qwen2MoeSparseMoeBlock build the shared expert with reduce_results=False). Counted by hand: per
layer one all-reduce after attention and one after the MoE block, each of tokens x hidden x 2 bytes."""

from __future__ import annotations

import collections

import pytest

import codesign as cs
from codesign.mapping import ParallelPlan, Precision, map_step
from codesign.models.config import ModelConfig
from tests.mapping.helpers import make_hw

H, LAYERS, TOKENS = 256, 2, 16


def moe_shared_tiny() -> ModelConfig:
    return ModelConfig(
        name="moe-shared-tiny", sources=["test: a DeepSeek/Qwen-style MoE layer with one shared expert"],
        hidden_size=H, num_layers=LAYERS, vocab_size=512, max_position_embeddings=4096,
        attention={"num_heads": 8, "num_kv_heads": 4, "head_dim": 32},
        moe={"num_experts": 8, "top_k": 2, "intermediate_size": 128, "shared_expert_intermediate_size": 128})


def _collectives(plan: ParallelPlan) -> dict[int, list]:
    cfg = moe_shared_tiny()
    g = cs.trace(cfg, phase="decode", batch=TOKENS, tokens=1, context=64)
    m = map_step(g, cfg, make_hw(), plan, Precision())
    by_layer: dict[int, list] = collections.defaultdict(list)
    for _, d in m.graph.nodes(data=True):
        op = d["op"]
        if op.kind == "collective" and 0 <= op.layer < LAYERS:
            by_layer[op.layer].append((op.block, op.collective["type"], op.collective["bytes"]))
    return by_layer


@pytest.mark.parametrize("tp", [2, 4])
def test_one_all_reduce_for_shared_and_routed_experts(tp):
    for layer, colls in _collectives(ParallelPlan(tp=tp)).items():
        assert sorted(b for b, _, _ in colls) == ["attention", "moe_experts"], layer
        for _, kind, nbytes in colls:
            assert kind == "all_reduce" and nbytes == pytest.approx(TOKENS * H * 2)


def test_expert_parallel_keeps_the_shared_experts_own_all_reduce():
    # with ep the routed experts exchange tokens (dispatch/combine), so the shared expert, still split
    # over tp, reduces its own output
    colls = _collectives(ParallelPlan(tp=2, ep=2))
    for layer, cs_ in colls.items():
        assert ("moe_shared", "all_reduce") in {(b, k) for b, k, _ in cs_}, layer
