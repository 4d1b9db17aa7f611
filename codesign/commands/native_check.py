"""`codesign native-check`: run a small real configuration natively and compare with the simulator.

    codesign native-check --model qwen3.5-35b-a3b --tiny [--prompt-tokens 256 --decode-steps 16] [--json]

Measures a prefill and decode steps natively (fp32, seeded random weights; each step timed by
segment, each segment at its quietest round, `codesign.native.check.quiet_estimate`) and predicts the same
steps with the calibrated spec (`codesign calibrate` writes the overlay) through trace -> mapping ->
step simulation with the eager cost model; prints both and the error per phase (docs/native.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codesign.errors import CodesignError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("native-check", help="run a small configuration natively and compare with the prediction",
                       description="Prefill and decode natively, predict the same steps with the calibrated "
                       "spec through the simulator, print predicted vs measured seconds and the error.")
    p.add_argument("--model", default="qwen3.5-35b-a3b", help="name in model_graphs/ or a path (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="same family and layer kinds at toy sizes (codesign.models.tiny)")
    p.add_argument("--calibration", default=None,
                   help="calibration overlay (default: hw_specs/calibration/cpu-host.yaml, from `codesign calibrate`)")
    p.add_argument("--recalibrate", action="store_true",
                   help="run the calibration microbenchmarks first and write the overlay (a shared machine's speed "
                   "drifts: calibrating just before measuring keeps both at the same load)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7, help="measured rounds, at least (default: %(default)s)")
    p.add_argument("--measure-seconds", type=float, default=None,
                   help="keep measuring rounds for at least this long (default: codesign.native.check.MEASURE_SECONDS; "
                   "docs/native.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the calibration's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _check_fits(config, batch: int, max_len: int, device) -> None:
    """Refuse a model too large to run natively, naming the largest prompt that fits."""
    import torch

    from codesign.native.run import MEMORY_FRACTION, device_memory_bytes, footprint_bytes

    have = MEMORY_FRACTION * device_memory_bytes(device)
    need = footprint_bytes(config, torch.float32, batch, max_len)
    if need <= have:
        return
    weights = footprint_bytes(config, torch.float32, batch, 1)
    if weights > have:
        raise CodesignError(f"model {config.name}: its fp32 weights need {weights / 2**30:.1f} GiB, more than the "
                            f"{have / 2**30:.1f} GiB a native run may use ({MEMORY_FRACTION:.0%} of {device.type} memory); "
                            "use --tiny")
    lo, hi = 1, max_len
    while lo < hi:  # largest total length whose caches still fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if footprint_bytes(config, torch.float32, batch, mid) <= have else (lo, mid - 1)
    raise CodesignError(f"model {config.name}: weights and caches for {max_len} tokens x batch {batch} need "
                        f"{need / 2**30:.1f} GiB, more than {have / 2**30:.1f} GiB; the largest total length that fits "
                        f"is {lo} tokens")


def _other_host(cal, device) -> str | None:
    """A warning where a CPU overlay was measured on another CPU model than this host's (its
    efficiencies and per-op costs are that machine's), else None."""
    from codesign.native.calibrate import cpu_name
    from codesign.native.overlay import calibrated_host

    measured_on = calibrated_host(cal.calibration)
    if device.type != "cpu" or measured_on is None:
        return None
    host = cpu_name()
    if measured_on == host:
        return None
    return (f"{cal.path} was measured on {measured_on}, this host is {host}: its figures are another "
            "CPU's; run with --recalibrate (or `codesign calibrate --device cpu`) on this host")


def _recalibrate(path, device, threads: int) -> None:
    """`codesign calibrate` for cpu-host into `path`, at `threads` threads."""
    import torch

    from codesign.hw import load_hw
    from codesign.native.calibrate import calibrate
    from codesign.native.overlay import write

    if device.type != "cpu":
        raise CodesignError("--recalibrate: only the host CPU (cpu-host) is calibrated by this command; "
                            "run `codesign calibrate --device ... --hw ...`")
    torch.set_num_threads(threads)
    cal, _ = calibrate(load_hw("cpu-host"), device)
    write(cal, Path(path), f"Calibration overlay for hw_specs/cpu-host.yaml, written by `codesign native-check "
          f"--recalibrate` (threads {threads}).\nMicrobenchmarks only (codesign/native/calibrate.py); see docs/native.md.")


