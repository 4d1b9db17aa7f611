"""Calibration overlays: measured efficiencies and eager-execution costs on top of a hardware spec.

An overlay is a YAML file written by `codesign calibrate` (by default
`hw_specs/calibration/<spec>.yaml`, a folder of its own so that `hw_specs/*.yaml` stays specs only):

```yaml
base: cpu-host               # the spec it refines: a name in hw_specs/ or a path
device: cpu                  # where the microbenchmarks ran
threads: 1                   # torch.set_num_threads during them (native-check uses the same)
torch: 2.13.0
measured: "2026-12-01T16:40Z on Intel(R) Xeon(R) Processor"
efficiency: {gemm: 0.41, small_m_half: 2.6, memory: 0.49, vector: 0.02, attention: 0.05}
cost: {launch_overhead_s: 4.7e-06, fused_activations_on_chip: false}   # codesign.sim.cost.CostOptions
eager: {attention_s: 5.6e-05, moe_experts_s: 5.3e-05, moe_expert_s: 3.1e-05, gated_delta_rule_step_s: 1.4e-04,
        ops: {aten.convolution.default: 8.1e-05, aten.mul.Tensor: 3.2e-06, ...}}
benchmarks: {gemm_512x512x512_s: 0.0019, ...}   # the raw figures the fields were derived from
```

Every field validates: `efficiency` keys through the spec's own `Efficiency` schema (merged over
the base spec's values), `cost` keys through `CostOptions.from_dict`, the rest through `Calibration`
below; errors name the file and the field. `load_calibrated(path)` returns the refined spec, the
cost options and the eager costs (`codesign.native.eager`). Only microbenchmarks write an overlay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from codesign import spec_files
from codesign.errors import CodesignError
from codesign.hw import HardwareSpec, load_hw
from codesign.sim.cost import CostOptions

Seconds = Annotated[float, Field(ge=0)]


class EagerCosts(BaseModel):
    """Seconds each of the tracer's fused ops costs natively beyond its FLOPs and bytes: the tracer
    records one op, eager torch runs each as a Python custom op of many kernels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attention_s: Seconds  # one codesign::attention call
    moe_experts_s: Seconds  # one codesign::moe_experts call (sort, bincount, output)...
    moe_expert_s: Seconds  # ...plus this per expert that received tokens
    gated_delta_rule_step_s: Seconds  # one codesign::gated_delta_rule_step call
    # aten target -> seconds of one call at its smallest traced shape, timed cold: per-op costs that
    # differ from the plain dispatch (a oneDNN convolution, a triangular solve, top-k); a target
    # not listed costs cost.launch_overhead_s
    ops: dict[str, Seconds] = {}
    # Heavy kernels (docs/native.md "Cold regimes"): the aten targets among `ops` timed as heavy
    # (the fused kernels always are), and what the light ops after one heavy kernel pay to re-warm
    # the dispatch path it evicted, charged once per heavy kernel call (0: not modelled)
    heavy_ops: list[str] = []
    heavy_rewarm_s: Seconds = 0.0
    # One dispatch of a view op (view, transpose, expand, select, slice: no kernel, no allocation),
    # which the tracer does not record; 0 (an overlay written before it): views cost
    # cost.launch_overhead_s like any dispatch
    view_s: Seconds = 0.0
    # ...and codesign::moe_experts this per routed (token, expert) pair beyond its FLOPs at the GEMM
    # rate (its gathers, gated activation, weighted index_add, the small GEMMs' shortfall; 0: not modelled)
    moe_route_s: Seconds = 0.0
    # Per-call cost key -> the views and the other dispatches its `ops` figure was timed with beyond
    # the op itself (structural counts of the timed call, `dispatch.count_call`: torch.matmul wraps a
    # batched GEMM in four views and an _unsafe_view). The model's own calls of that op dispatch the
    # same ones, which the figure already covers, so the step's unrecorded dispatches are counted
    # without them (`codesign.native.eager.step_ratios`); an absent key: the op alone
    op_views: dict[str, NonNegativeInt] = {}
    op_others: dict[str, NonNegativeInt] = {}


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    device: str
    threads: int = Field(gt=0)
    torch: str
    measured: str
    efficiency: dict[str, float]
    cost: dict[str, float | bool] = {}
    eager: EagerCosts
    benchmarks: dict[str, float] = {}


@dataclass(frozen=True)
class Calibrated:
    """A spec refined by an overlay, with the cost options and eager costs it carries."""

    hw: HardwareSpec
    options: CostOptions
    eager: EagerCosts
    calibration: Calibration
    path: Path


DEFAULT_FOLDER = spec_files.folder("hw_specs") / "calibration"


def calibrated_host(cal: Calibration) -> str | None:
    """The CPU an overlay was measured on, as `codesign calibrate` writes it in `measured`
    ("<UTC time> on <CPU model name> (<n> passes, ...)"); None where `measured` does not say."""
    m = re.match(r"\S+ on (.+?)(?: \(\d+ passes\b.*)?$", " ".join(cal.measured.split()))
    return m.group(1) if m else None


def default_path(spec: str) -> Path:
    return DEFAULT_FOLDER / f"{Path(spec).stem}.yaml"


def apply(cal: Calibration, source: str) -> Calibrated:
    """The base spec with the overlay's efficiencies, and its cost options (validated)."""
    base = load_hw(cal.base)
    merged = {**base.efficiency.model_dump(), **cal.efficiency}
    data = {**base.model_dump(), "efficiency": merged}
    hw = spec_files.validate(HardwareSpec, data, source)
    options = CostOptions.from_dict(dict(cal.cost), f"{source}: cost")
    return Calibrated(hw, options, cal.eager, cal, Path(source))


def load_calibrated(path: str | Path) -> Calibrated:
    p = Path(path)
    if not p.exists():
        raise CodesignError(f"{p}: no calibration overlay; run `codesign calibrate --device cpu` first")
    cal = spec_files.validate(Calibration, spec_files.read_yaml(p), str(p))
    return apply(cal, str(p))


def write(cal: Calibration, path: Path, header: str) -> None:
    """Write the overlay as YAML, with a comment header saying how it was made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(cal.model_dump(), sort_keys=False, default_flow_style=False)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body)
    tmp.replace(path)  # a failed run never leaves half a file
