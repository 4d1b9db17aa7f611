"""A strict check of the Chrome Trace Event Format (JSON object form) as codesign writes it: the
fields Perfetto's JSON importer reads, their types, and proper nesting of complete events per
thread. Used where Perfetto's trace processor binary is not available offline."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import jsonschema

_INT = {"type": "integer", "minimum": 0}
EVENT = {
    "oneOf": [
        {"type": "object", "additionalProperties": False,
         "required": ["ph", "name", "cat", "pid", "tid", "ts", "dur", "args"],
         "properties": {"ph": {"const": "X"}, "name": {"type": "string", "minLength": 1}, "cat": {"type": "string"},
                        "pid": _INT, "tid": _INT, "ts": {"type": "number", "minimum": 0},
                        "dur": {"type": "number", "minimum": 0}, "args": {"type": "object"}}},
        {"type": "object", "additionalProperties": False, "required": ["ph", "name", "pid", "tid", "args"],
         "properties": {"ph": {"const": "M"},
                        "name": {"enum": ["process_name", "process_sort_index", "thread_name", "thread_sort_index"]},
                        "pid": _INT, "tid": _INT,
                        "args": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                 "properties": {"name": {"type": "string"}, "sort_index": {"type": "integer"}}}}},
    ]
}
TRACE = {
    "type": "object", "additionalProperties": False, "required": ["traceEvents"],
    "properties": {"traceEvents": {"type": "array", "items": EVENT, "minItems": 1},
                   "displayTimeUnit": {"enum": ["ms", "ns"]}, "metadata": {"type": "object"}},
}


def validate_trace(doc: dict) -> None:
    jsonschema.validate(doc, TRACE)
    for e in doc["traceEvents"]:  # microseconds with at most nanosecond resolution
        if e["ph"] == "X":
            for k in ("ts", "dur"):
                assert abs(e[k] * 1000 - round(e[k] * 1000)) < 1e-6, (k, e[k])


def check_nesting(doc: dict) -> None:
    """Complete events of one (pid, tid) never partly overlap (integer nanoseconds)."""
    per = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            s = round(e["ts"] * 1000)
            per[(e["pid"], e["tid"])].append((s, s + round(e["dur"] * 1000)))
    for spans in per.values():
        spans.sort()
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 >= e0 or e1 <= e0, ((s0, e0), (s1, e1))


def trace_processor_binary() -> str | None:
    """$PERFETTO_TRACE_PROCESSOR, else the pinned binary the perfetto package caches, if present."""
    env = os.environ.get("PERFETTO_TRACE_PROCESSOR")
    if env and Path(env).is_file():
        return env
    try:
        from perfetto.prebuilts.manifests.trace_processor_shell import TRACE_PROCESSOR_SHELL_MANIFEST
    except ImportError:
        return None
    import platform

    cache = Path.home() / ".local" / "share" / "perfetto" / "prebuilts"
    for m in TRACE_PROCESSOR_SHELL_MANIFEST:
        if m.get("platform") == os.sys.platform and platform.machine() in m.get("machine", []):
            path = cache / f"{m['file_name']}-{m['sha256'][:16]}"
            if path.is_file():
                return str(path)
    return None
