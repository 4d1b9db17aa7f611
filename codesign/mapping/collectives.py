"""Collectives costed on the interconnect topology, each with a named algorithm.

A collective is the dict the mapping puts in `Op.collective`:

    {"type": "all_reduce" | "reduce_scatter" | "all_gather" | "all_to_all" | "send_recv",
     "group": (rank, ...),         # chip ids taking part (global ids; domain = id // scale_up.size)
     "size": n,                    # len(group)
     "bytes": payload,             # per rank: the full buffer (all_reduce / reduce_scatter input /
                                   # all_gather output), everything one rank sends (all_to_all,
                                   # its own share included), or the message (send_recv)
     "scope": "scale_up" | "scale_out",
     "algorithm": "auto" | "ring" | "two_shot" | "one_shot" | "nvls" | "hierarchical" | "direct"
                  | "low_latency" | "p2p",
     "imbalance": 1.0,             # all_to_all: slowest rank's load / mean (the slowest rank rules)
     "nic_share": 0.37}            # all_to_all, normal kernels across domains: share of bytes over the NIC

Cost rules (bandwidths per direction, times `hw.efficiency.collective`; alpha = scale-up latency):

* ring all-reduce: 2(n-1)/n * bytes / B_ring + 2(n-1) alpha. reduce-scatter and all-gather are
  each half of it. B_ring from `hw.topology.ring_bandwidth` over the group: on a switch one ring
  saturates each chip's links; on rings and tori two counter-rotating rings run at once; on a full
  mesh several rings over different orders use all of the group's links (as RCCL does), i.e. the
  chip's injection bandwidth towards the group.
* two_shot (direct reduce-scatter + all-gather, every peer at once, as TensorRT-LLM's custom
  all-reduce): 2(n-1)/n * bytes / B_a2a + 2 alpha; one_shot (each rank reads all peers' buffers):
  (n-1) * bytes / B_a2a + alpha. ``auto`` (the default for all-reduce) takes the fastest of ring,
  two_shot and one_shot, as NCCL's and TensorRT-LLM's tuners pick by message size: small decode
  messages are latency-bound, where a ring's 2(n-1) steps cost most.
* nvls (switch only; NVLink SHARP in-switch reduction): the ring time divided by ``NVLS_GAIN`` =
  480 / 370, NCCL's measured all-reduce bus bandwidth with and without NVLS on 8xH100
  (accelerators.md anchor 44), plus 2 alpha.
* all-to-all (direct): bytes (n-1)/n / B_a2a * imbalance + alpha, with B_a2a from
  `hw.topology.all_to_all_bandwidth` (injection, bisection and path-length bounds).
  ``low_latency`` runs the same traffic at ``efficiency.low_latency_collective`` instead of
  efficiency.collective and pays ``efficiency.low_latency_overhead`` (none = alpha) instead of the
  link latency, inside a domain and across domains alike: DeepEP's low-latency kernels use few SMs
  and per-token messages (both fitted on DeepEP's low-latency table, benchmarks/kernels/deepep.yaml).
* scale_out (the group spans scale-up domains; NIC bandwidth ``scale_out.nic_bandwidth``):
  hierarchical all-reduce = intra-domain reduce-scatter + inter-domain ring all-reduce of
  bytes/d over the NICs + intra-domain all-gather (d = group chips per domain); all-to-all sends
  (n-d)/n of its bytes over the NIC and (d-1)/n inside the domain, the slower rules. An EP
  dispatch/combine of the normal kernels carries ``nic_share`` (the mapping's
  `codesign.mapping.experts.nic_share`): DeepEP's internode kernels send a token once to each
  distinct remote node over RDMA (its own node's copies never touch the NIC) and forward it to the
  destination ranks inside that node over NVLink, so ``bytes x nic_share`` cross the NIC and
  ``bytes x (d-1)/d`` (the forwarding) the domain's links, the slower rules.
* send_recv (pipeline stages): bytes / the chips' direct bandwidth + latency.

Kernel-calibrated curves (`hw.efficiency.collective_curves`, docs/cost-model.md "Collectives vs
message size and rank count"): where a spec gives them, all-reduce, reduce-scatter and all-gather
inside one scale-up domain are costed per algorithm as

    overhead + steps x step + wire bytes / (bandwidth x efficiency x (m / (m + ramp_bytes))^exponent)

with m the message bytes per rank and, per algorithm (n ranks, message m):

* ring: wire 2(n-1)/n m over the ring bandwidth, 2(n-1) steps; reduce-scatter / all-gather are one
  phase of it: (n-1)/n m, n-1 steps, on the same curve.
* nvls (switch only): wire (n+1)/n m over the chip's links to the switch, 2 steps: each rank sends
  its buffer to the switch and reads its reduced shard (ld_reduce), then multicasts the shard and
  receives every other one (NCCL's NVLS all-reduce); one phase (m) for reduce-scatter / all-gather.
* one_shot: wire (n-1) m over the all-to-all bandwidth, 1 step; two_shot: 2(n-1)/n m, 2 steps
  (reduce-scatter / all-gather with these: the direct phase, (n-1)/n m, 1 step, on two_shot's curve).
* ``nccl``: NCCL's own choice, the faster of ring and nvls; ``auto``: the serving engine's choice,
  the fastest of nccl, one_shot and two_shot. An algorithm without a curve is not available there.

Scale-out and send/recv keep the flat rule; all-to-all keeps `efficiency.collective`.
"""

