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

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import networkx as nx
import simpy

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


def _signature(op: Op) -> tuple:
    coll = None
    if op.collective:
        coll = tuple(sorted((k, v) for k, v in op.collective.items() if isinstance(v, (int, float, str))))
    return (
        op.kind,
        op.flops,
        tuple(sorted(op.bytes_read.items())),
        tuple(sorted(op.bytes_written.items())),
        op.gemm,
        op.tokens_per_expert,
        coll,
    )


class _Sim:
    """One SimPy run over a list of (op id, cost, predecessors) in topological order."""

    def __init__(self) -> None:
        self.env = simpy.Environment()
        self.res = {name: simpy.PriorityResource(self.env, capacity=1) for name in ("matrix", "vector", "hbm", "link")}
        self.done: dict[Any, simpy.Event] = {}

    def _op(self, key, kind: str, seconds: float, preds: list, prio: int):
        if preds:
            yield simpy.AllOf(self.env, [self.done[p] for p in preds])
        reqs = []
        try:
            for unit in _UNITS.get(kind, ("hbm",)):
                req = self.res[unit].request(priority=prio)
                reqs.append((unit, req))
                yield req
            yield self.env.timeout(seconds)
        finally:
            for unit, req in reqs:
                self.res[unit].release(req)
        self.done[key].succeed()

    def run(self, items: list[tuple[Any, str, float, list]]) -> float:
        for prio, (key, kind, seconds, preds) in enumerate(items):
            self.done[key] = self.env.event()
        for prio, (key, kind, seconds, preds) in enumerate(items):
            self.env.process(self._op(key, kind, seconds, preds, prio))
        self.env.run()
        return float(self.env.now)


class StepSimulator:
    """Simulates mapped steps on one hardware spec with one cost model."""

    def __init__(self, hw: HardwareSpec, cost: CostModel, two_batch_overlap: bool = False) -> None:
        self.hw = hw
        self.cost = cost
        self.tbo = two_batch_overlap

    # -- one group of ops (a layer, or the embedding/head) ---------------------------------------
    def _group_time(self, g: nx.DiGraph, nodes: list, costs: dict, residency: Residency) -> float:
        """Makespan of `nodes` (topological order) run once, or, with two-batch overlap, the
        steady-state time per layer of two half micro-batches (marginal time of a second copy)."""
        node_set = set(nodes)
        preds = {n: [p for p in g.predecessors(n) if p in node_set] for n in nodes}
        if not self.tbo or not any(g.nodes[n]["op"].kind == "collective" for n in nodes):
            items = [(n, g.nodes[n]["op"].kind, costs[n].time_s, preds[n]) for n in nodes]
            return _Sim().run(items)
        half = {n: self.cost.cost(_half(g.nodes[n]["op"]), residency).time_s for n in nodes}
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

        one = _Sim().run(build(1))
        two = _Sim().run(build(2))
        return two - one

    # -- the whole step ---------------------------------------------------------------------------
    def residency(self, g: nx.DiGraph) -> Residency:
        """State (then weights) stay SRAM-resident when a whole step's worth fits this chip's budget."""
        opts = self.cost.opts
        budget = self.cost.sram_budget
        state = sum(g.nodes[n]["op"].bytes_read.get("state", 0.0) for n in g)
        weights = sum(g.nodes[n]["op"].bytes_read.get("weight", 0.0) for n in g)
        res_state = bool(opts.sram_state and 0 < state <= budget)
        left = budget - (state if res_state else 0.0)
        res_w = bool(opts.sram_weights and 0 < weights <= left)
        return Residency(state=res_state, weights=res_w)

    def simulate(self, g: nx.DiGraph, stage_layers: list[list[int]] | None = None) -> StepResult:
        residency = self.residency(g)
        order = list(nx.lexicographical_topological_sort(g, key=lambda n: (g.nodes[n]["op"].layer, str(n))))
        by_layer: dict[int, list] = defaultdict(list)
        for n in order:
            by_layer[g.nodes[n]["op"].layer].append(n)
        costs: dict[Any, OpCost] = {}

        def cost_of(n) -> OpCost:
            c = costs.get(n)
            if c is None:
                c = costs[n] = self.cost.cost(g.nodes[n]["op"], residency)
            return c

        # Representative per (layer_type, op count) signature; others add their op-cost deltas.
        reps: dict[tuple, tuple[int, list, float, list]] = {}
        layer_time: dict[int, float] = {}
        simulated = 0
        breakdown_block: dict[str, float] = defaultdict(float)
        breakdown_res: dict[str, float] = defaultdict(float)
        for layer, nodes in sorted(by_layer.items()):
            ops = [g.nodes[n]["op"] for n in nodes]
            key = (ops[0].layer_type, tuple(o.kind for o in ops))
            rep = reps.get(key)
            if rep is None:
                for n in nodes:
                    cost_of(n)
                t = self._group_time(g, nodes, costs, residency)
                reps[key] = (layer, nodes, t, [_signature(o) for o in ops])
                simulated += 1
            else:
                _, rnodes, rt, rsigs = rep
                t = rt
                for n, rn, o, rs in zip(nodes, rnodes, ops, rsigs):
                    if _signature(o) == rs:
                        costs[n] = cost_of(rn)
                    else:
                        t += cost_of(n).time_s - cost_of(rn).time_s
            layer_time[layer] = t
            for n, o in zip(nodes, ops):
                c = costs[n]
                breakdown_block[o.block] += c.time_s
                breakdown_res[BOTTLENECK_NAMES[c.bottleneck]] += c.time_s

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
            two_batch_overlap=self.tbo,
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

    Two-batch overlap: as given, else as the plan says (`plan.two_batch_overlap`), else "auto": when
    the step has all-to-alls, both ways are simulated and the faster kept (serving engines enable it
    only where it pays: it hides communication but streams the weights twice)."""
    opts = options or CostOptions()
    matrix, attn = precision_dtypes(mapped.precision, opts.attention_dtype)
    cm = CostModel(hw, matrix, attn, opts, collective_fn)
    if two_batch_overlap is None:
        two_batch_overlap = getattr(mapped.plan, "two_batch_overlap", None)
    stages = getattr(mapped, "stage_layers", None)
    g = mapped.graph
    if two_batch_overlap is None:
        has_a2a = any((g.nodes[n]["op"].collective or {}).get("type") == "all_to_all" for n in g)
        if not has_a2a:
            return StepSimulator(hw, cm, False).simulate(g, stages)
        plain = StepSimulator(hw, cm, False).simulate(g, stages)
        tbo = StepSimulator(hw, cm, True).simulate(g, stages)
        return tbo if tbo.time_s < plain.time_s else plain
    return StepSimulator(hw, cm, bool(two_batch_overlap)).simulate(g, stages)


__all__ = ["StepResult", "StepSimulator", "simulate_step", "precision_dtypes"]
