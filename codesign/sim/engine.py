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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import networkx as nx
import simpy

from codesign.gc_pause import gc_paused
from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec
from codesign.sim.cache import BoundedCache
from codesign.sim.elementwise_regions import Member, charge, region_plan
from codesign.sim.layerplan import contract, layer_plan, topological_order
from codesign.sim.schedule import _UNITS as _UNIT_ORDER
from codesign.sim.routed import RoutedLayers
from codesign.sim.cost import CostModel, CostOptions, OpCost, Residency, wider, spec_dtype

# Element-wise regions per graph (`StepSimulator._regions`): id -> `_KeptRegions`.
_REGIONS = BoundedCache("element-wise regions", 16)


@dataclass(slots=True)
class _KeptRegions:
    """A graph's region plan, and its own ops as charged on it once they have been simulated."""

    graph: nx.DiGraph
    nodes: int
    plan: tuple[Member, ...]
    own: dict[Any, Op] | None = None
# Names of limiting resources as results report them.
BOTTLENECK_NAMES = {"matrix": "compute", "vector": "compute", "hbm": "hbm", "sram": "sram", "link": "link", "overhead": "overhead"}


@dataclass
class StepResult:
    """One simulated step: seconds, what limits it, and where the time goes.

    `time_s` is the step's latency on the critical path (all pipeline stages in turn; a pipelined
    steady-state step, `codesign.sim.workload.pipelined`, holds its period instead);
    `stage_times_s` one entry per pipeline stage; `breakdown` seconds by block and by resource
    (summed op time, scaled by layer counts; overlapped link time included)."""

    time_s: float
    bottleneck: str
    breakdown: dict[str, dict[str, float]]
    stage_times_s: list[float] = field(default_factory=list)
    residency: dict[str, bool] = field(default_factory=dict)
    layers_simulated: int = 0
    two_batch_overlap: bool = False


