"""Discrete-event simulation of one model step on one chip (SimPy).

Covers: `simpy.PriorityResource` for the matrix engine, vector engine, HBM channel and the links;
ops as generator processes that wait for their predecessors' completion events and hold their
resources in `with req` blocks; explicit priorities (topological index) as the deterministic
tie-break.

Scenario: the mapping hands over a per-chip op graph (`MappedStep.graph`, collectives inserted).
Compute ops hold their unit (matrix or vector) and the HBM channel for their whole duration, so they
run one at a time as on one GPU stream; collectives hold the link, so communication overlaps compute
wherever the dependency graph allows. With two-batch overlap (EP all-to-all of one micro-batch
hidden under compute of the other) each layer runs as two half-batch micro-batches.

Speed: layers of one kind trace identically, so each distinct layer kind is simulated once; other
layers of the kind add only the cost difference of the ops that differ (MoE expert ops and their
all-to-alls, whose per-layer token counts differ). A full Qwen3.5-397B step is ~3 SimPy runs.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import networkx as nx
import simpy

from codesign.gc_pause import gc_paused
from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec
from codesign.sim.cost import CostModel, CostOptions, OpCost, Residency, wider, spec_dtype

# Resource each op kind holds, in a fixed acquisition order (no deadlock between two-unit holders).
_UNITS = {
    "gemm": ("matrix", "hbm"),
    "grouped_gemm": ("matrix", "hbm"),
    "attention": ("matrix", "hbm"),
    "vector": ("vector", "hbm"),
    "memory": ("hbm",),
    "collective": ("link",),
}
# Names of limiting resources as results report them.
BOTTLENECK_NAMES = {"matrix": "compute", "vector": "compute", "hbm": "hbm", "sram": "sram", "link": "link", "overhead": "overhead"}


@dataclass
class StepResult:
    """One simulated step: seconds, what limits it, and where the time goes.

    `time_s` is the step's latency on the critical path (all pipeline stages in turn);
    `stage_times_s` one entry per pipeline stage; `breakdown` seconds by block and by resource
    (summed op time, scaled by layer counts; overlapped link time included)."""

    time_s: float
    bottleneck: str
    breakdown: dict[str, dict[str, float]]
    stage_times_s: list[float] = field(default_factory=list)
    residency: dict[str, bool] = field(default_factory=dict)
    layers_simulated: int = 0
    two_batch_overlap: bool = False


def _half(op: Op) -> Op:
    """The op for one of two equal micro-batches: token-proportional work halves, weights do not
    (each micro-batch streams the weights again: the price of two-batch overlap)."""
    if op.kind == "collective" and op.collective:
        coll = dict(op.collective)
        if "bytes" in coll:
            coll["bytes"] = coll["bytes"] / 2
        return replace(op, collective=coll)
    br = {k: (v if k == "weight" else v / 2) for k, v in op.bytes_read.items()}
    bw = {k: (v if k == "weight" else v / 2) for k, v in op.bytes_written.items()}
    gemm = op.gemm
    if gemm is not None:
        b, m, n, k = gemm
        gemm = (b, max(1, math.ceil(m / 2)), n, k)
    tpe = op.tokens_per_expert
    if tpe is not None:
        tpe = tuple((t + 1) // 2 for t in tpe)
    return replace(op, flops=op.flops / 2, bytes_read=br, bytes_written=bw, gemm=gemm, tokens_per_expert=tpe)


# Op kinds whose work differs between layers of one kind (per-layer expert routing).
_VARYING = ("grouped_gemm", "collective")


def _signature(op: Op) -> tuple:
    coll = None
    if op.collective:
        coll = tuple((k, v) for k, v in op.collective.items() if isinstance(v, (int, float, str)))
    return (
        op.kind,
        op.flops,
        tuple(op.bytes_read.items()),
        tuple(op.bytes_written.items()),
        op.gemm,
        op.tokens_per_expert,
        coll,
    )


def _topological(g: nx.DiGraph, nodes: list) -> list:
    """`nodes` in a topological order of their induced subgraph; ties keep insertion order
    (Kahn's algorithm on the subgraph; cheaper than a networkx subgraph view)."""
    node_set = set(nodes)
    indeg = {n: 0 for n in nodes}
    succ: dict[Any, list] = {n: [] for n in nodes}
    for n in nodes:
        for s in g.successors(n):
            if s in node_set:
                indeg[s] += 1
                succ[n].append(s)
    pos = {n: i for i, n in enumerate(nodes)}
    ready = [(pos[n], n) for n in nodes if indeg[n] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, n = heapq.heappop(ready)
        out.append(n)
        for s in succ[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, (pos[s], s))
    return out


class _Sim:
    """One SimPy run over a list of (op id, cost, predecessors) in topological order.

    `recorder` (optional, for timelines): called as `recorder(key, units, start_s, end_s)` when each
    contracted process finishes; `members[key]` then lists the (op key, kind, seconds) of the ops
    merged into that process, in order (see `_contract`). Without a recorder nothing is kept."""

    def __init__(self, recorder: Callable[[Any, tuple[str, ...], float, float], None] | None = None) -> None:
        self.env = simpy.Environment()
        self.res = {name: simpy.PriorityResource(self.env, capacity=1) for name in ("matrix", "vector", "hbm", "link")}
        self.done: dict[Any, simpy.Event] = {}
        self.recorder = recorder
        self.members: dict[Any, list[tuple[Any, str, float]]] = {}

    def _op(self, key, units: tuple[str, ...], seconds: float, preds: list, prio: int):
        if preds:
            yield simpy.AllOf(self.env, [self.done[p] for p in preds])
        reqs = []
        try:
            for unit in units:
                req = self.res[unit].request(priority=prio)
                reqs.append((unit, req))
                yield req
            start = self.env.now
            yield self.env.timeout(seconds)
        finally:
            for unit, req in reqs:
                self.res[unit].release(req)
        if self.recorder is not None:
            self.recorder(key, units, start, self.env.now)
        self.done[key].succeed()

    def run(self, items: list[tuple[Any, str, float, list]]) -> float:
        """Makespan of `items` = (key, op kind, seconds, predecessor keys), in topological order."""
        merged = _contract(items, self.members if self.recorder is not None else None)
        for key, units, seconds, preds in merged:
            self.done[key] = self.env.event()
        for prio, (key, units, seconds, preds) in enumerate(merged):
            self.env.process(self._op(key, units, seconds, preds, prio))
        self.env.run()
        return float(self.env.now)


_UNIT_ORDER = ("matrix", "vector", "hbm", "link")


def _contract(items: list[tuple[Any, str, float, list]],
              members: dict[Any, list[tuple[Any, str, float]]] | None = None
              ) -> list[tuple[Any, tuple[str, ...], float, list]]:
    """Merge chains of compute ops (an op whose only predecessor is a compute op with no other
    successor) into one process holding the union of their units for the summed time. Exact: every
    compute op holds the HBM channel, so a chain's ops never interleave with other compute; it
    cuts the SimPy events of a layer from ~100 ops to the handful of branch points.
    `members` (optional): filled with each process's merged (op key, kind, seconds), in order."""
    nsucc: dict[Any, int] = defaultdict(int)
    for _, _, _, preds in items:
        for p in preds:
            nsucc[p] += 1
    head: dict[Any, Any] = {}
    out: dict[Any, list] = {}
    for key, kind, seconds, preds in items:
        units = _UNITS.get(kind, ("hbm",))
        if kind != "collective" and len(preds) == 1:
            p = preds[0]
            h = head[p]
            if nsucc[p] == 1 and "link" not in out[h][1]:
                head[key] = h
                item = out[h]
                item[1] = tuple(u for u in _UNIT_ORDER if u in item[1] or u in units)
                item[2] += seconds
                if members is not None:
                    members[h].append((key, kind, seconds))
                continue
        head[key] = key
        if members is not None:
            members[key] = [(key, kind, seconds)]
        hp = []
        for p in preds:
            if head[p] not in hp:
                hp.append(head[p])
        out[key] = [key, units, seconds, hp]
    return [tuple(v) for v in out.values()]


class StepSimulator:
    """Simulates mapped steps on one hardware spec with one cost model.

    `two_batch_overlap`: True, False, or None for "auto": per distinct layer kind, the overlapped
    schedule is simulated only when it could win (its compute alone, with weights streamed once per
    micro-batch, is shorter than the plain layer) and kept when faster. Serving engines switch it on
    where it pays: it hides communication but streams the weights twice."""

    def __init__(self, hw: HardwareSpec, cost: CostModel, two_batch_overlap: bool | None = False) -> None:
        self.hw = hw
        self.cost = cost
        self.tbo = two_batch_overlap

    # -- one group of ops (a layer, or the embedding/head) ---------------------------------------
    def _plain_time(self, g: nx.DiGraph, nodes: list, preds: dict, costs: dict) -> float:
        items = [(n, g.nodes[n]["op"].kind, costs[n].time_s, preds[n]) for n in nodes]
        return _Sim().run(items)

    def _tbo_time(self, g: nx.DiGraph, nodes: list, preds: dict, half: dict) -> float:
        """Steady-state time per layer of two half micro-batches: the marginal time of a second
        copy of the layer (so the fill and drain of the pipeline are not charged to every layer)."""
        node_set = set(nodes)
        sources = [n for n in nodes if not preds[n]]
        sinks = [n for n in nodes if not any(s in node_set for s in g.successors(n))]

        def build(copies: int) -> list:
            items = []
            for r in range(copies):
                for n in nodes:
                    for mb in (0, 1):
                        p = [(r, mb, q) for q in preds[n]]
                        if r > 0 and n in sources:
                            p += [(r - 1, mb, s) for s in sinks]
                        items.append(((r, mb, n), g.nodes[n]["op"].kind, half[n], p))
            return items

        return _Sim().run(build(2)) - _Sim().run(build(1))

    def _group_time(self, g: nx.DiGraph, nodes: list, costs: dict, residency: Residency) -> tuple[float, bool]:
        """(seconds, two-batch overlap used) for one group of ops in topological order."""
        node_set = set(nodes)
        preds = {n: [p for p in g.predecessors(n) if p in node_set] for n in nodes}
        plain = self._plain_time(g, nodes, preds, costs)
        has_comm = any(g.nodes[n]["op"].kind == "collective" for n in nodes)
        if self.tbo is False or not has_comm:
            return plain, False
        half = {n: self.cost.cost(_half(g.nodes[n]["op"]), residency).time_s for n in nodes}
        if self.tbo is None:
            # Lower bound of the overlapped layer: both micro-batches' compute, serialised.
            bound = 2 * sum(half[n] for n in nodes if g.nodes[n]["op"].kind != "collective")
            if bound >= plain:
                return plain, False
        t = self._tbo_time(g, nodes, preds, half)
        if self.tbo is None and t >= plain:
            return plain, False
        return t, True

    # -- the whole step ---------------------------------------------------------------------------
    def residency(self, g: nx.DiGraph) -> Residency:
        """State (then weights) stay SRAM-resident when a whole step's worth fits this chip's budget."""
        opts = self.cost.opts
        budget = self.cost.sram_budget
        state = weights = 0.0
        for _, o in g.nodes(data="op"):
            state += o.bytes_read.get("state", 0.0)
            weights += o.bytes_read.get("weight", 0.0)
        res_state = bool(opts.sram_state and 0 < state <= budget)
        left = budget - (state if res_state else 0.0)
        res_w = bool(opts.sram_weights and 0 < weights <= left)
        return Residency(state=res_state, weights=res_w)

    def simulate(self, g: nx.DiGraph, stage_layers: list[list[int]] | None = None) -> StepResult:
        residency = self.residency(g)
        # Group by layer in insertion order: the tracer and the mapping build every layer of a kind
        # the same way, so position i of two such layers is the same op (checked by signature).
        by_layer: dict[int, list] = defaultdict(list)
        for n, o in g.nodes(data="op"):
            by_layer[o.layer].append(n)
        costs: dict[Any, OpCost] = {}
        op_of = {n: o for n, o in g.nodes(data="op")}

        def cost_of(n) -> OpCost:
            c = costs.get(n)
            if c is None:
                c = costs[n] = self.cost.cost(op_of[n], residency)
            return c

        # One representative per (layer_type, op kinds); other layers of the kind differ only in
        # their MoE expert ops and collectives (per-layer routing): those add their cost deltas.
        reps: dict[tuple, tuple[list, float, list]] = {}
        layer_time: dict[int, float] = {}
        simulated = 0
        tbo_used = False
        breakdown_block: dict[str, float] = defaultdict(float)
        breakdown_res: dict[str, float] = defaultdict(float)

        def account(n, o, sign: float = 1.0) -> None:
            c = costs[n]
            breakdown_block[o.block] += sign * c.time_s
            breakdown_res[BOTTLENECK_NAMES[c.bottleneck]] += sign * c.time_s

        for layer, nodes in sorted(by_layer.items()):
            ops = [op_of[n] for n in nodes]
            key = (ops[0].layer_type, tuple(o.kind for o in ops))
            rep = reps.get(key)
            if rep is None:
                for n in nodes:
                    cost_of(n)
                t, used = self._group_time(g, _topological(g, nodes), costs, residency)
                tbo_used |= used
                varying = [(i, _signature(ops[i])) for i, o in enumerate(ops) if o.kind in _VARYING]
                reps[key] = (nodes, t, varying)
                simulated += 1
                for n, o in zip(nodes, ops):
                    account(n, o)
            else:
                rnodes, t, varying = rep
                for i, sig in varying:
                    o = ops[i]
                    if _signature(o) != sig:
                        n, rn = nodes[i], rnodes[i]
                        t += cost_of(n).time_s - costs[rn].time_s
                        account(n, o)
                        account(rn, op_of[rn], -1.0)
                for n, o in zip(rnodes, (op_of[r] for r in rnodes)):
                    account(n, o)
            layer_time[layer] = t

        # Pipeline stages: layers per stage; embedding (layer < 0) joins the first stage, the head
        # and MTP (layers beyond the last decoder layer) the last.
        if stage_layers and len(stage_layers) > 1:
            first, last = min(stage_layers[0]), max(stage_layers[-1])
            stage_times = []
            for i, layers in enumerate(stage_layers):
                s = set(layers)
                t = sum(v for k, v in layer_time.items() if k in s)
                if i == 0:
                    t += sum(v for k, v in layer_time.items() if k < first)
                if i == len(stage_layers) - 1:
                    t += sum(v for k, v in layer_time.items() if k > last)
                stage_times.append(t)
        else:
            stage_times = [sum(layer_time.values())]
        total = sum(stage_times)
        # The step's bottleneck: the resource class carrying the most op time.
        bottleneck = max(sorted(breakdown_res), key=lambda k: breakdown_res[k]) if breakdown_res else "none"
        return StepResult(
            time_s=total,
            bottleneck=bottleneck,
            breakdown={"block": dict(sorted(breakdown_block.items())), "resource": dict(sorted(breakdown_res.items()))},
            stage_times_s=stage_times,
            residency={"state": residency.state, "weights": residency.weights},
            layers_simulated=simulated,
            two_batch_overlap=tbo_used,
        )


def precision_dtypes(precision: Any, attention: str = "auto") -> tuple[str, str]:
    """(matrix dtype, attention dtype) of a deployment: GEMMs compute in the wider of weight and
    activation precision (W4A8 runs at the fp8 rate); attention in the wider of activations and KV."""
    w = spec_dtype(getattr(precision, "weights", "bf16"))
    a = spec_dtype(getattr(precision, "activations", "bf16"))
    kv = spec_dtype(getattr(precision, "kv_cache", "bf16"))
    compute = getattr(precision, "compute", None)
    matrix = spec_dtype(compute) if compute else wider(w, a)
    attn = wider(a, kv) if attention == "auto" else spec_dtype(attention)
    return matrix, attn


def simulate_step(mapped: Any, hw: HardwareSpec, options: CostOptions | None = None, collective_fn=None,
                  two_batch_overlap: bool | None = None) -> StepResult:
    """Simulate one mapped step (`codesign.mapping.MappedStep`: graph, plan, precision, chips,
    stage_layers) on `hw`.

    Two-batch overlap: as given, else as the plan says (`plan.two_batch_overlap`), else "auto"
    (see `StepSimulator`)."""
    opts = options or CostOptions()
    matrix, attn = precision_dtypes(mapped.precision, opts.attention_dtype)
    cm = CostModel(hw, matrix, attn, opts, collective_fn)
    if two_batch_overlap is None:
        two_batch_overlap = getattr(mapped.plan, "two_batch_overlap", None)
    stages = getattr(mapped, "stage_layers", None)
    with gc_paused():
        return StepSimulator(hw, cm, two_batch_overlap).simulate(mapped.graph, stages)


__all__ = ["StepResult", "StepSimulator", "simulate_step", "precision_dtypes"]
