from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.mapping import collective_time
from codesign.mapping.collectives import NVLS_GAIN
from tests.mapping.helpers import make_hw


def test_ring_allreduce_closed_form(hw):
    n, nbytes = 8, 256 * 2**20
    bw = 18 * 25e9 * hw.efficiency.collective  # all links to the switch, per direction
    want = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * 3e-6
    got = collective_time({"type": "all_reduce", "group": tuple(range(8)), "bytes": nbytes, "algorithm": "ring"}, hw)
    assert got == pytest.approx(want)
    # reduce-scatter / all-gather are one half each
    rs = collective_time({"type": "reduce_scatter", "size": 8, "bytes": nbytes, "algorithm": "ring"}, hw)
    assert rs == pytest.approx(want / 2)


def test_nccl_busbw_anchor(hw):
    # NCCL 8xH100 ring busBw ~370 GB/s (accelerators.md anchor 44); large messages: latency negligible
    nbytes = 8e9
    t = collective_time({"type": "all_reduce", "size": 8, "bytes": nbytes, "algorithm": "ring"}, hw)
    busbw = nbytes / t * 2 * 7 / 8
    assert busbw == pytest.approx(370e9, rel=0.05)
    t_nvls = collective_time({"type": "all_reduce", "size": 8, "bytes": nbytes, "algorithm": "nvls"}, hw)
    assert t / t_nvls == pytest.approx(NVLS_GAIN, rel=0.01)


def test_auto_picks_fastest_and_small_messages_are_latency_bound(hw):
    c = {"type": "all_reduce", "size": 8, "bytes": 2**20}
    auto = collective_time(c, hw)
    assert auto == min(collective_time({**c, "algorithm": a}, hw) for a in ("ring", "two_shot", "one_shot"))
    assert auto < collective_time({**c, "algorithm": "ring"}, hw)


def test_deepep_anchors():
    h800 = make_hw(links=8)  # H800: 8 NVLink links x 25 GB/s per direction
    # normal mode EP8, 4096 tokens x 7168 x top-8 FP8: 153 GB/s measured (anchor 41)
    nbytes = 4096 * 8 * 7168
    t = collective_time({"type": "all_to_all", "size": 8, "bytes": nbytes}, h800)
    assert nbytes * 7 / 8 / t == pytest.approx(153e9, rel=0.1)
    # low-latency mode: its own bandwidth fraction and fixed time replace efficiency.collective and
    # the link latency (defaults: 0.43 and the scale-up latency, 3 us here)
    ll_bytes = 128 * 8 * 7168 * (1 + 4 / 128)
    ll = collective_time({"type": "all_to_all", "size": 8, "bytes": ll_bytes, "algorithm": "low_latency"}, h800)
    assert ll == pytest.approx(ll_bytes * 7 / 8 / (200e9 * 0.43) + 3e-6, rel=1e-9)
    tuned = h800.model_copy(update={"efficiency": h800.efficiency.model_copy(
        update={"low_latency_collective": 0.92, "low_latency_overhead": 39e-6})})
    ll = collective_time({"type": "all_to_all", "size": 8, "bytes": ll_bytes, "algorithm": "low_latency"}, tuned)
    assert ll == pytest.approx(ll_bytes * 7 / 8 / (200e9 * 0.92) + 39e-6, rel=1e-9)
    # across nodes (EP16 = 2 domains of 8): half the bytes leave the node over the 50 GB/s NIC
    ll16 = collective_time({"type": "all_to_all", "group": tuple(range(16)), "bytes": ll_bytes,
                            "algorithm": "low_latency"}, make_hw(links=8, chips=16).model_copy(
                                update={"efficiency": tuned.efficiency}))
    assert ll16 == pytest.approx(max(ll_bytes * 8 / 16 / (50e9 * 0.92), ll_bytes * 7 / 16 / (200e9 * 0.92)) + 39e-6)


def test_imbalance_scales_all_to_all(hw):
    base = {"type": "all_to_all", "size": 8, "bytes": 64e6}
    t1 = collective_time(base, hw) - 3e-6
    t2 = collective_time({**base, "imbalance": 1.5}, hw) - 3e-6
    assert t2 == pytest.approx(1.5 * t1)


def test_scale_out_uses_nics(hw):
    nbytes = 64e6
    t_out = collective_time({"type": "all_to_all", "group": tuple(range(16)), "bytes": nbytes}, hw)
    nic = 50e9 * hw.efficiency.collective  # 400 Gb/s
    assert t_out == pytest.approx(nbytes * 8 / 16 / nic + 10e-6 + 3e-6)
    t_in = collective_time({"type": "all_to_all", "group": tuple(range(8)), "bytes": nbytes}, hw)
    assert t_out > 5 * t_in


def test_ring_topology_slower_than_switch_for_partial_groups():
    ring = make_hw(topology="ring", size=16, links=4, chips=16)
    t_ring = collective_time({"type": "all_to_all", "size": 16, "bytes": 16e6}, ring)
    t_sw = collective_time({"type": "all_to_all", "size": 16, "bytes": 16e6}, make_hw(size=16, links=4, chips=16))
    assert t_ring > t_sw  # bisection of a ring limits all-to-all


def test_collective_errors(hw):
    with pytest.raises(CodesignError, match=r"^collective.type: expected one of .*found 'broadcast'$"):
        collective_time({"type": "broadcast", "size": 8, "bytes": 1}, hw)
    with pytest.raises(CodesignError, match=r"^collective.algorithm: nvls needs a switched scale-up domain"):
        collective_time({"type": "all_reduce", "size": 4, "bytes": 1e6, "algorithm": "nvls"},
                        make_hw(topology="full_mesh", links=7))