def _not_finite(ops: list[Op], costs: list[OpCost]) -> None:
    """Raise the error of a group whose op time is not finite, naming the first such op."""
    from codesign.errors import CodesignError

    i = next(i for i, c in enumerate(costs) if not c.time_s < math.inf)
    c = costs[i]
    raise CodesignError(f"op {ops[i].name}: its time is not finite (compute {c.compute_s:g} s, memory {c.memory_s:g} s, "
                        f"fixed {c.overhead_s:g} s, bound {c.bottleneck}): a rate or efficiency of the spec is too "
                        f"small to mean anything")


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
    (`layerplan.topological_order`)."""
    pos = {n: i for i, n in enumerate(nodes)}
    preds = [[pos[p] for p in g.predecessors(n) if p in pos] for n in nodes]
    return [nodes[i] for i in topological_order(preds)]


class _SimpySchedule:
    """One SimPy run over contracted items (key, units, seconds, predecessor keys) in priority
    order: the reference of `codesign.sim.schedule.list_schedule` (tests compare the two bit for
    bit) and the timeline's source of per-op start times. Each op is a process that waits for its
    predecessors' completion events, requests its units (capacity-1 `PriorityResource`s, in
    `_UNIT_ORDER`) at its topological priority in `with`-style request/release, holds them for its
    seconds and signals completion.

    `recorder` (optional, for timelines): called as `recorder(key, units, start_s, end_s)` when each
    process finishes; `members` is there for `_contract(items, sim.members)` to fill with the
    (op key, kind, seconds) of the ops merged into each process, in order."""

    def __init__(self, recorder: Callable[[Any, tuple[str, ...], float, float], None] | None = None) -> None:
        self.env = simpy.Environment()
        self.res = {name: simpy.PriorityResource(self.env, capacity=1) for name in _UNIT_ORDER}
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

    def run(self, merged: list[tuple[Any, tuple[str, ...], float, list]]) -> float:
        for key, units, seconds, preds in merged:
            self.done[key] = self.env.event()
        for prio, (key, units, seconds, preds) in enumerate(merged):
            self.env.process(self._op(key, units, seconds, preds, prio))
        self.env.run()
        return float(self.env.now)


def _contract(items: list[tuple[Any, str, float, list]],
              members: dict[Any, list[tuple[Any, str, float]]] | None = None
              ) -> list[tuple[Any, tuple[str, ...], float, list]]:
    """Chains of compute ops merged into one process (`layerplan.contract`, which says why this is
    exact) for items (key, op kind, seconds, predecessor keys): (head key, units, summed seconds,
    predecessor head keys) per process. `members` (optional): filled with each process's merged
    (op key, kind, seconds), in order."""
    index = {key: i for i, (key, _, _, _) in enumerate(items)}
    c = contract([it[1] for it in items], [[index[p] for p in it[3]] for it in items])
    out = []
    for units, preds, merged in zip(c.units, c.preds, c.members):
        key, seconds = items[merged[0]][0], items[merged[0]][2]
        for j in merged[1:]:
            seconds += items[j][2]
        if members is not None:
            members[key] = [items[j][:3] for j in merged]
        out.append((key, units, seconds, [items[c.members[q][0]][0] for q in preds]))
    return out


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
        # per template graph (simulated with replacement ops, `simulate(ops=...)`): its layers' nodes,
        # its ops and each layer's schedule plan, which depend on the graph alone (`_layout`)
        self._layouts: dict[int, _Layout] = {}

    # -- one group of ops (a layer, or the embedding/head) ---------------------------------------
    def _group_time(self, g: nx.DiGraph, nodes: list, ops: list[Op], costs: dict, residency: Residency,
                    layout: "_Layout | None" = None, content: list | None = None) -> tuple[float, bool]:
        """(seconds, two-batch overlap used) for one group of ops (`nodes` in insertion order, `ops`
        theirs); the schedule structure comes from `codesign.sim.layerplan` (built once per layer
        structure; looked up once per `layout`, a template graph's, when given). The half ops of
        two-batch overlap are costed from the ops themselves (`CostModel.half_seconds`: no half op
        is built; their parts are kept by the cost model with the ops', for hardware variants of
        the same ops; ops of equal `content` keys, `CostModel.group_costs`, share their half op's
        seconds)."""
        kinds = [o.kind for o in ops]
        plan = layout.plan(g, nodes, kinds) if layout is not None else _plan(g, nodes, kinds)
        order = plan.order
        secs = [costs[nodes[i]].time_s for i in order]
        if not sum(secs) < math.inf:  # inf or NaN: a rate of the spec too small to mean anything
            _not_finite(ops, [costs[n] for n in nodes])
        plain = plan.plain.makespan(secs)
        if self.tbo is False or "collective" not in kinds:
            return plain, False
        half_seconds = self.cost.half_seconds  # cost(half_op(op), residency).time_s
        if content is None:
            content = [None] * len(ops)
        shared: dict[tuple, float] = {}

        def seconds(i: int) -> float:
            k = content[i]
            if k is None:
                return half_seconds(ops[i], residency)
            h = shared.get(k)
            if h is None:
                h = shared[k] = half_seconds(ops[i], residency)
            return h

        if self.tbo is None:
            # Lower bound of the overlapped layer: both micro-batches' compute, serialised. Its
            # terms are not negative, so the half ops are costed only until it reaches `plain`.
            # The collectives do not enter the bound: they are costed only where it is not reached.
            # First the half ops' floors (`CostModel.half_floor`, their weight streaming and fixed
            # time: not above their seconds, so a sum of floors that reaches `plain` means the
            # bound below reaches it too): where they do, no half op is costed.
            # (Skipped where the half ops' parts are kept, a hardware variant of the same ops:
            # then their seconds cost less than their floors.)
            first = next((ops[i] for i, k in zip(order, plan.kinds) if k != "collective"), None)
            if self.cost.static_key is not None and not (first is None or self.cost.half_parts_kept(first, residency)):
                floor = self.cost.half_floor
                low = 0.0
                for i, k in zip(order, plan.kinds):
                    if k != "collective":
                        low += floor(ops[i], residency)
                        if 2 * low >= plain:
                            return plain, False
            half: list[float] = []
            bound = 0.0
            for i, k in zip(order, plan.kinds):
                if k == "collective":
                    half.append(-1.0)
                    continue
                h = seconds(i)
                half.append(h)
                bound += h
                if 2 * bound >= plain:
                    return plain, False
            for j, (i, k) in enumerate(zip(order, plan.kinds)):
                if k == "collective":
                    half[j] = seconds(i)
        else:
            half = [seconds(i) for i in order]
        one, two = plan.tbo()
        halves = [h for h in half for _ in (0, 1)]
        # Steady-state time per layer of two half micro-batches: the marginal time of a second copy
        # of the layer (so the fill and drain of the pipeline are not charged to every layer).
        t = two.makespan(halves + halves) - one.makespan(halves)
        if self.tbo is None and t >= plain:
            return plain, False
        return t, True

    def _layout(self, g: nx.DiGraph) -> "_Layout":
        """The layout of template graph `g`, kept while the simulator lives (a few templates)."""
        hit = self._layouts.get(id(g))
        if hit is None or hit.graph is not g or hit.nodes != g.number_of_nodes():
            if len(self._layouts) >= 16:
                self._layouts.clear()
            hit = self._layouts[id(g)] = _Layout(g)
        return hit

    # -- the whole step ---------------------------------------------------------------------------
    def _regions(self, g: nx.DiGraph, by_layer: dict[int, list], op_of: dict[Any, Op], remapped: bool) -> dict[Any, Op]:
        """The element-wise ops of `g` charged as their regions' kernels
        (`codesign.sim.elementwise_regions`): the graph's region plan is kept per graph, and so are
        its own ops' charged ops where they are simulated (the same op objects on every call, so
        their kept cost parts serve again); a remapping's ops are charged on the kept plan."""
        kept = _REGIONS.get(id(g))
        if kept is None or kept.graph is not g or kept.nodes != g.number_of_nodes():
            kept = _KeptRegions(g, g.number_of_nodes(), region_plan(g, by_layer.values(), op_of))
            _REGIONS.put(id(g), kept)
        if remapped:
            return charge(kept.plan, op_of)
        if kept.own is None:
            kept.own = charge(kept.plan, op_of)
        return kept.own

    def residency(self, g: nx.DiGraph) -> Residency:
        """State (then weights) stay SRAM-resident when a whole step's worth fits this chip's budget."""
        state = weights = 0.0
        for _, o in g.nodes(data="op"):
            state += o.bytes_read.get("state", 0.0)
            weights += o.bytes_read.get("weight", 0.0)
        return self._resident(state, weights)

    def _residency(self, op_of: dict[Any, Op], by_layer: dict[int, list], virtual: dict[int, "VirtualLayer"],
                   routed: list[RoutedLayers]) -> Residency:
        """`residency` of the whole step: the graph's ops (`op_of`: node -> op), and each virtual or
        routed layer as its template's bytes plus its own ops' difference."""
        state = weights = 0.0
        if not virtual and not routed:  # as `residency`: the ops in graph order
            for o in op_of.values():
                state += o.bytes_read.get("state", 0.0)
                weights += o.bytes_read.get("weight", 0.0)
            return self._resident(state, weights)
        per_layer: dict[int, tuple[float, float]] = {}
        for layer, nodes in by_layer.items():
            if layer in virtual:
                continue
            s = w = 0.0
            for n in nodes:
                br = op_of[n].bytes_read
                s += br.get("state", 0.0)
                w += br.get("weight", 0.0)
            per_layer[layer] = (s, w)
            state, weights = state + s, weights + w
        for layer, v in virtual.items():
            s, w = per_layer[v.template]
            tmpl = by_layer[v.template]
            for i, op in v.replaced.items():
                old = op_of[tmpl[i]].bytes_read
                s += op.bytes_read.get("state", 0.0) - old.get("state", 0.0)
                w += op.bytes_read.get("weight", 0.0) - old.get("weight", 0.0)
            state, weights = state + s, weights + w
        for group in routed:
            s0, w0 = per_layer[group.template]
            old = op_of[by_layer[group.template][group.expert_pos]].bytes_read
            for rd in group.bytes_read:  # the all-to-alls read no bytes: only the expert op differs
                s = s0 + (rd.get("state", 0.0) - old.get("state", 0.0))
                w = w0 + (rd.get("weight", 0.0) - old.get("weight", 0.0))
                state, weights = state + s, weights + w
        return self._resident(state, weights)

    def _resident(self, state: float, weights: float) -> Residency:
        opts = self.cost.opts
        budget = self.cost.sram_budget
        res_state = bool(opts.sram_state and 0 < state <= budget)
        left = budget - (state if res_state else 0.0)
        res_w = bool(opts.sram_weights and 0 < weights <= left)
        return Residency(state=res_state, weights=res_w)

    def simulate(self, g: nx.DiGraph, stage_layers: list[list[int]] | None = None,
                 virtual: dict[int, "VirtualLayer"] | None = None,
                 routed: list[RoutedLayers] | None = None, ops: dict[Any, Op] | None = None) -> StepResult:
        """Simulate the per-chip step `g`. `ops` (optional): node -> op in place of the graph's op
        there (a new shape's ops on a mapping template, `codesign.mapping.remap`, or a hardware
        variant's remapped expert ops, `codesign.mapping.remap_experts`: the graph is shared, not
        copied). `virtual`: layers not in `g`, each a copy of a layer of
        `g` of the same kind (its template) with some ops replaced (its own expert op and
        all-to-alls): they are costed exactly as if they were in the graph (same representative,
        same deltas), without building them (`codesign.sim.stepmodel`). `routed`: such layers given
        by their routing alone (`codesign.sim.routed`), their template being their kind's
        representative."""
        # Group by layer in insertion order: the tracer and the mapping build every layer of a kind
        # the same way, so position i of two such layers is the same op (checked by signature).
        layout = self._layout(g) if ops else None
        if layout is not None:
            by_layer = defaultdict(list, layout.by_layer)  # virtual layers add entries; its lists are not changed
            op_of = dict(layout.op_of)
        else:
            by_layer = defaultdict(list)
            op_of = {}
            for n, o in g.nodes(data="op"):
                by_layer[o.layer].append(n)
                op_of[n] = o
        if ops:
            op_of.update(ops)
        if self.cost.opts.elementwise_regions:  # each run of element-wise ops as one kernel
            op_of.update(self._regions(g, by_layer, op_of, bool(ops)))
        virtual = virtual or {}
        for layer, v in virtual.items():
            tmpl = by_layer[v.template]
            keys = list(tmpl)
            for i, op in v.replaced.items():
                keys[i] = ("virtual", layer, i)
                op_of[keys[i]] = op
            by_layer[layer] = keys
        routed = routed or []
        routed_of = {layer: (group, j) for group in routed for j, layer in enumerate(group.layers)}
        residency = self._residency(op_of, by_layer, virtual, routed)
        routed_costs: dict[int, _RoutedTimes] = {}  # id(group) -> its layers' costs (after residency)
        costs: dict[Any, OpCost] = {}

        def cost_of(n) -> OpCost:
            c = costs.get(n)
            if c is None:
                c = costs[n] = self.cost.cost(op_of[n], residency)
            return c

        # One representative per (layer_type, op kinds); other layers of the kind differ only in
        # their MoE expert ops and collectives (per-layer routing): those add their cost deltas.
        reps: dict[tuple, _Rep] = {}
        layer_time: dict[int, float] = {}
        tbo_used = False
        block_t: dict[str, float] = defaultdict(float)
        res_t: dict[str, float] = defaultdict(float)

        keys: dict[int, tuple] = {}
        sigs: dict[Any, tuple] = {}  # signatures of compared ops (a template's serve all its copies)
        for layer in sorted(set(by_layer) | set(routed_of)):
            if layer in routed_of:
                group, j = routed_of[layer]
                rep = reps.get(keys.get(group.template))
                if rep is None or rep.nodes is not by_layer[group.template]:
                    raise RuntimeError(f"layer {layer}: its template {group.template} is not its kind's representative")
                keys[layer] = keys[group.template]
                rt = routed_costs.get(id(group))
                if rt is None:
                    rt = routed_costs[id(group)] = _RoutedTimes(group, self.cost, residency, rep, op_of, costs)
                layer_time[layer] = rt.time(j, block_t, res_t)
                continue
            nodes = by_layer[layer]
            v = virtual.get(layer)
            if v is not None:
                key = keys[v.template]
            else:
                ops = [op_of[n] for n in nodes]
                key = (ops[0].layer_type, tuple(o.kind for o in ops))
            keys[layer] = key
            rep = reps.get(key)
            if rep is None:
                if v is not None:
                    raise RuntimeError(f"layer {layer} has no representative layer of its kind in the graph")
                group, content = self.cost.group_costs(ops, residency)
                for n, c in zip(nodes, group):
                    if n not in costs:
                        costs[n] = c
                t, used = self._group_time(g, nodes, ops, costs, residency, layout, content)
                tbo_used |= used
                rep = reps[key] = _Rep(nodes, t, [(i, _signature(ops[i])) for i, o in enumerate(ops) if o.kind in _VARYING],
                                       _totals((op_of[n], costs[n]) for n in nodes))
            t = rep.time
            for i, sig in rep.varying:
                n, rn = nodes[i], rep.nodes[i]
                if n == rn:
                    continue
                o = op_of[n]
                s = sigs.get(n)
                if s is None:
                    s = sigs[n] = _signature(o)
                if o is not op_of[rn] and s != sig:
                    c, rc = cost_of(n), costs[rn]
                    t += c.time_s - rc.time_s
                    _account(block_t, res_t, o.block, c, 1.0)
                    _account(block_t, res_t, o.block, rc, -1.0)
            for k, v in rep.blocks.items():
                block_t[k] += v
            for k, v in rep.resources.items():
                res_t[k] += v
            layer_time[layer] = t

        stage_times = _stage_times(layer_time, stage_layers)
        # The step's bottleneck: the resource class carrying the most op time.
        bottleneck = max(sorted(res_t), key=lambda k: res_t[k]) if res_t else "none"
        return StepResult(
            time_s=sum(stage_times),
            bottleneck=bottleneck,
            breakdown={"block": dict(sorted(block_t.items())), "resource": dict(sorted(res_t.items()))},
            stage_times_s=stage_times,
            residency={"state": residency.state, "weights": residency.weights},
            layers_simulated=len(reps),
            two_batch_overlap=tbo_used,
        )


