"""`codesign report`: one self-contained HTML report of a results folder (a sweep's output).

    codesign report DIR --out reports/NAME.html            # DIR holds results.sqlite (table results)
    codesign report DIR --out reports/NAME.html --detail ROW_NAME [--detail ...] [--no-curves]

The folder format is documented in docs/report.md (`codesign.report.store`). Detail sections
(throughput against context, roofline, expert load, decode-step timeline) are drawn for the
fastest feasible row of each model, or for the rows named with --detail; `--no-details` leaves
them out (a quick summary of a large sweep). `codesign simulate ... --report FILE` reports one
design point the same way.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from codesign.errors import CodesignError
from codesign.results import Result


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="an HTML report of a results folder (summary, memory, roofline, timeline, Pareto)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="results folder holding results.sqlite (see docs/report.md)")
    p.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write, e.g. reports/NAME.html")
    p.add_argument("--title", default=None, help="report title (default: the folder's name)")
    p.add_argument("--detail", action="append", default=None, metavar="ROW_NAME",
                   help="draw the detail sections for this row (repeatable; default: the fastest row per model)")
    p.add_argument("--no-curves", action="store_true", help="leave out the throughput-against-context curves")
    p.add_argument("--no-details", action="store_true", help="leave out roofline, expert load and timeline")
    return p


def check_writable(path: str | Path, flag: str) -> Path:
    """Fail before any work when `path` cannot be written (a folder, or its parent is a file)."""
    path = Path(path)
    if path.is_dir():
        raise CodesignError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CodesignError(f"{flag} {path}: {parent} is not a folder")
    return path


def _say(msg: str) -> None:
    print(f"codesign: {msg}", file=sys.stderr)


def write_simulate_outputs(results: Sequence[Result], inputs: dict[str, Any], report: str | None,
                           trace: str | None) -> None:
    """`codesign simulate --report FILE --trace FILE`: the HTML report and/or the trace JSON."""
    from codesign.report.build import from_results, points_of

    if report:
        from codesign.report.html import write_report

        command = "codesign " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        data = from_results(results, command=command, **inputs)
        _say(f"report written to {write_report(data, report)}")
    if trace:
        from codesign.report.inputs import decode_timeline
        from codesign.report.perfetto import write_trace

        points = points_of(results, **inputs)
        if not points:
            raise CodesignError(f"--trace {trace}: no feasible result, so no step to write")
        path = write_trace(trace, [decode_timeline(p) for p in points], [p.label for p in points])
        _say(f"trace of {len(points)} decode step(s) written to {path} (open at ui.perfetto.dev)")


def run(args: argparse.Namespace) -> int:
    from codesign.report.build import from_frame
    from codesign.report.html import write_report
    from codesign.report.store import read_points, read_results

    out = check_writable(args.out, "--out")
    frame = read_results(args.folder)
    command = "codesign " + " ".join(shlex.quote(a) for a in ["report", args.folder, "--out", args.out])
    data = from_frame(frame, title=args.title or f"Sweep {Path(args.folder).resolve().name}", command=command,
                      detail=args.detail, curves=not args.no_curves, details=not args.no_details,
                      points=read_points(args.folder))
    _say(f"report of {len(frame)} rows written to {write_report(data, out)}")
    return 0
