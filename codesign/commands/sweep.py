"""`codesign sweep`: evaluate a sweep file into a results folder (docs/sweep.md).

    codesign sweep sweep.yaml --out results/hbm            # local processes over all cores
    codesign sweep sweep.yaml --out DIR --executor dask://scheduler:8786
    codesign sweep --recover DIR                           # copy a damaged store's readable rows

Each point is committed to DIR/results.sqlite as it finishes; run the same command again after an
interruption and only the missing points are evaluated.
"""

from __future__ import annotations

import argparse
import sys

from codesign.errors import CodesignError

SHOW = ["point_hash", "feasible", "output_tokens_per_s", "output_tokens_per_s_per_chip", "tpot_s.mean",
        "usd_per_million_output_tokens", "output_tokens_per_joule", "reason_code"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="evaluate a design-space sweep into a results store (SQLite)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", help="a sweep YAML file (base, grid, samples, seed, constraints, pareto)")
    p.add_argument("--out", help="results folder (DIR/results.sqlite; created if missing, resumed if present)")
    p.add_argument("--executor", default=None,
                   help="local (default: all cores), local:N, serial, or dask://HOST:PORT")
    p.add_argument("--recover", metavar="DIR", help="copy the readable rows of a damaged DIR/results.sqlite into "
                   "DIR/results.recovered.sqlite (the original is left as it is)")
    p.add_argument("--rows", type=int, default=10, help="rows of the summary table (default 10)")
    return p


def run(args: argparse.Namespace) -> int:
    from codesign.sweeps import recover, sweep_file

    if args.recover:
        dest, n = recover(args.recover)
        print(f"recovered {n} row(s) into {dest}")
        return 0
    if not args.file or not args.out:
        raise CodesignError("sweep: give a sweep file and --out DIR (or --recover DIR)")
    df = sweep_file(args.file, args.out, executor=args.executor)
    _summary(df, args)
    return 0


def _summary(df, args) -> None:
    from rich.table import Table

    from codesign.commands.simulate import console

    cols = [c for c in SHOW if c in df.columns]
    swept = [c for c in df.columns if "." in c and c.split(".")[0] in (
        "chip", "efficiency", "system", "power", "price", "hw", "model", "parallel", "precision", "workload", "slo",
        "cost", "mapping")]
    feasible = int(df["feasible"].sum())
    on_front = int(df["pareto"].sum()) if "pareto" in df.columns else None
    front = f", {on_front} on the Pareto front" if on_front is not None else ""
    print(f"{len(df)} points meet the constraints, {feasible} feasible{front}; store: "
          f"{args.out}/results.sqlite", file=sys.stderr)
    shown = df[df["pareto"]] if on_front else df
    shown = shown.sort_values("output_tokens_per_s", ascending=False, na_position="last").head(args.rows)
    t = Table(title=f"codesign sweep {args.file} (top {len(shown)} by output tokens/s)")
    for c in ["point_hash", *swept, *cols[1:]]:
        t.add_column(c, overflow="fold")
    for _, r in shown.iterrows():
        t.add_row(*[_fmt(r[c], c) for c in ["point_hash", *swept, *cols[1:]]])
    console().print(t)


def _fmt(v, col: str) -> str:
    if col == "point_hash":
        return str(v)[:12]
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4g}"
    return "-" if v is None else str(v)
