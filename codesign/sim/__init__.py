"""The simulator: op cost model (`cost`), SimPy step engine (`engine`), workload modes (`workload`)
and `simulate(hw, model, ...)` (`simulate`)."""

from __future__ import annotations

from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.engine import StepResult, simulate_step
from codesign.sim.simulate import DEFAULT_CONTEXTS, DEFAULT_MODEL, DEFAULT_PRECISION, simulate, simulate_scenario

__all__ = ["CostModel", "CostOptions", "StepResult", "simulate_step", "simulate", "simulate_scenario",
           "DEFAULT_MODEL", "DEFAULT_CONTEXTS", "DEFAULT_PRECISION"]
