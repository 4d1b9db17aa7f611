"""Interconnect topologies as networkx graphs, and the properties the collective cost model needs.

A scale-up domain (NVLink switch, xGMI mesh, TPU ICI torus, ...) becomes an undirected graph whose
chip nodes are the integers `0..size-1` (kind="chip"); a switched domain adds one switch node
(kind="switch"). Every edge carries:

* `bandwidth` - bytes/s **per direction** over all the links the edge stands for,
* `links`     - how many physical links it stands for (fractional when links do not divide evenly),
* `latency`   - seconds to cross it (a chip-switch-chip path sums to the domain latency),
* `hop`       - 1 for a chip-chip edge, 0.5 for a chip-switch edge, so crossing a switch is one hop,
* `kind`      - "scale_up" or "scale_out".

`system_graph` joins ceil(chips/size) whole domains through one scale-out switch (each chip's NIC).
Modelling assumptions (named, see docs/hardware.md):

* Links of a chip are spread evenly over its neighbours (full mesh: links/(n-1) per peer; ring:
  links/2 per neighbour; torus: links/(2*ndim) per neighbour, doubled where a dimension of size 2
  makes the two neighbours one chip).
* A switch is non-blocking: only the chip-switch edges limit bandwidth.
* Traffic between chips of one domain stays in the domain (routing penalises the scale-out path).
* `all_to_all_bandwidth` is an idealised multipath bound (balanced routing), not a packet simulation.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import networkx as nx

from codesign.errors import CodesignError
from codesign.hw.spec import ScaleUp, System

SCALE_OUT = "scale_out"  # node name of the scale-out switch in a system graph

# Routing prefers any path inside a domain over one through the NICs (as NCCL/ICI runtimes do);
# this is the extra routing weight of a scale-out edge, larger than any in-domain path.
_SCALE_OUT_PENALTY = 1e6


def _switch_name(domain: int) -> tuple[str, int]:
    return ("switch", domain)


def _add_edge(g: nx.Graph, u: Hashable, v: Hashable, links: float, link_bw: float, latency: float,
              hop: float, kind: str) -> None:
    """Add `links` links between u and v, merging with an existing edge (size-2 torus dimensions)."""
    if g.has_edge(u, v):
        d = g.edges[u, v]
        d["links"] += links
        d["bandwidth"] += links * link_bw
        return
    g.add_edge(u, v, links=links, bandwidth=links * link_bw, latency=latency, hop=hop, kind=kind)


def _torus_coords(dims: Sequence[int]) -> list[tuple[int, ...]]:
    """Row-major coordinates: chip i sits at _torus_coords(dims)[i]."""
    return list(itertools.product(*(range(d) for d in dims)))


def scale_up_graph(scale_up: ScaleUp, domain: int = 0, offset: int = 0) -> nx.Graph:
    """The graph of one scale-up domain. Chips are numbered `offset..offset+size-1`.

    `domain` tags nodes (and names the switch node) so that several domains can share one graph.
    """
    n, links, bw, lat = scale_up.size, scale_up.links, scale_up.link_bandwidth, scale_up.latency
    g = nx.Graph(topology=scale_up.topology, size=n, latency=lat, dims=scale_up.dims)
    chips = list(range(offset, offset + n))
    for c in chips:
        g.add_node(c, kind="chip", domain=domain, coord=(c - offset,))
    topo = scale_up.topology
    if topo == "switch":
        if n > 1:  # a domain of one chip has no switch to cross
            sw = _switch_name(domain)
            g.add_node(sw, kind="switch", domain=domain)
            for c in chips:
                _add_edge(g, c, sw, links, bw, lat / 2, 0.5, "scale_up")
    elif topo == "full_mesh":
        for a, b in itertools.combinations(chips, 2):
            _add_edge(g, a, b, links / (n - 1), bw, lat, 1.0, "scale_up")
    elif topo == "ring":
        if n == 2:  # both neighbours are the same chip: all links go to it
            _add_edge(g, chips[0], chips[1], links, bw, lat, 1.0, "scale_up")
        elif n > 2:
            for i in range(n):
                _add_edge(g, chips[i], chips[(i + 1) % n], links / 2, bw, lat, 1.0, "scale_up")
    else:  # torus2d / torus3d (dims validated by ScaleUp)
        dims = tuple(scale_up.dims or ())
        per_neighbour = links / (2 * len(dims))
        coords = _torus_coords(dims)
        index = {c: offset + i for i, c in enumerate(coords)}
        for i, c in enumerate(coords):
            g.nodes[offset + i]["coord"] = c
            for k, d in enumerate(dims):
                if d == 1:
                    continue  # no neighbour along a dimension of size 1; its links are idle
                nxt = list(c)
                nxt[k] = (c[k] + 1) % d
                # only the +1 neighbour per dimension: every physical link pair is added once,
                # and a size-2 dimension adds both (direct and wrap-around) to the same edge.
                _add_edge(g, offset + i, index[tuple(nxt)], per_neighbour, bw, lat, 1.0, "scale_up")
    return g


def system_graph(system: System, chips: int | None = None) -> nx.Graph:
    """`chips` chips (default `system.chips`) as ceil(chips/size) whole scale-up domains joined
    through one scale-out switch by each chip's NIC. Chips beyond `chips` in the last domain are
    kept (they exist and can relay traffic) with node attribute `used=False`."""
    chips = system.chips if chips is None else chips
    if chips <= 0:
        raise CodesignError(f"system_graph: chips: expected a positive count, found {chips}")
    size = system.scale_up.size
    n_domains = math.ceil(chips / size)
    if n_domains > 1 and system.scale_out is None:
        raise CodesignError(
            f"system.scale_out: needed for {chips} chips (> scale_up.size={size}), found none")
    g = nx.Graph()
    for d in range(n_domains):
        g.update(scale_up_graph(system.scale_up, domain=d, offset=d * size))
    g.graph.update(topology=system.scale_up.topology, size=size, dims=system.scale_up.dims,
                   latency=system.scale_up.latency, chips=chips, domains=n_domains)
    for c in range(n_domains * size):
        g.nodes[c]["used"] = c < chips
    if n_domains > 1:
        so = system.scale_out
        assert so is not None
        g.add_node(SCALE_OUT, kind="switch", domain=-1)
        for c in range(n_domains * size):
            _add_edge(g, c, SCALE_OUT, 1, so.nic_bandwidth, so.latency / 2, 0.5, "scale_out")
    return g


# ---------------------------------------------------------------------------------------------
# Properties used to cost collectives


def chip_nodes(g: nx.Graph, used_only: bool = True) -> list[int]:
    """Chip nodes in index order (by default only those a system graph marks as used)."""
    return sorted(n for n, d in g.nodes(data=True)
                  if d.get("kind") == "chip" and (not used_only or d.get("used", True)))


def _route_weight(u: Hashable, v: Hashable, d: dict) -> float:
    return d["hop"] + (_SCALE_OUT_PENALTY if d["kind"] == "scale_out" else 0.0)


def _check_members(g: nx.Graph, members: Iterable[int] | None) -> list[int]:
    ms = chip_nodes(g) if members is None else list(members)
    for m in ms:
        if m not in g or g.nodes[m].get("kind") != "chip":
            raise CodesignError(f"topology: members: expected chip ids of the graph, found {m!r}")
    if len(set(ms)) != len(ms):
        raise CodesignError(f"topology: members: expected distinct chips, found {ms}")
    return ms


def path(g: nx.Graph, a: int, b: int) -> list[Hashable]:
    """The route from a to b: fewest hops, staying inside the domain when one is shared."""
    try:
        return nx.dijkstra_path(g, a, b, weight=_route_weight)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        raise CodesignError(f"topology: no route from chip {a} to chip {b}") from None


def _path_hops(g: nx.Graph, p: Sequence[Hashable]) -> int:
    return round(sum(g.edges[u, v]["hop"] for u, v in zip(p, p[1:])))


def hops(g: nx.Graph, a: int, b: int) -> int:
    """Network hops between two chips (a switch crossing counts as one hop)."""
    return _path_hops(g, path(g, a, b))


def path_latency(g: nx.Graph, a: int, b: int) -> float:
    """Seconds for the first byte from a to b: the sum of edge latencies on the route."""
    p = path(g, a, b)
    return sum(g.edges[u, v]["latency"] for u, v in zip(p, p[1:]))


def _all_routes(g: nx.Graph, members: Sequence[int]) -> dict[int, dict[Hashable, list]]:
    return {m: nx.single_source_dijkstra_path(g, m, weight=_route_weight) for m in members}


def diameter(g: nx.Graph, members: Iterable[int] | None = None) -> int:
    """Largest hop count between two of `members` (default: all used chips)."""
    ms = _check_members(g, members)
    routes = _all_routes(g, ms)
    return max((_path_hops(g, routes[a][b]) for a, b in itertools.combinations(ms, 2)), default=0)


def _cut_capacity(g: nx.Graph, half_a: Sequence[int], half_b: Sequence[int]) -> float:
    """Max flow from half_a to half_b (per direction) with edge capacity = bandwidth."""
    h = nx.DiGraph()
    for u, v, d in g.edges(data=True):
        h.add_edge(u, v, capacity=d["bandwidth"])
        h.add_edge(v, u, capacity=d["bandwidth"])
    src, dst = ("_src",), ("_dst",)
    for a in half_a:
        h.add_edge(src, a)  # no capacity attribute = unbounded
    for b in half_b:
        h.add_edge(b, dst)
    return nx.maximum_flow_value(h, src, dst)


def _candidate_halves(g: nx.Graph, ms: list[int]) -> list[tuple[list[int], list[int]]]:
    """Ways to split members in two equal halves: index order, and along each torus dimension
    (for a torus the minimum cut runs across the longest dimension; trying each finds it)."""
    half = len(ms) // 2
    keys = [lambda m: m]
    ndim = max(len(g.nodes[m].get("coord", ())) for m in ms)
    for k in range(ndim if ndim > 1 else 0):
        keys.append(lambda m, k=k: (g.nodes[m]["domain"], g.nodes[m]["coord"][k], m))
    out = []
    for key in keys:
        order = sorted(ms, key=key)
        out.append((order[:half], order[half:]))
    return out


def bisection_bandwidth(g: nx.Graph, members: Iterable[int] | None = None) -> float:
    """Bytes/s per direction across the narrowest cut that splits `members` (default: all used
    chips) into two halves; other chips and switches may relay. Computed as a max flow (= min edge
    cut) for each candidate split; exact for rings, tori, meshes and switches."""
    ms = _check_members(g, members)
    if len(ms) < 2:
        return math.inf
    return min(_cut_capacity(g, a, b) for a, b in _candidate_halves(g, ms))


def ring_bandwidth(g: nx.Graph, members: Sequence[int] | None = None) -> float:
    """Per-direction bandwidth of one unidirectional ring over `members` in the given order:
    each step i -> i+1 follows its route; a directed edge shared by k steps gives each 1/k of it.
    Returns the bottleneck (bytes/s) every chip can send to its successor at once."""
    ms = _check_members(g, members)
    if len(ms) < 2:
        return math.inf
    use: Counter[tuple[Hashable, Hashable]] = Counter()
    for a, b in zip(ms, ms[1:] + ms[:1]):
        p = path(g, a, b)
        use.update(zip(p, p[1:]))
    return min(g.edges[u, v]["bandwidth"] / k for (u, v), k in use.items())


def all_to_all_bandwidth(g: nx.Graph, members: Sequence[int] | None = None) -> float:
    """Per-chip injection bandwidth (bytes/s, per direction) of a uniform all-to-all among
    `members`, as the minimum of three bounds for balanced multipath routing:

    * injection: the chip's own edges (all its links, or its NIC where it leaves the domain),
    * bisection: with n members split in halves A/B, |A|*|B|/(n-1) of the per-chip rate crosses
      the cut, so rate <= bisection * (n-1) / (|A|*|B|),
    * distance: every byte crosses `edges` edges on its route, so rate * n * mean_edges <= total
      directed edge capacity on the members' routes.
    """
    ms = _check_members(g, members)
    n = len(ms)
    if n < 2:
        return math.inf
    routes = _all_routes(g, ms)
    inject = math.inf
    for m in ms:
        # the edges a member's traffic can leave by: the first edge of each of its routes
        first = {routes[m][o][1] for o in ms if o != m}
        inject = min(inject, sum(g.edges[m, f]["bandwidth"] for f in first))
    half_a = n // 2
    bis = bisection_bandwidth(g, ms) * (n - 1) / (half_a * (n - half_a))
    edges_used: set[frozenset] = set()
    total_edges = 0
    for a, b in itertools.permutations(ms, 2):
        p = routes[a][b]
        total_edges += len(p) - 1
        edges_used.update(frozenset(e) for e in zip(p, p[1:]))
    capacity = 2 * sum(g.edges[tuple(e)]["bandwidth"] for e in edges_used)  # both directions
    mean_edges = total_edges / (n * (n - 1))
    dist = capacity / (n * mean_edges)
    return min(inject, bis, dist)


__all__ = [
    "SCALE_OUT", "scale_up_graph", "system_graph", "chip_nodes", "path", "hops", "path_latency",
    "diameter", "bisection_bandwidth", "ring_bandwidth", "all_to_all_bandwidth",
]
