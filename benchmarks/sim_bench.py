"""Simulator speed: one design point (Qwen3.5-397B-A17B on 8x H200, 32K and 256K, decode and prefill),
cold, warm (memoised) and uncached in a warm process, with the time split between tracing, mapping
and the SimPy engine.

    python benchmarks/sim_bench.py                  # fixed plan tp=8,ep=8 (named in the output)
    python benchmarks/sim_bench.py --plan auto      # the plan search, as `codesign simulate` runs it
"""

from __future__ import annotations

import argparse
import time

import codesign as cs
from codesign.commands.simulate import parse_plan
from codesign.mapping import ParallelPlan, Precision, map_step
from codesign.sim import DEFAULT_PRECISION, simulate_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hw", default="h200")
    ap.add_argument("--model", default="qwen3.5-397b-a17b")
    ap.add_argument("--plan", default="tp=8,ep=8")
    args = ap.parse_args()
    plan = parse_plan(args.plan)
    hw, cfg = cs.load_hw(args.hw), cs.load_model(args.model)
    named = "parallel: auto (best candidate plan)" if plan == "auto" else f"fixed plan {{{ParallelPlan(**plan)}}}"
    print(f"design point: {cfg.name} on {hw.system.chips}x {hw.name}, {named}, precision "
          f"{'/'.join(f'{k} {v}' for k, v in DEFAULT_PRECISION.items())}, contexts 32k and 256k")
    # cold: first call in the process; warm: the same design point again (memoised steps);
    # uncached: a warm process simulating every step again (cache=False), what a new design point costs
    for label, cache in (("cold", True), ("warm", True), ("uncached", False)):
        t = time.perf_counter()
        rs = cs.simulate(args.hw, args.model, plan=plan, cache=cache)
        print(f"{label:8s}: simulate() both contexts {time.perf_counter() - t:.3f} s "
              f"({', '.join(f'{r.context}: {r.output_tokens_per_s:,.0f} out tok/s' for r in rs if r.feasible)})")
    step_plan = ParallelPlan(**plan) if isinstance(plan, dict) else ParallelPlan(**rs[0].plan)
    print(f"steps below: plan {{{step_plan}}}" + (" (the plan auto chose at 32k)" if plan == "auto" else ""))
    prec = Precision.from_dict(DEFAULT_PRECISION)
    for phase, batch, tokens, ctx in (("decode", 128, 1, 32_768), ("prefill", 1, 32_768, 0), ("decode", 16, 1, 262_144)):
        t0 = time.perf_counter()
        g = cs.trace(cfg, phase=phase, batch=batch, tokens=tokens, context=ctx)
        t1 = time.perf_counter()
        m = map_step(g, cfg, hw, step_plan, prec)
        t2 = time.perf_counter()
        r = simulate_step(m, hw)
        t3 = time.perf_counter()
        print(f"{phase:7s} batch {batch:4d} ctx {ctx:6d}: {m.graph.number_of_nodes()} ops, trace {t1 - t0:.3f} s, "
              f"map {t2 - t1:.3f} s, engine {t3 - t2:.3f} s ({r.layers_simulated} layer kinds simulated), "
              f"step {r.time_s * 1e3:.2f} ms, {r.bottleneck}")


if __name__ == "__main__":
    main()
