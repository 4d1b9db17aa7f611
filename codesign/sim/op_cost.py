"""What the cost model returns for one op (`OpCost`) and which byte classes a step keeps
SRAM-resident when it is costed (`Residency`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Residency:
    """Which byte classes a step keeps SRAM-resident (decided once per step by the engine)."""

    state: bool = False
    weights: bool = False


class OpCost(NamedTuple):
    """Seconds of one op and what limits it: "matrix" | "vector" | "hbm" | "sram" | "link" | "overhead".
    Immutable; a named tuple rather than a frozen dataclass because a step builds one per op and
    variant (~1,700 for a Qwen3.5-397B point), where a frozen dataclass's constructor is most of
    an op's cost."""

    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bottleneck: str
