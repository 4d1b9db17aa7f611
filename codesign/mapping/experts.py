"""Routed experts on expert-parallel ranks: placement, redundant copies, rank loads, and the
grouped expert op of the slowest rank (what one chip of an EP plan runs).

* **Placement** over ``ep`` ranks: ``contiguous`` (rank r holds [r E/ep, (r+1) E/ep)),
  ``round_robin`` (expert e on rank e mod ep) or an explicit rank per expert.
* **Redundant experts** (``plan.redundant_experts`` = r > 0; DeepSeek-V3 report section 3.4): each
  rank has (E + r) / ep slots; copies go, one at a time, to the expert with the largest load per
  copy, placed on the least loaded rank with a free slot that does not hold it yet. Loads come from
  ``expert_loads`` (EPLB's history statistics) or, by default, the step's own counts: a named,
  optimistic assumption.
* **The slowest rank** is the one mapped: the largest roofline time of its tokens' FLOPs and its
  touched experts' weight bytes, at the rates the cost model charges grouped expert GEMMs and HBM
  (passed in by the caller; `ExpertMapper`).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from typing import Sequence

from codesign.errors import CodesignError
from codesign.graph.op import BYTE_CLASSES, Op
from codesign.mapping.plan import ParallelPlan, Precision
from codesign.mapping.scaling import Scaler
from codesign.models.config import ModelConfig

def expert_placement(num_experts: int, ep: int, placement: str | Sequence[int] = "contiguous") -> list[int]:
    """Rank of each expert. ``contiguous``: rank r holds [r E/ep, (r+1) E/ep) (floor(e ep / E), so
    ranks differ by at most one expert when ep does not divide E)."""
    if isinstance(placement, str):
        if placement == "contiguous":
            return [e * ep // num_experts for e in range(num_experts)]
        if placement == "round_robin":
            return [e % ep for e in range(num_experts)]
        raise CodesignError(f"placement: expected 'contiguous', 'round_robin' or a rank per expert, found {placement!r}")
    ranks = [int(r) for r in placement]
    if len(ranks) != num_experts or any(r < 0 or r >= ep for r in ranks):
        raise CodesignError(f"placement: expected {num_experts} ranks in 0..{ep - 1}, found {len(ranks)} entries")
    return ranks


def replicate_experts(tokens_per_expert: Sequence[int], ep: int, redundant: int,
                      placement: str | Sequence[int] = "contiguous",
                      loads: Sequence[float] | None = None) -> list[tuple[int, int, int]]:
    """Expert slots ``(expert, rank, tokens)`` of one MoE layer with `redundant` extra copies
    (see module docstring: copies to the hottest experts by load per copy, each placed on the least
    loaded rank with a free slot; tokens split evenly over an expert's copies, the remainder to the
    earlier copies, the original first). With redundant = 0: one slot per expert at `placement`.

    `loads`: per-expert load used to choose and place copies (default: `tokens_per_expert`).
    """
    E = len(tokens_per_expert)
    base = expert_placement(E, ep, placement)
    if redundant == 0:
        return [(e, base[e], int(c)) for e, c in enumerate(tokens_per_expert)]
    if (E + redundant) % ep:
        raise CodesignError(f"parallel.redundant_experts: expected num_experts + redundant_experts divisible by "
                            f"ep ({ep}), found {E} + {redundant}")
    slots = (E + redundant) // ep
    load = [float(x) for x in (tokens_per_expert if loads is None else loads)]
    if len(load) != E:
        raise CodesignError(f"expert_loads: expected {E} values (one per expert), found {len(load)}")
    # originals where `placement` puts them
    held: list[set[int]] = [set() for _ in range(ep)]
    owners: list[list[int]] = [[] for _ in range(E)]
    for e, r in enumerate(base):
        held[r].add(e)
        owners[e].append(r)
    full = [r for r in range(ep) if len(held[r]) > slots]
    if full:
        raise CodesignError(f"placement: rank {full[0]} holds {len(held[full[0]])} experts, more than its "
                            f"{slots} slots ((num_experts + redundant_experts) / ep)")

    # Rank loads are memoised and recomputed (same expression, same set order) only when one of
    # their inputs changed: the rank took a copy, or one of its experts gained a copy elsewhere.
    loads_memo: dict[int, float] = {}

    def rank_load(r: int) -> float:
        v = loads_memo.get(r)
        if v is None:
            v = loads_memo[r] = sum(load[e] / len(owners[e]) for e in held[r])
        return v

    # copies one at a time: the expert with the largest load per copy that some rank can still take
    # (EPLB's rule), on the least loaded rank with a free slot that does not hold it yet
    # Candidates in order of (-load per copy, expert) from a heap rather than a sort per copy (same
    # order, as keys are distinct; only the chosen expert's key changes, so only it is re-pushed).
    heap = [(-load[e] / len(owners[e]), e) for e in range(E)]
    heapq.heapify(heap)
    free = [r for r in range(ep) if len(held[r]) < slots]  # in rank order, kept up to date
    for _ in range(redundant):
        passed = []
        while heap:
            key, e = heapq.heappop(heap)
            hosts = [r for r in free if e not in held[r]]
            if hosts:
                break
            passed.append((key, e))
        else:
            raise CodesignError("parallel.redundant_experts: no rank has a free slot for another expert copy")
        for item in passed:
            heapq.heappush(heap, item)
        r = min(hosts, key=lambda r: (rank_load(r), r))
        held[r].add(e)
        owners[e].append(r)
        heapq.heappush(heap, (-load[e] / len(owners[e]), e))
        for q in owners[e]:  # e's load per copy changed on every rank holding it (r included)
            loads_memo.pop(q, None)
        if len(held[r]) >= slots:
            free.remove(r)
    out = []
    for e, ranks in enumerate(owners):
        c, n = int(tokens_per_expert[e]), len(ranks)
        out += [(e, r, c // n + (1 if i < c % n else 0)) for i, r in enumerate(ranks)]
    return sorted(out, key=lambda x: (x[1], x[0]))


def rank_loads(tokens_per_expert: Sequence[int], ranks: Sequence[int], ep: int) -> list[tuple[int, int]]:
    """(tokens, distinct experts touched) per EP rank."""
    tok = [0] * ep
    touched = [0] * ep
    for c, r in zip(tokens_per_expert, ranks):
        tok[r] += int(c)
        touched[r] += 1 if c else 0
    return list(zip(tok, touched))


def slowest_rank(tokens_per_expert: Sequence[int], ranks: Sequence[int], ep: int, flops_per_token: float,
                 weight_bytes: float, flop_rate: float, byte_rate: float) -> int:
    """The EP rank with the largest roofline time max(tokens x FLOPs/token / flop_rate,
    touched experts x weight bytes / byte_rate); ties go to the lowest rank."""
    return _slowest(rank_loads(tokens_per_expert, ranks, ep), flops_per_token, weight_bytes, flop_rate, byte_rate)


def moe_tp_expert_shapes(shapes: tuple, moe_tp: int) -> tuple:
    """The traced expert block's shapes as one chip of a `moe_tp`-wide expert tensor-parallel group
    holds them: each expert's intermediate dimension I split `moe_tp` ways (gate/up (E, 2I, H) ->
    (E, 2I / moe_tp, H), down (E, H, I) -> (E, H, I / moe_tp)), as the FLOPs and weight bytes
    already are. The cost model reads I from these shapes (the down GEMM's K ramp, the unfused
    epilogue's bytes), so a shard is costed at its own width: the width the kernel tables time
    (e.g. vLLM's fused_moe at TP 8, N = 2048 / 8 = 256). Shapes of another form pass unchanged."""
    if moe_tp <= 1 or len(shapes) < 5 or len(shapes[3]) != 3 or len(shapes[4]) != 3:
        return shapes
    (e1, two_i, h1), (e2, h2, i) = shapes[3], shapes[4]
    return (*shapes[:3], (e1, two_i // moe_tp, h1), (e2, h2, i // moe_tp), *shapes[5:])


def _slowest(loads: Sequence[tuple[int, int]], flops_per_token: float, weight_bytes: float, flop_rate: float,
             byte_rate: float) -> int:
    """`slowest_rank` on precomputed `rank_loads`."""
    best, best_t = 0, -1.0
    for r, (t, k) in enumerate(loads):
        time = max(t * flops_per_token / flop_rate, k * weight_bytes / byte_rate)
        if time > best_t:
            best, best_t = r, time
    return best


def dispatch_fanout(num_experts: int, top_k: int, ep: int) -> float:
    """Expected distinct EP ranks a token's top_k experts fall on (uniform routing, contiguous
    equal groups): ep * (1 - C(E - E/ep, k) / C(E, k)). With redundant copies pass the slot count
    E + r (copies treated as distinct experts: an approximation, a token never picks two copies).
    The same count over scale-up domains (nodes) instead of ranks is `dispatch_fanout(E, k, nodes)`."""
    per = num_experts // ep
    if num_experts - per < top_k:
        return float(ep)
    miss = math.comb(num_experts - per, top_k) / math.comb(num_experts, top_k)
    return ep * (1.0 - miss)


def routed_spread(num_experts: int, top_k: int, ranks: int, nodes: int,
                  top_groups: int | None = None) -> tuple[float, float]:
    """(expected distinct ranks, expected distinct nodes) a token's top_k experts fall on, experts
    in contiguous equal blocks per rank and ranks in `nodes` equal nodes, uniform routing. With
    `top_groups` g < nodes (group-limited routing, a group per node, as DeepSeek-V3 and DeepEP's
    tests route): the token picks g nodes by their best experts' scores, so each of them supplies
    at least its best expert (g distinct nodes) and the other k - g experts fall uniformly on the
    rest of those nodes' experts (checked against DeepEP's test routing by sampling)."""
    if top_groups is None or top_groups >= nodes:  # uniform over all experts: `dispatch_fanout` per tier
        return dispatch_fanout(num_experts, top_k, ranks), dispatch_fanout(num_experts, top_k, nodes)
    per_rank, per_node, d = num_experts // ranks, num_experts // nodes, ranks // nodes
    g = max(1, top_groups)
    if top_k <= g:  # one expert from each of top_k of the chosen nodes
        return float(top_k), float(top_k)
    pool, extra = g * per_node - g, top_k - g  # the chosen nodes' experts besides their best ones
    left = pool - per_rank
    miss = 0.0 if left < extra else math.comb(left, extra) / math.comb(pool, extra)
    return g + (g * d - g) * (1.0 - miss), float(g)


def nic_share(num_experts: int, top_k: int, ep: int, nodes: int, top_groups: int | None = None) -> float:
    """Share of a normal-mode dispatch's rank copies that cross the network card when the EP group
    spans `nodes` scale-up domains (DeepEP's internode kernels): a token goes once to each distinct
    remote node over RDMA and is forwarded inside that node over NVLink, so the NIC carries
    ``remote nodes / distinct ranks`` of its rank copies, remote nodes = distinct nodes x (m-1)/m
    (each node, the sender's own included, is hit with the same probability). 0 inside one domain.
    Without `top_groups` the rank count is `dispatch_fanout`'s."""
    if nodes <= 1:
        return 0.0
    ranks, distinct_nodes = routed_spread(num_experts, top_k, ep, nodes, top_groups)
    return distinct_nodes * (nodes - 1) / nodes / ranks if ranks > 0 else 0.0


class ExpertMapper:
    """Maps the grouped expert op of each MoE layer for one plan: what does not depend on the layer
    (slot layout without copies, scale factors, rates) is computed once. `flop_rate` and
    `byte_rate` rank the EP ranks: the cost model's grouped-GEMM and HBM rates."""

    def __init__(self, config: ModelConfig, plan: ParallelPlan, prec: Precision,
                 placement: str | Sequence[int], dp: int, flop_rate: float, byte_rate: float,
                 expert_loads: Sequence[float] | None = None) -> None:
        self.E = config.moe.num_experts if config.moe is not None else 0
        self.plan, self.prec, self.placement, self.dp = plan, prec, placement, dp
        self.flop_rate, self.byte_rate, self.expert_loads = flop_rate, byte_rate, expert_loads
        self.r_extra = plan.redundant(self.E) if self.E else 0
        self.scaler = Scaler(prec)
        self._base: list[int] | None = None  # expert -> rank without copies (validated once)

    def map(self, op: Op) -> tuple[Op, int, float]:
        """The grouped expert op of the slowest EP rank; returns (op, rank, imbalance = its tokens /
        mean rank tokens)."""
        E, dp = self.E, self.dp
        ep, moe_tp = self.plan.ep, self.plan.moe_tp
        r_extra = self.r_extra
        tpe = op.tokens_per_expert
        if not tpe:  # no routing detail: an even share (a rank holds (E + r) / ep of the E experts' weights)
            f = {"weight": (E + r_extra) / E / (ep * moe_tp), "activation": 1.0 / (dp * ep), "state": 1.0,
                 "kv_cache": 1.0}
            even = self.scaler.op(op, 1.0 / (dp * ep * moe_tp), f)
            even.in_shapes = moe_tp_expert_shapes(op.in_shapes, moe_tp)
            return even, 0, 1.0
        # the busiest replica's share: ceil(c / dp) (integer ceiling: the same value as the float one
        # for any count a step holds)
        counts = tuple(tpe) if dp == 1 else tuple((-(-np.asarray(tpe, dtype=np.int64) // dp)).tolist())
        if r_extra == 0 and len(counts) == E and E % ep == 0 and self.placement == "contiguous":
            # contiguous equal blocks (the default): each rank's experts are one slice
            per = E // ep
            blocks = [counts[r * per:(r + 1) * per] for r in range(ep)]
            loads = [(sum(b), per - b.count(0)) for b in blocks]
            rank = _slowest(loads, op.expert_flops_per_token / moe_tp, op.expert_weight_bytes * self.scaler.scale["weight"]
                            / moe_tp, self.flop_rate, self.byte_rate)
            return self._rank_op(op, blocks[rank], loads, rank)
        if r_extra == 0 and len(counts) == E:
            # replicate_experts without copies: one slot per expert at its placement rank
            if self._base is None:
                self._base = expert_placement(E, ep, self.placement)
            ranks = self._base
        else:
            slots = replicate_experts(counts, ep, r_extra, self.placement, self.expert_loads)
            counts = [t for _, _, t in slots]
            ranks = [r for _, r, _ in slots]
        ewb = op.expert_weight_bytes * self.scaler.scale["weight"]
        loads = rank_loads(counts, ranks, ep)
        rank = _slowest(loads, op.expert_flops_per_token / moe_tp, ewb / moe_tp, self.flop_rate, self.byte_rate)
        return self._rank_op(op, tuple(c for c, r in zip(counts, ranks) if r == rank), loads, rank)

    def _rank_op(self, op: Op, mine: tuple[int, ...], loads: list[tuple[int, int]], rank: int) -> tuple[Op, int, float]:
        """The expert op of `rank`, holding the experts whose token counts are `mine`."""
        ep, moe_tp = self.plan.ep, self.plan.moe_tp
        scale = self.scaler.scale
        ewb = op.expert_weight_bytes * scale["weight"]
        tokens = sum(mine)
        touched = len(mine) - mine.count(0)
        tpe = op.tokens_per_expert
        routed = float(sum(tpe)) or 1.0
        mean = sum(t for t, _ in loads) / ep
        imbalance = max(t for t, _ in loads) / mean if mean > 0 else 1.0
        share = tokens / routed
        rd = {c: op.bytes_read.get(c, 0.0) * share * scale[c] for c in BYTE_CLASSES}
        wr = {c: op.bytes_written.get(c, 0.0) * share * scale[c] for c in BYTE_CLASSES}
        rd["weight"] = touched * ewb / moe_tp
        new = op.clone()
        new.flops = tokens * op.expert_flops_per_token / moe_tp
        new.bytes_read, new.bytes_written = rd, wr
        new.tokens_per_expert = mine
        new.expert_flops_per_token = op.expert_flops_per_token / moe_tp
        new.expert_weight_bytes = ewb / moe_tp
        new.in_shapes = moe_tp_expert_shapes(op.in_shapes, moe_tp)
        return new, rank, imbalance