def _plan(g: nx.DiGraph, nodes: list, kinds: list[str]):
    """The schedule plan (`layerplan.layer_plan`) of the group `nodes` of `g` with these op kinds."""
    pos = {n: i for i, n in enumerate(nodes)}
    pred = g._pred  # the adjacency itself: this runs for every representative layer of every step
    preds = [[pos[p] for p in pred[n] if p in pos] for n in nodes]
    return layer_plan((tuple(kinds), tuple(map(tuple, preds))), kinds, preds)


class _Layout:
    """What `StepSimulator.simulate` derives from a template graph alone, once: its layers' nodes
    in insertion order, its ops, and each group's schedule plan by its op kinds (replacement ops
    keep a template's kinds; the plan is looked up again where they do not)."""

    def __init__(self, g: nx.DiGraph) -> None:
        self.graph, self.nodes = g, g.number_of_nodes()
        self.by_layer: dict[int, list] = defaultdict(list)
        self.op_of: dict[Any, Op] = {}
        for n, o in g.nodes(data="op"):
            self.by_layer[o.layer].append(n)
            self.op_of[n] = o
        self.by_layer = dict(self.by_layer)
        self._plans: dict[int, tuple[list, list[str], Any]] = {}  # id(nodes) -> (nodes, kinds, plan)

    def plan(self, g: nx.DiGraph, nodes: list, kinds: list[str]):
        hit = self._plans.get(id(nodes))
        if hit is None or hit[0] is not nodes or hit[1] != kinds:
            hit = self._plans[id(nodes)] = (nodes, kinds, _plan(g, nodes, kinds))
        return hit[2]


