"""`codesign simulate`: throughput, latency and memory of a model on a hardware spec.

    codesign simulate --hw h200                       # qwen3.5-397b-a17b at 32K and 256K, best plan
    codesign simulate --hw h200 --model qwen3-235b-a22b --context 32k,256k --chips 8
    codesign simulate --scenario scenario.yaml [--json]
"""

from __future__ import annotations

import argparse
import json

from codesign.errors import CodesignError
from codesign.results import Result
from codesign.units import parse_tokens


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="simulate a model on a hardware spec (tokens/s, TTFT, TPOT, memory)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hw", help="hardware spec: a name in hw_specs/ or a YAML path")
    p.add_argument("--model", default=None, help="model: a name in model_graphs/ or a path (default qwen3.5-397b-a17b)")
    p.add_argument("--context", default=None, help="comma-separated contexts, e.g. 32k,256k (default 32k,256k)")
    p.add_argument("--chips", type=int, default=None, help="chips in the deployment (default: the spec's system size)")
    p.add_argument("--plan", default="auto", help="'auto' or e.g. tp=8,ep=8 (default auto: best plan found)")
    p.add_argument("--scenario", default=None, help="a scenario YAML file (one mapping or a list)")
    p.add_argument("--json", action="store_true", help="print JSON results instead of a table")
    return p


def parse_plan(text: str) -> str | dict[str, int]:
    """'auto' or 'tp=8,ep=8' -> a plan mapping."""
    if text == "auto":
        return text
    out: dict[str, int] = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        v = v.strip()
        if not sep or not (v.isascii() and v.isdigit() and len(v) <= 9):
            raise CodesignError(f"--plan: expected 'auto' or e.g. tp=8,ep=8, found {text!r}")
        out[k.strip()] = int(v)
    return out


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[Result], title: str = "codesign simulate") -> None:
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for col in ("scenario", "context", "plan", "batch", "tok/s", "tok/s/chip", "TTFT s", "TPOT ms",
                "weights GiB", "KV GiB", "state GiB", "act GiB", "total/cap GiB", "bottleneck"):
        t.add_column(col, overflow="fold")
    for r in results:
        plan = ",".join(f"{k}{v}" for k, v in r.plan.items() if v != 1) or "1"
        if not r.feasible and r.output_tokens_per_s is None:
            t.add_row(r.name, str(r.context or "-"), plan, "-", "infeasible", "-", "-", "-", "-", "-", "-", "-", "-",
                      f"{r.bottleneck or '-'}: {r.reason}")
            continue
        m = r.memory_per_chip_gib
        tpot = r.tpot_s["mean"]
        rate = r.output_tokens_per_s if r.mode != "prefill" else r.input_tokens_per_s
        bott = r.bottleneck or "-"
        if not r.feasible:
            bott = f"{bott} ({r.reason})"
        t.add_row(r.name, str(r.context), plan, str(r.concurrency), _fmt(rate, ",.0f"),
                  _fmt(rate / r.chips if rate is not None else None, ",.1f"), _fmt(r.ttft_s["mean"], ".3g"),
                  _fmt(tpot * 1e3 if tpot is not None else None, ".3g"), _fmt(m["weights"], ".1f"),
                  _fmt(m["kv_cache"], ".1f"), _fmt(m["state"], ".2f"), _fmt(m["activations"], ".2f"),
                  f"{_fmt(m['total'], '.1f')}/{_fmt(m['capacity'], '.1f')}", bott)
    console().print(t)


def console():
    """A rich console; wide when output is not a terminal (pipes, CI logs) so tables do not fold."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def parse_contexts(text: str) -> list[int]:
    """'32k,256k' -> [32768, 262144]; at least one, each a valid token count."""
    parts = [c for c in text.split(",") if c.strip()]
    if not parts:
        raise CodesignError(f"--context: expected comma-separated token counts such as 32k,256k, found {text!r}")
    try:
        return [parse_tokens(c) for c in parts]
    except ValueError as e:
        raise CodesignError(f"--context: {e}") from None


# Flags that say what to simulate; a scenario file says all of that itself.
_POINT_FLAGS = (("hw", None), ("model", None), ("context", None), ("chips", None), ("plan", "auto"))


def run(args: argparse.Namespace) -> int:
    from codesign.limits import MAX_CHIPS, check_count
    from codesign.results import json_safe
    from codesign.sim import DEFAULT_MODEL, simulate, simulate_scenario

    if args.scenario:
        given = [f"--{k} {getattr(args, k)}" for k, default in _POINT_FLAGS if getattr(args, k) != default]
        if given:
            raise CodesignError(f"--scenario: expected no --hw, --model, --context, --chips or --plan with a scenario "
                                f"file (it gives them itself), found {' '.join(given)}")
        from codesign.scenario import load_scenarios

        results = [r for s in load_scenarios(args.scenario) for r in simulate_scenario(s)]
    else:
        if not args.hw:
            raise CodesignError("simulate: give --hw NAME_OR_PATH or --scenario FILE")
        ctx = parse_contexts(args.context) if args.context is not None else None
        if args.chips is not None:
            try:
                check_count("--chips", args.chips, MAX_CHIPS)
            except ValueError as e:
                raise CodesignError(str(e)) from None
        results = simulate(args.hw, args.model or DEFAULT_MODEL, context=ctx, chips=args.chips,
                           plan=parse_plan(args.plan))
    if args.json:
        payload = [json_safe(r.to_dict()) for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, allow_nan=False))
    else:
        print_table(results)
    return 0
