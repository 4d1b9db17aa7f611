"""`codesign reproduce qwen3.5`: the Qwen3.5 release's headline claims, re-derived by simulation.

For 8x H200 and one other system, Qwen3.5-397B-A17B against Qwen3-235B-A22B and the Qwen3-Max
proxy: steady-state decode throughput ratios at 32K and 256K (each model at its best plan and the
largest batch that fits) and the deployment memory ratio, beside the claimed values.
"""

from __future__ import annotations

import argparse
import json

from codesign.errors import CodesignError

SUBJECT = "qwen3.5-397b-a17b"
BASELINES = {
    # baseline -> claimed decode throughput ratio at (32K, 256K) (model-architectures.md: official
    # claims, Qwen3.5 release blog; the Qwen3-235B figures via a secondary summary).
    "qwen3-235b-a22b": (3.5, 7.2),
    "qwen3-max-proxy": (8.6, 19.0),
}
CLAIMED_MEMORY_SAVING = {"qwen3-max-proxy": 0.60}  # "deployment memory -60% vs Qwen3-Max"
CONTEXTS = (32_768, 262_144)
# 8x H200 (the claim's reference class), and a 72-chip NVL72 domain where the >1T proxy fits with room
SYSTEMS = (("h200", 8), ("gb200-nvl72", 72), ("b200", 8))
ASSUMPTIONS = [
    "steady-state decode at input = context tokens of KV per sequence (mode: decode)",
    "precision fp8 weights and activations, bf16 KV cache, fp32 GatedDeltaNet state",
    "each model at its best plan (parallel: auto) and the largest batch that fits in HBM",
    "uniform expert routing (seeded); no MTP / speculative decoding for either model",
    "Qwen3-Max architecture is not public: model_graphs/qwen3-max-proxy.yaml is a sized proxy",
    "deployment memory = weight bytes of the whole model at the deployment precision",
    "ratio = batch ratio (sequences that fit: weights, KV and state vs HBM) x step-time ratio (TPOT)",
]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("reproduce", help="re-derive published claims by simulation (qwen3.5)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("claim", choices=["qwen3.5"], help="which published claims")
    p.add_argument("--hw", default=None, help="comma-separated hardware names (default h200 and one other present)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _systems(hw_arg: str | None) -> list[tuple[str, int | None]]:
    from codesign.hw import available_hw

    if hw_arg:
        return [(h.strip(), None) for h in hw_arg.split(",") if h.strip()]
    have = set(available_hw())
    picked = [(n, c) for n, c in SYSTEMS if n in have]
    if not picked:
        raise CodesignError(f"reproduce: none of {', '.join(n for n, _ in SYSTEMS)} in hw_specs/")
    return picked[:2]


def weight_bytes(model: str, precision) -> float:
    """Whole-model weight bytes at `precision` (MTP heads excluded)."""
    from codesign.mapping import model_params
    from codesign.models import load_model

    params = sum(model_params(load_model(model), mtp=False).values())
    return params * precision.bytes_per_element(precision.weights)


def reproduce(systems: list[tuple[str, int | None]]) -> dict:
    from codesign.mapping import Precision
    from codesign.sim import DEFAULT_PRECISION, simulate

    prec = Precision.from_dict(DEFAULT_PRECISION)
    out: dict = {"assumptions": ASSUMPTIONS, "systems": []}
    for hw, chips in systems:
        rates: dict[str, dict[int, dict]] = {}
        for model in (SUBJECT, *BASELINES):
            for r in simulate(hw, model, context=list(CONTEXTS), chips=chips):
                chips = r.chips
                rates.setdefault(model, {})[r.context] = {
                    "output_tokens_per_s": r.output_tokens_per_s if r.feasible else None,
                    "plan": r.plan, "concurrency": r.concurrency, "reason": r.reason,
                    "tpot_s": r.tpot_s["mean"] if r.feasible and r.tpot_s else None,
                    "memory_per_chip_gib": r.memory_per_chip_gib, "bottleneck": r.bottleneck,
                }
        comps = []
        for base, claims in BASELINES.items():
            for ctx, claim in zip(CONTEXTS, claims):
                a = rates[SUBJECT][ctx]["output_tokens_per_s"]
                b = rates[base][ctx]["output_tokens_per_s"]
                ratio = a / b if a and b else None
                # throughput = batch / TPOT, so the ratio factors into how many more sequences fit
                # (capacity) times how much faster each step is (speed)
                sa, sb = rates[SUBJECT][ctx], rates[base][ctx]
                capacity = sa["concurrency"] / sb["concurrency"] if ratio else None
                speed = sb["tpot_s"] / sa["tpot_s"] if ratio else None
                comps.append({"baseline": base, "context": ctx, "claimed": claim, "simulated": ratio,
                              "capacity_factor": capacity, "speed_factor": speed,
                              "subject": sa, "base": sb})
        mem = []
        for base, saving in CLAIMED_MEMORY_SAVING.items():
            s = 1.0 - weight_bytes(SUBJECT, prec) / weight_bytes(base, prec)
            mem.append({"baseline": base, "claimed_saving": saving, "simulated_saving": s})
        out["systems"].append({"hardware": hw, "chips": chips, "throughput": comps, "memory": mem})
    return out


def run(args: argparse.Namespace) -> int:
    data = reproduce(_systems(args.hw))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.table import Table

    from codesign.commands.simulate import console

    c = console()
    for sysd in data["systems"]:
        t = Table(title=f"Qwen3.5-397B-A17B decode throughput ratio on {sysd['chips'] or ''}x {sysd['hardware']}")
        for col in ("vs", "context", "claimed", "simulated", "= batch x step-time ratio",
                    "397B plan / batch / tok/s", "baseline plan / batch / tok/s"):
            t.add_column(col, overflow="fold")

        def side(d: dict) -> str:
            if d["output_tokens_per_s"] is None:
                return f"infeasible: {d['reason']}"
            plan = ",".join(f"{k}{v}" for k, v in d["plan"].items() if v != 1) or "1"
            return f"{plan} / {d['concurrency']} / {d['output_tokens_per_s']:,.0f}"

        for cmp in sysd["throughput"]:
            sim = "-" if cmp["simulated"] is None else f"{cmp['simulated']:.2f}x"
            why = "-" if cmp["simulated"] is None else f"{cmp['capacity_factor']:.2f} x {cmp['speed_factor']:.2f}"
            t.add_row(cmp["baseline"], f"{cmp['context'] // 1024}K", f"{cmp['claimed']}x", sim, why,
                      side(cmp["subject"]), side(cmp["base"]))
        c.print(t)
        for m in sysd["memory"]:
            c.print(f"deployment memory vs {m['baseline']}: claimed -{m['claimed_saving']:.0%}, "
                    f"simulated -{m['simulated_saving']:.0%}")
    c.print("assumptions:")
    for a in data["assumptions"]:
        c.print(f"  - {a}")
    return 0
