"""Evaluation-core speed and the step-time model's error against full evaluation.

    python benchmarks/step_bench.py [--quick]

Prints, for Qwen3.5-397B-A17B on 8x H200 (warm process: the layer recordings a shape needs are on
disk or in memory; every figure is the median of several new points, wall and CPU time):

* a new step shape at a fixed plan (tp=8, ep=8): new decode (batch, KV length) pairs;
* a new hardware variant of the default design point (both contexts, decode and TTFT), at the
  fixed plan and with `parallel: auto`: HBM bandwidth changed each time;
* `codesign simulate --hw hw_specs/h200.yaml` end to end (a fresh process);
* the step-time model against the full evaluation (`Stepper.full_step`, the whole traced graph)
  on a grid of shapes and plans: the largest relative difference in step time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import codesign as cs
from codesign.graph.shape import Group, StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.sim import DEFAULT_PRECISION
from codesign.sim.stepper import Stepper

MODEL = "qwen3.5-397b-a17b"
FIXED = {"tp": 8, "ep": 8}


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _report(label: str, samples: list[tuple[float, float]], target_ms: float) -> None:
    wall = statistics.median(s[0] for s in samples) * 1e3
    cpu = statistics.median(s[1] for s in samples) * 1e3
    print(f"{label:58s} {wall:8.1f} ms wall {cpu:8.1f} ms CPU   (target <= {target_ms:g} ms, {len(samples)} samples)")


def new_shapes(n: int) -> None:
    hw, cfg = cs.load_hw("h200"), cs.load_model(MODEL)
    st = Stepper(hw, cfg, ParallelPlan(**FIXED), Precision.from_dict(DEFAULT_PRECISION), cache=False)
    st.step(StepShape.decode(64, 32_768))  # the layer recordings at the anchors
    samples = [_timed(lambda b=b: st.step(StepShape.decode(100 + b, 30_000 + 997 * b))) for b in range(n)]
    _report("new step shape, fixed plan tp=8 ep=8", samples, 5)


def new_hw_variants(n: int, plan) -> None:
    hw = cs.load_hw("h200")
    cs.simulate(hw, MODEL, plan=plan)  # warm: the shapes' recordings
    samples = []
    for i in range(n):
        variant = hw.model_copy(update={"chip": hw.chip.model_copy(update={
            "hbm": hw.chip.hbm.model_copy(update={"bandwidth": hw.chip.hbm.bandwidth * (1.01 + 0.01 * i)})})})
        samples.append(_timed(lambda v=variant: cs.simulate(v, MODEL, plan=plan)))
    label = "auto" if plan == "auto" else "tp=8 ep=8"
    _report(f"new hardware variant (32K+256K, decode+TTFT), plan {label}", samples, 20 if plan != "auto" else 100)


def cli(n: int) -> None:
    cmd = [sys.executable, "-m", "codesign.cli", "simulate", "--hw", "hw_specs/h200.yaml"]
    subprocess.run(cmd, check=True, capture_output=True)  # disk cache warm
    samples = []
    for _ in range(n):
        w = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append((time.perf_counter() - w, float("nan")))
    wall = statistics.median(s[0] for s in samples)
    print(f"{'codesign simulate --hw hw_specs/h200.yaml (fresh process)':58s} {wall * 1e3:8.0f} ms wall"
          f"                  (target <= 3000 ms, {n} samples)")


GRID_SHAPES = [StepShape.decode(1, 4096), StepShape.decode(64, 32_768), StepShape.decode(200, 100_000),
               StepShape.prefill(1, 8192), StepShape.prefill(1, 4096, cached=16_384),
               StepShape.verify(32, cached=32_000, draft=1), StepShape((Group(48, 1, 30_000), Group(1, 2048, 4096)))]
GRID_PLANS = [FIXED, {"ep": 8, "attention_dp": 8}, {"tp": 8}, {"tp": 2, "pp": 4}]


def model_error() -> None:
    hw, cfg = cs.load_hw("h200"), cs.load_model(MODEL)
    worst, n = 0.0, 0
    for plan in GRID_PLANS:
        st = Stepper(hw, cfg, ParallelPlan(**plan), Precision.from_dict(DEFAULT_PRECISION), cache=False)
        for shape in GRID_SHAPES:
            fast, full = st.step(shape).time_s, st.full_step(shape).time_s
            worst = max(worst, abs(fast - full) / full)
            n += 1
    print(f"{'step-time model vs full evaluation, worst relative error':58s} {worst:10.2e}   "
          f"({n} shapes x plans: decode, prefill, cached prefill, verify, mixed; 4 plans incl. PP4)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    args = ap.parse_args()
    k = 3 if args.quick else 9
    new_shapes(k * 3)
    new_hw_variants(k, FIXED)
    new_hw_variants(max(3, k // 2), "auto")
    cli(2 if args.quick else 3)
    model_error()


if __name__ == "__main__":
    main()
