"""`codesign trace`: trace a model into its op graph, print a summary, export it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codesign.errors import CodesignError
from codesign.limits import MAX_BATCH, check_count
from codesign.units import parse_tokens

DEFAULT_CONTEXT = "32k"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "trace",
        help="trace a model on the meta device into an op graph",
        description="Trace a model (no weights) into its op graph and summarise it per layer type.",
    )
    p.add_argument("--model", default="qwen3.5-397b-a17b", help="name in model_graphs/ or a YAML/config.json path")
    p.add_argument("--phase", choices=["decode", "prefill"], default="decode")
    p.add_argument("--batch", type=int, default=1, help="sequences in the step (default 1)")
    p.add_argument("--context", default=None,
                   help=f"decode: tokens already cached; prefill: prompt tokens (default {DEFAULT_CONTEXT})")
    p.add_argument("--offset", default="0", help="prefill only: tokens already cached before the prompt")
    p.add_argument("--router", default="uniform", help="MoE routing model: uniform, zipf or zipf:ALPHA")
    p.add_argument("--seed", type=int, default=0, help="seed of the routing draw")
    p.add_argument("--mtp", action="store_true", help="include the multi-token-prediction head(s)")
    p.add_argument("--out", type=Path, help="write the graph as node-link JSON to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object of headline figures")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk trace cache")
    return p


def run(args: argparse.Namespace) -> int:
    from codesign.graph import cache_bytes, trace
    from codesign.graph.summary import export_json, headline, summary_table
    from codesign.models import load_model

    defaulted = args.context is None
    try:
        context = parse_tokens(DEFAULT_CONTEXT if defaulted else args.context)
        offset = parse_tokens(args.offset) if args.offset not in ("0", 0) else 0
    except ValueError as e:
        raise CodesignError(f"--context/--offset: {e}") from None
    try:
        check_count("--batch", args.batch, MAX_BATCH)
    except ValueError as e:
        raise CodesignError(str(e)) from None
    config = load_model(args.model)
    if defaulted:
        _check_default_context(config, args.phase, context, offset)
    try:
        if args.phase == "decode":
            g = trace(config, "decode", batch=args.batch, context=context, router=args.router, seed=args.seed,
                      include_mtp=args.mtp, disk_cache=not args.no_cache)
        else:
            g = trace(config, "prefill", batch=args.batch, tokens=context, context=offset, router=args.router,
                      seed=args.seed, include_mtp=args.mtp, disk_cache=not args.no_cache)
    except ValueError as e:
        raise CodesignError(str(e)) from None
    head = headline(g, cache_bytes(config))
    if args.out:
        try:
            export_json(g, args.out)
        except OSError as e:
            raise CodesignError(f"{args.out}: cannot write ({e.strerror})") from None
    if args.json:
        json.dump(head, sys.stdout, indent=2)
        print()
        return 0
    _print(config, g, head, summary_table(g), args.out)
    return 0


def _check_default_context(config, phase: str, context: int, offset: int) -> None:
    """A model shorter than the default context gets a message that says the context was a default."""
    length = context if phase == "decode" else context + offset
    limit = config.max_position_embeddings
    if length > limit:
        hint = f"--context {limit // 1024}k" if limit % 1024 == 0 else f"--context {limit}"
        if phase == "prefill" and offset:
            hint = f"--context {limit - offset} or less"
        raise CodesignError(
            f"{config.name}: the default context {DEFAULT_CONTEXT} ({context} tokens) exceeds the model's "
            f"maximum of {limit} tokens; pass a shorter one, e.g. {hint}")


def _print(config, g, head, table, out) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))  # the table needs 120 columns even when piped
    t = Table(title=f"{config.name}: {g.graph['phase']} batch={g.graph['batch']} tokens={g.graph['tokens']} "
              f"context={g.graph['context']} ({g.graph['router']})")
    for col in ["layer type", "layers", "ops", "GFLOPs", "weight GiB", "activation GiB", "kv_cache GiB", "state GiB"]:
        t.add_column(col, justify="left" if col == "layer type" else "right")
    for _, r in table.iterrows():
        t.add_row(str(r["layer_type"]), f"{int(r['layers'])}", f"{int(r['ops'])}", f"{r['gflops']:,.1f}",
                  f"{r['weight_gib']:,.3f}", f"{r['activation_gib']:,.3f}", f"{r['kv_cache_gib']:,.3f}",
                  f"{r['state_gib']:,.3f}")
    console.print(t)
    console.print(
        f"params: {head['params_total'] / 1e9:,.2f}B total, {head['params_active'] / 1e9:,.2f}B active"
        + (f", MTP {head['params_mtp'] / 1e9:,.2f}B apart" if head["params_mtp"] else "")
        + f" | {head['flops_per_token'] / 1e9:,.2f} GFLOP per new token"
        + f" | KV {head['kv_cache_bytes_per_token'] / 1024:,.1f} KiB/token (bf16)"
        + f" | state {head['state_bytes_per_sequence'] / 2**20:,.1f} MiB/sequence"
        + f" | traced in {head['trace_s']:.3f} s"
    )
    if out:
        console.print(f"graph written to {out}")
