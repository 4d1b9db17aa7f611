"""`codesign validate FILE`: predicted vs measured for every scenario of a validation file, and the
mean absolute percentage error (MAPE) over the scenarios the simulator supports.

    codesign validate benchmarks/validation/public.yaml [--json]
    codesign validate FILE --only 'vllm-1xh100-qwen3-14b-*'     # the scenarios whose name matches
    codesign validate FILE --json > before.json; ...; codesign validate FILE --baseline before.json
    codesign validate --kernels [DIR] [--json]     # the kernel tables (benchmarks/kernels/)

`--baseline` reads an earlier `--json` output and prints, after the table, the MAPE then and now
and every comparison whose error moved (what a change to the model did to the validation rows).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path


# The measured quantities compared, in this order; a row gives one or more. Latencies: `ttft_s`,
# `tpot_s` are means (as `vllm bench serve`, `trtllm-bench` and MLPerf's summaries report them),
# `*_p50_s` medians.
METRICS = ("output_tokens_per_s", "input_tokens_per_s", "requests_per_s", "tpot_s", "ttft_s", "tpot_p50_s",
           "ttft_p50_s", "e2e_s", "e2e_p50_s")
_LATENCY = {"tpot_s": ("tpot_s", "mean"), "ttft_s": ("ttft_s", "mean"), "tpot_p50_s": ("tpot_s", "p50"),
            "ttft_p50_s": ("ttft_s", "p50")}
_SERVING = {"e2e_s": ("e2e_s", "mean"), "e2e_p50_s": ("e2e_s", "p50"), "requests_per_s": ("request_rate_per_s", None)}


@dataclass
class Row:
    name: str
    metric: str | None
    measured: float | None
    predicted: float | None
    status: str  # "ok" | "infeasible: <reason>" | "no measurement" | "refused: <error>" | "not predicted: ..."

    @property
    def error(self) -> float | None:
        if self.measured is None or self.predicted is None:
            return None
        return (self.predicted - self.measured) / self.measured


def predicted(result, metric: str) -> float | None:
    """The simulated figure compared with `measured.<metric>`. A server row's Poisson stream is
    compared by its sustained output throughput (rate x mean output tokens: what a long run at that
    rate completes, as MLPerf Server's 10+ minute runs report it), not by the finite simulated run's
    tokens / duration, which its drain lowers."""
    if metric in _LATENCY:
        field, stat = _LATENCY[metric]
        v = getattr(result, field)
        return v.get(stat) if isinstance(v, dict) else v
    serving = getattr(result, "serving", None) or {}
    if metric in _SERVING:  # request-stream figures: server rows only
        key, stat = _SERVING[metric]
        v = serving.get(key)
        return v.get(stat) if isinstance(v, dict) else v
    if metric == "output_tokens_per_s" and serving.get("sustained_output_tokens_per_s") is not None:
        return serving["sustained_output_tokens_per_s"]
    return getattr(result, metric)


def validate_file(path: str, only: list[str] | None = None) -> list[Row]:
    """Simulate every scenario of `path` (with `only`, those whose name matches one of its glob
    patterns) and pair each of its measurements with the prediction (one `Row` per measured metric)."""
    from codesign.errors import CodesignError
    from codesign.scenario import load_scenarios
    from codesign.sim import simulate_scenario

    rows = []
    for s in selected(load_scenarios(path), only, path):
        measured = s.measured.model_dump() if s.measured else {}
        metrics = [m for m in METRICS if measured.get(m) is not None]
        try:
            (r,) = simulate_scenario(s)  # server rows: a request stream; with an SLO, the highest rate meeting it
        except CodesignError as e:  # a scenario the simulator refuses: reported on its rows, the others still run
            status = f"{REFUSED}{e}"
            rows += [Row(s.name, m, measured[m], None, status) for m in metrics] or [Row(s.name, None, None, None, status)]
            continue
        if not metrics:
            rows.append(Row(s.name, None, None, None, "no measurement"))
            continue
        for metric in metrics:
            if r.output_tokens_per_s is None:
                rows.append(Row(s.name, metric, measured[metric], None, f"infeasible: {r.reason}"))
                continue
            p = predicted(r, metric)
            status = "ok" if p is not None else f"not predicted: {metric} needs workload.mode 'server' (a request stream)"
            rows.append(Row(s.name, metric, measured[metric], p, status))
    return rows


def selected(scenarios: list, only: list[str] | None, path: str) -> list:
    """The scenarios whose name matches one of the glob patterns `only` (all without it); a pattern
    that matches no scenario is bad input."""
    if not only:
        return scenarios
    from codesign.errors import CodesignError

    for pat in only:
        if not any(fnmatch.fnmatchcase(s.name, pat) for s in scenarios):
            raise CodesignError(f"validate --only: no scenario of {path} matches {pat!r} (glob on scenario "
                                f"names, e.g. 'mlperf-v4.1-*')")
    return [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, pat) for pat in only)]


MOVED = 0.001  # a comparison whose error moved by more than this (0.1 point) is listed against a baseline


def load_baseline(path: str) -> dict[tuple[str, str | None], float | None]:
    """An earlier `codesign validate --json` output: the error of each (scenario, metric)."""
    from codesign.errors import CodesignError

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise CodesignError(f"validate --baseline {path}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CodesignError(f"validate --baseline {path}: expected the JSON of `codesign validate FILE --json`, "
                            f"found text that is not JSON ({e})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "name" in r and "error" in r for r in rows):
        raise CodesignError(f"validate --baseline {path}: expected the JSON of `codesign validate FILE --json` "
                            "(an object whose rows each have name, metric and error), found another document")
    return {(r["name"], r.get("metric")): r["error"] for r in rows}


def moved(rows: list[Row], base: dict[tuple[str, str | None], float | None]) -> list[tuple[Row, float | None]]:
    """The comparisons whose error differs from the baseline's by more than `MOVED` (or that are new
    there), largest move first."""
    out = []
    for r in rows:
        if r.status != "ok" or r.error is None:
            continue
        before = base.get((r.name, r.metric))
        if before is None or abs(r.error - before) > MOVED:
            out.append((r, before))
    return sorted(out, key=lambda p: -abs(p[0].error - (p[1] or 0.0)) if p[1] is not None else float("-inf"))


REFUSED = "refused: "  # the status prefix of a scenario the simulator refused (its error follows)


def refused(rows: list[Row]) -> list[str]:
    """Names of the scenarios the simulator refused (each once, in file order)."""
    return list(dict.fromkeys(r.name for r in rows if r.status.startswith(REFUSED)))


def mape(rows: list[Row]) -> float | None:
    errs = [abs(r.error) for r in rows if r.status == "ok" and r.error is not None]
    return sum(errs) / len(errs) if errs else None


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="predicted vs measured over a validation file, with MAPE",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", help="validation YAML (scenarios with `measured:`); with --kernels, "
                   "a folder of kernel tables (default benchmarks/kernels/)")
    p.add_argument("--kernels", action="store_true",
                   help="predicted vs measured for every row of the kernel tables, with MAPE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="only the scenarios whose name matches this glob (repeatable), e.g. 'mlperf-v4.1-*'")
    p.add_argument("--baseline", metavar="JSON",
                   help="an earlier `--json` output: print the MAPE then and now and every comparison that moved")
    return p


def run_kernels(folder: str | None, as_json: bool) -> int:
    from codesign.sim.kernel_table import kernel_mape, validate_kernels

    results = validate_kernels(folder)
    m = kernel_mape(results)
    worst = max(results, key=lambda r: abs(r.error))
    if as_json:
        print(json.dumps({"rows": [{"file": r.file, "row": r.index, "kernel": r.label(), "metric": r.row.metric,
                                    "measured": r.row.measured, "predicted": r.predicted_value, "error": r.error,
                                    "bound": r.predicted.bound, "source": r.row.source, "library": r.row.library,
                                    "power_w": r.row.power_w} for r in results],
                          "mape": m, "worst": abs(worst.error), "by_library": library_summary(results)}, indent=2))
        return 0
    from rich.table import Table

    from codesign.commands.simulate import console

    t = Table(title="codesign validate --kernels")
    for col in ("table", "kernel", "metric", "measured", "predicted", "error", "bound"):
        t.add_column(col, overflow="fold")
    for r in results:
        t.add_row(f"{r.file}:{r.index}", r.label(), r.row.metric, f"{r.row.measured:.4g}", f"{r.predicted_value:.4g}",
                  f"{r.error:+.1%}", r.predicted.bound)
    c = console()
    c.print(t)
    c.print(f"kernel MAPE over {len(results)} rows: {m:.1%} (worst {abs(worst.error):.1%}: {worst.label()})")
    for lib, s in library_summary(results).items():
        c.print(f"  {lib}: {s['rows']} rows, MAPE {s['mape']:.1%}, mean time error {s['mean_time_error']:+.1%} "
                "(+: predicted slower than the kernel)")
    return 0


def print_moves(c, rows: list[Row], base: dict, path: str) -> None:
    """The baseline's MAPE over the same comparisons, and each comparison that moved."""
    same = [abs(base[(r.name, r.metric)]) for r in rows
            if r.status == "ok" and r.error is not None and base.get((r.name, r.metric)) is not None]
    then = f"{sum(same) / len(same):.1%} over the {len(same)} comparisons it shares" if same else "no shared comparison"
    c.print(f"baseline {path}: {then}")
    for r, before in moved(rows, base):
        was = "new" if before is None else f"{before:+.1%}"
        c.print(f"  {was:>8} -> {r.error:+.1%}  {r.name} {r.metric}")


