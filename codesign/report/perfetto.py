"""Simulated steps as Chrome / Perfetto trace JSON (the Trace Event Format's JSON object form).

`trace_events(timelines)` turns `codesign.sim.timeline.Timeline`s into one trace: each timeline
(one simulated step, e.g. one result row) is a process, each track (matrix, vector, hbm,
link:scale_up, link:scale_out) a thread, each op a complete event (`"ph": "X"`) named as in the op
graph (`layers.3.mlp.experts/moe_experts`), with its layer, block, kind, FLOPs, bytes and limiting
resource as args. Times are integer nanoseconds written as microseconds with three decimals, so
that events of one track never overlap by a rounding step (Perfetto requires proper nesting).
Open the file at ui.perfetto.dev or chrome://tracing, or query it with Perfetto's trace processor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from codesign.errors import CodesignError
from codesign.sim.timeline import Timeline


def _us(ns: int) -> float:
    return round(ns / 1000.0, 3)


def _process_events(pid: int, label: str, tl: Timeline) -> list[dict[str, Any]]:
    tracks = tl.tracks
    tid_of = {t: i + 1 for i, t in enumerate(tracks)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}},
    ]
    for t, tid in tid_of.items():
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": t}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    last_end: dict[str, int] = {}
    for s in sorted(tl.spans, key=lambda s: (tid_of[s.track], s.start_s, s.end_s)):
        start = max(round(s.start_s * 1e9), last_end.get(s.track, 0))
        end = max(start, round(s.end_s * 1e9))
        last_end[s.track] = end
        events.append({
            "ph": "X", "name": s.name, "cat": s.block, "pid": pid, "tid": tid_of[s.track],
            "ts": _us(start), "dur": _us(end - start),
            "args": {"layer": s.layer, "layer_type": s.layer_type, "kind": s.kind, "flops": s.flops,
                     "bytes": s.bytes, "bottleneck": s.bottleneck},
        })
    return events


def trace_events(timelines: Sequence[Timeline], labels: Sequence[str] | None = None,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trace as a JSON-ready dict: {"traceEvents": [...], "displayTimeUnit": "ns", "metadata": {...}}."""
    labels = list(labels) if labels is not None else [f"step {i}" for i in range(len(timelines))]
    if len(labels) != len(timelines):
        raise CodesignError(f"trace: {len(timelines)} timelines but {len(labels)} labels")
    events: list[dict[str, Any]] = []
    steps = []
    for pid, (label, tl) in enumerate(zip(labels, timelines), start=1):
        events.extend(_process_events(pid, label, tl))
        steps.append({"process": label, "pid": pid, "timeline_s": tl.time_s, "step_time_s": tl.step_time_s,
                      "two_batch_overlap": tl.two_batch_overlap})
    meta = {"generator": "codesign", "steps": steps}
    meta.update(metadata or {})
    return {"traceEvents": events, "displayTimeUnit": "ns", "metadata": meta}


def write_trace(path: str | Path, timelines: Sequence[Timeline], labels: Iterable[str] | None = None,
                metadata: dict[str, Any] | None = None) -> Path:
    """Write `timelines` to `path` as Chrome/Perfetto trace JSON (parent folders are created)."""
    path = Path(path)
    doc = trace_events(list(timelines), None if labels is None else list(labels), metadata)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, allow_nan=False, separators=(",", ":")))
    except OSError as e:
        raise CodesignError(f"--trace {path}: cannot write: {e.strerror or e}") from None
    return path


__all__ = ["trace_events", "write_trace"]
