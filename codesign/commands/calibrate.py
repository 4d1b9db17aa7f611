"""`codesign calibrate`: microbenchmark the host device and write an efficiency overlay for its spec.

    codesign calibrate --device cpu [--hw cpu-host] [--out hw_specs/calibration/cpu-host.yaml] [--threads 1]

Runs the microbenchmarks of `codesign.native.calibrate` (GEMM at several shapes and the small-M
ramp, streaming bandwidth, element-wise throughput, attention, the per-op cost of eager torch, the
fused kernels' per-call costs) and writes the overlay (`codesign.native.overlay`, docs/native.md)
that `codesign native-check` predicts with. Only microbenchmarks set it; nothing end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codesign.errors import CodesignError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="microbenchmark the host device into an efficiency overlay for its spec",
                       description="Microbenchmark the device (GEMM, small-M ramp, bandwidth, vector, attention, "
                       "per-op overhead) and write a calibration overlay for its hardware spec (docs/native.md).")
    p.add_argument("--device", default="cpu", help="torch device to measure (default: %(default)s)")
    p.add_argument("--hw", default="cpu-host", help="the spec the overlay refines (default: %(default)s)")
    p.add_argument("--out", default=None, help="overlay file to write (default: hw_specs/calibration/<spec>.yaml)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while measuring (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per benchmark (median; default: %(default)s)")
    p.add_argument("--heavy-dispatches", type=float, default=None,
                   help="light cold cost, in per-dispatch costs, from which an aten op is a heavy kernel timed after "
                   "the vocabulary scrub (default: codesign.native.calibrate.HEAVY_OP_DISPATCHES; docs/native.md)")
    p.add_argument("--passes", type=int, default=None,
                   help="passes over the microbenchmarks, each field at its median over them (default: "
                   "codesign.native.calibrate.CALIBRATION_PASSES)")
    p.add_argument("--json", action="store_true", help="print the overlay as JSON")
    return p


def device_or_error(name: str):
    """A torch device that is present, else a one-line error."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise CodesignError(f"--device: expected a torch device such as cpu or cuda, found {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CodesignError(f"--device: {name} requested but no CUDA device is present (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise CodesignError(f"--device: {name}: only cpu and cuda devices are supported")
    return device


def run(args: argparse.Namespace) -> int:
    import torch

    from codesign.hw import load_hw
    from codesign.native.calibrate import CALIBRATION_PASSES, HEAVY_OP_DISPATCHES, calibrate
    from codesign.native.overlay import default_path, write

    device = device_or_error(args.device)
    if device.type != "cpu":
        raise CodesignError(f"--device {args.device}: not yet supported: calibrate measures the host CPU's fp32 eager "
                            "kernels for cpu-host; GPU kernels are checked by benchmarks/gpu_validate.py")
    if args.threads < 1 or args.repeats < 1:
        raise CodesignError(f"--threads and --repeats: expected positive numbers, found {args.threads} and {args.repeats}")
    hw = load_hw(args.hw)
    out = Path(args.out) if args.out else default_path(hw.name)
    torch.set_num_threads(args.threads)

    def step(label: str) -> None:
        if not args.json:
            print(f"  {label}...", file=sys.stderr, flush=True)

    heavy = HEAVY_OP_DISPATCHES if args.heavy_dispatches is None else args.heavy_dispatches
    if not heavy > 0:
        raise CodesignError(f"--heavy-dispatches: expected a positive number, found {args.heavy_dispatches}")
    passes = CALIBRATION_PASSES if args.passes is None else args.passes
    if passes < 1:
        raise CodesignError(f"--passes: expected a positive number, found {passes}")
    cal, notes = calibrate(hw, device, args.repeats, step, heavy, passes)
    header = (f"Calibration overlay for hw_specs/{hw.name}.yaml, written by `codesign calibrate --device {args.device} "
              f"--threads {args.threads}`.\nMicrobenchmarks only (codesign/native/calibrate.py); see docs/native.md.")
    write(cal, out, header)
    if args.json:
        print(json.dumps({"path": str(out), **cal.model_dump(), "notes": notes}, indent=2))
        return 0
    print(summary(hw, device, cal, notes))
    print(f"wrote {out}")
    return 0


def summary(hw, device, cal, notes: list[str]) -> str:
    """The calibration as the command prints it: each overlay value beside the spec's own."""
    lines = [f"{hw.name} on {device} ({cal.threads} thread{'s' if cal.threads > 1 else ''}), {cal.measured}"]
    base = hw.efficiency.model_dump()
    lines += [f"  efficiency.{k:<14} {v:<10.4g} (spec {base.get(k)})" for k, v in cal.efficiency.items()]
    lines += [f"  cost.{k:<20} {v}" for k, v in cal.cost.items()]
    for k, v in cal.eager.model_dump().items():
        if isinstance(v, list):  # the aten targets timed as heavy kernels
            lines.append(f"  eager.{k:<19} {', '.join(v) or 'none'}")
        elif isinstance(v, dict):  # measured per-call costs of ordinary ops, by target
            lines.append(f"  eager.{k:<19} {len(v)} op targets measured, {min(v.values(), default=0) * 1e6:.1f}-"
                         f"{max(v.values(), default=0) * 1e6:.1f} us")
        else:
            lines.append(f"  eager.{k:<19} {v * 1e6:.1f} us")
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)