from __future__ import annotations

import math
from functools import lru_cache

from codesign.errors import CodesignError
from codesign.hw import topology
from codesign.hw.spec import CollectiveCurve, CollectiveCurves, HardwareSpec, ScaleUp

# NCCL 8xH100: NVLS all-reduce busBw ~480 GB/s vs ~370 GB/s for ring (accelerators.md anchor 44).
NVLS_GAIN = 480.0 / 370.0

TYPES = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "send_recv")
ALGORITHMS = ("auto", "nccl", "ring", "two_shot", "one_shot", "nvls", "hierarchical", "direct", "low_latency",
              "p2p")


@lru_cache(maxsize=256)
def _domain_bandwidths(scale_up: ScaleUp, n: int) -> tuple[float, float, float]:
    """(ring bandwidth, all-to-all per-chip bandwidth, point-to-point bandwidth) of a group of the
    first n chips of one scale-up domain, bytes/s per direction, before efficiency."""
    if n < 2:
        return math.inf, math.inf, math.inf
    g = topology.scale_up_graph(scale_up)
    members = list(range(n))
    ring = topology.ring_bandwidth(g, members)
    # injection of chip 0 towards the group (its edges on routes to the other members)
    inject = 0.0
    seen = set()
    for m in members[1:]:
        p = topology.path(g, 0, m)
        if p[1] not in seen:
            seen.add(p[1])
            inject += g.edges[0, p[1]]["bandwidth"]
    if scale_up.topology == "full_mesh":
        ring = inject  # several rings over different orders use every link to the group
    elif scale_up.topology != "switch":
        ring = min(2 * ring, inject)  # two counter-rotating rings
    a2a = topology.all_to_all_bandwidth(g, members)
    p = topology.path(g, 0, 1)
    p2p = min(g.edges[u, v]["bandwidth"] for u, v in zip(p, p[1:]))
    return ring, a2a, p2p


def _size(c: dict) -> int:
    if "size" in c:
        return int(c["size"])
    group = c.get("group")
    if isinstance(group, int):
        return group
    if group is None:
        raise CodesignError("collective.group: expected the ranks taking part, found none")
    return len(group)