def run(args: argparse.Namespace) -> int:
    import torch

    from codesign.commands.calibrate import device_or_error
    from codesign.models import load_model
    from codesign.native.check import native_check, without_mtp
    from codesign.native.overlay import default_path, load_calibrated

    device = device_or_error(args.device)
    path = args.calibration or default_path("cpu-host")
    if args.recalibrate:
        _recalibrate(path, device, args.threads or 1)
    cal = load_calibrated(path)
    if cal.calibration.device != device.type:
        raise CodesignError(f"{cal.path}: measured on {cal.calibration.device}, not on {device.type}; "
                            f"run `codesign calibrate --device {args.device}`")
    config = load_model(args.model)
    if args.tiny:
        config = config.tiny()
    if min(args.prompt_tokens, args.decode_steps, args.batch, args.repeats) < 1:
        raise CodesignError("--prompt-tokens, --decode-steps, --batch and --repeats: expected positive numbers")
    threads = args.threads or cal.calibration.threads
    if threads < 1:
        raise CodesignError(f"--threads: expected a positive number, found {threads}")
    torch.set_num_threads(threads)
    if not args.tiny:
        _check_fits(without_mtp(config), args.batch, args.prompt_tokens + args.decode_steps + 1, device)
    from codesign.native.check import MEASURE_SECONDS

    seconds = MEASURE_SECONDS if args.measure_seconds is None else args.measure_seconds
    if not seconds >= 0:
        raise CodesignError(f"--measure-seconds: expected a number >= 0, found {args.measure_seconds}")
    r = native_check(config, cal, args.batch, args.prompt_tokens, args.decode_steps, args.repeats, str(device), args.seed,
                     seconds)
    from codesign.native.check import CONTENDED_PCT

    d = r.as_dict()
    warnings = []
    if threads != cal.calibration.threads:
        warnings.append(f"{threads} threads, calibrated at {cal.calibration.threads}")
    other_host = _other_host(cal, device)
    if other_host:  # the probe's ratio then measures the two CPUs, not contention
        warnings.append(other_host)
    elif r.contention_pct is not None and r.contention_pct > CONTENDED_PCT:
        warnings.append(f"the machine was contended while measuring: the calibration's module-block benchmark "
                        f"ran {r.contention_pct:.0f}% slower between most rounds than when calibrated; each segment "
                        "is measured in its quietest round, which may still have been contended (other jobs "
                        "running; retry when the machine is quieter)")
    if not other_host and r.contention_pct is not None and r.contention_pct < -CONTENDED_PCT:
        warnings.append(f"the calibration was contended: its module-block benchmark ran {-r.contention_pct:.0f}% "
                        "faster between most rounds than when calibrated (other jobs were running during "
                        "`codesign calibrate`; recalibrate when the machine is quieter)")
    if warnings:
        d["warning"] = "; ".join(warnings)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{r.model} on {r.device} ({r.threads} thread{'s' if r.threads > 1 else ''}, {r.clock}), batch {r.batch}, "
          f"calibration {r.calibration}")
    contention = "" if r.contention_pct is None else f"; contention {r.contention_pct:+.0f}% (docs/native.md)"
    print(f"{r.repeats} rounds; measured: each segment (embedding, each layer, head) in its quietest round, summed; "
          f"median: the median round{contention}")
    print(f"{'phase':<22}{'predicted':>12}{'measured':>12}{'error':>9}{'median':>12}{'noise':>8}")
    rows = (("prefill", f"prefill {r.prompt_tokens} tokens", r.prefill_predicted_s, r.prefill_measured_s),
            ("decode", "decode step", r.decode_step_predicted_s, r.decode_step_measured_s))
    for key, label, p, m in rows:
        print(f"{label:<22}{p * 1e3:>10.2f}ms{m * 1e3:>10.2f}ms{r.error_pct[key]:>8.1f}%"
              f"{r.measured_median_s[key] * 1e3:>10.2f}ms{r.noise_pct[key]:>7.1f}%")
    if "warning" in d:
        print(f"warning: {d['warning']}")
    return 0
