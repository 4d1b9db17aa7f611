"""The report's figures: matplotlib (Agg) -> inline SVG strings. Drawing only: every number comes
from `codesign.report.inputs.ReportData`.

SVGs are deterministic (fixed hash salt, no date) and their ids are prefixed per figure so that
several can live in one HTML document. Figures are built with matplotlib's object API
(`matplotlib.figure.Figure`) under a local style (`rc_context`): importing this module changes
neither the pyplot backend nor global rcParams (a notebook keeps its inline plots). Figures with thousands of marks (the timeline, the heatmap)
rasterise those marks inside the SVG (a PNG data URI), keeping the file small.
"""

from __future__ import annotations

import functools
import io
import re
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

GiB = 2**30
_COUNTER = [0]
MEMORY_CLASSES = (("weights", "weights"), ("kv_cache", "KV cache"), ("state", "state"),
                  ("activations", "activations"), ("reserve", "reserve"), ("free", "free"))
MEMORY_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#E5E5E5")
TRACK_ORDER = ("matrix", "vector", "hbm", "link:scale_up", "link:scale_out")

STYLE = {"svg.hashsalt": "codesign", "svg.fonttype": "path", "font.size": 9, "axes.spines.top": False,
         "axes.spines.right": False, "figure.dpi": 100, "svg.image_inline": True}


def _styled(fn: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 4)) -> tuple[Figure, Any]:
    """`pyplot.subplots` on a backend-free Figure (nothing registered with pyplot)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def to_svg(fig: Any) -> str:
    """The figure as an inline `<svg>` element (prolog stripped, ids unique within the page)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    _COUNTER[0] += 1
    prefix = f"f{_COUNTER[0]}-"
    ids = set(re.findall(r'id="([^"]+)"', svg))
    for i in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{i}"', f'id="{prefix}{i}"').replace(f"#{i})", f"#{prefix}{i})") \
                 .replace(f'href="#{i}"', f'href="#{prefix}{i}"')
    return svg


def reset_ids() -> None:
    """Restart figure id prefixes (one report = one numbering, so output is reproducible)."""
    _COUNTER[0] = 0


