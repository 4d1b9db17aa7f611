"""What validation rows would read with a request path in front of the engine (`workload.frontend`).

    python benchmarks/frontend_sensitivity.py [--rows NAME,...] [--figures L:P[:N],...] [--file YAML]
                                              [--discipline fifo|shared]

For each row (default: the vLLM rows whose errors docs/cost-model.md attributes to the request
path, "GPUStack H100 rows") and each stated figure ``latency_s:per_request_s[:processes]`` (default
``0.025:0``, ``0.05:0``, ``0:0.005``, ``0:0.01``), prints predicted vs measured output tok/s, mean
TTFT and mean TPOT, first without a frontend (the row as it is); `--discipline shared` serves the
per-request cost by processor sharing instead of first come first served (docs/serving.md). For
reading only: the figures are
stated, not measured for these rows, and nothing here changes a row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codesign.commands.validate import METRICS, predicted  # noqa: E402
from codesign.errors import CodesignError  # noqa: E402
from codesign.scenario import load_scenarios  # noqa: E402
from codesign.sim import simulate_scenario  # noqa: E402
from codesign.sim.serving.frontend import frontend_config  # noqa: E402

ROWS = ("vllm-1xh100-qwen3-8b-bf16-sharegpt-c1", "vllm-1xh100-qwen3-8b-bf16-sharegpt-c2",
        "vllm-1xh100-qwen3-8b-bf16-sharegpt-c4", "vllm-1xh100-qwen3-8b-bf16-sharegpt-c8",
        "vllm-1xh100-qwen3-32b-bf16-128-4", "vllm-8xh100-qwen3-235b-a22b-bf16-tp8-128-4",
        "vllm-1xh200-qwen3.5-35b-a3b-bf16-1k-128-c512")
FIGURES = "0.025:0,0.05:0,0:0.005,0:0.01"
SHOWN = {"output_tokens_per_s": "tok/s", "ttft_s": "TTFT", "tpot_s": "TPOT"}


def parse_figures(text: str) -> list[dict[str, float | int]]:
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise CodesignError(f"--figures: expected latency_s:per_request_s[:processes], found {item!r}")
        try:
            f: dict[str, float | int] = {"latency_s": float(parts[0]), "per_request_s": float(parts[1])}
            if len(parts) == 3:
                f["processes"] = int(parts[2])
        except ValueError:
            raise CodesignError(f"--figures: expected numbers latency_s:per_request_s[:processes], found {item!r}") from None
        frontend_config(f, "--figures")  # refused here, in one line, as in a scenario
        out.append(f)
    return out


def errors(scenario) -> str:
    (r,) = simulate_scenario(scenario)
    measured = scenario.measured.model_dump() if scenario.measured else {}
    cells = []
    for m, label in SHOWN.items():
        if m in METRICS and measured.get(m) is not None and r.output_tokens_per_s is not None:
            p = predicted(r, m)
            cells.append(f"{label} {(p - measured[m]) / measured[m]:+6.1%}" if p is not None else f"{label} -")
    return " | ".join(cells) if cells else f"infeasible: {r.reason}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(ROOT / "benchmarks/validation/public.yaml"))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--figures", default=FIGURES)
    ap.add_argument("--discipline", choices=("fifo", "shared"), default="fifo")
    a = ap.parse_args(argv)
    try:
        figures = [{**f, "discipline": a.discipline} for f in parse_figures(a.figures)]
        wanted = a.rows.split(",")
        by_name = {s.name: s for s in load_scenarios(a.file)}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise CodesignError(f"--rows: no scenario named {', '.join(missing)} in {a.file}")
        for name in wanted:
            s = by_name[name]
            t0 = time.perf_counter()
            print(f"{name}\n  {'as it is':<34} {errors(s)}")
            for f in figures:
                wl = s.workload.model_copy(update={"frontend": f})
                label = f"latency {f['latency_s'] * 1e3:g} ms, ingest {f['per_request_s'] * 1e3:g} ms x{f.get('processes', 1)} {a.discipline}"
                print(f"  {label:<34} {errors(s.model_copy(update={'workload': wl}))}")
            print(f"  ({time.perf_counter() - t0:.1f} s)")
    except CodesignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
