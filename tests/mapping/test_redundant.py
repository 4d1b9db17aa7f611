"""Redundant experts: DeepSeek-V3's 256 routed experts on EP144 (288 slots, 2 per GPU)."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.mapping import ParallelPlan, Precision, check_plan, map_step, memory_per_chip, replicate_experts
from codesign.mapping.experts import dispatch_fanout
from tests.mapping.helpers import deepseek_v3, make_hw, mixtral
from tests.mapping.test_step import _moe_graph

H, I = 7168, 2048
MOE_LAYERS = 58


def test_auto_redundancy_makes_ep144_valid():
    c = deepseek_v3()
    plan = ParallelPlan.from_dict({"ep": 144, "attention_dp": 144})
    assert plan.redundant_experts == "auto" and check_plan(c, plan, 144) is None
    assert plan.redundant(256) == 32 and plan.expert_slots(256) == 2  # 288 = 2 x 144
    assert ParallelPlan(ep=8, attention_dp=8).redundant(256) == 0  # divisible: unchanged
    assert check_plan(c, ParallelPlan(ep=144, attention_dp=144, redundant_experts=0), 144) == (
        "moe.num_experts (256) is not divisible by ep (144) and redundant_experts is 0 ('auto' would add 32 copies)")
    assert check_plan(c, ParallelPlan(ep=144, attention_dp=144, redundant_experts=16), 144) == (
        "moe.num_experts + redundant_experts (256 + 16 = 272) is not divisible by ep (144)")
    assert ParallelPlan(ep=144, attention_dp=144, redundant_experts=176).expert_slots(256) == 3
    assert check_plan(mixtral(), ParallelPlan(ep=2, attention_dp=2, redundant_experts=14), 2) == (
        "redundant_experts (14) exceeds num_experts x (ep - 1) = 8: a rank would hold two copies of one expert")
    with pytest.raises(CodesignError, match=r"^parallel.redundant_experts: expected 'auto' or an integer from 0 to 65,536, found -1$"):
        ParallelPlan(redundant_experts=-1)
    assert str(ParallelPlan(ep=144, attention_dp=144, redundant_experts=32)) == (
        "ep=144, attention_dp=144, redundant_experts=32")


def test_memory_counts_expert_copies():
    c, hw = deepseek_v3(), make_hw()
    prec = Precision(weights="fp8", activations="fp8")
    w = {r: memory_per_chip(c, None, hw, ParallelPlan(ep=144, attention_dp=144, redundant_experts=r), prec, 144, 1024).weights
         for r in (32, 176)}
    # one more expert slot per MoE layer: 3 H I parameters at 1 byte (fp8)
    assert w[176] - w[32] == pytest.approx(MOE_LAYERS * 3 * H * I)
    # 2 slots per rank at EP144 hold the same expert bytes as 2 experts per rank at EP128
    w128 = memory_per_chip(c, None, hw, ParallelPlan(ep=128, attention_dp=128), prec, 144, 1024).weights
    assert w[32] == pytest.approx(w128)


def test_replicate_hand_example():
    # E=4, ep=3, r=2: 2 slots per rank; contiguous originals floor(e*3/4) = [0, 0, 1, 2].
    # Expert 0 (90 tokens) is hottest per copy twice (90 > 30, then 45 > 30): 3 copies of 30 tokens.
    # Rank loads before copies: r0 = 30 + 30, r1 = 20, r2 = 10; copies go to r2 then r1.
    slots = replicate_experts([90, 30, 20, 10], 3, 2)
    assert slots == [(0, 0, 30), (1, 0, 30), (0, 1, 30), (2, 1, 20), (0, 2, 30), (3, 2, 10)]
    # brute force over every choice of copied experts and free-slot placement: 60 is the best max rank load
    best = math.inf
    for extra in itertools.combinations_with_replacement(range(4), 2):
        for ranks in itertools.product(range(3), repeat=2):
            held = {0: [0, 1], 1: [2], 2: [3]}
            for e, r in zip(extra, ranks):
                held[r].append(e)
            if any(len(v) > 2 or len(set(v)) < len(v) for v in held.values()):
                continue
            n = {e: 1 + extra.count(e) for e in range(4)}
            best = min(best, max(sum([90, 30, 20, 10][e] / n[e] for e in v) for v in held.values()))
    assert best == 60 == max(sum(t for _, r, t in slots if r == k) for k in range(3))


def test_replicate_ep144_copies_hottest_onto_free_ranks():
    E, ep, r = 256, 144, 32
    counts = [1000 - 3 * e for e in range(E)]  # distinct, the hottest < 2x the 33rd: one copy each
    counts = counts[::-1]  # hottest last, so that copies must move away from their home ranks
    slots = replicate_experts(counts, ep, r)
    assert len(slots) == 288
    per_rank = {k: [e for e, rr, _ in slots if rr == k] for k in range(ep)}
    assert all(len(v) == 2 and len(set(v)) == 2 for v in per_rank.values())
    copied = sorted(e for e in range(E) if sum(1 for x, _, _ in slots if x == e) == 2)
    assert copied == list(range(E - 32, E))  # the 32 hottest experts
    for e in range(E):  # tokens conserved, split evenly
        mine = [t for x, _, t in slots if x == e]
        assert sum(mine) == counts[e] and max(mine) - min(mine) <= 1
    # the 32 ranks that contiguous placement leaves with one expert each (floor(e*144/256))
    single = [k for k in range(ep) if sum(1 for e in range(E) if e * ep // E == k) == 1]
    assert len(single) == 32
    homes = {k for e, k, _ in slots for kk in [e * ep // E] if k != kk}
    assert homes == set(single)


def _ds_graph(counts):
    g = _moe_graph(counts, len(counts))
    # DeepSeek expert shapes for the grouped op
    op = g.nodes[1]["op"]
    import dataclasses
    g.nodes[1]["op"] = dataclasses.replace(op, expert_weight_bytes=3 * H * I * 2, expert_flops_per_token=6.0 * H * I,
                                           out_shapes=((op.out_shapes[0][0], H),))
    return g


def test_map_step_ep144_slowest_rank_and_dispatch():
    rng = np.random.default_rng(3)
    E, ep = 256, 144
    tokens = 144 * 16
    counts = [int(c) for c in rng.multinomial(tokens * 8, rng.dirichlet(np.ones(E) * 2.0))]
    g = _ds_graph(counts)
    g.graph["batch"] = tokens
    c, hw = deepseek_v3(), make_hw(links=8, size=8, chips=144)
    prec = Precision(weights="fp8", activations="fp8")
    ms = map_step(g, c, hw, ParallelPlan.from_dict({"ep": 144, "attention_dp": 144}), prec)
    slots = replicate_experts(counts, ep, 32)
    loads = [sum(t for _, r, t in slots if r == k) for k in range(ep)]
    touched = [sum(1 for _, r, t in slots if r == k and t) for k in range(ep)]
    rate = hw.chip.matrix.peak("fp8") * hw.efficiency.gemm
    bw = hw.chip.hbm.bandwidth * hw.efficiency.memory
    times = [max(loads[k] * 6.0 * H * I / rate, touched[k] * 3 * H * I / bw) for k in range(ep)]
    k = ms.expert_ranks[3]
    assert times[k] == max(times)
    exp = ms.graph.nodes[1]["op"]
    assert exp.tokens_per_expert == tuple(t for _, r, t in slots if r == k) and len(exp.tokens_per_expert) == 2
    assert exp.flops == pytest.approx(loads[k] * 6.0 * H * I)
    assert exp.bytes_read["weight"] == pytest.approx(touched[k] * 3 * H * I)
    (d,) = list(ms.graph.predecessors(1))
    dc = ms.graph.nodes[d]["op"].collective
    assert dc["imbalance"] == pytest.approx(max(loads) / (sum(counts) / ep))
    # copying the hot experts lowers the slowest rank below the best no-copy layout of this width's
    # neighbour (EP128, 2 experts per rank, contiguous)
    no_copy = max(sum(counts[2 * j:2 * j + 2]) for j in range(128))
    assert max(loads) < no_copy
    # dispatch: one token (16 per chip) to ~7.9 of 144 ranks of 2 slots (288 slots as distinct experts)
    fan = 144 * (1 - math.comb(286, 8) / math.comb(288, 8))
    assert dispatch_fanout(288, 8, 144) == pytest.approx(fan)
    assert dc["bytes"] == pytest.approx(16 * fan * H * (1 + 4 / 128))
    assert nx.is_directed_acyclic_graph(ms.graph)


def test_expert_loads_override_and_errors():
    counts = [90, 30, 20, 10]
    # history says expert 3 is hot: it is copied (to rank 1: rank 0 is full, rank 2 holds it); its
    # third copy has no rank left, so the next hottest per copy (expert 0, ties to the lowest) fills rank 2
    slots = replicate_experts(counts, 3, 2, loads=[1, 1, 1, 100])
    assert slots == [(0, 0, 45), (1, 0, 30), (2, 1, 20), (3, 1, 5), (0, 2, 45), (3, 2, 5)]
    with pytest.raises(CodesignError, match=r"^expert_loads: expected 4 values \(one per expert\), found 2$"):
        replicate_experts(counts, 3, 2, loads=[1, 2])
    with pytest.raises(CodesignError, match=r"^placement: rank 0 holds 3 experts, more than its 2 slots"):
        replicate_experts(counts, 3, 2, placement=[0, 0, 0, 1])
