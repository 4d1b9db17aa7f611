"""Fuzz every input loader and `simulate` at scale; print what escaped.

    python benchmarks/fuzz_bench.py                         # 100,000 loader cases + 10 minutes of simulate cases
    python benchmarks/fuzz_bench.py --loader-cases 20000 --sim-minutes 1 --seed 3

The cases and properties are those of tests/test_fuzz_inputs.py (tests/fuzz_cases.py), drawn from
a seeded `random.Random` per case (case i of a run is reproducible alone: `--seed S --only I`).
Loader cases cycle through hw, model, scenario, HF config.json and raw-file cases; simulate cases
run mutated specs and tiny model configs through `codesign.simulate`. Each case runs under a time
limit (SIGALRM): a case past it is counted as a hang.

Printed: cases per kind and outcome (loaded / refused with a CodesignError), untyped exceptions by
type with a sample input, hangs, NaN rows (a row with NaN or infinity, or a feasible row without
positive throughput and times) and rows the row guard refused (`codesign.results.check_row`), and
the wall time. The goal is 0 untyped, 0 hangs, 0 NaN rows, 0 guard refusals.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz_cases import KINDS, make_case, make_sim_case, run_case  # noqa: E402

BAD = ("untyped", "hang", "nan_row", "guard")


def _case(i: int, seed: int, n_loader: int):
    rng = random.Random(f"{seed}:{i}")
    if i < n_loader:
        return make_case(KINDS[i % len(KINDS)], rng)
    return make_sim_case(rng)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loader-cases", type=int, default=100_000)
    ap.add_argument("--sim-minutes", type=float, default=10.0, help="wall time for simulate cases (default 10)")
    ap.add_argument("--sim-cases", type=int, default=None, help="a fixed number of simulate cases instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loader-limit-s", type=float, default=10.0, help="time limit per loader case")
    ap.add_argument("--sim-limit-s", type=float, default=120.0, help="time limit per simulate case")
    ap.add_argument("--only", type=int, default=None, help="run case number I alone and print it")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="codesign-fuzz-"))
    if args.only is not None:
        case = _case(args.only, args.seed, args.loader_cases)
        limit = args.loader_limit_s if case.kind != "simulate" else args.sim_limit_s
        print(case.describe(4000))
        print(run_case(case, limit, workdir))
        return 0

    counts: collections.Counter = collections.Counter()
    samples: dict[tuple[str, str], tuple[int, str, str]] = {}
    where: dict[tuple[str, str], list[int]] = collections.defaultdict(list)  # case numbers, per key
    t0 = time.perf_counter()

    def record(i: int, case, outcome) -> None:
        counts[(case.kind, outcome.status)] += 1
        if outcome.status in BAD:
            key = (outcome.status, outcome.detail.split(":")[0])
            if key not in samples:
                samples[key] = (i, outcome.detail, case.describe(300))
            counts[("bad", key)] += 1
            where[key].append(i)

    for i in range(args.loader_cases):
        case = _case(i, args.seed, args.loader_cases)
        record(i, case, run_case(case, args.loader_limit_s, workdir))
        if (i + 1) % 10_000 == 0:
            print(f"  {i + 1:,} loader cases, {time.perf_counter() - t0:,.0f} s", file=sys.stderr, flush=True)
    t_loader = time.perf_counter() - t0

    t1 = time.perf_counter()
    n_sim = 0
    while (n_sim < args.sim_cases) if args.sim_cases is not None else (time.perf_counter() - t1 < 60 * args.sim_minutes):
        i = args.loader_cases + n_sim
        case = _case(i, args.seed, args.loader_cases)
        record(i, case, run_case(case, args.sim_limit_s, workdir))
        n_sim += 1
        if n_sim % 200 == 0:
            print(f"  {n_sim:,} simulate cases, {time.perf_counter() - t1:,.0f} s", file=sys.stderr, flush=True)
    t_sim = time.perf_counter() - t1

    _report(args, counts, samples, where, n_sim, t_loader, t_sim)
    return 0 if not any(counts[(k, s)] for k in (*KINDS, "simulate") for s in BAD) else 1


def _report(args, counts, samples, where, n_sim: int, t_loader: float, t_sim: float) -> None:
    total = args.loader_cases + n_sim
    print(f"codesign fuzz: {total:,} cases (seed {args.seed}): {args.loader_cases:,} loader cases in "
          f"{t_loader:,.0f} s, {n_sim:,} simulate cases in {t_sim:,.0f} s")
    print(f"{'kind':<10}{'cases':>9}{'loaded':>9}{'refused':>9}{'untyped':>9}{'hangs':>7}{'NaN rows':>10}{'guard':>7}")
    for kind in (*KINDS, "simulate"):
        row = [counts[(kind, s)] for s in ("loaded", "refused", "untyped", "hang", "nan_row", "guard")]
        print(f"{kind:<10}{sum(row):>9,}" + "".join(f"{v:>{w},}" for v, w in zip(row, (9, 9, 9, 7, 10, 7))))
    bad = {k: v for k, v in counts.items() if k[0] == "bad"}
    totals = {s: sum(counts[(k, s)] for k in (*KINDS, "simulate")) for s in BAD}
    print(f"untyped exceptions: {totals['untyped']}, hangs: {totals['hang']}, NaN rows: {totals['nan_row']}, "
          f"rows refused by the row guard: {totals['guard']}")
    for (_, key), n in sorted(bad.items(), key=lambda kv: -kv[1]):
        i, detail, case = samples[key]
        print(f"  {n:,} x {key[0]} {key[1]} (first: case {i}, rerun with --seed {args.seed} --only {i})")
        print(f"      {detail[:200]}")
        print(f"      cases: {', '.join(map(str, where[key][:10]))}{' ...' if len(where[key]) > 10 else ''}")
        print(f"      input: {case}")


if __name__ == "__main__":
    sys.exit(main())
