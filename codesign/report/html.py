"""`ReportData` -> one self-contained HTML file (jinja2 template, inline SVG figures, inline CSS; no
scripts, no fonts or images fetched: it opens offline, from a mail attachment or a CI artefact).

The output is deterministic: the same data gives the same bytes (no timestamps; fixed SVG ids).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from codesign.errors import CodesignError
from codesign.report import plots
from codesign.report.inputs import HW_ROOTS, MODEL_ROOT, ReportData, StepDetail

# Rows beyond this are left out of the summary table and the memory chart (front and fastest first).
MAX_TABLE_ROWS = 200
MAX_MEMORY_ROWS = 24

_COLUMNS = [  # (column, header, format)
    ("name", "design point", "text"),
    ("hardware", "hardware", "text"),
    ("model", "model", "text"),
    ("chips", "chips", "d"),
    ("context", "context", "ctx"),
    ("_plan", "plan", "text"),
    ("concurrency", "batch", "d"),
    ("output_tokens_per_s", "tok/s", ",.0f"),
    ("output_tokens_per_s_per_chip", "tok/s/chip", ",.1f"),
    ("ttft_s.mean", "TTFT s", ".3g"),
    ("_tpot_ms", "TPOT ms", ".3g"),
    ("_mem", "HBM used/cap GiB", "text"),
    ("usd_per_mtok", "$/Mtok", ".3g"),
    ("power_w", "power kW", "kw"),
    ("tokens_per_joule", "tok/J", ".3g"),
    ("bottleneck", "bottleneck", "text"),
]


# Units of swept spec fields by the last part of their dotted path (values are SI after parsing).
_SI_UNITS = {"bandwidth": "B/s", "link_bandwidth": "B/s", "chip_bandwidth": "B/s", "nic_bandwidth": "B/s",
             "capacity": "B", "tdp": "W", "latency": "s"}


def _si(v: float, unit: str) -> str:
    """4.8e12, "B/s" -> "4.8 TB/s"; 2e-06, "s" -> "2 us"."""
    if v == 0:
        return f"0 {unit}"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"),
                           (1e-6, "u"), (1e-9, "n")):
        if abs(v) >= factor:
            return f"{v / factor:.4g} {prefix}{unit}"
    return f"{v:.4g} {unit}"


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if spec.startswith("si:"):
        return _si(float(v), spec[3:])
    if spec == "text":
        return str(v)
    if spec == "ctx":
        v = int(v)
        return f"{v // 1024}K" if v % 1024 == 0 else str(v)
    if spec == "kw":
        return format(float(v) / 1e3, ".3g")
    if spec == "d":
        return str(int(v))
    return format(float(v), spec)


def _plan(row: pd.Series) -> str:
    parts = [f"{k}{int(row[f'plan.{k}'])}" for k in ("tp", "ep", "pp", "dp", "attention_dp")
             if f"plan.{k}" in row and not pd.isna(row[f"plan.{k}"]) and int(row[f"plan.{k}"]) != 1]
    return ",".join(parts) or "1"


def _ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """Front rows first, then by throughput per chip (feasible first); stable for equal keys."""
    key = pd.DataFrame({
        "front": ~rows["pareto"].astype(bool) if "pareto" in rows.columns else False,
        "feasible": ~rows["feasible"].astype(bool),
        "thr": -rows["output_tokens_per_s_per_chip"].astype(float).fillna(-1.0),
    }, index=rows.index)
    return rows.loc[key.sort_values(["front", "feasible", "thr"], kind="stable").index]


def summary_table(rows: pd.DataFrame) -> dict[str, Any]:
    """Headers and formatted cells of the summary table (swept dotted-path columns included)."""
    swept = [c for c in rows.columns if c.startswith(HW_ROOTS) or c.startswith(MODEL_ROOT)]
    cols = [c for c in _COLUMNS if c[0].startswith("_") or c[0] in rows.columns]
    def swept_format(c: str) -> str:
        if not pd.api.types.is_numeric_dtype(rows[c]):
            return "text"
        unit = _SI_UNITS.get(c.rsplit(".", 1)[-1])
        return f"si:{unit}" if unit else ".4g"

    cols = cols[:6] + [(c, c, swept_format(c)) for c in swept] + cols[6:]
    if "pareto" in rows.columns:
        cols.append(("pareto", "Pareto", "text"))
    cols.append(("reason", "note", "text"))
    headers = [{"label": h, "cls": "text" if f == "text" else ""} for _, h, f in cols]
    out = []
    for _, r in rows.iterrows():
        cells = []
        for c, _, f in cols:
            if c == "_plan":
                v: Any = _plan(r)
            elif c == "_tpot_ms":
                t = r.get("tpot_s.mean")
                v = None if t is None or pd.isna(t) else float(t) * 1e3
            elif c == "_mem":
                m = "memory_per_chip_gib."
                tot, cap = r.get(m + "total"), r.get(m + "capacity")
                v = "-" if tot is None or pd.isna(tot) else f"{float(tot):.1f}/{float(cap):.1f}"
            elif c == "pareto":
                v = "yes" if bool(r[c]) else ""
            else:
                v = r.get(c)
            cells.append({"text": _fmt(v, f), "cls": "text" if f == "text" else ""})
        cls = "infeasible" if not bool(r["feasible"]) else ("front" if bool(r.get("pareto", False)) else "")
        out.append({"cells": cells, "cls": cls})
    return {"headers": headers, "rows": out}


def _detail_view(d: StepDetail) -> dict[str, Any]:
    p = d.point
    tl = d.timeline
    plan = ",".join(f"{k}{v}" for k, v in p.plan.items() if v != 1) or "1"
    heading = f"{p.config.name} on {p.chips}x {p.hw.name}"
    where = f"batch {p.batch}, context {_fmt(p.context, 'ctx')}, plan {plan}"
    measurable = d.ops[(d.ops["flops"] > 0) & (d.ops["bytes"] > 0) & (d.ops["time_s"] > 0) &
                       (d.ops["kind"] != "collective")]
    tbo = (" The step itself used two-batch overlap; the timeline shows the plain schedule."
           if tl.two_batch_overlap else "")
    return {
        "short": f"{p.label}",
        "title": f"{p.label}: decode step",
        "caption": f"{heading}, {where}. Decode step {tl.step_time_s * 1e3:.3g} ms "
                   f"(timeline {tl.time_s * 1e3:.3g} ms, {len(tl.spans)} op spans on {len(tl.tracks)} tracks).",
        "batch": p.batch,
        "roofline": plots.roofline(d.ops, d.matrix_peak, d.vector_peak, d.hbm_bandwidth,
                                   f"{p.hw.name}, matrix dtype {d.matrix_dtype}", d.sram_bandwidth),
        "n_ops": int(len(d.ops)),
        "left_out": int(len(d.ops) - len(measurable)),
        "heatmap": plots.expert_heatmap(d.expert_tokens, f"{p.config.name}: tokens per expert, batch {p.batch}")
        if not d.expert_tokens.empty else "",
        "layer_types": plots.layer_type_times(tl),
        "timeline": plots.timeline(tl, f"{p.label}: {len(tl.layer_start_s)} layers in turn"),
        "timeline_caption": "Ops on the chip's engines (matrix, vector), its HBM channel and links, from the "
                            "SimPy engine, one layer after another; coloured by block. A compute op holds its "
                            "engine and the HBM channel together. The same step as Chrome/Perfetto trace JSON: "
                            "codesign simulate ... --trace step.json." + tbo,
    }


def render(data: ReportData) -> str:
    """The report as one HTML string."""
    import jinja2

    from codesign import __version__

    plots.reset_ids()
    rows = _ordered(data.rows)
    table_rows = rows.head(MAX_TABLE_ROWS)
    notes = list(data.notes)
    if len(rows) > MAX_TABLE_ROWS:
        notes.append(f"Summary table: the first {MAX_TABLE_ROWS} of {len(rows)} rows (Pareto front, then fastest).")
    mem_rows = rows[rows["feasible"].astype(bool)].head(MAX_MEMORY_ROWS)
    memory_note = ""
    if mem_rows.empty:
        mem_rows = rows.head(MAX_MEMORY_ROWS)
    if len(mem_rows) < len(rows):
        memory_note = f"Shown: {len(mem_rows)} of {len(rows)} rows (feasible; Pareto front, then fastest)."
    breakdowns = {k: v for k, v in data.breakdowns.items() if v.get("block")}
    pareto = []
    if data.sweep and "pareto" in rows.columns:
        thr = "output_tokens_per_s_per_chip"
        pareto = [plots.pareto_scatter(rows, "usd_per_mtok", thr, "$ per million output tokens", "output tokens/s per chip",
                                       color="power_w", color_label="deployment power (kW)", color_scale=1e-3),
                  plots.pareto_scatter(rows, "power_w", thr, "deployment power (kW, chips x TDP x utilisation)",
                                       "output tokens/s per chip", color="usd_per_mtok", x_scale=1e-3,
                                       color_label="$ per million output tokens")]
    env = jinja2.Environment(loader=jinja2.PackageLoader("codesign.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return env.get_template("report.html.j2").render(
        title=data.title, version=__version__, command=data.command, notes=notes,
        summary_caption=f"{len(rows)} design point(s). Units: tokens/s, seconds, GiB per chip; "
                        "$/Mtok = chips x the spec's price per chip-hour over the row's throughput; power = "
                        "chips x TDP x utilisation (the spec's power section; docs/point.md).",
        table=summary_table(table_rows),
        memory=plots.memory_bars(mem_rows), memory_note=memory_note,
        curves=plots.context_curves(data.curves) if not data.curves.empty else "",
        blocks=plots.block_times(breakdowns) if breakdowns else "",
        details=[_detail_view(d) for d in data.details],
        pareto=pareto,
        pareto_caption="Feasible design points. Ringed: the Pareto front over all three objectives (throughput "
                       "per chip up, $/Mtok down, power down); staircase: the front of the plane drawn. Both from "
                       "codesign.report.pareto.pareto_front.",
    )


def write_report(data: ReportData, path: str | Path) -> Path:
    """Render `data` and write it to `path` (parent folders created)."""
    path = Path(path)
    html = render(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise CodesignError(f"report {path}: cannot write: {e.strerror or e}") from None
    return path


__all__ = ["render", "write_report", "summary_table", "MAX_TABLE_ROWS"]
