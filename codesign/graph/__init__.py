"""Tracing real models into op graphs (networkx), with router models for MoE expert counts.

`codesign.graph.op` (the node type) and `codesign.graph.router` need no torch; the tracer does,
so `trace` and friends are imported on first use (PEP 562) and `from codesign.graph.op import Op`
stays cheap for the mapping and the simulator.
"""

from __future__ import annotations

import importlib

from codesign.graph.op import BYTE_CLASSES, Op
from codesign.graph.router import HistogramRouter, RouterModel, UniformRouter, ZipfRouter, make_router

_TRACE = {"trace", "totals", "count_params", "cache_bytes", "weight_bytes_by_layer"}


def __getattr__(name: str):
    if name in _TRACE:
        # The tracer's module is `tracing`, so no submodule import can rebind `trace` here.
        module = importlib.import_module("codesign.graph.tracing")
        globals().update({n: getattr(module, n) for n in _TRACE})  # all at once: `trace` is the function
        return globals()[name]
    raise AttributeError(f"module 'codesign.graph' has no attribute {name!r}")


__all__ = ["Op", "BYTE_CLASSES", "trace", "totals", "count_params", "cache_bytes", "weight_bytes_by_layer",
           "RouterModel", "UniformRouter", "ZipfRouter", "HistogramRouter", "make_router"]
