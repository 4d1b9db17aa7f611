"""Uneven pipeline stages: vLLM's split rule, memory of the most loaded stage, plan search."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.mapping import ParallelPlan, Precision, candidate_plans, check_plan, memory_per_chip
from codesign.mapping.memory import stage_layers
from codesign.mapping.plan import partition_layers
from tests.mapping.helpers import llama2_70b, make_hw, qwen3_235b

FP8 = Precision(weights="fp8", activations="fp8", kv_cache="fp8")


def test_94_layers_on_8_stages_follow_vllms_rule():
    # 94 = 8 x 11 + 6: the 6 extra layers go to the stages before the last (7, then 6, ... 2 in
    # 1-based order), sparing the first (embedding) and the last (norm + LM head).
    assert partition_layers(94, 8) == [11, 12, 12, 12, 12, 12, 12, 11]
    stages = stage_layers(qwen3_235b(), 8)
    assert [len(s) for s in stages] == [11, 12, 12, 12, 12, 12, 12, 11]
    assert [i for s in stages for i in s] == list(range(94))  # contiguous, in order, each layer once
    assert stages[1] == list(range(11, 23)) and stages[7] == list(range(83, 94))


def test_split_rule_edge_cases():
    assert partition_layers(80, 4) == [20, 20, 20, 20]  # divisible: equal, as before
    assert partition_layers(7, 4) == [2, 2, 2, 1]  # r = pp - 1: every stage but the last gets one
    assert partition_layers(10, 4) == [2, 3, 3, 2]
    assert partition_layers(5, 5) == [1] * 5
    with pytest.raises(CodesignError, match=r"^parallel.pp: expected 1 to num_layers \(4\) pipeline stages, found 5$"):
        partition_layers(4, 5)


def test_check_plan_accepts_uneven_pp_and_refuses_empty_stages():
    assert check_plan(qwen3_235b(), ParallelPlan(pp=8), 8) is None
    assert check_plan(llama2_70b(), ParallelPlan(pp=3), 3) is None
    assert check_plan(llama2_70b(), ParallelPlan(pp=81), 81) == (
        "pp (81) exceeds num_layers (80): a pipeline stage would hold no layer")
    assert check_plan(llama2_70b(), ParallelPlan(pp=2, layer_partition=[40, 39]), 2) == (
        "layer_partition [40, 39] sums to 79 layers, the model has num_layers = 80")


def test_layer_partition_validates_and_overrides():
    with pytest.raises(CodesignError, match=r"^parallel.layer_partition: expected 2 layer counts"):
        ParallelPlan(pp=2, layer_partition=[80])
    with pytest.raises(CodesignError, match=r"^parallel.layer_partition: expected a list of positive layer counts"):
        ParallelPlan.from_dict({"pp": 2, "layer_partition": [80, 0]})
    p = ParallelPlan.from_dict({"pp": 2, "layer_partition": [30, 50]})
    assert p.layer_partition == (30, 50) and hash(p) == hash(ParallelPlan(pp=2, layer_partition=(30, 50)))
    assert p.to_dict()["layer_partition"] == [30, 50]
    assert str(p) == "pp=2, layer_partition=[30,50]"
    assert [len(s) for s in stage_layers(llama2_70b(), 2, p.layer_partition)] == [30, 50]


def _qwen3_235b_layer_params() -> float:
    """Parameters of one Qwen3-235B decoder layer, by hand from its published shapes."""
    H, heads, kv, D, E, I = 4096, 64, 4, 128, 128, 1536
    attention = H * heads * D + 2 * H * kv * D + heads * D * H  # q, k, v, o
    norms = 2 * H + 2 * D  # input/post-attention RMSNorm, q/k norm
    router = E * H
    experts = E * 3 * H * I
    return attention + norms + router + experts


def test_memory_is_the_most_loaded_uneven_stage_by_hand():
    c, hw = qwen3_235b(), make_hw(hbm="141 GB")
    batch, ctx = 8, 4096
    m = memory_per_chip(c, None, hw, ParallelPlan(pp=8), FP8, batch, ctx)
    # Stages 1-6 hold 12 layers; stage 0 holds 11 + the embedding (0.62B < one 2.49B layer), stage 7
    # 11 + the LM head: a 12-layer stage is the most loaded. One byte per fp8 value, no TP.
    per_layer = _qwen3_235b_layer_params()
    assert 151936 * 4096 < per_layer
    assert m.weights == pytest.approx(12 * per_layer, rel=1e-12)
    assert m.kv_cache == pytest.approx(batch * ctx * 12 * 2 * 4 * 128 * 1, rel=1e-12)
    assert m.total == pytest.approx(m.weights + m.kv_cache + m.activations + 0.05 * 141e9, rel=1e-12)
    # an explicit partition moves the load: 24 layers on the first stage, with the embedding
    heavy = memory_per_chip(c, None, hw, ParallelPlan(pp=8, layer_partition=[24] + [10] * 7), FP8, batch, ctx)
    assert heavy.weights == pytest.approx(24 * per_layer + 151936 * 4096, rel=1e-12)


def test_candidate_plans_offer_pp_that_does_not_divide_the_layers():
    plans = candidate_plans(qwen3_235b(), 64, max_tp=8)
    assert {p.pp for p in plans} == {1, 2, 4, 8}  # 94 layers: only 1 and 2 divide
    assert all(check_plan(qwen3_235b(), p, 64) is None for p in plans)
