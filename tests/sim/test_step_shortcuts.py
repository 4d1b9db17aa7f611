"""The engine's shortcuts for a new step shape against the engine without them, result for result
and bit for bit (`repr`: every float in full, a -0.0 is not a 0.0): equal ops costed once
(`CostModel.group_costs` by `content_key`), the two-batch-overlap bound's floors
(`CostModel.half_floor`) and half ops costed from their ops (`CostModel.half_seconds`), with
overlap auto, on and off, with the shared caches and without, and for hardware variants that
reuse the kept parts."""

from __future__ import annotations

import pytest

from codesign.graph.shape import Group, StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.mapping.options import MappingOptions
from codesign.models import load_model
from codesign.sim.cost import CostModel, half_op
from codesign.sim.stepper import Stepper, clear_caches
from tests.sim.helpers import make_hw

FP8 = Precision(weights="fp8", activations="fp8")
SHAPES = [StepShape.decode(1, 4096), StepShape.decode(37, 20_000), StepShape.decode(64, 3000),
          StepShape.prefill(1, 512, cached=1024), StepShape.verify(8, cached=3000, draft=2),
          StepShape((Group(12, 1, 5000), Group(1, 256, 700)))]


def _steps(tbo, cache: bool, bandwidths=("3 TB/s", "5 TB/s")) -> list[str]:
    cfg = load_model("qwen3.5-35b-a3b")
    out = []
    for bw in bandwidths:  # the second: a hardware variant of the first's mapped ops
        hw = make_hw(**{"system.chips": 8, "chip.hbm.bandwidth": bw})
        st = Stepper(hw, cfg, ParallelPlan(tp=8, ep=8), FP8, options=MappingOptions(two_batch_overlap=tbo),
                     cache=cache)
        out += [repr(st.step(s)) for s in SHAPES]
    return out


@pytest.mark.parametrize("tbo,cache", [(None, True), (None, False), (True, True), (False, False)])
def test_shortcuts_give_the_steps_of_the_plain_engine(monkeypatch, tbo, cache):
    clear_caches()
    fast = _steps(tbo, cache)
    clear_caches()
    # the plain engine: no op shares another's cost, no floor reaches the bound, half ops built
    monkeypatch.setattr(CostModel, "content_key", lambda self, op: None)
    monkeypatch.setattr(CostModel, "half_floor", lambda self, op, residency=None: 0.0)
    monkeypatch.setattr(CostModel, "half_seconds",
                        lambda self, op, residency: self.reference_cost(half_op(op), residency).time_s)
    plain = _steps(tbo, cache)
    clear_caches()
    assert fast == plain
