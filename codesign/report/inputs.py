"""What a report draws, computed from finished results through the public API only.

A report never instruments a simulation. Its detail sections take the design point a result row
was evaluated at, a `codesign.point.Point` (docs/point.md), and ask the public functions for what
the row does not carry:

* throughput against context (1K .. 256K): `codesign.evaluate` of the point at those contexts;
* the roofline: the mapped decode step (`codesign.trace` -> `codesign.mapping.map_step`, with the
  point's mapping options), each op costed by `codesign.sim.cost.CostModel` (FLOPs, bytes, seconds);
* the expert-load heatmap: the traced step's `grouped_gemm` ops' `tokens_per_expert`;
* the decode-step timeline: `codesign.sim.timeline.step_timeline` of the mapped step.

Where the point comes from: `codesign simulate --report` passes the points it simulated; a sweep
store keeps every evaluated point by its hash (docs/sweep.md). Only where no point is known (a
results folder written by other tools) is one re-derived from the row: hardware and model by
name, the row's `overrides`, else its swept dotted-path columns, and the simulator's defaults for
everything else (`point_from_row`).

Named assumptions: the detail step is the **decode** step at the row's concurrency and context
(what decode-mode rows report; for other modes it is the decode step at the prompt length); where
the point searched plans (`parallel: auto`), the plan is the row's five dimensions (tp, ep, pp, dp,
attention_dp) with the default redundant-expert rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd

from codesign.errors import CodesignError
from codesign.point import Point, design_point, override, schema_paths
from codesign.results import PLAN_KEYS, Result

# Contexts of the throughput-against-context curve: 1K, 2K, ..., 256K.
CURVE_CONTEXTS = tuple(1024 * 2**k for k in range(9))
# Columns whose name starts with one of these are swept dotted paths of the input tree (shown
# with SI units in the summary; applied to a re-derived point when the row has no `overrides`).
HW_ROOTS = ("chip.", "system.", "efficiency.", "power.", "price.", "hw.")
MODEL_ROOT = "model."
INPUT_ROOTS = HW_ROOTS + (MODEL_ROOT, "cost.", "mapping.", "precision.", "workload.", "slo.", "parallel.")


@dataclass(frozen=True)
class DesignPoint:
    """The design point of one result row: its `Point` with the plan the row ran (fixed) and the
    row's context, and the row's batch (its concurrency)."""

    label: str
    point: Point
    batch: int

    @property
    def hw(self) -> Any:
        return self.point.hw

    @property
    def config(self) -> Any:
        return self.point.model

    @property
    def chips(self) -> int:
        return self.point.resolved_chips

    @property
    def context(self) -> int:
        return self.point.contexts[0]

    @property
    def plan(self) -> dict[str, int]:
        """The five plan dimensions (tp, ep, pp, dp, attention_dp)."""
        return {k: int(getattr(self.point.parallel, k)) for k in PLAN_KEYS}

    def mapping_inputs(self) -> tuple[Any, Any]:
        return self.point.parallel, self.point.precision


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _row_plan(row: Mapping[str, Any]) -> dict[str, int]:
    plan = row.get("plan")
    if isinstance(plan, Mapping):
        return {k: int(plan.get(k, 1)) for k in PLAN_KEYS}
    return {k: int(row.get(f"plan.{k}", 1) or 1) for k in PLAN_KEYS}


def at_row(point: Point, row: Mapping[str, Any]) -> DesignPoint:
    """The row's design point from the `Point` it was evaluated at: the plan the row ran (the
    point's own when fixed, the row's when the point searched `auto`) and the row's context."""
    if not row.get("feasible", False) or _missing(row.get("concurrency")) or not row.get("concurrency"):
        raise CodesignError(f"{row.get('name')}: infeasible rows have no step to draw")
    changes: dict[str, Any] = {"context": [int(row["context"])]}
    if point.parallel == "auto" or {k: getattr(point.parallel, k) for k in PLAN_KEYS} != _row_plan(row):
        changes["parallel"] = _row_plan(row)
    return DesignPoint(label=str(row["name"]), point=override(point, changes), batch=int(row["concurrency"]))


