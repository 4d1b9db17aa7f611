"""`codesign simulate`: throughput, latency and memory of a model on a hardware spec.

    codesign simulate --hw h200                       # qwen3.5-397b-a17b at 32K and 256K, best plan
    codesign simulate --hw h200 --model qwen3-235b-a22b --context 32k,256k --chips 8
    codesign simulate --scenario examples/scenario.yaml [--json]
    codesign simulate --hw h200 --wide                # every column; --json for every field
    codesign simulate --hw h200 --set chip.hbm.bandwidth="8 TB/s" --set mapping.two_batch_overlap=true
    codesign simulate --hw h200 --report reports/h200.html --trace step.json
"""

from __future__ import annotations

import argparse
import json

from codesign.commands.result_table import console, print_table  # noqa: F401 (console: used by validate, reproduce)
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
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override any input by its dotted path (docs/point.md), e.g. chip.hbm.bandwidth='8 TB/s'; "
                        "VALUE is read as YAML (numbers, true/false, lists); repeatable")
    p.add_argument("--json", action="store_true", help="print JSON results instead of a table")
    p.add_argument("--wide", action="store_true", help="a table with every column (the default one fits 100 columns)")
    p.add_argument("--report", metavar="FILE", default=None,
                   help="also write a self-contained HTML report of the results (docs/report.md)")
    p.add_argument("--trace", metavar="FILE", default=None,
                   help="also write the simulated decode step(s) as Chrome/Perfetto trace JSON")
    return p


def parse_sets(items: list[str]) -> dict:
    """--set PATH=VALUE arguments -> {path: value}, each VALUE read as a YAML scalar or list."""
    import yaml

    out: dict = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise CodesignError(f"--set: expected PATH=VALUE such as chip.hbm.bandwidth='8 TB/s', found {item!r}")
        try:
            out[path.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[path.strip()] = text
    return out


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


def print_server_table(results: list[Result]) -> None:
    """Server-mode rows: the stream, the rate (found by the SLO search or given), latency percentiles."""
    from rich.table import Table

    t = Table(title="server mode (latencies p50 / p99)")
    for col in ("scenario", "stream", "requests", "rate req/s", "tok/s", "TTFT s", "TPOT ms", "ITL p99 ms",
                "queue p99 s", "running", "KV peak", "preempted", "goodput req/s"):
        t.add_column(col, overflow="fold")
    for r in results:
        s = r.serving
        rate = s.get("rate_per_s")
        t.add_row(r.name, s["stream"], str(s["requests"]), _fmt(rate, ".3g") + (" (SLO)" if "above_rate" in s else ""),
                  _fmt(r.output_tokens_per_s, ",.0f"), f"{_fmt(r.ttft_s['p50'])} / {_fmt(r.ttft_s['p99'])}",
                  f"{_fmt(_ms(r.tpot_s['p50']))} / {_fmt(_ms(r.tpot_s['p99']))}", _fmt(_ms(s["itl_s"]["p99"])),
                  _fmt(s["queue_s"]["p99"]), f"{s['mean_running']:.1f}", f"{s['peak_kv_use']:.0%}", str(s["preemptions"]),
                  _fmt(s.get("goodput_requests_per_s")))
    console().print(t)


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1e3


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
    from codesign.point import Point, override
    from codesign.results import json_safe
    from codesign.sim import DEFAULT_MODEL
    from codesign.sim.simulate import simulate_point

    if args.report or args.trace:  # fail before the simulation, not after it
        from codesign.commands.report import check_writable

        for flag, path in (("--report", args.report), ("--trace", args.trace)):
            if path:
                check_writable(path, flag)
    sets = parse_sets(args.set)
    if args.scenario:
        given = [f"--{k} {getattr(args, k)}" for k, default in _POINT_FLAGS if getattr(args, k) != default]
        if given:
            raise CodesignError(f"--scenario: expected no --hw, --model, --context, --chips or --plan with a scenario "
                                f"file (it gives them itself; change its fields with --set PATH=VALUE), found "
                                f"{' '.join(given)}")
        from codesign.scenario import load_scenarios

        points = [Point.from_scenario(s) for s in load_scenarios(args.scenario)]
    else:
        if not args.hw:
            raise CodesignError("simulate: give --hw NAME_OR_PATH or --scenario FILE")
        ctx = parse_contexts(args.context) if args.context is not None else None
        if args.chips is not None:
            try:
                check_count("--chips", args.chips, MAX_CHIPS)
            except ValueError as e:
                raise CodesignError(str(e)) from None
        points = [Point.from_kwargs(args.hw, args.model or DEFAULT_MODEL, context=ctx, chips=args.chips,
                                    plan=parse_plan(args.plan), source="simulate")]
    if sets:
        points = [override(p, sets) for p in points]
    runs = [(p, simulate_point(p)) for p in points]
    results = [r for _, rs in runs for r in rs]
    # the point each row was evaluated at, for the report's detail sections
    inputs = {"points": [p for p, rs in runs for _ in rs]}
    if args.json:
        payload = [json_safe(r.to_dict()) for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, allow_nan=False))
    else:
        print_table(results, wide=args.wide)
        servers = [r for r in results if r.mode == "server" and r.serving and "duration_s" in r.serving]
        if servers:
            print_server_table(servers)
    if args.report or args.trace:
        from codesign.commands.report import write_simulate_outputs

        write_simulate_outputs(results, inputs, args.report, args.trace)
    return 0
