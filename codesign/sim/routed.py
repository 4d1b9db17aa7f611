"""Routed MoE layers of a step, all at once: every layer's slowest expert-parallel rank, the cost of
its grouped expert op and the imbalance of its all-to-alls.

The step-time model (`codesign.sim.stepmodel`) maps one layer per kind and derives the other layers
of the kind from it. They differ only in their routed experts: each layer's router draw, mapped onto
the slowest EP rank (`codesign.mapping.experts.ExpertMapper`), and the load imbalance that draw
gives its dispatch and combine all-to-alls. `RoutedLayers` does that for all the layers of one
template layer together:

* the per-rank loads, the slowest rank and the imbalance of every layer in one numpy pass over the
  (layers x experts) count matrix, with the mapper's own arithmetic (`ExpertMapper.map`:
  contiguous equal blocks of experts per rank, no redundant copies; other layouts stay per-layer
  ops, `codesign.sim.engine.VirtualLayer`);
* each layer's expert-op cost with the cost model's own scalar functions (`expert_padding`,
  `grouped_seconds`, `byte_split`, `memory_seconds`, `combine`) and its all-to-all times as
  slope x imbalance + fixed (`CostModel.all_to_all_parts`).

The values are those of building each layer's ops and costing them (`tests/sim/test_routed.py`
compares); no op objects are built. The engine adds each layer's cost differences to its template's
time in the same order as for a layer of the graph (`StepSimulator.simulate(routed=...)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from codesign.graph.op import BYTE_CLASSES, Op
from codesign.mapping.experts import ExpertMapper
from codesign.sim.cost import CostModel, OpCost, Residency

assert BYTE_CLASSES == ("weight", "activation", "kv_cache", "state")  # the order `_per_layer` spells out


@dataclass
class RoutedLayers:
    """Layers `layers` are copies of layer `template` (the representative of their kind) whose ops at
    `expert_pos` (the routed-expert op) and `a2a_pos` (its all-to-alls) carry their own routing."""

    template: int
    layers: list[int]
    expert_pos: int
    a2a_pos: list[int]
    blocks: list[tuple[int, ...]]  # per layer: the slowest rank's tokens per expert
    imbalance: list[float]  # per layer: busiest rank's tokens / mean rank tokens
    flops: list[float]  # per layer: the expert op's FLOPs on that rank
    bytes_read: list[dict[str, float]]
    bytes_written: list[dict[str, float]]
    block_array: np.ndarray | None = None  # `blocks` as a layers x experts-per-rank array
    # `padding` by the cost model's padding rule (`CostModel.padding_rule`): routed layers shared
    # by hardware variants (`route`) are padded once per rule
    _padded: dict[tuple, tuple[list[float], list[int]]] = field(default_factory=dict, repr=False, compare=False)
    # `costs`' bandwidth-free parts by cost-model key, residency, K ramp and all-to-all parts
    _kept: dict[tuple, list] = field(default_factory=dict, repr=False, compare=False)

    def padding(self, cm: CostModel) -> tuple[list[float], list[int]]:
        """Per layer, `cm.expert_padding(blocks[j])` (padded tokens, routed tokens): each distinct
        count padded once by the cost model (`padded_tokens`, its table), the integer sums taken
        over the block array (exact). Kept per padding rule (the lists are not to be modified)."""
        hit = self._padded.get(cm.padding_rule)
        if hit is None:
            hit = self._padded[cm.padding_rule] = self._padding(cm)
        return hit

    def _padding(self, cm: CostModel) -> tuple[list[float], list[int]]:
        a = self.block_array
        if a is None or a.size == 0:
            pairs = [cm.expert_padding(b) for b in self.blocks]
            return [p for p, _ in pairs], [r for _, r in pairs]
        if a.min() >= 0 and a.max() < _PAD_TABLE_MAX:  # a table by count, kept across steps
            entries = _pad_table(cm, a)[a]
        else:  # large counts (huge batches): their distinct values alone
            values, inverse = np.unique(a, return_inverse=True)
            entries = np.asarray(cm.padded_tokens(values.tolist()), dtype=np.int64)[inverse.reshape(a.shape)]
        padded = [float(x) for x in entries.sum(axis=1).tolist()]
        return padded, np.where(a > 0, a, 0).sum(axis=1).tolist()

    def costs(self, cm: CostModel, residency: Residency, template_ops: list[Op]) -> list[tuple[OpCost, list[OpCost]]]:
        """Per layer: (expert-op cost, the all-to-alls' costs in `a2a_pos` order), as
        `CostModel.cost` gives for the layer's ops."""
        return [(c, [OpCost(t, 0.0, 0.0, 0.0, "link") for t in a2a]) for c, a2a in self.times(cm, residency, template_ops)]

    def times(self, cm: CostModel, residency: Residency, template_ops: list[Op]) -> list[tuple[OpCost, list[float]]]:
        """`costs` with the all-to-alls as their seconds alone (link-bound, nothing else)."""
        expert = template_ops[self.expert_pos]
        k_ramp = cm._grouped_k_ramp(expert)
        overhead = cm.overhead(expert)
        parts = [cm.all_to_all_parts(template_ops[i].collective) for i in self.a2a_pos]
        # what does not depend on the bandwidths (each layer's compute seconds and byte split; the
        # all-to-alls' seconds), kept per cost-model key (`CostModel.static_key`), residency, the
        # expert op's K ramp and the all-to-all parts: hardware variants that share this group
        # (`route`) share it
        key = (cm.static_key, residency, k_ramp, tuple(parts))
        kept = self._kept.get(key) if cm.static_key is not None else None
        if kept is None:
            kept = self._bandwidth_free(cm, residency, k_ramp, parts, expert)
            if cm.static_key is not None:
                if len(self._kept) >= 8:
                    self._kept.clear()
                self._kept[key] = kept
        # each layer's own routed rows where the fixed time depends on them (MoE kernels through
        # HBM, `CostOptions.moe_unfused_epilogue`)
        per_layer = [cm.grouped_overhead(expert, r) for r in self.padding(cm)[1]] if cm.unfused_moe_bw else None
        out = []
        bw, sram_bw = cm.grouped_hbm_bw, cm.sram_bw
        combine = cm.combine
        for j, (c, hbm, sram, a2a) in enumerate(kept):
            # `cm.memory_seconds("grouped_gemm", hbm, sram)` written out: the same operations, once per layer
            t_hbm = hbm / bw
            t_sram = sram / sram_bw
            m, level = (t_hbm, "hbm") if t_hbm >= t_sram else (t_sram, "sram")
            out.append((combine(c, "matrix", m, level, overhead if per_layer is None else per_layer[j]), a2a))
        return out

    def _bandwidth_free(self, cm: CostModel, residency: Residency, k_ramp: float, parts: list,
                        expert: Op | None = None) -> list[tuple[float, float, float, list[float]]]:
        """Per layer: (expert-op compute seconds, HBM bytes, SRAM bytes, the all-to-alls' seconds);
        `expert` the template's expert op (its traced weights' shapes)."""
        padding, routing = self.padding(cm)
        unfused = expert if cm.unfused_moe_bw is not None else None
        out = []
        rate, half, ramped = cm.grouped_rate, cm.grouped_half, cm.opts.small_m_ramp
        split = cm._split
        for padded, routed, imb, flops, rd, wr in zip(padding, routing, self.imbalance, self.flops, self.bytes_read,
                                                      self.bytes_written):
            # `cm.grouped_seconds(flops, padded, routed, k_ramp)` written out
            factor = padded / routed if routed else 1.0
            ramp = padded / (padded + half) if ramped else 1.0
            c = flops * factor / (rate * ramp * k_ramp)
            r, w = rd.get, wr.get  # `cm.byte_split("grouped_gemm", rd, wr, residency)`
            hbm, sram = split("grouped_gemm", r("weight", 0.0) + w("weight", 0.0),
                              r("activation", 0.0) + w("activation", 0.0), r("kv_cache", 0.0) + w("kv_cache", 0.0),
                              r("state", 0.0) + w("state", 0.0), residency)
            if unfused is not None:  # MoE kernels through HBM: the GEMMs' intermediate buffers
                hbm += cm.unfused_gemm_bytes(unfused, routed)
            x = float(imb or 1.0)
            out.append((c, hbm, sram, [p[0] * x + p[1] for p in parts]))
        return out


# Padded tokens by token count, per cost model (id -> (the model, table, which entries are known)):
# each count padded once by `CostModel.expert_padding`, across the steps of a model. Tables cover
# counts below _PAD_TABLE_MAX (0.6 MB each at most); larger counts are padded by their distinct values.
_PAD: dict[int, tuple[CostModel, np.ndarray, np.ndarray]] = {}
_PAD_TABLE_MAX = 1 << 16


def _pad_table(cm: CostModel, a: np.ndarray) -> np.ndarray:
    """A table t with t[v] = `cm.expert_padding((v,))` padded tokens for every count v in `a`,
    extended with the counts not seen before."""
    hit = _PAD.get(id(cm))
    if hit is None or hit[0] is not cm:
        if len(_PAD) >= 64:
            _PAD.clear()
        hit = _PAD[id(cm)] = (cm, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    _, table, known = hit
    present = np.bincount(a.ravel())
    n = present.shape[0]
    if n > table.shape[0]:
        size = max(n, 2 * table.shape[0])
        table = np.concatenate([table, np.zeros(size - table.shape[0], dtype=np.int64)])
        known = np.concatenate([known, np.zeros(size - known.shape[0], dtype=bool)])
        _PAD[id(cm)] = (cm, table, known)
    new = np.flatnonzero((present > 0) & ~known[:n]).tolist()
    if new:  # the counts not padded yet, in one call (`CostModel.padded_tokens`: expert_padding's table)
        table[new] = cm.padded_tokens(new)
        known[new] = True
    return table


def routed_positions(ops: list[Op]) -> tuple[int, list[int]]:
    """Positions, in a layer's mapped op list, of its routed-expert op and of its all-to-alls: the
    ops a copy of the layer with its own routing replaces."""
    expert = next(i for i, o in enumerate(ops) if o.kind == "grouped_gemm" and o.block == "moe_experts")
    return expert, [i for i, o in enumerate(ops) if o.kind == "collective" and o.collective["type"] == "all_to_all"]


def route(cm: CostModel, mapper: ExpertMapper, traced: Op, counts: np.ndarray, template: int, layers: list[int],
          template_ops: list[Op]) -> RoutedLayers | None:
    """`RoutedLayers` of `layers` (router counts `counts`, one row per layer, of the traced expert op
    `traced`), or None where the fast path does not apply (another expert layout, a custom
    collective or cost function, an op without routing detail): the caller then builds ops."""
    E, dp = mapper.E, mapper.dp
    ep, moe_tp = mapper.plan.ep, mapper.plan.moe_tp
    if (type(cm) is not CostModel or mapper.r_extra or mapper.placement != "contiguous" or not E or E % ep
            or counts.shape != (len(layers), E) or traced.expert_flops_per_token <= 0 or not layers):
        return None
    expert_pos, a2a_pos = routed_positions(template_ops)
    if any(cm.all_to_all_parts(template_ops[i].collective) is None for i in a2a_pos):
        return None
    shares = counts if dp == 1 else -(-counts // dp)  # the busiest replica's share (ExpertMapper.map)
    per = E // ep
    blocks = shares.reshape(len(layers), ep, per)
    tokens = blocks.sum(axis=2)
    touched = np.count_nonzero(blocks, axis=2)  # per - the experts without tokens
    scale = mapper.scaler.scale
    fpt = traced.expert_flops_per_token / moe_tp
    ewb = traced.expert_weight_bytes * scale["weight"]
    times = np.maximum(tokens * fpt / mapper.flop_rate, touched * (ewb / moe_tp) / mapper.byte_rate)
    ranks = times.argmax(axis=1).tolist()  # the first of equal maxima, as ExpertMapper's scan
    # Nothing below depends on the rates but through `ranks`: hardware variants that rank the same
    # EP ranks slowest share the result (`_ROUTED`).
    key = (id(counts), id(traced), tuple(ranks), template, tuple(layers), expert_pos, tuple(a2a_pos), E, dp, ep,
           moe_tp, tuple(scale.items()))
    hit = _ROUTED.get(key)
    if hit is not None and hit[0] is counts and hit[1] is traced:
        return hit[2]
    rows = blocks[np.arange(len(layers)), ranks]  # each layer's slowest rank's tokens per expert
    tsum = tokens.sum(axis=1)
    out = RoutedLayers(template, list(layers), expert_pos, a2a_pos, [tuple(r) for r in rows.tolist()],
                       *_per_layer(traced, tokens, tsum, ranks, tsum if dp == 1 else counts.sum(axis=1),
                                   per - np.count_nonzero(rows, axis=1), per, ep, moe_tp, ewb, scale), rows)
    if cm.keep_parts:  # else nothing is shared (a step model with `cache=False`)
        if len(_ROUTED) >= _ROUTED_MAX:
            _ROUTED.clear()
        _ROUTED[key] = (counts, traced, out)  # holds both: their ids are not reused meanwhile
    return out


def _per_layer(traced: Op, tokens: np.ndarray, tsum: np.ndarray, ranks: list[int], routed: np.ndarray,
               zeros: np.ndarray, per: int, ep: int, moe_tp: int, ewb: float, scale: dict[str, float]
               ) -> tuple[list[float], list[float], list[dict[str, float]], list[dict[str, float]]]:
    """(imbalance, FLOPs, bytes read, bytes written) of each layer's expert op on its slowest rank
    (`tokens`: layers x ranks): `ExpertMapper._rank_op`'s arithmetic, each value computed by the
    same IEEE operations in the same order, over all layers at once (the counts are integers far
    below 2^53, so numpy's int-to-float conversions are exact, as Python's are; the FLOPs, a
    product of Python numbers, are taken in Python)."""
    L = len(ranks)
    t = tokens[np.arange(L), ranks]
    mean = tsum / ep
    imbalance = np.where(mean > 0, tokens.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0).tolist()
    share = t / np.where(routed != 0, routed.astype(np.float64), 1.0)

    def scaled(b, c: str) -> list[float]:
        # b * share * scale[c]; a zero (+0.0) class stays +0.0 (share and scale are finite, >= 0)
        sc = scale[c]
        if b == 0 and math.copysign(1.0, b) > 0 and 0 <= sc < math.inf:
            return [0.0] * L
        return (b * share * sc).tolist()

    rd = [((per - zeros) * ewb / moe_tp).tolist()]  # the weight: the rank's touched experts
    rd += [scaled(traced.bytes_read.get(c, 0.0), c) for c in BYTE_CLASSES[1:]]
    wr = [scaled(traced.bytes_written.get(c, 0.0), c) for c in BYTE_CLASSES]
    fpt = traced.expert_flops_per_token
    return (imbalance, [x * fpt / moe_tp for x in t.tolist()],
            [{"weight": w, "activation": a, "kv_cache": k, "state": st} for w, a, k, st in zip(*rd)],
            [{"weight": w, "activation": a, "kv_cache": k, "state": st} for w, a, k, st in zip(*wr)])


# Routed layers by their routing inputs and slowest ranks (`route`); the counts and the traced op
# are held with each entry, so that their ids are not reused while it is kept. Bounded. The
# results are shared: not to be modified.
_ROUTED: dict[tuple, tuple[np.ndarray, Op, RoutedLayers]] = {}
_ROUTED_MAX = 512


__all__ = ["RoutedLayers", "route", "routed_positions"]
