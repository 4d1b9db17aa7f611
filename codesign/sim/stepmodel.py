"""The step-time model: a step shape's `StepResult` in milliseconds, without building the whole step.

The full evaluation of a step (`Stepper.full_step`) traces every layer into one networkx graph
(~6,000 ops for Qwen3.5-397B), maps every op onto the plan and runs the engine over it. But layers
of one kind are recorded once and differ only in their routed-expert work, and the engine already
simulates one representative layer per kind and adds the cost difference of the others' expert ops
and collectives. `StepModel.step(shape)` does the same work directly:

1. the layer segments of the shape (`codesign.graph.tracing.step_segments`: recorded at batches 1-2
   and two cached lengths, extrapolated exactly to the shape; groups of a mixed step merged);
2. a **skeleton** graph of the embedding, the head and one layer per kind (per pipeline stage,
   plus each stage's last layer, which carries the stage hand-off), mapped by the same `map_step`;
3. every other layer as a **virtual** op list: its kind's mapped ops with its own routed-expert op
   (this layer's router draw, mapped by the same `ExpertMapper`) and its all-to-alls' load
   imbalance, handed to the engine (`StepSimulator.simulate(virtual=...)`), which costs them
   exactly as the full graph's layers.

Exactness: the same ops reach the same cost model and engine in the same order, so the step time,
bottleneck and breakdown equal the full evaluation's. Two sums run in another order (the SRAM
residency test's byte totals and the breakdown's), which may move the last bits; the benchmark
`benchmarks/step_bench.py` and `tests/sim/test_stepmodel.py` compare the two on a grid of shapes and
plans and print the largest difference.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

import numpy as np

from codesign import mapping
from codesign.gc_pause import gc_paused
from codesign.graph.op import Op
from codesign.graph.router import make_router, routed_matrix
from codesign.graph.shape import StepShape
from codesign.hw import HardwareSpec
from codesign.mapping.memory import stage_layers
from codesign.mapping.options import MappingOptions
from codesign.models import ModelConfig
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.cache import BoundedCache, router_key
from codesign.sim.engine import StepResult, StepSimulator, VirtualLayer, precision_dtypes
from codesign.sim.routed import RoutedLayers, route, routed_positions


# Skeletons (traced ops, edges, routing) by (config hash, shape, router, layers kept): few MB each.
SKELETONS = BoundedCache("skeletons", 64)
# Mapped skeletons by (skeleton, model, plan, precision, mapping options, scale-up size).
MAPPED = BoundedCache("mapped skeletons", 64)
# Single-stage mappings by skeleton structure (+ model, plan, precision, options, scale-up size):
# the template `mapping.remap` maps a new shape of that structure on (collective sites, node ids).
TEMPLATES = BoundedCache("mapping templates", 64)


@dataclass
class Skeleton:
    """The skeleton of one step shape: its traced ops (node i holds ops[i]) and edges as
    `codesign.graph.tracing.assemble` chains them, the graph attributes of the shape, and the
    routing of the layers it does not hold (template layer -> (traced routed-expert op, layers,
    their router counts as a layers x experts array)). The networkx graph is built only where the
    step is mapped by `map_step` (`graph()`)."""

    ops: list[Op]
    edges: list[tuple[int, int]]
    attrs: dict
    routing: dict[int, tuple[Op, list[int], np.ndarray]]
    _graph: nx.DiGraph | None = field(default=None, repr=False)
    _structure: tuple | None = field(default=None, repr=False)

    def graph(self) -> nx.DiGraph:
        if self._graph is None:
            g = nx.DiGraph()
            g.add_nodes_from((i, {"op": op}) for i, op in enumerate(self.ops))
            g.add_edges_from(self.edges)
            g.graph.update(self.attrs)
            self._graph = g
        return self._graph

    def structure(self) -> tuple:
        """What the mapping's decisions depend on (`mapping.remap`): edges, and per op its layer,
        kind, block and output width (the TP exits are chosen by it; None where the op records no
        output shape). Flat (the edges' node ids in turn, then four entries per op): a new shape
        hashes and compares it as the mapping templates' key (`TEMPLATES`), about three times
        faster than nested pairs and 4-tuples."""
        if self._structure is None:
            per_op: list = []
            for o in self.ops:
                s = o.out_shapes
                per_op += (o.layer, o.kind, o.block, s[0][-1] if s and s[0] else None)
            self._structure = (tuple(itertools.chain.from_iterable(self.edges)), tuple(per_op))
        return self._structure


def _skeleton(config: ModelConfig, plan: mapping.ParallelPlan) -> tuple[set[int], dict[int, int]]:
    """(layers the skeleton graph holds, template layer of every other decoder layer)."""
    keep = {-1, config.num_layers}
    template: dict[int, int] = {}
    stages = stage_layers(config, plan.pp, plan.layer_partition)
    for s, layers in enumerate(stages):
        boundary = layers[-1] if s < len(stages) - 1 else None  # carries the stage hand-off
        if boundary is not None:
            keep.add(boundary)
        first: dict[str, int] = {}
        for i in layers:
            if i == boundary:
                continue
            kind = config.layer_kind(i)
            if kind not in first:
                first[kind] = i
                keep.add(i)
            else:
                template[i] = first[kind]
    return keep, template


class StepModel:
    """Step shapes -> StepResult at one (hardware, model, plan, precision, cost, mapping, router)."""

    def __init__(self, hw: HardwareSpec, config: ModelConfig, plan: mapping.ParallelPlan,
                 precision: mapping.Precision, cost: CostOptions | None = None,
                 options: MappingOptions | None = None, router: Any = None, cache: bool = True) -> None:

        self.hw, self.config, self.plan, self.precision = hw, config, plan, precision
        self.options = options or MappingOptions()
        matrix, attn = precision_dtypes(precision, (cost or CostOptions()).attention_dtype)
        # nothing shared (`cache=False`): each step's ops are costed once, their parts not kept
        self.cost_model = CostModel(hw, matrix, attn, cost or CostOptions(), keep_parts=cache)
        self.router = make_router(router)
        self._router_key = router_key(router) if cache else None  # None: nothing shared
        self.keep, self.template = _skeleton(config, plan)
        self._simulator = StepSimulator(hw, self.cost_model, self.options.two_batch_overlap)
        # mapping templates: shared across step models, or this one's own where nothing is shared
        self._templates = TEMPLATES if cache else BoundedCache("mapping templates", 8)
        self._nodes_of: tuple[nx.DiGraph, dict[int, list], int] | None = None

    def step(self, shape: StepShape) -> StepResult:
        from codesign.graph import tracing as tr

        tr.check_shape(self.config, shape)
        with gc_paused():
            # the step's intermediates (ops, costs) are freed when `_step` returns, inside the
            # pause: left alive until it ends, the first allocation after it would run a
            # collection over all of them (about a tenth of a new shape's time)
            return self._step(shape)

    def _step(self, shape: StepShape) -> StepResult:
        skeleton = self._skeleton(shape)
        mapped, ops = self._mapped(skeleton)
        virtual, routed = self._virtual(mapped, ops, skeleton.routing)
        return self._simulator.simulate(mapped.graph, mapped.stage_layers, virtual, routed, ops)

    def _mapped(self, skeleton: Skeleton) -> tuple[mapping.MappedStep, dict[int, Op]]:
        """(the mapped skeleton, node -> op in place of the mapped graph's). Single-stage plans
        map a skeleton once per hardware rates (`MAPPED`: a sweep's variants differ in the rates
        that rank EP ranks, which choose the expert ops, `mapping.remap_experts`) and a skeleton
        of a known structure on that structure's template (`mapping.remap`: a new shape's ops on
        the template's graph, no graph built); a new structure, or a pipelined plan, is mapped by
        `map_step`."""
        rates = self.cost_model.rank_rates()
        if self.plan.pp > 1:
            return mapping.map_step(skeleton.graph(), self.config, self.hw, self.plan, self.precision,
                                    **self.options.map_kwargs(), rates=rates), {}
        common = (self.config.config_hash(), self.plan, self.precision, self.options, self.hw.system.scale_up.size)
        key = None
        if self._router_key is not None:
            key = (id(skeleton),) + common
            hit = MAPPED.get(key)
            if hit is not None and hit[0] is skeleton:
                return self._rerated(hit[1], hit[2], skeleton, rates)
        tkey = (skeleton.structure(),) + common
        template = self._templates.get(tkey)
        if template is not None:
            ops, ranks, mapper = mapping.remap(template, skeleton.ops, skeleton.attrs, self.config, self.hw,
                                               **self.options.map_kwargs(), rates=rates)
            mapped = dataclasses.replace(template, expert_ranks=ranks, experts=mapper)
        else:
            mapped = mapping.map_step(skeleton.graph(), self.config, self.hw, self.plan, self.precision,
                                      **self.options.map_kwargs(), rates=rates)
            ops = {}
            self._templates.put(tkey, mapped)
        if key is not None:
            MAPPED.put(key, (skeleton, mapped, ops))  # holds the skeleton: its id is not reused meanwhile
        return mapped, ops

    def _rerated(self, mapped: mapping.MappedStep, ops: dict[int, Op], skeleton: Skeleton,
                 rates: tuple[float, float]) -> tuple[mapping.MappedStep, dict[int, Op]]:
        """A kept mapping of `skeleton` at other ranking rates: its expert ops mapped again."""
        remapped = mapping.remap_experts(mapped, enumerate(skeleton.ops), self.config, rates)
        if remapped is None:
            return mapped, ops
        experts, ranks, mapper = remapped
        return dataclasses.replace(mapped, expert_ranks=ranks, experts=mapper), {**ops, **experts}

    def _layer_nodes(self, g: nx.DiGraph) -> dict[int, list]:
        """Layer -> the nodes of `g` in insertion order, kept for the last graph (a template is
        simulated again at every shape of its structure)."""
        hit = self._nodes_of
        if hit is None or hit[0] is not g or hit[2] != g.number_of_nodes():
            by_layer: dict[int, list] = {}
            for n, op in g.nodes(data="op"):
                by_layer.setdefault(op.layer, []).append(n)
            hit = self._nodes_of = (g, by_layer, g.number_of_nodes())
        return hit[1]

    def _skeleton_graph(self, shape: StepShape) -> tuple[nx.DiGraph, dict]:
        """(the skeleton's graph, its routing): see `_skeleton`."""
        sk = self._skeleton(shape)
        return sk.graph(), sk.routing

    def _skeleton(self, shape: StepShape) -> Skeleton:
        """The skeleton of `shape`: what does not depend on the hardware, plan or precision,
        shared by every StepModel of the model and router (a plan search, hardware variants of a
        sweep). The mapping never modifies its input."""
        from codesign.graph import tracing as tr

        key = None if self._router_key is None else (self.config.config_hash(), shape.canonical(), self._router_key,
                                                     frozenset(self.keep))
        hit = SKELETONS.get(key) if key is not None else None
        if hit is None:
            config = self.config
            ops, edges, experts = tr.skeleton_ops(config, shape, self.keep, self.router)
            draws = tr.router_layers(config)
            groups: dict[int, list[int]] = {}
            for layer, tmpl in self.template.items():
                if layer in draws:
                    groups.setdefault(tmpl, []).append(layer)
            routing: dict[int, tuple[Op, list[int], np.ndarray]] = {}
            for tmpl, layers in groups.items():
                counts = routed_matrix(self.router, [draws[layer] for layer in layers], shape.routed_tokens,
                                       config.moe.num_experts, config.moe.top_k)
                routing[tmpl] = (experts[tmpl], layers, counts)
            hit = Skeleton(ops, edges, tr.describe_shape(shape), routing)
            if key is not None:
                SKELETONS.put(key, hit)
        return hit

    def _virtual(self, mapped: mapping.MappedStep, replaced: dict[int, Op],
                 routing: dict[int, tuple[Op, list[int], np.ndarray]]) -> tuple[dict[int, VirtualLayer], list[RoutedLayers]]:
        """The decoder layers the skeleton does not hold (see module docstring): routed layers of
        a template that represents its kind (`codesign.sim.routed`), else per-layer op lists.
        `replaced`: node -> op in place of the mapped graph's."""
        from codesign.graph import tracing as tr

        nodes = self._layer_nodes(mapped.graph)
        graph_ops = mapped.graph.nodes
        by_layer: dict[int, list[Op]] = {}
        for tmpl in routing:
            by_layer[tmpl] = [replaced.get(n) or graph_ops[n]["op"] for n in nodes.get(tmpl, ())]
        routed_layers = {layer for _, layers, _ in routing.values() for layer in layers}
        out = {layer: VirtualLayer(tmpl, {}) for layer, tmpl in self.template.items() if layer not in routed_layers}
        fast: list[RoutedLayers] = []
        for tmpl, (traced, layers, counts) in routing.items():
            ops = by_layer[tmpl]
            group = route(self.cost_model, mapped.experts, traced, counts, tmpl, layers, ops) if self.plan.pp == 1 else None
            if group is not None:
                fast.append(group)
                continue
            e, a2a = routed_positions(ops)
            for j, layer in enumerate(layers):
                op = tr._rescale_experts(traced, tuple(counts[j].tolist()))
                op.layer, op.layer_type = layer, ops[e].layer_type
                new, _, imbalance = mapped.experts.map(op)
                replaced = {e: new}
                for i in a2a:
                    c = ops[i].clone()
                    c.collective = {**c.collective, "imbalance": float(imbalance)}
                    replaced[i] = c
                out[layer] = VirtualLayer(tmpl, replaced)
        return out, fast


__all__ = ["StepModel"]
