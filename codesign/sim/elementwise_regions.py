"""Element-wise work as the kernels serving engines run (`CostOptions.elementwise_model: regions`,
docs/cost-model.md "Element-wise regions").

The tracer records the eager torch decomposition of element-wise code: an RMSNorm is _to_copy,
pow, mean, add, rsqrt, mul, mul, _to_copy, each op reading and writing the whole activation;
SwiGLU is silu then mul. Engines run each such stretch as one fused kernel that streams its inputs
from HBM once and writes its outputs once (vLLM's fused_add_rms_norm reads x and the residual and
writes both; silu_and_mul reads the gate/up output and writes the down projection's input).

A **region** is a maximal run of consecutive element-wise ops (kinds "vector" and "memory") of one
layer in the graph's insertion order (trace order): the ops between two matrix, attention or
collective ops. Each region is charged its external bytes once, split over its ops:

* an op reads from outside its region the output of each producer not in the region (the
  producer's written activation and KV-cache bytes, at most the op's own activation reads: a view
  of part of a larger output reads that part); an op without producers reads its own bytes, and so
  does an entry of a traced segment (node attribute `entry`: it reads the segment's input, which no
  op of the graph produced) but for what its producers in the region hand it;
* an op writes to outside its region its whole output where any consumer is outside the region
  (or it has none): the region's results, and the residual stream a fused add writes beside its norm;
* bytes passed between two ops of the region stay in the kernel: they cost nothing.

The ops keep their FLOPs (vector rate) and their bytes' classes (KV-cache writes stay KV-cache
bytes); the fixed time of the region's kernel is the step's element-wise kernel count
(`elementwise_kernels_per_matrix_kernel`), unchanged. Simplifications, named: a region does not
cross a layer boundary (the last residual add of a layer and the next layer's first norm are two
regions, one tensor pass more than vLLM's fused_add_rms_norm); a region is one kernel even where
an engine runs two back to back (vLLM's q/k norm, rotary embedding and KV-cache write between the
QKV projection and attention), which moves the same external bytes but for their intermediates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import networkx as nx

from codesign.graph.op import Op

ELEMENTWISE_KINDS = ("vector", "memory")


def _out_bytes(op: Op) -> float:
    w = op.bytes_written
    return w.get("activation", 0.0) + w.get("kv_cache", 0.0)


def region_ops(g: nx.DiGraph, layers: Iterable[list], op_of: dict[Any, Op]) -> dict[Any, Op]:
    """node -> the op of that node charged as part of its region (only element-wise nodes whose
    bytes change). `layers`: each layer's nodes in insertion order; `op_of`: node -> op."""
    return charge(region_plan(g, layers, op_of), op_of)


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One element-wise node of a region, as the graph places it: its producers inside and outside
    the region (in the graph's predecessor order), whether it is a traced segment's entry, has no
    producers at all, and writes to outside the region."""

    node: Any
    inside: tuple
    outside: tuple
    entry: bool
    no_producers: bool
    writes_out: bool


def region_plan(g: nx.DiGraph, layers: Iterable[list], op_of: dict[Any, Op]) -> tuple[Member, ...]:
    """The regions of `g` (by the ops' kinds in `op_of`) as their members, in layer and node
    order: what `charge` needs of the graph. It depends on the graph and the ops' kinds only, so
    one plan serves every remapping of a template graph (a remap keeps each node's kind:
    `codesign.mapping.step`)."""
    members: list[Member] = []
    for nodes in layers:
        region: list = []
        for n in nodes:
            if op_of[n].kind in ELEMENTWISE_KINDS:
                region.append(n)
                continue
            if region:
                members.extend(_members(g, region))
                region = []
        if region:
            members.extend(_members(g, region))
    return tuple(members)


def _members(g: nx.DiGraph, region: list) -> Iterator[Member]:
    in_region = set(region)
    for n in region:
        inside, outside = [], []
        for p in g.predecessors(n):
            (inside if p in in_region else outside).append(p)
        writes_out = g.out_degree(n) == 0 or any(s not in in_region for s in g.successors(n))
        yield Member(n, tuple(inside), tuple(outside), bool(g.nodes[n].get("entry")), g.in_degree(n) == 0,
                     writes_out)


def charge(plan: tuple[Member, ...], op_of: dict[Any, Op]) -> dict[Any, Op]:
    """node -> the op of each member whose bytes change, charged its bytes across the region's
    boundary (the module's rules): it reads the outputs of its producers outside the region (at
    most its own activation reads; all of them without producers; an entry: its own reads less
    what producers inside hand it) and writes its output where it writes out, else nothing."""
    out: dict[Any, Op] = {}
    for m in plan:
        op = op_of[m.node]
        rd, wr = op.bytes_read, op.bytes_written
        own_read, own_written = rd.get("activation", 0.0), wr.get("activation", 0.0)
        if m.entry:  # reads the segment's input: all but what the region hands it
            read = max(0.0, own_read - sum(_out_bytes(op_of[p]) for p in m.inside))
        elif m.no_producers:
            read = own_read
        else:
            read = min(own_read, sum(_out_bytes(op_of[p]) for p in m.outside))
        wrote = own_written if m.writes_out else 0.0
        if read == own_read and wrote == own_written:
            continue
        charged = op.clone()
        charged.bytes_read = {**rd, "activation": read}
        charged.bytes_written = {**wr, "activation": wrote}
        out[m.node] = charged
    return out


def segment_charged_ops(ops: tuple[Op, ...], edges: Iterable[tuple[int, int]], entries: Iterable[int]) -> tuple[Op, ...]:
    """A traced segment's ops (`codesign.graph.tracer.record`: `ops`, `edges` between their
    indices, `entries` the ops reading its inputs) charged as `elementwise_model: regions` charges
    them in a step (what a kernel run alone, `codesign kernel`, costs)."""
    g = nx.DiGraph()
    g.add_nodes_from((i, {"op": o}) for i, o in enumerate(ops))
    g.add_edges_from(edges)
    for i in entries:
        g.nodes[i]["entry"] = True
    return tuple(charged_ops(g, True).values())


def charged_ops(g: nx.DiGraph, regions: bool) -> dict[Any, Op]:
    """node -> the op as a step charges it: the graph's own ops, with `regions`
    (`CostOptions.elementwise_regions`) the element-wise ones rewritten as their regions' (what the
    report's op table and timeline cost one by one, so that they add up to the step)."""
    op_of: dict[Any, Op] = dict(g.nodes(data="op"))
    if regions:
        by_layer: dict[int, list] = {}
        for n, o in op_of.items():
            by_layer.setdefault(o.layer, []).append(n)
        op_of.update(region_ops(g, by_layer.values(), op_of))
    return op_of