def _overrides(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's dotted-path overrides: its `overrides` (a mapping, or JSON text as a store keeps
    it), else its columns named by an input path (`chip.hbm.bandwidth`, `model.moe.num_experts`)."""
    given = row.get("overrides")
    if isinstance(given, str):
        try:
            given = json.loads(given)
        except ValueError:
            given = None
    if isinstance(given, Mapping) and given:
        return dict(given)
    valid = set(schema_paths())
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
            if isinstance(k, str) and k.startswith(INPUT_ROOTS) and k in valid and not _missing(v)}


def point_from_row(row: Mapping[str, Any], hw: Any = None, model: Any = None, precision: dict | None = None,
                   cost: dict | None = None) -> DesignPoint:
    """A row's design point where no `Point` was kept (a results folder from elsewhere): `hw` and
    `model` (default: the row's names) with `simulate()`'s defaults, the row's chips and plan, and
    its overrides applied (`_overrides`). CodesignError when it cannot be re-derived."""
    if not row.get("feasible", False) or _missing(row.get("concurrency")) or not row.get("concurrency"):
        raise CodesignError(f"{row.get('name')}: infeasible rows have no step to draw")
    base = design_point(hw if hw is not None else str(row["hardware"]),
                        model if model is not None else str(row["model"]), context=[int(row["context"])],
                        chips=int(row.get("chips") or 1), plan=_row_plan(row), precision=precision, cost=cost,
                        name=str(row["name"]))
    changes = {k: v for k, v in _overrides(row).items() if k not in ("chips", "context", "name")
               and not k.startswith("parallel")}
    point = override(base, changes) if changes else base
    return at_row(point, row)


def point_from_result(r: Result, point: Point | None = None, hw: Any = None, model: Any = None,
                      precision: dict | None = None, cost: dict | None = None) -> DesignPoint:
    """A `codesign.simulate` row's design point: from the `Point` it was evaluated at when given,
    else re-derived (`point_from_row`)."""
    d = r.to_dict()
    row = {k: v for k, v in d.items() if not isinstance(v, dict) or k in ("plan", "overrides")}
    if point is not None:
        return at_row(point, row)
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


def mapped_decode_step(point: DesignPoint) -> tuple[Any, Any]:
    """(traced graph, mapped step) of the point's decode step, mapped as the simulator maps it
    (the point's mapping options; EP ranks ranked at the cost model's rates)."""
    import codesign as cs
    from codesign import mapping
    from codesign.sim.cost import CostModel
    from codesign.sim.engine import precision_dtypes

    p = point.point
    plan, prec = point.mapping_inputs()
    graph = cs.trace(p.model, phase="decode", batch=point.batch, context=point.context)
    matrix, attn = precision_dtypes(prec, p.cost.attention_dtype)
    rates = CostModel(p.hw, matrix, attn, p.cost).rank_rates()
    mapped = mapping.map_step(graph, p.model, p.hw, plan, prec, **p.mapping.map_kwargs(), rates=rates)
    return graph, mapped


def op_table(mapped: Any, point: DesignPoint) -> pd.DataFrame:
    """Per-op FLOPs, bytes and simulated seconds of a mapped step, one row per distinct op (layer
    numbers folded: `layers.*.mlp.experts/moe_experts`), with `count` = how many times it runs."""
    import re

    from codesign.sim.cost import CostModel
    from codesign.sim.elementwise_regions import charged_ops
    from codesign.sim.engine import StepSimulator, precision_dtypes

    opts = point.point.cost
    matrix, attn = precision_dtypes(mapped.precision, opts.attention_dtype)
    cm = CostModel(point.hw, matrix, attn, opts)
    residency = StepSimulator(point.hw, cm).residency(mapped.graph)
    rows = []
    # each op as the step charges it (element-wise ops as their regions', `charged_ops`)
    for op in charged_ops(mapped.graph, opts.elementwise_regions).values():
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
    from codesign.sim.cost import spec_dtype
    from codesign.sim.engine import precision_dtypes
    from codesign.sim.timeline import step_timeline

    graph, mapped = mapped_decode_step(point)
    opts = point.point.cost
    matrix, _ = precision_dtypes(mapped.precision, opts.attention_dtype)
    chip = point.hw.chip
    return StepDetail(point=point, ops=op_table(mapped, point), expert_tokens=expert_tokens(graph),
                      timeline=step_timeline(mapped, point.hw, opts), matrix_peak=chip.matrix.peak(matrix),
                      vector_peak=chip.vector.fp32, hbm_bandwidth=chip.hbm.bandwidth,
                      matrix_dtype=spec_dtype(matrix), sram_bandwidth=chip.sram.bandwidth)


def decode_timeline(point: DesignPoint) -> Any:
    """Only the timeline of the point's decode step (what `codesign simulate --trace` writes)."""
    from codesign.sim.timeline import step_timeline

    _, mapped = mapped_decode_step(point)
    return step_timeline(mapped, point.hw, point.point.cost)


def context_curve(point: DesignPoint, contexts: Iterable[int] = CURVE_CONTEXTS) -> pd.DataFrame:
    """Decode throughput per chip against context at the point's plan (`codesign.evaluate` of the
    point at those contexts; a point of another workload mode is evaluated as a decode point with
    its hardware, model, plan, precision and options); contexts beyond the model's maximum
    (`max_position_embeddings`) are left out."""
    import codesign as cs
    from codesign.results import results_to_dataframe

    contexts = [c for c in contexts if c <= point.config.max_position_embeddings]
    if not contexts:
        return pd.DataFrame()
    p = point.point
    if p.workload.mode == "decode":
        curve = override(p, {"context": contexts, "name": point.label})
    else:
        curve = design_point(p.hw, p.model, context=contexts, chips=p.resolved_chips, plan=p.parallel,
                             precision=p.precision.to_dict(), cost=p.cost, mapping_options=p.mapping, name=point.label)
    df = results_to_dataframe(cs.evaluate(curve))
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


__all__ = ["CURVE_CONTEXTS", "DesignPoint", "StepDetail", "ReportData", "at_row", "point_from_row",
           "point_from_result", "mapped_decode_step", "step_detail", "decode_timeline", "context_curve", "op_table",
           "expert_tokens"]
