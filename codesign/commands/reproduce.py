"""`codesign reproduce qwen3.5`: the Qwen3.5 release's headline claims, re-derived by simulation.

For 8x H200 and one other system, Qwen3.5-397B-A17B against Qwen3-235B-A22B and two Qwen3-Max
proxies: steady-state decode throughput ratios at 32K and 256K (each model at its best plan and the
largest batch that fits) and the deployment memory ratio, beside the claimed values.

It explains rather than matches: beside every ratio it says how the baseline was sized (a proxy
sized from the claims agrees with them by construction), it refuses to call a ratio a result when
the baseline barely fits (fewer than `BARELY_FITS_BATCH` sequences), and with `--sensitivity` it
reprints every ratio under each named assumption changed (`VARIANTS`: KV dtype, memory reserve, a
common TPOT SLO, the plan).
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
    "qwen3-max-public-proxy": (8.6, 19.0),
}
# How each baseline's architecture was obtained (printed beside its ratios).
SIZING = {
    "qwen3-235b-a22b": "published architecture (HF config.json)",
    "qwen3-max-proxy": "PROXY sized FROM THE CLAIMS (active params from 8.6/3.5, KV per token from 19/7.2, "
                       "total from -60%): agreement is by construction, not evidence",
    "qwen3-max-public-proxy": "PROXY from public facts only (Qwen3-MoE style, >1T, 262K context): "
                              "Qwen3-235B's layers with 576 experts",
}
SIZED_FROM = {"qwen3-235b-a22b": "published", "qwen3-max-proxy": "the claims (by construction)",
              "qwen3-max-public-proxy": "public facts only"}
CLAIMED_MEMORY_SAVING = {"qwen3-max-proxy": 0.60, "qwen3-max-public-proxy": 0.60}  # "deployment memory -60% vs Qwen3-Max"
# A baseline that fits fewer sequences than this on the whole system "barely fits": its throughput
# is set by a batch that no deployment would run, so the ratio is flagged instead of reported.
BARELY_FITS_BATCH = 8
# Named assumptions changed one at a time (`--sensitivity`): name -> simulate() overrides.
VARIANTS = {
    "kv fp8": {"precision": {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}},
    "reserve 10%": {"reserve_fraction": 0.10},
    "TPOT <= 50 ms": {"slo": {"tpot_s": 0.05}},
    "subject's plan": {"plan": "subject"},
}
CONTEXTS = (32_768, 262_144)
# 8x H200 (the claim's reference class), and a 72-chip NVL72 domain where the >1T proxy fits with room
SYSTEMS = (("h200", 8), ("gb200-nvl72", 72), ("b200", 8))
ASSUMPTIONS = [
    "steady-state decode at input = context tokens of KV per sequence (mode: decode)",
    "precision fp8 weights and activations, bf16 KV cache, fp32 GatedDeltaNet state",
    "each model at its best plan (parallel: auto) and the largest batch that fits in HBM",
    "uniform expert routing (seeded); no MTP / speculative decoding for either model",
    "Qwen3-Max architecture is not public: two proxies, model_graphs/qwen3-max-proxy.yaml (sized from the "
    "claims) and model_graphs/qwen3-max-public-proxy.yaml (public facts only); see 'sized from' beside each ratio",
    f"a ratio whose baseline fits fewer than {BARELY_FITS_BATCH} sequences is flagged, not reported",
    "deployment memory = weight bytes of the whole model at the deployment precision",
    "ratio = batch ratio (sequences that fit: weights, KV and state vs HBM) x step-time ratio (TPOT)",
]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("reproduce", help="re-derive published claims by simulation (qwen3.5)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("claim", choices=["qwen3.5"], help="which published claims")
    p.add_argument("--hw", default=None, help="comma-separated hardware names (default h200 and one other present)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also every ratio with each named assumption changed (KV dtype, reserve, TPOT SLO, plan)")
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


def _capacity_for_reserve(hw, fraction: float):
    """The spec with HBM capacity scaled so that the memory fit's fixed 5% reserve
    (codesign.mapping.memory.RESERVE_FRACTION) leaves what `fraction` would: (1 - f) C' = (1 - f') C."""
    from codesign.hw import load_hw
    from codesign.mapping.memory import RESERVE_FRACTION

    hw = load_hw(hw)
    hbm = hw.chip.hbm.model_copy(update={"capacity": hw.chip.hbm.capacity * (1 - fraction) / (1 - RESERVE_FRACTION)})
    return hw.model_copy(update={"chip": hw.chip.model_copy(update={"hbm": hbm})})


def _rates(hw, chips: int | None, models, plans: dict[int, dict] | None = None, **kw) -> tuple[dict, int | None]:
    """Per model and context: the best plan's decode figures (`simulate` rows); with `plans`
    (context -> plan), every model at that plan instead."""
    from codesign.sim import simulate

    rates: dict[str, dict[int, dict]] = {}
    runs = [(list(CONTEXTS), "auto")] if plans is None else [([ctx], plans[ctx]) for ctx in CONTEXTS]
    for model in models:
        for ctxs, plan in runs:
            for r in simulate(hw, model, context=ctxs, chips=chips, plan=plan, **kw):
                chips = r.chips
                rates.setdefault(model, {})[r.context] = {
                    "output_tokens_per_s": r.output_tokens_per_s if r.feasible else None,
                    "plan": r.plan, "concurrency": r.concurrency, "reason": r.reason,
                    "tpot_s": r.tpot_s["mean"] if r.feasible and r.tpot_s else None,
                    "memory_per_chip_gib": r.memory_per_chip_gib, "bottleneck": r.bottleneck,
                }
    return rates, chips


def _ratio(rates: dict, base: str, ctx: int) -> tuple[float | None, str | None]:
    """Subject / baseline throughput, and a flag when the baseline barely fits."""
    a = rates[SUBJECT][ctx]["output_tokens_per_s"]
    b = rates[base][ctx]["output_tokens_per_s"]
    if not (a and b):
        return None, None
    n = rates[base][ctx]["concurrency"]
    flag = f"baseline barely fits ({n} sequences < {BARELY_FITS_BATCH}): not a result" if n < BARELY_FITS_BATCH else None
    return a / b, flag


def _variant(hw, chips: int, name: str, rates: dict) -> dict:
    """Every ratio with one named assumption changed."""
    kw = dict(VARIANTS[name])
    if "reserve_fraction" in kw:
        hw = _capacity_for_reserve(hw, kw.pop("reserve_fraction"))
    plans = None
    if kw.pop("plan", None) == "subject":  # every model at the plan the subject won with, per context
        plans = {ctx: rates[SUBJECT][ctx]["plan"] or "auto" for ctx in CONTEXTS}
    v_rates, _ = _rates(hw, chips, (SUBJECT, *BASELINES), plans, **kw)
    return {(base, ctx): _ratio(v_rates, base, ctx) for base in BASELINES for ctx in CONTEXTS}


def reproduce(systems: list[tuple[str, int | None]], sensitivity: bool = False) -> dict:
    from codesign.mapping import Precision
    from codesign.sim import DEFAULT_PRECISION

    prec = Precision.from_dict(DEFAULT_PRECISION)
    out: dict = {"assumptions": ASSUMPTIONS, "sizing": SIZING, "barely_fits_batch": BARELY_FITS_BATCH,
                 "systems": []}
    for hw, chips in systems:
        rates, chips = _rates(hw, chips, (SUBJECT, *BASELINES))
        variants = {v: _variant(hw, chips, v, rates) for v in VARIANTS} if sensitivity else {}
        comps = []
        for base, claims in BASELINES.items():
            for ctx, claim in zip(CONTEXTS, claims):
                ratio, flag = _ratio(rates, base, ctx)
                # throughput = batch / TPOT, so the ratio factors into how many more sequences fit
                # (capacity) times how much faster each step is (speed)
                sa, sb = rates[SUBJECT][ctx], rates[base][ctx]
                capacity = sa["concurrency"] / sb["concurrency"] if ratio else None
                speed = sb["tpot_s"] / sa["tpot_s"] if ratio else None
                sens = {v: {"simulated": r[(base, ctx)][0], "flag": r[(base, ctx)][1]} for v, r in variants.items()}
                comps.append({"baseline": base, "context": ctx, "claimed": claim, "simulated": ratio, "flag": flag,
                              "sizing": SIZING[base], "capacity_factor": capacity, "speed_factor": speed,
                              "sensitivity": sens, "subject": sa, "base": sb})
        mem = []
        for base, saving in CLAIMED_MEMORY_SAVING.items():
            s = 1.0 - weight_bytes(SUBJECT, prec) / weight_bytes(base, prec)
            mem.append({"baseline": base, "claimed_saving": saving, "simulated_saving": s, "sizing": SIZING[base]})
        out["systems"].append({"hardware": hw, "chips": chips, "throughput": comps, "memory": mem})
    return out


def run(args: argparse.Namespace) -> int:
    data = reproduce(_systems(args.hw), sensitivity=args.sensitivity)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.table import Table

    from codesign.commands.simulate import console

    def ratio(sim: float | None, flag: str | None) -> str:
        if sim is None:
            return "-"
        return f"not a result: {flag} ({sim:.1f}x)" if flag else f"{sim:.2f}x"

    c = console()
    for sysd in data["systems"]:
        t = Table(title=f"Qwen3.5-397B-A17B decode throughput ratio on {sysd['chips'] or ''}x {sysd['hardware']}")
        cols = ["vs", "sized from", "context", "claimed", "simulated", "= batch x step-time ratio",
                "397B plan / batch / tok/s", "baseline plan / batch / tok/s"]
        variants = list(sysd["throughput"][0]["sensitivity"]) if sysd["throughput"] else []
        for col in cols + variants:
            t.add_column(col, overflow="fold")

        def side(d: dict) -> str:
            if d["output_tokens_per_s"] is None:
                return f"infeasible: {d['reason']}"
            plan = ",".join(f"{k}{v}" for k, v in d["plan"].items() if v != 1) or "1"
            return f"{plan} / {d['concurrency']} / {d['output_tokens_per_s']:,.0f}"

        for cmp in sysd["throughput"]:
            why = "-" if cmp["simulated"] is None else f"{cmp['capacity_factor']:.2f} x {cmp['speed_factor']:.2f}"
            t.add_row(cmp["baseline"], SIZED_FROM[cmp["baseline"]], f"{cmp['context'] // 1024}K", f"{cmp['claimed']}x",
                      ratio(cmp["simulated"], cmp["flag"]), why, side(cmp["subject"]), side(cmp["base"]),
                      *(ratio(v["simulated"], v["flag"]) if v["simulated"] is not None else "no fit"
                        for v in cmp["sensitivity"].values()))
        c.print(t)
        for m in sysd["memory"]:
            c.print(f"deployment memory vs {m['baseline']}: claimed -{m['claimed_saving']:.0%}, "
                    f"simulated -{m['simulated_saving']:.0%}")
    c.print("how each baseline was sized:")
    for base, how in data["sizing"].items():
        c.print(f"  - {base}: {how}")
    c.print("assumptions:")
    for a in data["assumptions"]:
        c.print(f"  - {a}")
    if not args.sensitivity:
        c.print("(--sensitivity reprints every ratio with each named assumption changed: "
                + ", ".join(VARIANTS) + ")")
    return 0
