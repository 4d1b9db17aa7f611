"""Experts split by tensor parallelism are costed at their shard's width. At moe_tp = tp * attention_dp
/ ep > 1 each chip holds every local expert's intermediate dimension I / moe_tp; the mapped expert op
says so in its shapes (gate/up (E, 2I / moe_tp, H), down (E, H, I / moe_tp)), as its FLOPs and weight
bytes already did. The cost model reads I from those shapes for the down GEMM's K ramp, so the step's
expert op and the kernel-table op of the same shard (`codesign kernel fused_moe --n I/moe_tp`) cost
the same. Checked against the shapes and the ramp computed by hand."""

from __future__ import annotations

import pytest

import codesign as cs
from codesign.mapping import ParallelPlan, Precision, map_step
from codesign.mapping.experts import moe_tp_expert_shapes
from codesign.models.config import ModelConfig
from codesign.sim.cost import CostModel
from codesign.sim.cost_options import CostOptions
from tests.mapping.helpers import make_hw

H, I, E, LAYERS, TOKENS = 512, 256, 8, 2, 64


def moe_tiny() -> ModelConfig:
    return ModelConfig(
        name="moe-tiny", sources=["test: a MoE layer with 8 experts of intermediate 256"],
        hidden_size=H, num_layers=LAYERS, vocab_size=512, max_position_embeddings=4096,
        attention={"num_heads": 8, "num_kv_heads": 4, "head_dim": 64},
        moe={"num_experts": E, "top_k": 2, "intermediate_size": I})


def _expert_ops(plan: ParallelPlan, hw=None) -> list:
    cfg = moe_tiny()
    g = cs.trace(cfg, phase="prefill", batch=1, tokens=TOKENS)
    m = map_step(g, cfg, hw or make_hw(), plan, Precision())
    return [d["op"] for _, d in m.graph.nodes(data=True)
            if d["op"].kind == "grouped_gemm" and d["op"].block == "moe_experts"]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_expert_shapes_carry_the_intermediate_shard(tp):
    ops = _expert_ops(ParallelPlan(tp=tp))
    assert ops
    for op in ops:
        assert tuple(op.in_shapes[3]) == (E, 2 * I // tp, H)
        assert tuple(op.in_shapes[4]) == (E, H, I // tp)


def test_expert_parallel_experts_keep_their_width():
    # tp 2 x ep 2: moe_tp 1, each rank holds whole experts
    for op in _expert_ops(ParallelPlan(tp=2, ep=2)):
        assert op.in_shapes[4][2] == I


def test_shapes_of_another_form_pass_unchanged():
    shapes = ((4, 8), (4, 2))
    assert moe_tp_expert_shapes(shapes, 4) == shapes
    full = ((4, 8), (4, 2), (4, 2), (8, 2 * I, H), (8, H, I))
    assert moe_tp_expert_shapes(full, 1) == full


def test_k_ramp_of_the_shard_by_hand():
    # H200 with vLLM's block-FP8 fused_moe curve (its own K ramp): the down GEMM's K is I / tp
    hw = cs.load_hw("h200")
    cm = CostModel(hw, "fp8", "bf16", CostOptions(moe_kernel="triton_fused_block_fp8"))
    half = cm.grouped_k_half
    assert half is not None and half > 0
    tp = 4
    (op,) = _expert_ops(ParallelPlan(tp=tp), hw)[:1]

    def ramp(k: float) -> float:
        return k / (k + half)

    f_gu, f_d = 2.0 * H * (2 * I // tp), 2.0 * (I // tp) * H
    want = (f_gu + f_d) / (f_gu / ramp(H) + f_d / ramp(I // tp))
    assert cm._grouped_k_ramp(op) == pytest.approx(want, rel=1e-12)
    # the unsharded width would give a faster ramp: the bug this guards against
    f_gu1, f_d1 = 2.0 * H * 2 * I, 2.0 * I * H
    assert cm._grouped_k_ramp(op) < (f_gu1 + f_d1) / (f_gu1 / ramp(H) + f_d1 / ramp(I))
