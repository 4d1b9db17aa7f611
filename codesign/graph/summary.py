"""Tables and exports of an op graph: per-layer-type summary, headline figures, node-link JSON."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import networkx as nx
import pandas as pd

from codesign.graph.op import BYTE_CLASSES


def summary_table(g: nx.DiGraph) -> pd.DataFrame:
    """One row per layer type: layers, ops, GFLOPs and GiB moved (read + written; 2^30 bytes, the
    unit `simulate` reports memory in) by byte class, as columns `<class>_gib`."""
    rows: dict[str, dict] = {}
    layers: dict[str, set[int]] = {}
    for _, op in g.nodes(data="op"):
        r = rows.setdefault(op.layer_type, {"layer_type": op.layer_type, "ops": 0, "gflops": 0.0,
                                            **{f"{c}_gib": 0.0 for c in BYTE_CLASSES}})
        layers.setdefault(op.layer_type, set()).add(op.layer)
        r["ops"] += 1
        r["gflops"] += op.flops / 1e9
        for c in BYTE_CLASSES:
            r[f"{c}_gib"] += (op.bytes_read[c] + op.bytes_written[c]) / 2**30
    df = pd.DataFrame(list(rows.values()))
    df.insert(1, "layers", [len(layers[t]) for t in df["layer_type"]])
    total = {"layer_type": "total", **df.drop(columns=["layer_type"]).sum(numeric_only=True).to_dict()}
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def headline(g: nx.DiGraph, cache: dict[str, float]) -> dict:
    """The figures `codesign trace --json` prints. FLOPs per token are per new token of the phase
    (decode: per sequence per step), MTP excluded."""
    flops = sum(op.flops for _, op in g.nodes(data="op") if op.layer_type != "mtp")
    new_tokens = g.graph["step_tokens"]
    return {
        "model": g.graph["model"],
        "phase": g.graph["phase"],
        "batch": g.graph["batch"],
        "tokens": g.graph["tokens"],
        "context": g.graph["context"],
        "router": g.graph["router"],
        "ops": g.number_of_nodes(),
        "params_total": g.graph["params_total"],
        "params_active": g.graph["params_active"],
        "params_active_with_embedding": g.graph["params_active_with_embedding"],
        "params_mtp": g.graph["params_mtp"],
        "flops_per_token": flops / new_tokens,
        "kv_cache_bytes_per_token": cache["kv_cache_bytes_per_token"],
        "state_bytes_per_sequence": cache["state_bytes_per_sequence"],
        "trace_s": g.graph["trace_s"],
    }


def to_node_link(g: nx.DiGraph) -> dict:
    """networkx node-link data with each Op flattened to plain JSON attributes."""
    h = nx.DiGraph()
    h.graph.update(g.graph)
    shape = g.graph.get("shape")
    if shape is not None:  # the step shape as plain groups
        h.graph["shape"] = [dataclasses.asdict(grp) for grp in shape.groups]
    for n, op in g.nodes(data="op"):
        h.add_node(n, **op.to_dict())
    h.add_edges_from(g.edges)
    return nx.node_link_data(h, edges="edges")


def export_json(g: nx.DiGraph, path: Path) -> None:
    path.write_text(json.dumps(to_node_link(g)))
