"""The cost model's kept parts: an op's bandwidth-free parts (compute seconds, unit, HBM and SRAM
bytes, fixed overhead, which HBM bandwidth) kept per op for every cost model of the same
`static_key` and residency (`_STATIC`), of the op and of its two-batch-overlap half (`half_op`),
so that hardware variants that differ in bandwidth only and later steps over the same ops pay the
memory seconds and their overlap alone. `KeptParts` is a part of `codesign.sim.cost.CostModel`:
`cost`, `seconds`, `group_costs`, `content_key`, `half_seconds`, `half_floor` and the functions
that make and keep the parts, each written out from the model's rules (`compute_time`,
`byte_split`, `overhead`, `memory_seconds`, `combine`) with the same operations in the same order,
so that they give the same floats as `CostModel.reference_cost` (tests/sim/test_cost_parts.py)."""

from __future__ import annotations

import math

from codesign.graph.op import Op
from codesign.mapping.scaling import OP_FIELDS_KNOWN, op_with
from codesign.sim.gdn_chunk import _GDN_SCOPE
from codesign.sim.mlp_activation import is_mlp_down
from codesign.sim.moe_kernel import routed_rows
from codesign.sim.op_cost import OpCost, Residency

# The bandwidth-free part of op costs (`CostModel.cost`): by (the cost model's `static_key`,
# residency, of the op or of its two-batch-overlap half), id(op) -> (op, compute seconds, unit, HBM
# bytes, SRAM bytes, overhead seconds, HBM bandwidth index), or (op, the whole OpCost, None, ...)
# where the cost reads no bandwidth; the op is held so that its id is not reused while kept.
# Bounded: cleared when full (32 keys: 16 (static key, residency) pairs, each with its halves).
_STATIC: dict[tuple, dict[int, tuple]] = {}
_STATIC_KEYS_MAX = 32
_STATIC_OPS_MAX = 32_768


