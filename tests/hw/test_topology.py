"""Interconnect graphs: shapes, hop counts and bandwidths against closed-form values."""

from __future__ import annotations

import math

import pytest

from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.hw import topology as t
from codesign.hw.spec import ScaleOut, ScaleUp, System

BW = 100e9  # per link, per direction


def su(topology: str, size: int, links: int, dims=None) -> ScaleUp:
    return ScaleUp(topology=topology, size=size, links=links, link_bandwidth=BW, latency="1 us", dims=dims)


@pytest.mark.parametrize(
    "scale_up, nodes, edges",
    [
        (su("switch", 8, 18), 9, 8),  # star: 8 chips + 1 switch
        (su("full_mesh", 8, 7), 8, 28),  # 8*7/2
        (su("ring", 8, 2), 8, 8),
        (su("ring", 2, 2), 2, 1),  # both neighbours are one chip
        (su("torus2d", 16, 4, (4, 4)), 16, 32),  # 2 edges per chip
        (su("torus3d", 64, 6, (4, 4, 4)), 64, 192),  # 3 edges per chip
        (su("torus3d", 8, 6, (2, 2, 2)), 8, 12),  # size-2 dims: direct and wrap link merge
        (su("switch", 1, 1), 1, 0),
    ],
)
def test_node_and_edge_counts(scale_up, nodes, edges):
    g = t.scale_up_graph(scale_up)
    assert (g.number_of_nodes(), g.number_of_edges()) == (nodes, edges)


def test_links_are_conserved_per_chip():
    # every chip's edges carry exactly its `links` links, however they are spread
    for s in [su("full_mesh", 8, 21), su("ring", 8, 2), su("torus2d", 16, 4, (4, 4)),
              su("torus3d", 8, 6, (2, 2, 2)), su("switch", 8, 18)]:
        g = t.scale_up_graph(s)
        for c in t.chip_nodes(g):
            assert sum(d["links"] for _, _, d in g.edges(c, data=True)) == pytest.approx(s.links)
            assert sum(d["bandwidth"] for _, _, d in g.edges(c, data=True)) == pytest.approx(s.chip_bandwidth)


def test_hops_and_diameter():
    torus = t.scale_up_graph(su("torus2d", 16, 4, (4, 4)))
    assert t.diameter(torus) == 4  # 2 + 2 with wrap-around
    assert t.hops(torus, 0, 5) == 2  # (0,0) -> (1,1)
    assert t.hops(torus, 0, 3) == 1  # (0,0) -> (0,3) by the wrap link
    ring = t.scale_up_graph(su("ring", 8, 2))
    assert t.diameter(ring) == 4
    assert t.hops(ring, 0, 7) == 1
    assert t.diameter(t.scale_up_graph(su("switch", 8, 18))) == 1  # one switch crossing
    assert t.diameter(t.scale_up_graph(su("full_mesh", 8, 7))) == 1
    assert t.diameter(t.scale_up_graph(su("torus3d", 64, 6, (4, 4, 4)))) == 6


@pytest.mark.parametrize(
    "scale_up, closed_form",
    [
        # ring of n: cutting it in two cuts 2 edges of links/2 links each
        (su("ring", 8, 2), 2 * 1 * BW),
        # k x k torus: a cut across one dimension crosses 2k edges (wrap) of links/4 links
        (su("torus2d", 16, 4, (4, 4)), 2 * 4 * 1 * BW),
        (su("torus2d", 32, 4, (4, 8)), 2 * 4 * 1 * BW),  # cut across the longest dimension
        (su("torus3d", 64, 6, (4, 4, 4)), 2 * 16 * 1 * BW),
        # switch: half the chips, each with all its links
        (su("switch", 8, 18), 4 * 18 * BW),
        # full mesh: (n/2)^2 edges of links/(n-1) links
        (su("full_mesh", 8, 7), 16 * 1 * BW),
    ],
)
def test_bisection_bandwidth_matches_closed_form(scale_up, closed_form):
    assert t.bisection_bandwidth(t.scale_up_graph(scale_up)) == pytest.approx(closed_form)