def _block_colors(blocks: Sequence[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab20"]
    return {b: cmap(i % 20) for i, b in enumerate(sorted(set(blocks)))}


@_styled
def memory_bars(rows: pd.DataFrame) -> str:
    """Stacked bars per result row: weights, KV, state, activations, reserve, free vs capacity (GiB)."""
    col = "memory_per_chip_gib."
    names = rows["name"].astype(str).tolist()
    parts = {k: rows[col + k].astype(float).fillna(0).to_numpy() for k in ("weights", "kv_cache", "state", "activations")}
    total = rows[col + "total"].astype(float).fillna(0).to_numpy()
    cap = rows[col + "capacity"].astype(float).fillna(0).to_numpy()
    parts["reserve"] = np.maximum(0.0, total - sum(parts.values()))
    parts["free"] = np.maximum(0.0, cap - total)
    fig, ax = _subplots(figsize=(8, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for (key, label), color in zip(MEMORY_CLASSES, MEMORY_COLORS):
        ax.barh(y, parts[key], left=left, color=color, label=label, edgecolor="white", linewidth=0.5)
        left += parts[key]
    ax.scatter(cap, y, marker="|", s=300, color="black", label="capacity", zorder=3)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("GiB per chip")
    ax.legend(ncol=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    return to_svg(fig)


@_styled
def context_curves(curves: pd.DataFrame) -> str:
    """Output tokens/s per chip against context, one line per series; infeasible contexts absent."""
    fig, ax = _subplots(figsize=(8, 3.6))
    for series, d in curves.groupby("series", sort=True):
        d = d[d["feasible"].astype(bool)].sort_values("context")
        ax.plot(d["context"], d["output_tokens_per_s_per_chip"], marker="o", label=series)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted(curves["context"].unique())
    ax.set_xticks(ticks, [f"{int(t) // 1024}K" for t in ticks])
    ax.set_xlabel("context (tokens of KV per sequence)")
    ax.set_ylabel("output tokens/s per chip")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(frameon=False)
    return to_svg(fig)


@_styled
def roofline(ops: pd.DataFrame, matrix_peak: float, vector_peak: float, hbm_bw: float, title: str,
             sram_bw: float = 0.0) -> str:
    """Ops at (FLOPs/byte, achieved FLOP/s) under the chip's compute, HBM and SRAM roofs; marker
    area grows with how often the op runs in the step."""
    d = ops[(ops["flops"] > 0) & (ops["bytes"] > 0) & (ops["time_s"] > 0) & (ops["kind"] != "collective")]
    fig, ax = _subplots(figsize=(8, 4.6))
    lo = max(1e-3, float(d["intensity"].min()) / 4) if len(d) else 1e-2
    hi = max(float(d["intensity"].max()) * 4, matrix_peak / hbm_bw * 8) if len(d) else 1e4
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(matrix_peak, hbm_bw * x), color="black", lw=1.5,
            label=f"matrix peak {matrix_peak / 1e12:,.0f} TFLOP/s, HBM {hbm_bw / 1e12:.2f} TB/s")
    ax.plot(x, np.minimum(vector_peak, hbm_bw * x), color="grey", lw=1, ls="--",
            label=f"vector peak {vector_peak / 1e12:,.1f} TFLOP/s (fp32)")
    if sram_bw > hbm_bw:
        ax.plot(x, np.minimum(matrix_peak, sram_bw * x), color="black", lw=0.8, ls=":",
                label=f"SRAM {sram_bw / 1e12:.3g} TB/s (bytes served on chip)")
    kinds = sorted(d["kind"].unique())
    markers = dict(zip(kinds, "os^DvP*X"))
    colors = _block_colors(d["block"].unique().tolist())
    for (kind, block), g in d.groupby(["kind", "block"], sort=True):
        ax.scatter(g["intensity"], g["flops_per_s"], s=12 + 6 * np.sqrt(g["count"]), marker=markers[kind],
                   color=colors[block], alpha=0.8, edgecolor="black", linewidth=0.3, label=f"{block} ({kind})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved)")
    ax.set_ylabel("achieved FLOP/s (simulated)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_svg(fig)


@_styled
def block_times(breakdowns: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Grouped horizontal bars: milliseconds per decode step by block (summed op time) per row."""
    names = list(breakdowns)
    blocks = sorted({b for bd in breakdowns.values() for b in bd.get("block", {})})
    fig, ax = _subplots(figsize=(8, 0.32 * len(blocks) * max(1, len(names)) ** 0.5 + 1.2))
    h = 0.8 / max(1, len(names))
    y = np.arange(len(blocks))
    for i, n in enumerate(names):
        vals = [breakdowns[n].get("block", {}).get(b, 0.0) * 1e3 for b in blocks]
        ax.barh(y + i * h, vals, height=h, label=n)
    ax.set_yticks(y + h * (len(names) - 1) / 2, blocks)
    ax.invert_yaxis()
    ax.set_xlabel("ms per decode step (summed op time, before overlap)")
    ax.legend(frameon=False, fontsize=7, loc="lower right")
    return to_svg(fig)


@_styled
def layer_type_times(timeline: Any) -> str:
    """Milliseconds of the step by layer type (each layer's simulated makespan, summed)."""
    starts = sorted(timeline.layer_start_s.items())
    types = {s.layer: s.layer_type for s in timeline.spans}
    per: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for i, (layer, t0) in enumerate(starts):
        t1 = starts[i + 1][1] if i + 1 < len(starts) else timeline.time_s
        per[types.get(layer, "?")] += t1 - t0
        count[types.get(layer, "?")] += 1
    keys = sorted(per, key=lambda k: -per[k])
    fig, ax = _subplots(figsize=(8, 0.35 * len(keys) + 1))
    ax.barh(range(len(keys)), [per[k] * 1e3 for k in keys], color="#4C72B0")
    ax.set_yticks(range(len(keys)), [f"{k} (x{count[k]})" for k in keys])
    ax.invert_yaxis()
    ax.set_xlabel("ms per decode step (layers of the type, simulated)")
    return to_svg(fig)


@_styled
def expert_heatmap(tokens: pd.DataFrame, title: str) -> str:
    """Tokens routed to each expert (columns) in each MoE layer (rows)."""
    fig, ax = _subplots(figsize=(9, 0.06 * len(tokens) + 2.2))
    im = ax.imshow(tokens.to_numpy(dtype=float), aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    step = max(1, len(tokens) // 10)
    ax.set_yticks(range(0, len(tokens), step), [str(i) for i in tokens.index[::step]])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="tokens", fraction=0.03)
    return to_svg(fig)


def _draw_tracks(ax: Any, spans: Sequence[Any], tracks: Sequence[str], colors: dict[str, Any], t0: float = 0.0) -> None:
    by = defaultdict(list)
    for s in spans:
        by[(s.track, s.block)].append((s.start_s - t0, s.end_s - s.start_s))
    for (track, block), bars in sorted(by.items()):
        coll = ax.broken_barh([(a * 1e3, w * 1e3) for a, w in bars], (tracks.index(track) - 0.4, 0.8),
                              facecolors=colors[block], edgecolors=colors[block], linewidth=0.4)
        coll.set_rasterized(len(spans) > 1500)
    ax.set_yticks(range(len(tracks)), tracks)
    ax.invert_yaxis()


@_styled
def timeline(tl: Any, title: str) -> str:
    """The decode step on the chip's engines: the whole step, and its slowest layer enlarged."""
    tracks = [t for t in TRACK_ORDER if t in tl.tracks] + [t for t in tl.tracks if t not in TRACK_ORDER]
    colors = _block_colors([s.block for s in tl.spans])
    fig, (a1, a2) = _subplots(2, 1, figsize=(10, 0.5 * len(tracks) * 2 + 2.2))
    _draw_tracks(a1, tl.spans, tracks, colors)
    a1.set_xlim(0, tl.time_s * 1e3)
    a1.set_xlabel("ms from the start of the step")
    a1.set_title(title, fontsize=9)
    starts = sorted(tl.layer_start_s.items())
    ends = [starts[i + 1][1] if i + 1 < len(starts) else tl.time_s for i in range(len(starts))]
    slow = max(range(len(starts)), key=lambda i: (ends[i] - starts[i][1], -i)) if starts else 0
    layer, t0 = starts[slow] if starts else (0, 0.0)
    sub = [s for s in tl.spans if s.layer == layer]
    _draw_tracks(a2, sub, tracks, colors, t0)
    a2.set_xlim(0, (ends[slow] - t0) * 1e3 if starts else 1)
    kind = sub[0].layer_type if sub else ""
    a2.set_xlabel(f"ms from the start of layer {layer} ({kind}, the slowest layer)")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, list(colors), ncol=6, loc="lower center", bbox_to_anchor=(0.5, -0.06), frameon=False,
               fontsize=7)
    fig.tight_layout()
    return to_svg(fig)


@_styled
def pareto_scatter(rows: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, color: str | None = None,
                   x_scale: float = 1.0, color_label: str = "", color_scale: float = 1.0) -> str:
    """Feasible rows, `y` (up is better) against `x` (down is better): rows on the front of all
    objectives (`pareto` column) ringed; the front of this plane drawn as a staircase."""
    from codesign.report.pareto import pareto_front

    d = rows[rows["feasible"].astype(bool)].dropna(subset=[x, y])
    fig, ax = _subplots(figsize=(6.2, 4))
    c = d[color].astype(float) * color_scale if color and color in d.columns else None
    sc = ax.scatter(d[x] * x_scale, d[y], c=c, cmap="viridis", s=24, alpha=0.9, label="design points", zorder=3)
    if c is not None:
        fig.colorbar(sc, ax=ax, label=color_label or color, fraction=0.05)
    ringed = d[d["pareto"].astype(bool)] if "pareto" in d.columns else d.iloc[0:0]
    ax.scatter(ringed[x] * x_scale, ringed[y], s=80, facecolors="none", edgecolors="red", linewidths=1.2,
               label="Pareto front (all objectives)", zorder=4)
    plane = d[pareto_front(d, maximize=[y], minimize=[x])].sort_values(x)
    if len(plane):
        ax.step(plane[x] * x_scale, plane[y], where="post", color="red", lw=0.9, alpha=0.7,
                label="front in this plane", zorder=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    return to_svg(fig)


__all__ = ["to_svg", "reset_ids", "memory_bars", "context_curves", "roofline", "block_times", "layer_type_times",
           "expert_heatmap", "timeline", "pareto_scatter"]