def library_summary(results) -> dict[str, dict]:
    """Per kernel library (`library:` of the rows; rows of a named GEMM kernel apart, as `<library>
    <gemm_kernel>`, and power-capped rows, as `<library>@<W>W`): rows,
    MAPE, and the mean signed error in time (predicted / measured seconds - 1, whatever the row's
    metric), so that the direction of a library's gap from the curve reads the same for every row."""
    groups: dict[str, list] = {}
    for r in results:
        if r.row.library:
            key = r.row.library + (f" {r.row.gemm_kernel}" if r.row.gemm_kernel else "") + (
                f"@{r.row.power_w:g}W" if r.row.power_w else "")
            groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        t_err = [(1 + r.error) if r.row.metric == "seconds" else 1 / (1 + r.error) for r in rs]
        out[key] = {"rows": len(rs), "mape": sum(abs(r.error) for r in rs) / len(rs),
                    "mean_time_error": sum(t_err) / len(t_err) - 1}
    return out


def run(args: argparse.Namespace) -> int:
    if args.kernels:
        return run_kernels(args.file, args.json)
    if args.file is None:
        from codesign.errors import CodesignError

        raise CodesignError("validate: expected a validation file (or --kernels)")
    baseline, only = getattr(args, "baseline", None), getattr(args, "only", None)  # callers may omit them
    base = load_baseline(baseline) if baseline else None  # bad input before the two-minute run
    rows = validate_file(args.file, only)
    m = mape(rows)
    if args.json:
        print(json.dumps({"rows": [{**r.__dict__, "error": r.error} for r in rows], "mape": m}, indent=2))
        return 1 if refused(rows) else 0
    from rich.table import Table

    t = Table(title=f"codesign validate {args.file}")
    for col in ("scenario", "metric", "measured", "predicted", "error", "status"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r.name, r.metric or "-", "-" if r.measured is None else f"{r.measured:.4g}",
                  "-" if r.predicted is None else f"{r.predicted:.4g}",
                  "-" if r.error is None else f"{r.error:+.1%}", r.status)
    from codesign.commands.simulate import console

    c = console()
    c.print(t)
    n = sum(1 for r in rows if r.status == "ok")
    scenarios = len({r.name for r in rows if r.status == "ok"})
    worst = max((abs(r.error) for r in rows if r.status == "ok" and r.error is not None), default=None)
    if m is None:
        c.print("MAPE: no supported scenario with a measurement")
    else:
        c.print(f"MAPE over {n} comparisons ({scenarios} supported scenarios): {m:.1%} (worst {worst:.1%})")
    if base is not None:
        print_moves(c, rows, base, baseline)
    bad = refused(rows)
    if bad:  # bad input: a non-zero exit, every other scenario still reported
        c.print(f"{len(bad)} scenario(s) refused, not in the MAPE: {', '.join(bad)}")
        return 1
    return 0
