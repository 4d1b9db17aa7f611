"""What a report draws, computed from finished results through the public API only.

A report never instruments a simulation. Its detail sections re-derive one design point from a
result row (hardware, model, plan, batch = the row's concurrency, KV length = its context) and ask
the public functions for what the row does not carry:

* throughput against context (1K .. 256K): `codesign.simulate` at the row's plan;
* the roofline: the mapped decode step (`codesign.trace` -> `codesign.mapping.map_step`), each op
  costed by `codesign.sim.cost.CostModel` (FLOPs, bytes, seconds);
* the expert-load heatmap: the traced step's `grouped_gemm` ops' `tokens_per_expert`;
* the decode-step timeline: `codesign.sim.timeline.step_timeline` of the mapped step.

Named assumptions: the detail step is the **decode** step at the row's concurrency and context
(what decode-mode rows report; for other modes it is the decode step at the prompt length); the
precision and cost options are the simulator's defaults unless given; the plan is the row's five
dimensions (tp, ep, pp, dp, attention_dp).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from codesign.errors import CodesignError
from codesign.hw import HardwareSpec, load_hw
from codesign.models import ModelConfig, load_model
from codesign.results import PLAN_KEYS, Result

# Contexts of the throughput-against-context curve: 1K, 2K, ..., 256K.
CURVE_CONTEXTS = tuple(1024 * 2**k for k in range(9))
# Sweep columns whose dotted path starts with one of these override the named hardware spec (or
# model config) when a point is re-derived; see docs/report.md.
HW_ROOTS = ("chip.", "system.", "efficiency.", "power.", "cost.")
MODEL_ROOT = "model."


@dataclass
class DesignPoint:
    """One design point, re-derived from a result row."""

    label: str
    hw: HardwareSpec
    config: ModelConfig
    plan: dict[str, int]
    batch: int
    context: int
    chips: int = 1
    precision: dict | None = None
    cost: dict | None = None

    def mapping_inputs(self) -> tuple[Any, Any]:
        from codesign import mapping
        from codesign.sim.simulate import DEFAULT_PRECISION

        prec = self.precision if self.precision is not None else DEFAULT_PRECISION
        return mapping.ParallelPlan.from_dict(self.plan), mapping.Precision.from_dict(prec)


def set_dotted(data: dict, path: str, value: Any) -> None:
    """Set `data[a][b][c] = value` for path "a.b.c" (CodesignError naming the path if it is not there)."""
    node = data
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or p not in node:
            raise CodesignError(f"{path}: no field {'.'.join(parts[:i + 1])!r} in the spec")
        node = node[p]
    if not isinstance(node, dict):
        raise CodesignError(f"{path}: {'.'.join(parts[:-1])!r} is not a mapping")
    node[parts[-1]] = value


def _with_overrides(base: Any, overrides: Mapping[str, Any], cls: type) -> Any:
    if not overrides:
        return base
    d = copy.deepcopy(base.model_dump())
    for path, value in overrides.items():
        set_dotted(d, path, value.item() if isinstance(value, np.generic) else value)
    try:
        return cls.model_validate(d)
    except Exception as e:  # pydantic.ValidationError: one line naming the field
        first = str(e).splitlines()
        raise CodesignError(f"overrides {dict(overrides)}: {' '.join(first[:3])}") from None


def point_from_row(row: Mapping[str, Any], hw: HardwareSpec | str | None = None,
                   model: ModelConfig | str | None = None, precision: dict | None = None,
                   cost: dict | None = None) -> DesignPoint:
    """A flattened result row (`results_to_dataframe`, or a sweep's frame) -> its design point.
    `hw`/`model` default to the row's names; dotted columns (`chip.hbm.bandwidth`, `model.…`) are
    applied to them. CodesignError when the point cannot be re-derived."""
    if not row.get("feasible", False) or not row.get("concurrency"):
        raise CodesignError(f"{row.get('name')}: infeasible rows have no step to draw")
    hw_spec = load_hw(hw if hw is not None else row["hardware"])
    config = load_model(model if model is not None else row["model"])
    hw_over = {k: v for k, v in row.items() if k.startswith(HW_ROOTS) and not _missing(v)}
    m_over = {k[len(MODEL_ROOT):]: v for k, v in row.items() if k.startswith(MODEL_ROOT) and not _missing(v)}
    hw_spec = _with_overrides(hw_spec, hw_over, HardwareSpec)
    config = _with_overrides(config, m_over, ModelConfig)
    plan = {k: int(row.get(f"plan.{k}", 1) or 1) for k in PLAN_KEYS}
    return DesignPoint(label=str(row["name"]), hw=hw_spec, config=config, plan=plan, batch=int(row["concurrency"]),
                       context=int(row["context"]), chips=int(row.get("chips") or 1), precision=precision, cost=cost)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def point_from_result(r: Result, hw: HardwareSpec | str | None = None, model: ModelConfig | str | None = None,
                      precision: dict | None = None, cost: dict | None = None) -> DesignPoint:
    d = r.to_dict()
    row = {k: v for k, v in d.items() if not isinstance(v, dict)}
    row.update({f"plan.{k}": v for k, v in r.plan.items()})
    return point_from_row(row, hw, model, precision, cost)


@dataclass
class StepDetail:
    """The decode step of one design point: what the roofline, heatmap and timeline draw."""

    point: DesignPoint
    ops: pd.DataFrame              # one row per distinct op (see `op_table`)
    expert_tokens: pd.DataFrame    # layers x experts, tokens routed (global batch)
    timeline: Any                  # codesign.sim.timeline.Timeline
    matrix_peak: float             # FLOP/s at the step's matrix dtype
    vector_peak: float             # FLOP/s, fp32
    hbm_bandwidth: float           # bytes/s
    matrix_dtype: str = ""
    sram_bandwidth: float = 0.0    # bytes/s


def _cost_options(point: DesignPoint):
    from codesign.sim.cost import CostOptions

    return CostOptions.from_dict(point.cost)


def op_table(mapped: Any, point: DesignPoint) -> pd.DataFrame:
    """Per-op FLOPs, bytes and simulated seconds of a mapped step, one row per distinct op (layer
    numbers folded: `layers.*.mlp.experts/moe_experts`), with `count` = how many times it runs."""
    import re

    from codesign.sim.cost import CostModel
    from codesign.sim.engine import StepSimulator, precision_dtypes

    opts = _cost_options(point)
    matrix, attn = precision_dtypes(mapped.precision, opts.attention_dtype)
    cm = CostModel(point.hw, matrix, attn, opts)
    residency = StepSimulator(point.hw, cm).residency(mapped.graph)
    rows = []
    for _, op in mapped.graph.nodes(data="op"):
        c = cm.cost(op, residency)
        rows.append({"name": re.sub(r"layers\.\d+\.", "layers.*.", op.name), "kind": op.kind, "block": op.block,
                     "layer_type": op.layer_type, "flops": float(op.flops), "bytes": float(op.bytes_total),
                     "time_s": float(c.time_s), "bottleneck": c.bottleneck})
    df = pd.DataFrame(rows)
    keys = ["name", "kind", "block", "layer_type", "flops", "bytes", "time_s", "bottleneck"]
    out = df.groupby(keys, sort=True, dropna=False).size().reset_index(name="count")
    out["intensity"] = out["flops"] / out["bytes"].where(out["bytes"] > 0)
    out["flops_per_s"] = out["flops"] / out["time_s"].where(out["time_s"] > 0)
    return out


def expert_tokens(graph: Any) -> pd.DataFrame:
    """Tokens per expert per MoE layer (rows: layer, columns: expert id) from the traced graph."""
    rows = {}
    for _, op in graph.nodes(data="op"):
        if op.kind == "grouped_gemm" and op.tokens_per_expert is not None:
            rows[op.layer] = list(op.tokens_per_expert)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def step_detail(point: DesignPoint) -> StepDetail:
    """Trace, map and cost the point's decode step (public API), and simulate its timeline."""
    import codesign as cs
    from codesign import mapping
    from codesign.sim.cost import spec_dtype
    from codesign.sim.engine import precision_dtypes
    from codesign.sim.timeline import step_timeline

    plan, prec = point.mapping_inputs()
    graph = cs.trace(point.config, phase="decode", batch=point.batch, context=point.context)
    mapped = mapping.map_step(graph, point.config, point.hw, plan, prec)
    opts = _cost_options(point)
    matrix, _ = precision_dtypes(mapped.precision, opts.attention_dtype)
    chip = point.hw.chip
    return StepDetail(point=point, ops=op_table(mapped, point), expert_tokens=expert_tokens(graph),
                      timeline=step_timeline(mapped, point.hw, opts), matrix_peak=chip.matrix.peak(matrix),
                      vector_peak=chip.vector.fp32, hbm_bandwidth=chip.hbm.bandwidth,
                      matrix_dtype=spec_dtype(matrix), sram_bandwidth=chip.sram.bandwidth)


def decode_timeline(point: DesignPoint) -> Any:
    """Only the timeline of the point's decode step (what `codesign simulate --trace` writes)."""
    import codesign as cs
    from codesign import mapping
    from codesign.sim.timeline import step_timeline

    plan, prec = point.mapping_inputs()
    graph = cs.trace(point.config, phase="decode", batch=point.batch, context=point.context)
    mapped = mapping.map_step(graph, point.config, point.hw, plan, prec)
    return step_timeline(mapped, point.hw, _cost_options(point))


def context_curve(point: DesignPoint, contexts: Iterable[int] = CURVE_CONTEXTS) -> pd.DataFrame:
    """Decode throughput per chip against context at the point's plan (`codesign.simulate`);
    contexts beyond the model's maximum (`max_position_embeddings`) are left out."""
    import codesign as cs
    from codesign.results import results_to_dataframe

    contexts = [c for c in contexts if c <= point.config.max_position_embeddings]
    if not contexts:
        return pd.DataFrame()
    rs = cs.simulate(point.hw, point.config, context=contexts, chips=point.chips, plan=point.plan, precision=point.precision,
                     cost=point.cost, name=point.label)
    df = results_to_dataframe(rs)
    df["series"] = f"{point.config.name} on {point.hw.name} ({_plan_label(point.plan)})"
    return df


def _plan_label(plan: Mapping[str, int]) -> str:
    return ",".join(f"{k}{v}" for k, v in plan.items() if v != 1) or "1 chip"


@dataclass
class ReportData:
    """Everything a report draws. `rows`: flattened result rows (one per design point);
    `breakdowns`: row name -> {"block": {...}, "resource": {...}} seconds per step; `curves`: rows of
    `context_curve`; `details`: step details of the chosen points; `sweep`: True for sweep reports
    (Pareto plots drawn); `notes`: lines shown under the summary."""

    title: str
    rows: pd.DataFrame
    breakdowns: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    details: list[StepDetail] = field(default_factory=list)
    sweep: bool = False
    command: str = ""
    notes: list[str] = field(default_factory=list)


__all__ = ["CURVE_CONTEXTS", "DesignPoint", "StepDetail", "ReportData", "point_from_row", "point_from_result",
           "step_detail", "decode_timeline", "context_curve", "op_table", "expert_tokens", "set_dotted"]
