"""Expert-parallel all-to-all: DeepEP's normal kernels across nodes (one NIC copy per remote node,
forwarded over NVLink) and the low-latency / auto modes, against independent counts."""

from __future__ import annotations

import numpy as np
import pytest

from codesign.errors import CodesignError
from codesign.mapping import ParallelPlan, Precision, collective_time, map_step
from codesign.mapping.experts import dispatch_fanout, nic_share, routed_spread
from codesign.mapping.options import MappingOptions
from tests.mapping.helpers import make_hw, qwen35_397b
from tests.mapping.test_step import _moe_graph


def _monte_carlo(E: int, k: int, ranks: int, nodes: int, groups: int | None, n: int = 20_000):
    """(mean distinct ranks, mean distinct nodes, mean remote nodes of a sender on node 0) over
    routings drawn as DeepEP's tests draw them (tests/test_internode.py): random scores, the top
    `groups` nodes by their best expert score, then the top-k experts among those nodes'."""
    rng = np.random.default_rng(3)
    scores = rng.random((n, E))
    g = nodes if groups is None else groups
    by_node = scores.reshape(n, nodes, E // nodes)
    keep = np.argsort(-by_node.max(axis=2), axis=1)[:, :g]
    mask = np.zeros((n, nodes), dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    masked = np.where(np.repeat(mask, E // nodes, axis=1), scores, -1.0)
    experts = np.argsort(-masked, axis=1)[:, :k]
    hit_rank = np.zeros((n, ranks), dtype=bool)
    np.put_along_axis(hit_rank, experts // (E // ranks), True, axis=1)
    hit_node = np.zeros((n, nodes), dtype=bool)
    np.put_along_axis(hit_node, experts // (E // nodes), True, axis=1)
    return hit_rank.sum(1).mean(), hit_node.sum(1).mean(), hit_node[:, 1:].sum(1).mean()


@pytest.mark.parametrize("ranks,nodes,groups", [(32, 4, None), (64, 8, 4), (16, 2, None)])
def test_spread_and_nic_share_against_sampled_routings(ranks, nodes, groups):
    r, n, remote = _monte_carlo(256, 8, ranks, nodes, groups)
    got_r, got_n = routed_spread(256, 8, ranks, nodes, groups)
    assert got_r == pytest.approx(r, rel=0.01) and got_n == pytest.approx(n, rel=0.01)
    assert nic_share(256, 8, ranks, nodes, groups) == pytest.approx(remote / r, rel=0.015)
    if groups is None:  # no group limit: the rank count is the mapping's fanout
        assert got_r == pytest.approx(dispatch_fanout(256, 8, ranks))
    assert nic_share(256, 8, 8, 1) == 0.0


def _ep_hw(nodes: int):
    return make_hw(links=8, chips=8 * nodes)  # H800-like: 8 NVLink4 links, one 400 Gb/s NIC per GPU


def _dispatch(ms):
    return next(d["op"].collective for _, d in ms.graph.nodes(data=True)
                if d["op"].collective and d["op"].collective.get("role") == "dispatch")


def test_internode_dispatch_sends_one_nic_copy_per_remote_node():
    hw = _ep_hw(4)
    counts = [40] * 512
    g = _moe_graph(counts, 512)
    g.graph["batch"] = 2048  # 2048 prompt tokens, one sequence each: a prefill-like step
    g.graph["step_tokens"] = 2048 * 4
    c = qwen35_397b()
    prec = Precision(weights="fp8", activations="fp8")
    ms = map_step(g, c, hw, ParallelPlan(ep=32, attention_dp=32), prec)
    dc = _dispatch(ms)
    share = nic_share(512, 10, 32, 4)
    assert dc["scope"] == "scale_out" and dc["nic_share"] == pytest.approx(share)
    # independent time: the NIC's copies vs NVLink forwarding of (d-1)/d, the slower, + NIC latency
    nic = 400e9 / 8 * hw.efficiency.collective
    nvl = 8 * 25e9 * hw.efficiency.collective
    expect = max(dc["bytes"] * share / nic, dc["bytes"] * 7 / 8 / nvl) * dc["imbalance"] + 10e-6 + 3e-6
    assert collective_time(dc, hw) == pytest.approx(expect, rel=1e-6)
    # per-rank copies over the NIC (the rule without nic_share) are more bytes
    plain = {k: v for k, v in dc.items() if k != "nic_share"}
    assert collective_time(plain, hw) > collective_time(dc, hw)


def test_all_to_all_modes():
    hw = _ep_hw(1)
    c = qwen35_397b()
    prec = Precision(weights="fp8", activations="fp8")
    decode = _moe_graph([8] * 512, 512)
    decode.graph["batch"] = decode.graph["step_tokens"] = 512
    prefill = _moe_graph([8] * 512, 512)
    prefill.graph["batch"], prefill.graph["step_tokens"] = 64, 512
    plan = ParallelPlan(ep=8, attention_dp=8)
    normal = _dispatch(map_step(decode, c, hw, plan, prec))
    ll = _dispatch(map_step(decode, c, hw, plan, prec, all_to_all_mode="low_latency"))
    auto_d = _dispatch(map_step(decode, c, hw, plan, prec, all_to_all_mode="auto"))
    auto_p = _dispatch(map_step(prefill, c, hw, plan, prec, all_to_all_mode="auto"))
    assert normal["algorithm"] == "direct" and ll["algorithm"] == auto_d["algorithm"] == "low_latency"
    assert auto_p["algorithm"] == "direct"
    # low-latency sends one message per (token, expert): top_k copies instead of distinct ranks
    assert ll["bytes"] / normal["bytes"] == pytest.approx(10 / dispatch_fanout(512, 10, 8))
    with pytest.raises(CodesignError, match="all_to_all_mode"):
        MappingOptions.from_dict({"all_to_all_mode": "fast"})


def test_kernel_shape_experts_errors():
    from codesign.sim.kernel import KernelShape
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multiple of ranks"):
        KernelShape(op="all_to_all", hw="h800", ranks=16, tokens=4096, hidden=7168, top_k=8, experts=250)
    with pytest.raises(ValidationError, match="top_groups needs experts"):
        KernelShape(op="all_to_all", hw="h800", ranks=16, tokens=4096, hidden=7168, top_k=8, top_groups=4)
    with pytest.raises(ValidationError, match="all_to_all only"):
        KernelShape(op="gemm", hw="h800", m=1, n=1, k=1, experts=8)
