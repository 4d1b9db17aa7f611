"""`mapping.ep_exchange: all_gather`: at expert parallelism with attention data parallelism,
TensorRT-LLM without its one-sided all-to-all (no multi-node NVLink: `should_enable_alltoall` in
its DeepSeek-V3 model) all-gathers every attention group's hidden states to every EP rank before the
routed experts and reduce-scatters their outputs after. Counted by hand: per MoE layer one
all-gather of (all tokens of the replica) x hidden x 2 bytes (BF16 hidden states; FP8 plus one fp32
scale per 128 values when dispatch_fp8 is true) and one reduce-scatter of the same count at BF16,
whatever the routing, and no all-to-all."""

from __future__ import annotations

import collections

import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.mapping import MappingOptions, ParallelPlan, Precision, map_step
from tests.mapping.helpers import make_hw
from tests.mapping.test_moe_tp_reduce import H, LAYERS, moe_shared_tiny

BATCH = 16  # decode sequences of the whole replica (8 per attention group)
FP8 = Precision(weights="fp8", activations="fp8")


def _moe_collectives(plan: ParallelPlan, **kw) -> dict[int, list]:
    cfg = moe_shared_tiny()
    g = cs.trace(cfg, phase="decode", batch=BATCH, tokens=1, context=64)
    m = map_step(g, cfg, make_hw(), plan, FP8, **kw)
    by_layer: dict[int, list] = collections.defaultdict(list)
    for _, d in m.graph.nodes(data=True):
        op = d["op"]
        if op.kind == "collective" and op.block == "moe_experts" and 0 <= op.layer < LAYERS:
            by_layer[op.layer].append((op.collective["type"], op.collective["bytes"], op.dtype))
    return by_layer


def test_all_gather_exchange_moves_every_token_in_bf16():
    colls = _moe_collectives(ParallelPlan(ep=2, attention_dp=2), ep_exchange="all_gather")
    assert sorted(colls) == list(range(LAYERS))
    for layer, cs_ in colls.items():
        assert sorted(cs_) == sorted([("all_gather", BATCH * H * 2, "bf16"),
                                      ("reduce_scatter", BATCH * H * 2, "bf16")]), layer


def test_all_gather_exchange_in_fp8_when_asked():
    colls = _moe_collectives(ParallelPlan(ep=2, attention_dp=2), ep_exchange="all_gather", dispatch_fp8=True)
    for cs_ in colls.values():
        gathers = [c for c in cs_ if c[0] == "all_gather"]
        assert gathers == [("all_gather", pytest.approx(BATCH * H * (1 + 4 / 128)), "fp8")]


def test_all_gather_exchange_under_the_lock_step_moves_all_ranks_tokens():
    # an attention-DP lock step: rank 0 holds 8 decodes, rank 1 holds 2; the busiest rank's groups
    # run on both ranks (16 sequences traced), but the all-gather carries the 10 real tokens
    from codesign.graph.shape import Group
    from codesign.mapping.lockstep import lockstep_shapes

    busiest = lockstep_shapes([[Group(8, 1, 64)], [Group(2, 1, 64)]])[0]
    assert (busiest.groups[0].seqs, busiest.routed) == (16, 10)
    cfg = moe_shared_tiny()
    g = cs.trace(cfg, shape=busiest)
    m = map_step(g, cfg, make_hw(), ParallelPlan(ep=2, attention_dp=2), FP8, ep_exchange="all_gather")
    gathers = {op.collective["bytes"] for _, d in m.graph.nodes(data=True)
               if (op := d["op"]).kind == "collective" and op.block == "moe_experts"}
    assert gathers == {10 * H * 2}


def test_default_exchange_is_the_all_to_all():
    colls = _moe_collectives(ParallelPlan(ep=2, attention_dp=2))
    for cs_ in colls.values():
        assert {k for k, _, _ in cs_} == {"all_to_all"}


def test_all_gather_exchange_refused_without_attention_dp():
    with pytest.raises(CodesignError, match="ep_exchange: all_gather needs attention_dp > 1"):
        _moe_collectives(ParallelPlan(tp=2, ep=2), ep_exchange="all_gather")


def test_option_is_validated_and_passed_to_the_mapping():
    assert MappingOptions.from_dict({"ep_exchange": "all_gather"}).map_kwargs()["ep_exchange"] == "all_gather"
    with pytest.raises(CodesignError, match="ep_exchange"):
        MappingOptions.from_dict({"ep_exchange": "broadcast"})


def test_deepseek_all_gather_time_against_nccl_rows():
    # DeepSeek-V3 at 128 decode tokens on each of 8 H200s: the all-gather output is
    # 1024 x 7168 x 2 bytes. Independent check: log-log interpolation between NCCL's measured
    # all-gather kernel times on 8 H100s (same NVLink 4 switch as H200) at 8 MiB (43.4 us) and
    # 32 MiB (118.9 us) (NVIDIA/Megatron-LM#5596, benchmarks/kernels/collectives.yaml).
    import math

    from codesign.mapping.collectives import collective_time, make_collective

    nbytes = 1024 * 7168 * 2
    t = collective_time(make_collective("all_gather", tuple(range(8)), nbytes, 8), cs.load_hw("h200"))
    slope = math.log(118.9 / 43.4) / math.log(4)
    measured = 43.4e-6 * (nbytes / 8388608) ** slope  # 65 us
    assert t == pytest.approx(measured, rel=0.2)


def test_unknown_exchange_refused_by_map_step():
    with pytest.raises(CodesignError, match="mapping.ep_exchange: expected all_to_all or all_gather, found 'ring'"):
        _moe_collectives(ParallelPlan(ep=2, attention_dp=2), ep_exchange="ring")
