from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.mapping import ParallelPlan, Precision, candidate_plans, check_plan
from tests.mapping.helpers import llama2_70b, mixtral, qwen35_397b


def test_valid_plans():
    assert check_plan(llama2_70b(), ParallelPlan(tp=8), 8) is None
    assert check_plan(mixtral(), ParallelPlan(tp=8), 8) is None  # TP experts: ep=1, moe_tp=8
    assert check_plan(qwen35_397b(), ParallelPlan(ep=8, attention_dp=8), 8) is None
    # KV heads replicate when tp > num_kv_heads: valid
    assert check_plan(llama2_70b(), ParallelPlan(tp=16), 16) is None


def test_invalid_plan_messages():
    assert check_plan(llama2_70b(), ParallelPlan(tp=8), 16) == (
        "plan {tp=8} uses dp*pp*tp*attention_dp = 8 chips, the deployment has 16")
    assert check_plan(llama2_70b(), ParallelPlan(tp=3), 3) == "attention.num_heads (64) is not divisible by tp (3)"
    assert check_plan(llama2_70b(), ParallelPlan(pp=3), 3) is None  # uneven stages (tests/mapping/test_stages.py)
    assert check_plan(llama2_70b(), ParallelPlan(ep=2, attention_dp=2), 2) == "ep (2) > 1 but llama-2-70b-like has no MoE layers"
    assert check_plan(mixtral(), ParallelPlan(ep=16, attention_dp=16, redundant_experts=0), 16) == (
        "moe.num_experts (8) is not divisible by ep (16) and redundant_experts is 0 ('auto' would add 8 copies)")
    assert check_plan(mixtral(), ParallelPlan(tp=2, ep=4), 2) == (
        "ep (4) does not divide the chips of a stage, tp*attention_dp = 2")


def test_plan_properties_and_errors():
    p = ParallelPlan(tp=2, ep=4, dp=3, attention_dp=4)
    assert p.chips == 24 and p.moe_tp == 2
    with pytest.raises(CodesignError, match=r"^parallel.tp: expected an integer from 1 to 1,048,576, found 0$"):
        ParallelPlan(tp=0)
    with pytest.raises(CodesignError, match=r"^parallel.xp: unknown parallel dimension"):
        ParallelPlan.from_dict({"xp": 2})


def test_precision_scale():
    p = Precision(weights="fp8", activations="bf16", kv_cache="fp8")
    assert p.scale("weight") == 0.5 and p.scale("activation") == 1.0 and p.scale("kv_cache") == 0.5
    assert p.scale("state") == 1.0  # fp32 state stays fp32
    assert p.matrix_dtype == "bf16"  # the wider of weights and activations
    assert Precision(weights="fp4", activations="fp8").matrix_dtype == "fp8"
    assert Precision(weights="fp4").scale("weight") == pytest.approx((0.5 + 1 / 16) / 2)
    with pytest.raises(CodesignError, match=r"^precision.weights: expected one of .*found 'int3'$"):
        Precision(weights="int3")


def test_candidate_plans_are_valid_and_cover_known_layouts():
    plans = candidate_plans(llama2_70b(), 8)
    assert ParallelPlan(tp=8) in plans and all(check_plan(llama2_70b(), p, 8) is None for p in plans)
    assert all(p.ep == 1 and p.attention_dp == 1 for p in plans)
    moe_plans = candidate_plans(qwen35_397b(), 8)
    assert ParallelPlan(ep=8, attention_dp=8) in moe_plans and ParallelPlan(tp=8, ep=8) in moe_plans
    assert all(check_plan(qwen35_397b(), p, 8) is None for p in moe_plans)
    assert candidate_plans(qwen35_397b(), 8) == moe_plans  # deterministic
