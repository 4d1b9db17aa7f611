"""Benchmark: time and peak memory to trace Qwen3.5-397B-A17B whole.

Two traces, each in a fresh process: decode of 64 sequences at 256K context, and prefill of a 32K
prompt. "cold" starts with an empty trace cache (every distinct layer recorded under torch's
dispatcher); "cached" is a new process whose disk cache holds the recorded layers; "warm" is a
second trace in the same process. Peak RSS is the process's maximum resident set size.
Torch's own import and the one-off initialisation of its dispatch machinery are reported apart.

    python benchmarks/trace_bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.perf_counter()
    import torch
    import codesign as cs
    from codesign.graph import trace
    t_import = time.perf_counter() - t0
    phase, batch, tokens, context = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cfg = cs.load_model("qwen3.5-397b-a17b")
    t1 = time.perf_counter()
    g = trace(cfg, phase, batch=batch, tokens=tokens, context=context)
    first = time.perf_counter() - t1
    t2 = time.perf_counter()
    trace(cfg, phase, batch=batch, tokens=tokens, context=context)
    warm = time.perf_counter() - t2
    print(json.dumps({"import_s": t_import, "trace_s": first, "warm_s": warm, "ops": g.number_of_nodes(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)

CASES = [("decode B=64 @256K", ["decode", "64", "1", "262144"]), ("prefill 32K", ["prefill", "1", "32768", "0"])]


def run(args: list[str], cache: str) -> dict:
    env = dict(os.environ, CODESIGN_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"{'case':<20} {'cold s':>8} {'cached s':>9} {'warm s':>8} {'ops':>6} {'peak RSS MB':>12} {'import s':>9}")
    for label, args in CASES:
        with tempfile.TemporaryDirectory() as cache:
            cold = run(args, cache)
            cached = run(args, cache)
        print(f"{label:<20} {cold['trace_s']:>8.3f} {cached['trace_s']:>9.3f} {cold['warm_s']:>8.3f} "
              f"{cold['ops']:>6} {max(cold['peak_rss_mb'], cached['peak_rss_mb']):>12.0f} {cold['import_s']:>9.2f}")


if __name__ == "__main__":
    main()