class _RoutedTimes:
    """Seconds of the layers of a `RoutedLayers` group: its representative's time plus its expert
    op's and all-to-alls' cost differences, added in position order where they differ, as
    `StepSimulator.simulate` does for a layer of the graph (an op equal to the representative's
    adds nothing). What the layers share (the representative's ops, costs and totals) is looked up
    once per group."""

    def __init__(self, group: RoutedLayers, cm: CostModel, residency: Residency, rep: "_Rep", op_of: dict,
                 costs: dict) -> None:
        self.group, self.rep = group, rep
        self.costs = group.times(cm, residency, [op_of[n] for n in rep.nodes])
        nodes = rep.nodes
        e = group.expert_pos
        # (position, the representative's value there, its cost, its block): expert op, then all-to-alls
        self.expert = (e, op_of[nodes[e]].tokens_per_expert, costs[nodes[e]], op_of[nodes[e]].block)
        self.a2a = [(i, op_of[nodes[i]].collective.get("imbalance"), costs[nodes[i]], op_of[nodes[i]].block)
                    for i in group.a2a_pos]
        self.blocks = list(rep.blocks.items())
        self.resources = list(rep.resources.items())
        # the expert op (-1) and the all-to-alls (their index) in position order: the order in which
        # a layer's differing ops add their cost differences
        self.order = [k for _, k in sorted([(e, -1)] + [(i, k) for k, i in enumerate(group.a2a_pos)])]

    def time(self, j: int, block_t: dict, res_t: dict) -> float:
        """Seconds of layer j of the group; its op time added to `block_t` and `res_t`."""
        expert_cost, a2a_times = self.costs[j]
        group = self.group
        imb = float(group.imbalance[j])
        t = self.rep.time
        names = BOTTLENECK_NAMES
        for k in self.order:
            if k < 0:
                _, tpe, rc, block = self.expert
                if group.blocks[j] == tpe:
                    continue
                secs, res = expert_cost.time_s, names[expert_cost.bottleneck]
            else:
                _, rep_imb, rc, block = self.a2a[k]
                if imb == rep_imb:
                    continue
                secs, res = a2a_times[k], names["link"]  # an all-to-all: its seconds, on the link
            t += secs - rc.time_s
            # `_account(+cost)` then `_account(-rc)`, written out
            block_t[block] += secs
            res_t[res] += secs
            block_t[block] += -1.0 * rc.time_s
            res_t[names[rc.bottleneck]] += -1.0 * rc.time_s
        for k, v in self.blocks:
            block_t[k] += v
        for k, v in self.resources:
            res_t[k] += v
        return t


