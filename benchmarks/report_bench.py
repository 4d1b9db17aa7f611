"""Report speed: the example report (Qwen3.5-397B-A17B on 8x H200, 32K and 256K, best plan) split
into simulating the rows, gathering what the report adds (context curves, per-op costs, expert
loads, timelines) and rendering; and one decode-step timeline alone (what --trace costs).

    python benchmarks/report_bench.py [--hw h200] [--model qwen3.5-397b-a17b]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import codesign as cs
from codesign.report import from_results, render
from codesign.report.inputs import decode_timeline, point_from_result
from codesign.report.perfetto import write_trace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hw", default="h200")
    ap.add_argument("--model", default="qwen3.5-397b-a17b")
    args = ap.parse_args()
    t0 = time.perf_counter()
    point = cs.design_point(args.hw, args.model)
    rs = cs.evaluate(point)
    t1 = time.perf_counter()
    data = from_results(rs, points=[point] * len(rs))
    t2 = time.perf_counter()
    html = render(data)
    t3 = time.perf_counter()
    print(f"simulate rows      {t1 - t0:7.2f} s  ({len(rs)} rows)")
    print(f"gather report data {t2 - t1:7.2f} s  (curve over {data.curves['context'].nunique()} contexts, "
          f"{len(data.details)} step details)")
    print(f"render HTML        {t3 - t2:7.2f} s  ({len(html.encode()) / 1e6:.2f} MB, {html.count('<svg ')} figures)")
    feasible = [r for r in rs if r.feasible]
    detail = point_from_result(feasible[0], point)
    t4 = time.perf_counter()
    tl = decode_timeline(detail)
    t5 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = write_trace(os.path.join(d, "step.json"), [tl], [detail.label])
        size = path.stat().st_size
    t6 = time.perf_counter()
    print(f"decode timeline    {t5 - t4:7.2f} s  ({len(tl.spans)} spans, step {tl.time_s * 1e3:.2f} ms)")
    print(f"write trace JSON   {t6 - t5:7.2f} s  ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
