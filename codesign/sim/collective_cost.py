"""Collective seconds of a cost model (`CostModel.collective_time`): the mapping's topology costs
(`codesign.mapping.collectives`), memoised per network (`network_key`) and shared by every cost
model of that network (hardware variants of one chip). `NetworkCollectives` is a part of
`codesign.sim.cost.CostModel`."""

from __future__ import annotations

from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec

# Collective seconds by the spec's network (`network_key`): (all-to-all (slope, fixed) by the
# collective's items but its imbalance, seconds of any other collective by its items), shared by
# every cost model of that network (hardware variants of the chip share them). Bounded.
_NETWORKS: dict[tuple, tuple[dict[tuple, tuple[float, float]], dict[tuple, float]]] = {}
_NETWORKS_MAX = 16
_NETWORK_ENTRIES_MAX = 4096


def network_key(hw: HardwareSpec) -> tuple:
    """What `codesign.mapping.collectives` reads of a spec: the system (its scale-up and scale-out
    networks) and the collective efficiencies and curves. tests/sim/test_cost_parts.py checks that
    a spec with another chip and other efficiencies but these gives the same collective times."""
    e = hw.efficiency
    return (hw.system, e.collective, e.collective_curves, e.low_latency_collective, e.low_latency_overhead)


class NetworkCollectives:
    """`CostModel`'s collective seconds; reads the model's `hw`, `_collective_fn` and the network
    memos `_a2a` and `_collectives` (`_network_memo`)."""

    def collective_time(self, op: Op) -> float:
        return self._collective_seconds(op.collective)

    def _collective_seconds(self, c: dict | None) -> float:
        """Seconds of the collective `c` (an op's `collective`)."""
        if not c:
            return 0.0
        fn = self._collective_fn
        if fn is None:
            from codesign.mapping import collectives  # the mapping owns topology costs

            if c.get("type") == "all_to_all":
                parts = self.all_to_all_parts(c)
                if parts is not None:
                    return parts[0] * float(c.get("imbalance", 1.0) or 1.0) + parts[1]
            # memoised per network (`_NETWORKS`); a collective with a list of ranks is not keyed
            memo = self._collectives
            key = tuple(c.items())
            try:
                t = memo.get(key)
            except TypeError:
                return float(collectives.collective_time(c, self.hw))
            if t is None:
                t = float(collectives.collective_time(c, self.hw))
                if len(memo) >= _NETWORK_ENTRIES_MAX:
                    memo.clear()
                memo[key] = t
            return t
        return float(fn(c, self.hw))

    @staticmethod
    def _network_memo(hw: HardwareSpec) -> tuple[dict[tuple, tuple[float, float]], dict[tuple, float]]:
        key = network_key(hw)
        memo = _NETWORKS.get(key)
        if memo is None:
            if len(_NETWORKS) >= _NETWORKS_MAX:
                _NETWORKS.clear()
            memo = _NETWORKS[key] = ({}, {})
        return memo

    def all_to_all_parts(self, c: dict) -> tuple[float, float] | None:
        """(seconds per unit of imbalance, fixed seconds) of an all-to-all with the mapping's
        topology costs (`codesign.mapping.collectives.all_to_all_parts`), memoised per network
        (`_NETWORKS`): layers of a step differ in their all-to-alls only by load imbalance, so the
        topology is evaluated once per all-to-all. None when the model has its own collective
        function or the collective cannot be keyed (a list of ranks)."""
        if self._collective_fn is not None:
            return None
        from codesign.mapping import collectives

        key = tuple(item for item in c.items() if item[0] != "imbalance")
        try:
            parts = self._a2a.get(key)
        except TypeError:
            return None
        if parts is None:
            if len(self._a2a) >= _NETWORK_ENTRIES_MAX:
                self._a2a.clear()
            parts = self._a2a[key] = collectives.all_to_all_parts(c, self.hw)
        return parts