@dataclass
class VirtualLayer:
    """A layer the step graph does not hold: layer `template` of the graph (same kind) with the ops
    at some positions of its insertion order replaced (`replaced`: position -> op)."""

    template: int
    replaced: dict[int, Op]


@dataclass
class _Rep:
    """A simulated representative layer: its nodes, time, varying ops' signatures and the time of
    its ops by block and by resource (added once per layer of its kind)."""

    nodes: list
    time: float
    varying: list[tuple[int, tuple]]
    totals: tuple[dict[str, float], dict[str, float]]

    @property
    def blocks(self) -> dict[str, float]:
        return self.totals[0]

    @property
    def resources(self) -> dict[str, float]:
        return self.totals[1]


def _totals(pairs: Iterable[tuple[Op, OpCost]]) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of (op, cost) pairs by block and by resource."""
    block_t: dict[str, float] = defaultdict(float)
    res_t: dict[str, float] = defaultdict(float)
    names = BOTTLENECK_NAMES
    for o, c in pairs:  # `_account(..., 1.0)` written out
        t = 1.0 * c.time_s
        block_t[o.block] += t
        res_t[names[c.bottleneck]] += t
    return dict(block_t), dict(res_t)


def _account(block_t: dict, res_t: dict, block: str, c: OpCost, sign: float) -> None:
    block_t[block] += sign * c.time_s
    res_t[BOTTLENECK_NAMES[c.bottleneck]] += sign * c.time_s


def _stage_times(layer_time: dict[int, float], stage_layers: list[list[int]] | None) -> list[float]:
    """Seconds per pipeline stage: its layers; the embedding (layer < 0) joins the first stage, the
    head and MTP (layers beyond the last decoder layer) the last."""
    if not stage_layers or len(stage_layers) <= 1:
        return [sum(layer_time.values())]
    first, last = min(stage_layers[0]), max(stage_layers[-1])
    out = []
    for i, layers in enumerate(stage_layers):
        members = set(layers)
        t = sum(v for k, v in layer_time.items() if k in members)
        if i == 0:
            t += sum(v for k, v in layer_time.items() if k < first)
        if i == len(stage_layers) - 1:
            t += sum(v for k, v in layer_time.items() if k > last)
        out.append(t)
    return out


def pipeline_period(stage_times: list[float], microbatches: int) -> float:
    """Seconds per steady-state period of a pipeline holding `microbatches` micro-batches, every
    stage time (its hand-off send included) taken at one micro-batch: each stage serves every
    micro-batch once per period, and each micro-batch passes every stage once, so the period is
    ``max(sum(stages), microbatches x max(stages))``; with as many micro-batches as stages that is
    ``pp x`` the slowest stage (docs/simulator.md, "Pipeline")."""
    if microbatches < 1 or not stage_times:
        raise ValueError(f"pipeline period: expected stage times and >= 1 micro-batch, found {stage_times!r}, "
                         f"{microbatches!r}")
    return max(sum(stage_times), microbatches * max(stage_times))


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


__all__ = ["StepResult", "StepSimulator", "VirtualLayer", "simulate_step", "precision_dtypes", "pipeline_period"]
