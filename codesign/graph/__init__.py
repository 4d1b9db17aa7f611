"""Tracing real models into op graphs (networkx), with router models for MoE expert counts."""

from codesign.graph.op import BYTE_CLASSES, Op
from codesign.graph.router import HistogramRouter, RouterModel, UniformRouter, ZipfRouter, make_router
from codesign.graph.trace import cache_bytes, count_params, totals, trace

__all__ = ["Op", "BYTE_CLASSES", "trace", "totals", "count_params", "cache_bytes", "RouterModel",
           "UniformRouter", "ZipfRouter", "HistogramRouter", "make_router"]
