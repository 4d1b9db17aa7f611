"""Attention-DP lock step benchmark: the step-time grid's error and the effect on the ADP8 row.

    python benchmarks/lockstep_bench.py           # both parts
    python benchmarks/lockstep_bench.py grid      # only the grid's error
    python benchmarks/lockstep_bench.py rows      # only the TensorRT-LLM ADP8 row and its variants

1. **grid**: DeepSeek-V3 on 8x H200, attention DP8 + EP8 (the validation row's point): 24 seeded
   random lock-stepped steps (100-128 decodes per rank at 1,100-3,000 tokens of KV, a 1,024-token
   prompt on a rank with probability 0.15), the lock step's step-time model
   (`codesign.sim.serving.lockstep.LockStepTimer` on the serving grid) against its exact steps:
   mean and max relative error, and the step with one rank prefilling against all eight.
2. **rows**: the validation row `trtllm-bench-8xh200-deepseek-r1-fp8-ep8-adp8-1k-2k` (fixed 1K/2K
   lengths: the ranks stay in phase) with lock step on and off, and the same row with spread
   output lengths (normal at cv 0.25, uniform) on and off and with round-robin dispatch (not
   published runs: what the lock step costs when ranks drift out of phase).
"""

from __future__ import annotations

import copy
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

from codesign import mapping
from codesign.hw import load_hw
from codesign.mapping.options import MappingOptions
from codesign.models import load_model
from codesign.scenario import parse_scenarios
from codesign.sim.serving.lockstep import LockStepTimer
from codesign.sim.serving.steptime import StepTimeModel, StepTimeOptions
from codesign.sim.simulate import simulate_scenario
from codesign.sim.stepper import Stepper

ROW = "trtllm-bench-8xh200-deepseek-r1-fp8-ep8-adp8-1k-2k"
VALIDATION = Path(__file__).with_name("validation") / "public.yaml"


def grid() -> None:
    hw, cfg = load_hw("h200"), load_model("deepseek-v3")
    prec = mapping.Precision.from_dict({"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"})
    st = Stepper(hw, cfg, mapping.ParallelPlan(ep=8, attention_dp=8), prec, options=MappingOptions(two_batch_overlap=False))
    L = cfg.max_position_embeddings
    model = LockStepTimer(st.step, 8, L, even=StepTimeModel(st.step, L))
    exact = LockStepTimer(st.step, 8, L, StepTimeOptions(exact=True))
    rng = random.Random(0)
    errs = []
    t0 = time.perf_counter()
    for _ in range(24):
        ranks = []
        for _ in range(8):
            n, kv = rng.randint(100, 128), rng.randint(1100, 3000)
            g = [(n, 1, kv, 1)]
            if rng.random() < 0.15 and n < 128:
                g = [(n - 1, 1, kv, 1), (1, 1024, 0, 1)]
            ranks.append(g)
        errs.append(model.time(ranks) / exact.time(ranks) - 1)
    print("== grid: DeepSeek-V3, 8x H200, attention DP8 + EP8, 24 random lock-stepped steps ==")
    print(f"lock-step model vs exact: mean |error| {statistics.mean(abs(e) for e in errs):.2%}, max "
          f"{max(abs(e) for e in errs):.2%}, signed mean {statistics.mean(errs):+.2%}; core evaluations "
          f"{model.evaluations} (model) / {exact.evaluations} (exact); {time.perf_counter() - t0:.1f} s")
    dec, pre = (128, 1, 2000, 1), [(127, 1, 2000, 1), (1, 1024, 0, 1)]
    one = exact.time([pre] + [[dec]] * 7)
    all8 = exact.time([pre] * 8)
    alone = exact.time([[dec]] * 8)
    print(f"a step at 128 sequences x 2K per rank: decodes only {alone * 1e3:.1f} ms, one rank with a 1,024-token "
          f"prompt {one * 1e3:.1f} ms, all eight {all8 * 1e3:.1f} ms")


def rows() -> None:
    base = next(r for r in yaml.safe_load(VALIDATION.read_text()) if r["name"] == ROW)
    base.pop("measured", None)
    variants = [("fixed 1K/2K (the published run)", None, {})]
    for label, out in (("normal cv 0.25", {"mean": 2048, "dist": "normal", "cv": 0.25}),
                       ("uniform", {"mean": 2048, "dist": "uniform"})):
        variants.append((f"outputs {label}", out, {}))
    variants.append(("outputs normal cv 0.25, round robin", {"mean": 2048, "dist": "normal", "cv": 0.25},
                     {"attention_dp_dispatch": "round_robin"}))
    print(f"== rows: {ROW} (measured 11,489 output tok/s, 181.5 s mean latency) ==")
    for label, out, sched in variants:
        figures = []
        for lock in (True, False):
            if not lock and sched:
                continue
            r = copy.deepcopy(base)
            if out is not None:
                r["workload"]["output_tokens"] = out
            r["workload"]["scheduler"].update(sched, attention_dp_lockstep=lock)
            (s,) = parse_scenarios([r], "lockstep_bench")
            t0 = time.perf_counter()
            res = simulate_scenario(s)[0]
            figures.append(f"lock step {'on' if lock else 'off'}: {res.output_tokens_per_s:,.0f} tok/s, mean latency "
                           f"{res.serving['e2e_s']['mean']:.1f} s ({time.perf_counter() - t0:.1f} s)")
        print(f"{label}: " + "; ".join(figures))


def main(argv: list[str]) -> None:
    parts = argv or ["grid", "rows"]
    for p in parts:
        {"grid": grid, "rows": rows}[p]()


if __name__ == "__main__":
    main(sys.argv[1:])
