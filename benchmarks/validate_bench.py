"""Accuracy and speed of the public validation set: MAPE and wall time of `codesign validate`.

    python benchmarks/validate_bench.py [benchmarks/validation/public.yaml]
"""

from __future__ import annotations

import sys
import time

from codesign.commands.validate import mape, validate_file


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/validation/public.yaml"
    t = time.perf_counter()
    rows = validate_file(path)
    wall = time.perf_counter() - t
    for r in rows:
        err = "-" if r.error is None else f"{r.error:+.1%}"
        print(f"{r.name:55s} {r.metric or '-':20s} {err:>8s}  {r.status}")
    m = mape(rows)
    ok = [abs(r.error) for r in rows if r.status == "ok" and r.error is not None]
    print(f"MAPE {m:.1%} over {len(ok)} comparisons, worst {max(ok):.1%}; whole file {wall:.2f} s" if m is not None
          else f"no supported scenario; whole file {wall:.2f} s")


if __name__ == "__main__":
    main()
