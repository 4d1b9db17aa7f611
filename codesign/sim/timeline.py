"""The timeline of one simulated step: when each op runs on which engine of the chip.

`step_timeline(mapped, hw)` runs the same SimPy engine as `simulate_step` (same cost model, same
resources, same chain contraction) once per layer, with a recorder that notes when each process
holds its units, and lays the layers out one after another as the step runs them (pipeline stages
in turn, as `StepResult.time_s` sums them). Ops merged into one process by the engine's chain
contraction run back to back inside it, each for its own cost.

Tracks: `matrix`, `vector`, `hbm` (the chip's engines and its HBM channel) and one link track per
collective scope (`link:scale_up`, `link:scale_out`). A compute op holds its engine and the HBM
channel for its whole duration (the engine's model), so it appears on both tracks.

Named limitation: each layer is simulated with its own ops (exact per-layer routing) in the plain
schedule. When the step used two-batch overlap (`StepResult.two_batch_overlap`), the timeline still
shows the plain schedule and `Timeline.two_batch_overlap` says so; its total then exceeds the
step's time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from codesign.gc_pause import gc_paused
from codesign.hw.spec import HardwareSpec
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.elementwise_regions import charged_ops
from codesign.sim.engine import StepSimulator, _contract, _SimpySchedule, _topological, precision_dtypes, simulate_step
from codesign.sim.layerplan import KIND_UNITS as _UNITS


@dataclass(frozen=True)
class Span:
    """One op on one track, seconds from the start of the step."""

    track: str
    name: str
    start_s: float
    end_s: float
    layer: int
    layer_type: str
    block: str
    kind: str
    flops: float = 0.0
    bytes: float = 0.0
    bottleneck: str = ""


@dataclass
class Timeline:
    """A simulated step as spans per track. `time_s` is the end of the last span; `step_time_s`
    what `simulate_step` gives for the same mapped step (equal unless two-batch overlap was used)."""

    spans: list[Span]
    time_s: float
    step_time_s: float
    layer_start_s: dict[int, float] = field(default_factory=dict)
    two_batch_overlap: bool = False

    @property
    def tracks(self) -> list[str]:
        order = {"matrix": 0, "vector": 1, "hbm": 2}
        return sorted({s.track for s in self.spans}, key=lambda t: (order.get(t, 3), t))


def _track(unit: str, op: Any) -> str:
    if unit != "link":
        return unit
    scope = (op.collective or {}).get("scope", "scale_up")
    return f"link:{scope}"


def _layer_spans(g: nx.DiGraph, nodes: list, costs: dict, offset: float) -> tuple[list[Span], float]:
    """Spans of one layer's ops simulated alone (starting at `offset`) and the layer's makespan."""
    node_set = set(nodes)
    order = _topological(g, nodes)
    items = [(n, g.nodes[n]["op"].kind, costs[n].time_s, [p for p in g.predecessors(n) if p in node_set])
             for n in order]
    recorded: list[tuple[Any, float]] = []
    sim = _SimpySchedule(lambda key, units, start, end: recorded.append((key, start)))
    makespan = sim.run(_contract(items, sim.members))
    spans: list[Span] = []
    for head, start in recorded:
        t = offset + start
        for key, kind, seconds in sim.members[head]:
            op, c = g.nodes[key]["op"], costs[key]
            for unit in _UNITS.get(kind, ("hbm",)):
                spans.append(Span(track=_track(unit, op), name=op.name, start_s=t, end_s=t + seconds,
                                  layer=op.layer, layer_type=op.layer_type, block=op.block, kind=kind,
                                  flops=op.flops, bytes=op.bytes_total, bottleneck=c.bottleneck))
            t += seconds
    return spans, makespan


def step_timeline(mapped: Any, hw: HardwareSpec, options: CostOptions | None = None,
                  collective_fn=None) -> Timeline:
    """The timeline of one mapped step (`codesign.mapping.MappedStep`) on `hw`."""
    opts = options or CostOptions()
    matrix, attn = precision_dtypes(mapped.precision, opts.attention_dtype)
    cm = CostModel(hw, matrix, attn, opts, collective_fn)
    g = mapped.graph
    step = simulate_step(mapped, hw, opts, collective_fn)
    with gc_paused():
        residency = StepSimulator(hw, cm).residency(g)
        by_layer: dict[int, list] = defaultdict(list)
        for n, o in g.nodes(data="op"):
            by_layer[o.layer].append(n)
        # element-wise ops as their regions' kernels, as the step charges them
        costs = {n: cm.cost(o, residency) for n, o in charged_ops(g, opts.elementwise_regions).items()}
        spans: list[Span] = []
        starts: dict[int, float] = {}
        t = 0.0
        for layer, nodes in sorted(by_layer.items()):
            starts[layer] = t
            s, makespan = _layer_spans(g, nodes, costs, t)
            spans.extend(s)
            t += makespan
    return Timeline(spans=spans, time_s=t, step_time_s=step.time_s, layer_start_s=starts,
                    two_batch_overlap=step.two_batch_overlap)


__all__ = ["Span", "Timeline", "step_timeline"]