def test_ring_bandwidth():
    assert t.ring_bandwidth(t.scale_up_graph(su("ring", 8, 2))) == pytest.approx(BW)
    assert t.ring_bandwidth(t.scale_up_graph(su("switch", 8, 18))) == pytest.approx(18 * BW)
    assert t.ring_bandwidth(t.scale_up_graph(su("full_mesh", 8, 7))) == pytest.approx(BW)
    # a ring over chips 0,2,4,6 of a ring of 8: each step takes 2 hops, no edge shared
    assert t.ring_bandwidth(t.scale_up_graph(su("ring", 8, 2)), [0, 2, 4, 6]) == pytest.approx(BW)
    assert t.ring_bandwidth(t.scale_up_graph(su("ring", 8, 2)), [0]) == math.inf


def test_all_to_all_bandwidth():
    n = 8
    # ring: bisection 2*BW, so rate <= 2*BW*(n-1)/(n/2)^2; the distance bound gives the same value
    ring = t.scale_up_graph(su("ring", n, 2))
    assert t.all_to_all_bandwidth(ring) == pytest.approx(2 * BW * (n - 1) / 16)
    # switch: injection-limited at the chip's links
    assert t.all_to_all_bandwidth(t.scale_up_graph(su("switch", n, 18))) == pytest.approx(18 * BW)
    # full mesh: each peer edge carries 1/(n-1) of the traffic: all links usable
    assert t.all_to_all_bandwidth(t.scale_up_graph(su("full_mesh", n, 7))) == pytest.approx(7 * BW)


def test_system_graph_joins_domains_through_nics():
    h800 = load_hw("h800")
    g = t.system_graph(h800.system, 16)
    assert len(t.chip_nodes(g)) == 16 and g.graph["domains"] == 2
    # two stars (8 edges each) plus 16 NIC edges
    assert g.number_of_edges() == 8 + 8 + 16
    assert t.hops(g, 0, 1) == 1 and t.hops(g, 0, 9) == 1
    assert t.path(g, 0, 1)[1] == ("switch", 0)  # inside a node, traffic stays on NVLink
    assert t.path_latency(g, 0, 9) == pytest.approx(h800.system.scale_out.latency)
    nic = h800.system.scale_out.nic_bandwidth
    assert t.bisection_bandwidth(g) == pytest.approx(8 * nic)  # the 8 NICs of one node
    assert t.ring_bandwidth(g) == pytest.approx(nic)  # the ring must cross the NICs
    assert t.all_to_all_bandwidth(g) == pytest.approx(8 * nic * 15 / 64)
    assert t.all_to_all_bandwidth(g, range(8)) == pytest.approx(h800.system.scale_up.chip_bandwidth)


def test_system_graph_partial_domain_and_errors():
    s = System(chips=4, scale_up=su("torus2d", 16, 4, (4, 4)))
    g = t.system_graph(s)  # the whole torus is kept; 4 chips are used
    assert g.number_of_nodes() == 16 and t.chip_nodes(g) == [0, 1, 2, 3]
    with pytest.raises(CodesignError, match=r"^system.scale_out: needed for 32 chips"):
        t.system_graph(s, 32)
    with pytest.raises(CodesignError, match="members: expected chip ids"):
        t.diameter(g, [0, 99])
    s2 = System(chips=8, scale_up=su("switch", 8, 1), scale_out=ScaleOut(nic_bandwidth="400 Gb/s", latency="5 us"))
    assert t.system_graph(s2, 12).graph["domains"] == 2


@pytest.mark.parametrize("name", ["h100", "mi300x", "tpu-v5p", "trainium2", "gaudi3", "cpu-host"])
def test_shipped_specs_build(name):
    hw = load_hw(name)
    g = t.system_graph(hw.system)
    assert len(t.chip_nodes(g)) == hw.system.chips
    assert t.bisection_bandwidth(g) > 0
