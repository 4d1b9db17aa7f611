"""Sweep speed: points per second for Qwen3.5-397B-A17B decode points on 8x H200 with hardware
fields varied (HBM bandwidth x SRAM capacity x scale-up link bandwidth), at a fixed plan (tp=8,
ep=8) and with `parallel: auto`, through `codesign.sweep` and its results store.

    python benchmarks/sweep_bench.py [--hbm 6] [--auto-hbm 2] [--executor serial|local|local:N]

Each measurement first runs a two-point warm-up sweep in the same mode (traces are then cached
where the executor keeps them: in this process for `serial`, per worker for `local`), then times
a sweep of new points (none stored before): context 32K, decode mode, every point a new hardware
variant, so each one simulates its steps afresh. Points = hbm values x 2 SRAM x 2 link bandwidths.

Besides points per second (wall clock, which on a shared machine depends on what else runs), each
line gives the CPU seconds per point: this process's CPU time plus that of its worker processes
(reaped before each reading), which does not depend on how busy the other cores are.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time

import codesign as cs


def grid(n_hbm: int) -> dict:
    return {
        "chip.hbm.bandwidth": [3.0e12 + i * 9.0e12 / max(1, n_hbm - 1) for i in range(n_hbm)],
        "chip.sram.capacity": ["50 MB", "200 MB"],
        "system.scale_up.link_bandwidth": ["25 GB/s", "50 GB/s"],
    }


def _reap(timeout_s: float = 30.0) -> None:
    """Wait for the sweep's worker processes to exit, so that their CPU time is counted."""
    deadline = time.monotonic() + timeout_s
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)


def cpu_s() -> float:
    """CPU seconds of this process and of its exited (reaped) worker processes."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def run(label: str, plan, n_hbm: int, executor: str) -> None:
    base = cs.design_point("h200", "qwen3.5-397b-a17b", chips=8, plan=plan,
                           workload={"mode": "decode", "input_tokens": "32k"})
    g = grid(n_hbm)
    n = len(g["chip.hbm.bandwidth"]) * 4
    with tempfile.TemporaryDirectory() as d:
        cs.sweep(base=base, grid={"chip.hbm.bandwidth": [2.0e12, 2.1e12]}, executor=executor, out=d)
        _reap()
        c, t = cpu_s(), time.perf_counter()
        df = cs.sweep(base=base, grid=g, executor=executor, out=d)
        wall = time.perf_counter() - t
        _reap()
        cpu = cpu_s() - c
    assert len(df) == n
    print(f"{label:34s}: {n:3d} points in {wall:6.2f} s = {n / wall:6.2f} points/s, "
          f"CPU {1e3 * cpu / n:6.1f} ms/point ({int(df['feasible'].sum())} feasible; executor {executor}; "
          f"{os.cpu_count()} cores)")


def machinery(n: int = 200) -> None:
    """Per-point cost of the sweep itself (override, hash, store commit of the row and the point's
inputs), without evaluation."""
    from codesign.point import canonical_json
    from codesign.results import flat_row
    from codesign.sweeps.store import Store

    base = cs.design_point("h200", "qwen3.5-397b-a17b", chips=8, plan={"tp": 8, "ep": 8})
    row = cs.evaluate(cs.override(base, {"context": 32768}))[0]
    with tempfile.TemporaryDirectory() as d:
        store = Store.open(d)
        t0 = time.perf_counter()
        pts = [cs.override(base, {"chip.hbm.bandwidth": 3e12 + i * 1e9, "context": 32768}) for i in range(n)]
        t1 = time.perf_counter()
        hashes = [cs.point_hash(p) for p in pts]
        t2 = time.perf_counter()
        for h, p in zip(hashes, pts):
            store.put(h, flat_row(row), row.to_dict(), point_json=canonical_json(p))
        t3 = time.perf_counter()
        store.close()
    print(f"sweep machinery per point: override {1e3 * (t1 - t0) / n:.2f} ms, hash {1e3 * (t2 - t1) / n:.2f} ms, "
          f"store commit {1e3 * (t3 - t2) / n:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hbm", type=int, default=6, help="HBM bandwidths at the fixed plan (points = 4x this; default 6)")
    ap.add_argument("--auto-hbm", type=int, default=2, help="HBM bandwidths with parallel: auto (default 2)")
    ap.add_argument("--executor", default="serial", help="serial (default), local or local:N")
    args = ap.parse_args()
    run("fixed plan tp=8,ep=8 (8x H200)", {"tp": 8, "ep": 8}, args.hbm, args.executor)
    run("parallel: auto (8x H200)", "auto", args.auto_hbm, args.executor)
    machinery()


if __name__ == "__main__":
    main()
