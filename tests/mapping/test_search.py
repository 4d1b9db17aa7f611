"""candidate_plans at large chip counts: small, valid, rule-abiding sets (enumerated by hand)."""

from __future__ import annotations

from codesign.mapping import ParallelPlan, Precision, candidate_plans, check_plan, memory_per_chip
from tests.mapping.helpers import deepseek_v3, llama2_70b, make_hw, qwen35_397b


def test_dense_eight_chips_tp_first():
    # tp in {8, 4, 2, 1} with dp for the rest; pipelines only after tp fills the domain (none at 8)
    want = [ParallelPlan(tp=8), ParallelPlan(tp=4, dp=2), ParallelPlan(tp=2, dp=4), ParallelPlan(dp=8)]
    assert candidate_plans(llama2_70b(), 8, max_tp=8) == want
    assert candidate_plans(llama2_70b(), 8) == want


def test_dense_pipeline_only_when_tp_is_full_and_fewest_stages_that_fit():
    c = llama2_70b()
    plans = candidate_plans(c, 32, max_tp=8)
    assert {p.pp for p in plans} == {1, 2, 4}  # 80 layers; pp 8, 16, 32 need more chips than tp=8 leaves
    assert all(p.tp == 8 for p in plans if p.pp > 1)
    # with a 40 GB chip: 138 GB of bf16 weights need tp*pp >= 4 (34.5 GB each, 38 GB usable);
    # only the fewest stages per tp survive: tp=8 (17.2 GB) and tp=4 fit without a pipeline
    hw = make_hw(hbm="40 GB", chips=32)
    fit = candidate_plans(c, 32, max_tp=8, hw=hw)
    assert fit == [ParallelPlan(tp=8, dp=4), ParallelPlan(tp=4, dp=8)]


def test_deepseek_144_chips():
    c = deepseek_v3()
    plans = candidate_plans(c, 144, max_tp=8)
    assert ParallelPlan(ep=144, attention_dp=144) in plans  # the production decode unit (288 slots)
    assert ParallelPlan(tp=8, ep=144, attention_dp=18) in plans
    # 61 layers: pipelines of 2, 3, 6, 9 and 18 uneven stages (tp=8, ep 1 or 8) join the 20 others
    assert len(plans) <= 30 and len(set(plans)) == len(plans)
    assert {p.pp for p in plans} == {1, 2, 3, 6, 9, 18}
    for p in plans:
        assert check_plan(c, p, 144) is None
        stage = p.tp * p.attention_dp
        assert 8 % stage == 0 or stage % 8 == 0  # domain alignment
        assert p.ep <= 256 and p.redundant(256) <= 64  # at most 25% redundant slots
        assert p.attention_dp == 1 or p.ep == stage
    # H800-like (80 GB, fp8 weights): a plan survives only if its weights and one sequence fit
    hw = make_hw(links=8, chips=144)
    prec = Precision(weights="fp8", activations="fp8")
    fit = candidate_plans(c, 144, max_tp=8, hw=hw, precision=prec)
    assert ParallelPlan(ep=144, attention_dp=144) in fit and ParallelPlan(tp=8, dp=18) not in fit
    fitting = [p for p in plans if memory_per_chip(c, None, hw, p, prec, 1, 1).fits]
    # of the pipelines, only the fewest stages per (tp, ep, attention_dp) that fit are kept
    fewest = {}
    for p in fitting:
        k = (p.tp, p.ep, p.attention_dp)
        fewest[k] = min(fewest.get(k, p.pp), p.pp)
    assert fit == [p for p in fitting if p.pp == fewest[(p.tp, p.ep, p.attention_dp)]]
    assert ParallelPlan(tp=8, pp=2, dp=9) in fit  # 671B at fp8 does not fit tp=8 alone (84 GB), 2 stages do
    assert candidate_plans(c, 144, max_tp=8) == plans  # deterministic


def test_qwen35_72_chips():
    c = qwen35_397b()
    plans = candidate_plans(c, 72, max_tp=72)  # an NVL72-like domain
    assert ParallelPlan(ep=72, attention_dp=72) in plans  # 512 + 64 = 576 slots, 8 per chip
    assert ParallelPlan(ep=72, attention_dp=72).redundant(512) == 64
    assert len(plans) <= 30
    assert all(check_plan(c, p, 72) is None for p in plans)
