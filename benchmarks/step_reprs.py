"""Step results of many shapes and plans, one `repr` a line: the check that a speed change moves no float.

    python benchmarks/step_reprs.py OUT.txt          # on this code
    (the same command on the commit before the change, then)  cmp OLD.txt OUT.txt

Writes, for Qwen3.5-397B-A17B on 8x H200 at four plans (tp=8 ep=8, ep=8 with attention-DP 8, tp=8,
tp=2 pp=4) and Qwen3-235B-A22B at tp=8 ep=8, with two-batch overlap auto / on / off and with the
shared caches on and off, the `StepResult` of decode steps (9 batches x 4 KV lengths), prefill and
cached prefill, speculative verify and mixed steps, then two HBM-bandwidth variants of the first
point: about a thousand lines. `repr` prints every float in full (a -0.0 differs from a 0.0), so
two files are equal byte for byte exactly when every result is the same bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import codesign as cs
from codesign.graph.shape import Group, StepShape
from codesign.mapping import ParallelPlan, Precision
from codesign.mapping.options import MappingOptions
from codesign.sim import DEFAULT_PRECISION
from codesign.sim.stepper import Stepper

MODEL = "qwen3.5-397b-a17b"
CASES = [(MODEL, {"tp": 8, "ep": 8}), (MODEL, {"ep": 8, "attention_dp": 8}), (MODEL, {"tp": 8}),
         (MODEL, {"tp": 2, "pp": 4}), ("qwen3-235b-a22b", {"tp": 8, "ep": 8})]


def shapes() -> Iterator[StepShape]:
    for b in (1, 3, 8, 17, 64, 100, 129, 256, 511):
        for kv in (1000, 4096, 30001, 131072):
            yield StepShape.decode(b, kv)
    for n in (128, 1000, 4096, 8192):
        yield StepShape.prefill(1, n)
        yield StepShape.prefill(2, n, cached=3000)
    for b in (4, 32):
        yield StepShape.verify(b, cached=20000, draft=1)
        yield StepShape.verify(b, cached=7000, draft=3)
    yield StepShape((Group(48, 1, 30_000), Group(1, 2048, 4096)))
    yield StepShape((Group(10, 1, 5000), Group(1, 512, 0)))


def write(out) -> int:
    hw = cs.load_hw("h200")
    prec = Precision.from_dict(DEFAULT_PRECISION)
    n = 0
    for model, plan in CASES:
        cfg = cs.load_model(model)
        for tbo in (None, True, False):
            for cache in (True, False):
                if cache is False and tbo is not None:
                    continue
                st = Stepper(hw, cfg, ParallelPlan(**plan), prec, options=MappingOptions(two_batch_overlap=tbo),
                             cache=cache)
                for s in shapes():
                    if tbo is True and s.tokens > 4096 and plan.get("pp"):
                        continue
                    out.write(f"{model} {plan} tbo={tbo} cache={cache} {s}: {st.step(s)!r}\n")
                    n += 1
    cfg = cs.load_model(MODEL)
    for i, factor in enumerate((1.07, 0.8)):
        hbm = hw.chip.hbm.model_copy(update={"bandwidth": hw.chip.hbm.bandwidth * factor})
        variant = hw.model_copy(update={"chip": hw.chip.model_copy(update={"hbm": hbm})})
        for tbo in (None, True):
            st = Stepper(variant, cfg, ParallelPlan(tp=8, ep=8), prec, options=MappingOptions(two_batch_overlap=tbo))
            for s in list(shapes())[::3]:
                out.write(f"variant{i} tbo={tbo} {s}: {st.step(s)!r}\n")
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="file to write (one result a line)")
    args = ap.parse_args()
    t = time.perf_counter()
    with open(args.out, "w") as f:
        n = write(f)
    print(f"{n} step results written to {args.out} in {time.perf_counter() - t:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
