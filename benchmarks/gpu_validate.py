"""One full-width layer of each Qwen3.5-397B-A17B kind, timed natively on one GPU and predicted.

    python benchmarks/gpu_validate.py                 # one H200-class GPU, under 8 minutes
    python benchmarks/gpu_validate.py --dry-run       # the same path on small CPU shapes (tests run it)
    python benchmarks/gpu_validate.py --json out.json

For each layer kind — GatedDeltaNet (`linear_attention`), gated attention (`full_attention`), the
512-expert MoE (router, routed experts, shared expert) — at decode (batch 64, 32K context) and at an
8K prefill chunk (batch 1, 8192 new tokens), the benchmark

1. traces the full model (`codesign.trace`, meta device) and takes the ops of the first layer of
   that kind, block by block;
2. **measures** them natively: every op replayed with real tensors of its recorded full-width
   shapes and seeded random values in bf16 (`codesign.native.replay`: cuBLAS GEMMs, torch's SDPA
   for attention, `torch._grouped_mm` for the routed experts, the project's own GatedDeltaNet
   kernels), each op timed alone after a warm-up, CUDA-synchronised, median of the repeats;
3. **predicts** the same ops with `hw_specs/h200.yaml` on one chip (TP1, bf16 weights,
   activations and KV cache; `codesign.mapping.map_step` + `codesign.sim.cost.CostModel` with the
   default cost options),

and prints predicted vs measured per (layer kind, phase, op kind), with the error. The GEMM,
attention and grouped-GEMM rows compare like with like (one kernel each); the element-wise and
data-movement rows do not: the cost model fuses them into their neighbours (no launch each, on-chip
activations), eager replay launches each one — their error shows what fusion is worth. Weights are
random; nothing here is tuned to the result. `--budget-s` stops before a row that would start past
the budget (the table says which rows were left out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

import codesign as cs
from codesign.mapping import ParallelPlan, Precision, map_step
from codesign.native.replay import replay_ops
from codesign.sim.cost import CostModel

KINDS = {  # layer kind -> (layer_type, blocks)
    "GatedDeltaNet": ("linear_attention", ("linear_attention",)),
    "gated attention": ("full_attention", ("attention",)),
    "MoE (512 experts)": ("linear_attention", ("moe_router", "moe_experts", "moe_shared")),
}
FULL = {"model": "qwen3.5-397b-a17b", "decode": (64, 32_768), "prefill": 8_192, "device": "cuda", "dtype": torch.bfloat16,
        "hw": "h200", "repeats": 10}
DRY = {"model": "qwen3.5-397b-a17b", "decode": (4, 64), "prefill": 48, "device": "cpu", "dtype": torch.float32,
       "hw": "h200", "repeats": 2}


@dataclass
class Row:
    layer: str
    phase: str
    op_kind: str
    ops: int
    predicted_s: float
    measured_s: float

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_s - self.measured_s) / self.measured_s if self.measured_s > 0 else float("nan")


def _steps(setup: dict) -> list[tuple[str, dict]]:
    b, ctx = setup["decode"]
    return [(f"decode b{b} @{ctx // 1024 or ctx}{'K' if ctx >= 1024 else ''}", dict(phase="decode", batch=b, context=ctx)),
            (f"prefill {setup['prefill']}", dict(phase="prefill", batch=1, tokens=setup["prefill"], context=0))]


def _layer_ops(mapped_graph, raw_graph, layer_type: str, blocks: tuple[str, ...]):
    """(node, traced op, mapped op) of the first layer whose kind starts with layer_type, in `blocks`."""
    layer = min(o.layer for _, o in raw_graph.nodes(data="op") if o.layer_type.startswith(layer_type + "+"))
    return [(n, o, mapped_graph.nodes[n]["op"]) for n, o in raw_graph.nodes(data="op")
            if o.layer == layer and o.block in blocks and n in mapped_graph]


def run(setup: dict, budget_s: float, log=print) -> tuple[list[Row], list[str]]:
    t_start = time.perf_counter()
    config = cs.load_model(setup["model"])
    if setup is DRY:
        config = config.tiny()
    hw = cs.load_hw(setup["hw"])
    prec = Precision(weights="bf16", activations="bf16", kv_cache="bf16")
    cost = CostModel(hw, "bf16", "bf16")
    rows: list[Row] = []
    skipped: list[str] = []
    for label, kw in _steps(setup):
        g = cs.trace(config, **kw)
        mapped = map_step(g, config, hw, ParallelPlan(), prec)
        for kind, (layer_type, blocks) in KINDS.items():
            if time.perf_counter() - t_start > budget_s:
                skipped.append(f"{kind}, {label}")
                continue
            ops = _layer_ops(mapped.graph, g, layer_type, blocks)
            t0 = time.perf_counter()
            replayed = replay_ops([(n, o) for n, o, _ in ops], setup["device"], setup["dtype"], warmup=2,
                                  repeats=setup["repeats"], attention_impl="sdpa", moe_impl="grouped")
            by: dict[str, list[float]] = {}
            for (n, o, m), r in zip(ops, replayed):
                k = "GatedDeltaNet step" if o.target.startswith("codesign.gated_delta_rule_step") else o.kind
                k = "vector/memory" if k in ("vector", "memory") else k
                acc = by.setdefault(k, [0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += cost.cost(m).time_s
                acc[2] += r.seconds
            for k, (n_ops, p, meas) in sorted(by.items()):
                rows.append(Row(kind, label, k, n_ops, p, meas))
            kernels = [v for k, v in by.items() if k != "vector/memory"]
            rows.append(Row(kind, label, "kernels (like for like)", sum(v[0] for v in kernels), sum(v[1] for v in kernels),
                            sum(v[2] for v in kernels)))
            total_p = sum(v[1] for v in by.values())
            total_m = sum(v[2] for v in by.values())
            rows.append(Row(kind, label, "layer total", sum(v[0] for v in by.values()), total_p, total_m))
            log(f"  {kind:<18} {label:<16} {len(ops):4d} ops replayed in {time.perf_counter() - t0:6.1f} s", file=sys.stderr)
            if setup["device"] == "cuda":
                torch.cuda.empty_cache()
    return rows, skipped


def print_table(rows: list[Row], skipped: list[str], setup: dict) -> None:
    dev = torch.cuda.get_device_name() if setup["device"] == "cuda" else "cpu (dry run: small shapes, predictions for H200)"
    print(f"{setup['model']}, one full-width layer per kind, {dev}; predicted with hw_specs/{setup['hw']}.yaml (TP1, bf16)")
    print(f"{'layer':<19}{'phase':<17}{'op kind':<24}{'ops':>5}{'predicted':>13}{'measured':>13}{'error':>9}")
    for r in rows:
        err = "fused" if r.predicted_s == 0 else f"{r.error_pct:.1f}%"
        print(f"{r.layer:<19}{r.phase:<17}{r.op_kind:<24}{r.ops:>5}{r.predicted_s * 1e3:>11.3f}ms"
              f"{r.measured_s * 1e3:>11.3f}ms{err:>9}")
    for s in skipped:
        print(f"left out (time budget): {s}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="small CPU shapes, the same code path")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    setup = DRY if args.dry_run else FULL
    if setup["device"] == "cuda" and not torch.cuda.is_available():
        print("gpu_validate: no CUDA device is present; run with --dry-run for the CPU path", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with torch.no_grad():
        rows, skipped = run(setup, args.budget_s, log=print)
    print_table(rows, skipped, setup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [{**asdict(r), "error_pct": r.error_pct} for r in rows], "left_out": skipped}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
