"""`precision.expert_weights`: routed experts stored at their own dtype (gpt-oss: MXFP4 experts,
BF16 elsewhere), and vLLM's MXFP4 MoE curve (`cost.moe_kernel: triton_mxfp4`)."""

from __future__ import annotations

import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.mapping import ParallelPlan, Precision, map_step, memory_per_chip

MXFP4 = Precision(weights="bf16", activations="bf16", kv_cache="bf16", expert_weights="fp4", fp4_scale_block=32)
BF16 = Precision(weights="bf16", activations="bf16", kv_cache="bf16")


def _expert_params(cfg) -> float:
    moe = cfg.moe
    H, I, E = cfg.hidden_size, moe.intermediate_size, moe.num_experts
    per = 3 * H * I + (2 * I + H if moe.bias else 0)  # gate/up, down and their biases
    return cfg.num_layers * E * per


def test_experts_are_stored_at_their_own_dtype_by_hand():
    cfg = cs.load_model("gpt-oss-120b")
    hw = load_hw("h100")
    full = memory_per_chip(cfg, None, hw, ParallelPlan(), BF16, 1, 1024)
    mixed = memory_per_chip(cfg, None, hw, ParallelPlan(), MXFP4, 1, 1024)
    # the experts go from 2 bytes to 0.5 + 1/32 (MXFP4: one scale byte per 32 values); nothing else moves
    saved = _expert_params(cfg) * (2.0 - (0.5 + 1 / 32))
    assert full.weights - mixed.weights == pytest.approx(saved, rel=1e-9)
    assert mixed.kv_cache == full.kv_cache
    # ~61 GiB at MXFP4 on one H100: the checkpoint's published ~61 GiB (openai/gpt-oss-120b fits one 80 GB GPU)
    assert 55 < mixed.weights / 2**30 < 66


def test_expert_weight_reads_follow_the_expert_dtype():
    cfg = cs.load_model("gpt-oss-120b")
    hw = load_hw("h100")
    g = cs.trace(cfg, phase="decode", batch=4, context=512)

    def expert_weight_bytes(prec):
        m = map_step(g, cfg, hw, ParallelPlan(), prec)
        return sum(op.bytes_read["weight"] for _, op in m.graph.nodes(data="op") if op.block == "moe_experts"), \
            sum(op.bytes_read["weight"] for _, op in m.graph.nodes(data="op") if op.block == "attention")

    e16, a16 = expert_weight_bytes(BF16)
    e4, a4 = expert_weight_bytes(MXFP4)
    assert e4 == pytest.approx(e16 * (0.5 + 1 / 32) / 2, rel=1e-9)
    assert a4 == a16  # attention stays BF16


@pytest.mark.parametrize("data, message", [
    ({"weights": "fp8", "activations": "fp8", "expert_weights": "bf16"}, "experts with their own matrix dtype"),
    ({"weights": "bf16", "expert_weights": "fp3"}, "precision.expert_weights: expected one of"),
])
def test_bad_expert_weights_are_one_line(data, message):
    with pytest.raises(CodesignError, match=message) as e:
        Precision.from_dict(data)
    assert "\n" not in str(e.value)


def test_results_without_the_field_keep_their_precision_keys():
    assert "expert_weights" not in BF16.to_dict() and MXFP4.to_dict()["expert_weights"] == "fp4"


def test_mxfp4_curve_reproduces_its_rows_and_is_refused_elsewhere():
    from codesign.sim.kernel import KernelShape, predict
    from codesign.sim.kernel_table import load_table, table_files

    rows = [r for f in table_files() if f.name == "aic_vllm_moe_mxfp4.yaml" for r in load_table(f).rows]
    assert len(rows) == 54 and {r.hw for r in rows} == {"h100", "h200"}
    errs = [predict(r, load_hw(r.hw)).seconds / r.seconds - 1 for r in rows]
    assert sum(abs(e) for e in errs) / len(errs) < 0.10  # the fit's MAPE, 7.4-7.5% per chip
    # the weight-streaming floor by hand: each expert the 32 tokens' draw touches streams its
    # 3 x 2880 x 2880 weights at MXFP4 (0.5 + 1/32 bytes a value) at HBM x moe_triton_mxfp4_memory
    from codesign.sim.kernel import fused_moe_op

    s = KernelShape(op="fused_moe", hw="h100", dtype="bf16", weight_dtype="fp4", fp4_scale_block=32, groups=128,
                    top_k=4, hidden=2880, n=2880, tokens=32, moe_kernel="triton_mxfp4")
    h100 = load_hw("h100")
    p = predict(s, h100)
    touched = sum(1 for c in fused_moe_op(s).tokens_per_expert if c)
    weights = touched * 3 * 2880 * 2880 * (0.5 + 1 / 32)
    floor = weights / (h100.chip.hbm.bandwidth * h100.efficiency.moe_triton_mxfp4_memory)
    assert p.seconds >= floor and p.seconds == pytest.approx(floor, rel=0.15)
    with pytest.raises(CodesignError, match="moe_triton_mxfp4"):
        predict(s.model_copy(update={"hw": "b200"}), load_hw("b200"))