def _domains(c: dict, size_up: int, n: int) -> tuple[int, int]:
    """(chips of the group per domain, domains spanned)."""
    group = c.get("group")
    if isinstance(group, (list, tuple)) and group:
        per: dict[int, int] = {}
        for r in group:
            per[int(r) // size_up] = per.get(int(r) // size_up, 0) + 1
        return max(per.values()), len(per)
    d = min(n, size_up)
    return d, math.ceil(n / d)


def _ring_allreduce(nbytes: float, n: int, bw: float, alpha: float) -> float:
    if n < 2:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * alpha


def _low_latency(hw: HardwareSpec) -> tuple[float, float]:
    """(bandwidth fraction, fixed seconds per call) of low-latency all-to-all kernels on `hw`."""
    e = hw.efficiency
    return e.low_latency_collective, (e.low_latency_overhead if e.low_latency_overhead is not None
                                      else hw.system.scale_up.latency)


def collective_time(collective: dict, hw: HardwareSpec) -> float:
    """Seconds one collective takes on `hw` (see module docstring for the rules)."""
    c = collective
    kind, algo, n, nbytes = _parse(c)
    if n < 2 and kind != "send_recv" or nbytes <= 0:
        return 0.0
    if kind == "all_to_all":
        slope, fixed = all_to_all_parts(c, hw)
        return slope * float(c.get("imbalance", 1.0) or 1.0) + fixed
    eff = hw.efficiency.collective
    su = hw.system.scale_up
    alpha = su.latency
    d, m, scope = _span(c, su, n)
    ring_bw, a2a_bw, p2p_bw = _domain_bandwidths(su, max(d, 2) if kind == "send_recv" else d)
    if scope == "scale_out":
        so = _scale_out(hw, kind, n)
        nic, beta = so.nic_bandwidth * eff, so.latency
        if kind == "send_recv":
            return nbytes / nic + beta
        # hierarchical: reduce-scatter in the domain, all-reduce across domains, all-gather back
        intra = _ring_allreduce(nbytes, d, ring_bw * eff, alpha) if d > 1 else 0.0
        inter = _ring_allreduce(nbytes / d, m, nic, beta)
        t = intra + inter
        return t / 2 if kind in ("reduce_scatter", "all_gather") else t

    if kind == "send_recv":
        return nbytes / (p2p_bw * eff) + alpha
    curves = hw.efficiency.collective_curves
    if curves is not None:
        return _curved_time(kind, algo, n, nbytes, curves, su, ring_bw, a2a_bw)
    ring = _ring_allreduce(nbytes, n, ring_bw * eff, alpha)
    two_shot = 2 * (n - 1) / n * nbytes / (a2a_bw * eff) + 2 * alpha
    one_shot = (n - 1) * nbytes / (a2a_bw * eff) + alpha
    flat = {"ring": ring, "nccl": ring, "two_shot": two_shot, "one_shot": one_shot}
    t = flat.get(algo, min(ring, two_shot, one_shot))
    if kind in ("reduce_scatter", "all_gather") and algo in ("auto", "two_shot", "one_shot"):
        t = min(ring, two_shot)  # one phase of either: halved below
    if algo == "nvls":
        if su.topology != "switch":
            raise CodesignError(f"collective.algorithm: nvls needs a switched scale-up domain, "
                                f"found topology {su.topology!r}")
        t = 2 * (n - 1) / n * nbytes / (ring_bw * eff * NVLS_GAIN) + 2 * alpha
    return t / 2 if kind in ("reduce_scatter", "all_gather") else t


def curve_time(curve: CollectiveCurve, curves: CollectiveCurves, step: float, steps: int, wire: float,
               bandwidth: float, message: float) -> float:
    """Seconds of one algorithm on its curve: overhead + steps x step + wire bytes over the
    bandwidth at the curve's efficiency, ramped by the message size."""
    ramp = (message / (message + curve.ramp_bytes)) ** curves.ramp_exponent if curve.ramp_bytes > 0 else 1.0
    return curve.overhead + steps * step + wire / (bandwidth * curve.efficiency * ramp)


def _curved_time(kind: str, algo: str, n: int, m: float, curves: CollectiveCurves, su: ScaleUp,
                 ring_bw: float, a2a_bw: float) -> float:
    """An all-reduce / reduce-scatter / all-gather of m bytes per rank over n ranks of one domain
    on the spec's kernel-calibrated curves (module docstring)."""
    step = curves.step if curves.step is not None else su.latency
    whole = kind == "all_reduce"
    switch = su.topology == "switch"
    # (curve, steps, wire bytes, bandwidth) of each algorithm available here
    plans = {"ring": (curves.ring, 2 * (n - 1) if whole else n - 1, (2 if whole else 1) * (n - 1) / n * m, ring_bw)}
    if curves.nvls is not None and switch:
        plans["nvls"] = (curves.nvls, 2 if whole else 1, (n + 1) / n * m if whole else m, ring_bw)
    if whole:
        for name, steps, wire in (("one_shot", 1, (n - 1) * m), ("two_shot", 2, 2 * (n - 1) / n * m)):
            if getattr(curves, name) is not None:
                plans[name] = (getattr(curves, name), steps, wire, a2a_bw)
    elif curves.two_shot is not None:
        plans["direct"] = (curves.two_shot, 1, (n - 1) / n * m, a2a_bw)

    def t(name: str) -> float:
        curve, steps, wire, bw = plans[name]
        return curve_time(curve, curves, step, steps, wire, bw, m)

    nccl = min(t(a) for a in ("ring", "nvls") if a in plans)
    if algo in ("nccl", "hierarchical"):
        return nccl
    if algo == "auto":
        return min([nccl] + [t(a) for a in plans if a not in ("ring", "nvls")])
    if not whole and algo in ("one_shot", "two_shot"):
        algo = "direct"
    if algo not in plans:
        if algo == "nvls" and not switch:
            raise CodesignError(f"collective.algorithm: nvls needs a switched scale-up domain, "
                                f"found topology {su.topology!r}")
        have = ", ".join(sorted({"nccl", "auto"} | set(plans)))
        raise CodesignError(f"collective.algorithm: {algo} has no curve in efficiency.collective_curves "
                            f"for a {kind}; expected one of {have}")
    return t(algo)


def all_to_all_parts(collective: dict, hw: HardwareSpec) -> tuple[float, float]:
    """(seconds per unit of load imbalance, fixed seconds) of an all-to-all: its time is
    slope x imbalance + fixed (the busiest rank's bytes set the time), so the expert-parallel
    layers of a step, which differ only in imbalance, share one evaluation of the topology."""
    c = collective
    kind, algo, n, nbytes = _parse(c)
    if kind != "all_to_all":
        raise CodesignError(f"collective.type: expected all_to_all, found {kind!r}")
    if n < 2 or nbytes <= 0:
        return 0.0, 0.0
    eff = hw.efficiency.collective
    su = hw.system.scale_up
    alpha = su.latency
    d, m, scope = _span(c, su, n)
    _, a2a_bw, _ = _domain_bandwidths(su, d)
    if scope == "scale_out":
        so = _scale_out(hw, kind, n)
        nic, beta = so.nic_bandwidth * eff, so.latency
        if algo == "low_latency":
            e_ll, lat = _low_latency(hw)
            nic, e_in = so.nic_bandwidth * e_ll, e_ll
        else:
            e_in, lat = eff, beta + (alpha if d > 1 else 0.0)
        share = c.get("nic_share")
        if share is not None and algo != "low_latency":
            # normal kernels (DeepEP internode): one copy per distinct remote node over the NIC,
            # then forwarded inside the node over NVLink: (d-1)/d of the rank copies there
            out_t = nbytes * share / nic
            in_t = nbytes * (d - 1) / d / (a2a_bw * e_in) if d > 1 else 0.0
        else:
            out_t = nbytes * (n - d) / n / nic
            in_t = nbytes * (d - 1) / n / (a2a_bw * e_in) if d > 1 else 0.0
        return max(out_t, in_t), lat
    if algo == "low_latency":
        e, lat = _low_latency(hw)
        return nbytes * (n - 1) / n / (a2a_bw * e), lat
    return nbytes * (n - 1) / n / (a2a_bw * eff), alpha


def _parse(c: dict) -> tuple[str, str, int, float]:
    """(type, algorithm, ranks, bytes) of a collective dict, validated."""
    kind = c.get("type")
    if kind not in TYPES:
        raise CodesignError(f"collective.type: expected one of {', '.join(TYPES)}, found {kind!r}")
    algo = c.get("algorithm") or ("direct" if kind == "all_to_all" else "p2p" if kind == "send_recv" else "auto")
    if algo not in ALGORITHMS:
        raise CodesignError(f"collective.algorithm: expected one of {', '.join(ALGORITHMS)}, found {algo!r}")
    return kind, algo, _size(c), float(c.get("bytes", 0.0))


def _scale_out(hw: HardwareSpec, kind: str, n: int):
    """The spec's scale-out network, which a collective over `n` chips spanning domains needs."""
    so = hw.system.scale_out
    if so is None:
        raise CodesignError(f"system.scale_out: a {kind} over {n} chips spans scale-up domains "
                            f"of {hw.system.scale_up.size}, but the spec has no scale_out section")
    return so


def _span(c: dict, su: ScaleUp, n: int) -> tuple[int, int, str]:
    """(chips per scale-up domain, domains, scope) of a collective over n ranks."""
    d, m = _domains(c, su.size, n)
    scope = c.get("scope") or ("scale_out" if m > 1 else "scale_up")
    if scope == "scale_out" and m == 1:
        m, d = max(2, math.ceil(n / su.size)), min(n, su.size)  # caller says it spans domains
    return d, m, scope


def make_collective(kind: str, group: tuple[int, ...], nbytes: float, scale_up_size: int,
                    algorithm: str | None = None, imbalance: float = 1.0, **extra) -> dict:
    """A collective dict for `Op.collective` with scope derived from the group's domains."""
    domains = {r // scale_up_size for r in group}
    scope = "scale_out" if len(domains) > 1 else "scale_up"
    if algorithm is None:
        algorithm = {"all_to_all": "direct", "send_recv": "p2p"}.get(kind, "hierarchical" if scope == "scale_out" else "auto")
    out = {"type": kind, "group": tuple(group), "size": len(group), "bytes": float(nbytes), "scope": scope,
           "algorithm": algorithm}
    if kind == "all_to_all":
        out["imbalance"] = float(imbalance)
    out.update(extra)
    return out