def half_op(op: Op) -> Op:
    """The op for one of two equal micro-batches: token-proportional work halves, weights do not
    (each micro-batch streams the weights again: the price of two-batch overlap)."""
    coll = op.collective
    if op.kind == "collective" and coll:
        if "bytes" in coll:
            coll = dict(coll)
            coll["bytes"] = coll["bytes"] / 2
        return op_with(op, op.flops, op.bytes_read, op.bytes_written, op.gemm, collective=coll)
    br, bw = _halved(op.bytes_read), _halved(op.bytes_written)
    gemm = op.gemm
    if gemm is not None:
        b, m, n, k = gemm
        gemm = (b, max(1, math.ceil(m / 2)), n, k)
    tpe = op.tokens_per_expert
    if tpe is not None:
        tpe = tuple([(t + 1) // 2 for t in tpe])
    if OP_FIELDS_KNOWN:  # `op_with` written out
        return Op(op.name, op.target, op.kind, op.block, op.layer, op.layer_type, op.phase, op.in_shapes,
                  op.out_shapes, op.dtype, op.flops / 2, br, bw, op.repeat, gemm, tpe, op.expert_weight_bytes,
                  op.expert_flops_per_token, op.collective)
    return op_with(op, op.flops / 2, br, bw, gemm, tokens_per_expert=tpe)


def _halved(d: dict[str, float]) -> dict[str, float]:
    """A byte dict for one of two micro-batches: every class halves but the weights."""
    if len(d) == 4:
        try:  # the mapping's dicts (every class, in BYTE_CLASSES order): the same values written out
            return {"weight": d["weight"], "activation": d["activation"] / 2, "kv_cache": d["kv_cache"] / 2,
                    "state": d["state"] / 2}
        except KeyError:
            pass
    return {k: (v if k == "weight" else v / 2) for k, v in d.items()}


def _cache_or_state(op: Op) -> bool:
    """Whether `op` moves KV-cache or recurrent-state bytes (streamed at `hbm_bw` whatever its kind)."""
    rd, wr = op.bytes_read.get, op.bytes_written.get
    return rd("kv_cache", 0.0) + wr("kv_cache", 0.0) + rd("state", 0.0) + wr("state", 0.0) > 0


class KeptParts:
    """`CostModel`'s costs from kept parts; reads the model's rates, bandwidths, overheads and
    `static_key` (None: a subclass with its own rules, which keeps nothing)."""

    def cost(self, op: Op, residency: Residency = Residency()) -> OpCost:
        """The op's cost. Its bandwidth-free parts (compute seconds, byte split, overhead) are kept
        per op for every cost model of the same `static_key` and residency (`_STATIC`); the memory
        seconds and their overlap with compute are computed at each call from them, with the same
        functions: the same floats as `reference_cost`. An op is not modified once costed (the
        mapping and the step model build new ops)."""
        if op.kind == "collective":
            t = self.collective_time(op)
            return OpCost(t, 0.0, 0.0, 0.0, "link")
        if self.static_key is None:
            return self.reference_cost(op, residency)
        if self.keep_parts:  # `_parts` written out: a step costs all its ops at one residency
            last = self._last
            memo = last[1] if residency is last[0] else self._memo_for(residency)
            hit = memo.get(id(op))
            if hit is None or hit[0] is not op:
                hit = self._static_parts(op, residency)
                self._keep(memo, op, hit)
        else:
            hit = self._static_parts(op, residency)
        _, c, unit, hbm, sram, o, bw = hit
        if unit is None:
            return c
        # memory_seconds, combine and overlap written out (the same operations in the same order)
        t_hbm = hbm / (self.hbm_bw if bw == 0 else self.matrix_hbm_bw if bw == 1
                       else self.grouped_hbm_bw if bw == 2 else self.elementwise_hbm_bw)
        t_sram = sram / self.sram_bw
        if t_hbm >= t_sram:
            return self.combine(c, unit, t_hbm, "hbm", o)
        return self.combine(c, unit, t_sram, "sram", o)

    def group_costs(self, ops: list[Op], residency: Residency = Residency()) -> tuple[list[OpCost], list]:
        """(`cost` of each op, each op's `content_key`): ops of equal content share one cost (a
        layer's norms, copies and element-wise ops repeat the same numbers: about half of a decoder
        layer's ops), so each distinct one is costed once. The keys serve the half ops
        (`half_seconds` is a function of the same content). An op whose parts are kept (a hardware
        variant of the same ops) is costed from them, keyless: cheaper than its key."""
        if self.static_key is None:  # a subclass: its own rules, op by op
            return [self.cost(op, residency) for op in ops], [None] * len(ops)
        seen: dict[tuple, OpCost] = {}
        out: list[OpCost] = []
        keys: list = []
        key_of = self.content_key
        cost = self.cost
        kept: dict[int, tuple] = {}
        if self.keep_parts:
            last = self._last
            kept = last[1] if residency is last[0] else self._memo_for(residency)
        for op in ops:
            if kept:
                hit = kept.get(id(op))
                if hit is not None and hit[0] is op:
                    out.append(cost(op, residency))
                    keys.append(None)
                    continue
            k = key_of(op)
            keys.append(k)
            if k is None:
                out.append(cost(op, residency))
                continue
            c = seen.get(k)
            if c is None:
                c = seen[k] = cost(op, residency)
            out.append(c)
        return out, keys

    def content_key(self, op: Op) -> tuple | None:
        """Everything `cost` and `half_seconds` read of a dense GEMM, vector or memory op (kind,
        FLOPs, GEMM problem, each class's bytes read and written), or None for an op that is costed
        by itself: other kinds (attention reads its shapes and phase, grouped GEMMs their tokens per
        expert), the fused GatedDeltaNet kernel's ops (by name), and a vector or GEMM op of zero
        FLOPs (a -0.0 and a +0.0 are equal keys but not equal compute seconds)."""
        kind = op.kind
        if kind != "vector" and kind != "memory" and kind != "gemm":
            return None
        f = op.flops
        if not f and kind != "memory":
            return None
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return None
        r, w = op.bytes_read.get, op.bytes_written.get
        if kind == "gemm" and self.unfused_mlp_bw is not None:  # `overhead` reads the op's name and block
            return (kind, f, op.gemm, op.block, is_mlp_down(op), r("weight", 0.0), w("weight", 0.0),
                    r("activation", 0.0), w("activation", 0.0), r("kv_cache", 0.0), w("kv_cache", 0.0),
                    r("state", 0.0), w("state", 0.0))
        if kind == "gemm" and self.block_fp8 is not None:  # `gemm_kernel` reads the block
            return (kind, f, op.gemm, op.block, r("weight", 0.0), w("weight", 0.0), r("activation", 0.0),
                    w("activation", 0.0), r("kv_cache", 0.0), w("kv_cache", 0.0), r("state", 0.0), w("state", 0.0))
        return (kind, f, op.gemm, r("weight", 0.0), w("weight", 0.0), r("activation", 0.0), w("activation", 0.0),
                r("kv_cache", 0.0), w("kv_cache", 0.0), r("state", 0.0), w("state", 0.0))

    def seconds(self, op: Op, residency: Residency = Residency()) -> float:
        """`cost(op, residency).time_s`, without the OpCost: the same operations on the same kept
        parts."""
        if op.kind == "collective":
            return self.collective_time(op)
        if self.static_key is None:  # a subclass: its own rules, wherever they are
            return self.cost(op, residency).time_s
        return self._seconds(self._parts(op, residency))

    def half_seconds(self, op: Op, residency: Residency = Residency()) -> float:
        """`seconds(half_op(op), residency)`: the op of one of two equal micro-batches (the
        engine's two-batch overlap), from `op` itself. Its kept parts (`_half_parts`, the same
        functions on the half op's fields) are kept by `op` beside its own, so no half op is built
        and a hardware variant of the same ops reuses them."""
        if self.static_key is None:  # a subclass: its own rules, on the half op
            return self.cost(half_op(op), residency).time_s
        if op.kind == "collective":
            c = op.collective
            if c and "bytes" in c:  # `half_op`'s collective
                c = dict(c)
                c["bytes"] = c["bytes"] / 2
            return self._collective_seconds(c)
        if not self.keep_parts:
            return self._seconds(self._half_parts(op, residency))
        last = self._last_half
        memo = last[1] if residency is last[0] else self._memo_for(residency, True)
        hit = memo.get(id(op))
        if hit is None or hit[0] is not op:
            hit = self._half_parts(op, residency)
            self._keep(memo, op, hit)
        return self._seconds(hit)

    def half_parts_kept(self, op: Op, residency: Residency = Residency()) -> bool:
        """Whether `half_seconds(op, residency)` finds its parts kept (a hardware variant of ops
        costed before): then it is cheaper than `half_floor`."""
        if not self.keep_parts or self.static_key is None:
            return False
        last = self._last_half
        memo = last[1] if residency is last[0] else self._memo_for(residency, True)
        hit = memo.get(id(op))
        return hit is not None and hit[0] is op

    def half_floor(self, op: Op, residency: Residency = Residency()) -> float:
        """A lower bound of `half_seconds(op, residency)` for a non-collective op, from its weight
        bytes alone: the half op streams the whole weights, so its memory seconds are at least
        weight / bandwidth (the other classes only add bytes; the compute-memory overlap is never
        below the larger part), plus the kind's fixed overhead (a dense MLP's down projection with
        `mlp_unfused_activation` pays more, never less); 0 for a fused GatedDeltaNet kernel
        op. Each step is a rounded operation that is monotone in its operands, so the float is not
        above `half_seconds`' (tests/sim/test_cost_parts.py checks it on every op kind). The
        engine's two-batch-overlap bound sums these first: where they already reach the plain
        layer, no half op is costed."""
        kind = op.kind
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return 0.0
        if kind == "gemm":
            o, bw = self._kernel_overhead, self.matrix_hbm_bw
        elif kind == "grouped_gemm":
            o, bw = self._grouped_overhead, self.grouped_hbm_bw
        elif kind == "vector" or kind == "memory":
            o, bw = self._elementwise_overhead, self.hbm_bw if _cache_or_state(op) else self.elementwise_hbm_bw
        else:
            o, bw = self._kernel_overhead, self.hbm_bw
        w = op.bytes_read.get("weight", 0.0) + op.bytes_written.get("weight", 0.0)
        if w > 0:
            return w / (self.sram_bw if residency.weights else bw) + o
        return o

    def _seconds(self, parts: tuple) -> float:
        """An op's seconds from its kept parts (`memory_seconds`, `overlap` and `combine`'s sum
        written out: the same operations in the same order)."""
        _, c, unit, hbm, sram, o, bw = parts
        if unit is None:
            return c.time_s
        t_hbm = hbm / (self.hbm_bw if bw == 0 else self.matrix_hbm_bw if bw == 1
                       else self.grouped_hbm_bw if bw == 2 else self.elementwise_hbm_bw)
        t_sram = sram / self.sram_bw
        m = t_hbm if t_hbm >= t_sram else t_sram
        if c >= m:
            hi, lo = c, m
        else:
            hi, lo = m, c
        p = self.overlap_p
        if not (p is None or lo <= 0.0):
            hi = hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)
        return hi + o

    def _parts(self, op: Op, residency: Residency) -> tuple:
        """The op's kept parts at `residency` (`_static_parts`), computed on first use."""
        if not self.keep_parts:
            return self._static_parts(op, residency)
        last = self._last  # a step costs all its ops at one residency
        memo = last[1] if residency is last[0] else self._memo_for(residency)
        hit = memo.get(id(op))
        if hit is None or hit[0] is not op:
            hit = self._static_parts(op, residency)
            self._keep(memo, op, hit)
        return hit

    @staticmethod
    def _keep(memo: dict[int, tuple], op: Op, parts: tuple) -> None:
        if len(memo) >= _STATIC_OPS_MAX:
            memo.clear()
        memo[id(op)] = parts

    def _memo_for(self, residency: Residency, half: bool = False) -> dict[int, tuple]:
        """The kept parts at `residency` (of the ops, or of their halves), remembered as the last
        used (one attribute: a thread never sees one residency with another's parts)."""
        memo = self._static.get((residency, half))
        if memo is None:
            memo = self._static[(residency, half)] = self._static_memo(residency, half)
        if half:
            self._last_half = (residency, memo)
        else:
            self._last = (residency, memo)
        return memo

    def _static_memo(self, residency: Residency, half: bool = False) -> dict[int, tuple]:
        key = (self.static_key, residency, half)
        memo = _STATIC.get(key)
        if memo is None:
            if len(_STATIC) >= _STATIC_KEYS_MAX:
                _STATIC.clear()
            memo = _STATIC[key] = {}
        return memo

    def _static_parts(self, op: Op, residency: Residency) -> tuple:
        """(op, compute seconds, unit, HBM bytes, SRAM bytes, overhead, HBM bandwidth index) of a
        non-collective op, or (op, its OpCost, None, 0, 0, 0, 0) where the cost reads no bandwidth
        (the fused GatedDeltaNet chunk kernel's ops)."""
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return op, self._gdn_cost(op, op.flops, op.gemm), None, 0.0, 0.0, 0.0, 0
        rd, wr = op.bytes_read.get, op.bytes_written.get
        return self._parts_of(op, op.kind, op.flops, op.gemm, op.tokens_per_expert,
                              rd("weight", 0.0) + wr("weight", 0.0), rd("activation", 0.0) + wr("activation", 0.0),
                              rd("kv_cache", 0.0) + wr("kv_cache", 0.0), rd("state", 0.0) + wr("state", 0.0), residency)

    def _half_parts(self, op: Op, residency: Residency) -> tuple:
        """`_static_parts(half_op(op), residency)` with `op` in the first place, from `op`'s fields:
        the half op's FLOPs, GEMM problem, tokens per expert and bytes as `half_op` makes them,
        through the same functions (tests/sim/test_cost_parts.py compares the two on every op
        kind)."""
        flops = op.flops / 2
        gemm = op.gemm
        if gemm is not None:
            b, m, n, k = gemm
            gemm = (b, max(1, math.ceil(m / 2)), n, k)
        if self.gdn_rate is not None and op.block == "linear_attention" and _GDN_SCOPE in op.name:
            return op, self._gdn_cost(op, flops, gemm), None, 0.0, 0.0, 0.0, 0
        tpe = op.tokens_per_expert
        if tpe is not None:
            tpe = tuple([(t + 1) // 2 for t in tpe])
        rd, wr = op.bytes_read.get, op.bytes_written.get
        # `_halved`'s dicts: every class but the weights halves (a class absent stays absent: 0.0)
        return self._parts_of(op, op.kind, flops, gemm, tpe, rd("weight", 0.0) + wr("weight", 0.0),
                              rd("activation", 0.0) / 2 + wr("activation", 0.0) / 2,
                              rd("kv_cache", 0.0) / 2 + wr("kv_cache", 0.0) / 2,
                              rd("state", 0.0) / 2 + wr("state", 0.0) / 2, residency)

    def _parts_of(self, op: Op, kind: str, flops: float, gemm: tuple[int, int, int, int] | None,
                  tpe: tuple[int, ...] | None, weight: float, activation: float, kv_cache: float, state: float,
                  residency: Residency) -> tuple:
        """The kept parts of `op` with these FLOPs, GEMM problem, tokens per expert and bytes per
        class: `compute_time` (written out for the vector and memory ops, most of a layer's),
        `_split` and `overhead`, the same operations in the same order."""
        if kind == "vector":
            c, unit = flops / self.vector_rate, "vector"
        elif kind == "memory":
            c, unit = 0.0, "vector"
        else:
            c, unit = self._compute(op, kind, flops, gemm, tpe)
        hbm, sram = self._split(kind, weight, activation, kv_cache, state, residency)
        # `overhead` and the HBM bandwidth `memory_seconds` uses for this kind (0 hbm_bw, 1
        # matrix_hbm_bw, 2 grouped_hbm_bw, 3 elementwise_hbm_bw)
        if kind == "gemm":
            if self.unfused_mlp_bw is not None and is_mlp_down(op):  # the activation kernel (`overhead`)
                return op, c, unit, hbm, sram, self.mlp_down_overhead(gemm), 1
            return op, c, unit, hbm, sram, self._kernel_overhead, 1
        if kind == "grouped_gemm":
            if self.unfused_moe_bw is None:
                return op, c, unit, hbm, sram, self._grouped_overhead, 2
            # MoE kernels through HBM: the GEMMs' intermediate buffers and the serial kernels, by
            # these routed rows (`memory_time`, `overhead`)
            routed = routed_rows(tpe)
            hbm += self.unfused_gemm_bytes(op, routed)
            return op, c, unit, hbm, sram, self.grouped_overhead(op, routed), 2
        if kind == "vector" or kind == "memory":  # KV-cache and state bytes stream at hbm_bw (`memory_seconds`)
            bw_code = 0 if kv_cache > 0 or state > 0 else self._elementwise_bw_code
            return op, c, unit, hbm, sram, self._elementwise_overhead, bw_code
        if kind == "attention":  # occupancy and fixed time of the attention kernel (`memory_time`, `overhead`)
            f, extra = self.attention_terms(op)
            return op, c, unit, hbm * f, sram, self._kernel_overhead + extra, 0
        return op, c, unit, hbm, sram, self._kernel_overhead, 0
