"""Where a native-check phase's time goes: each module of the tiny model timed inside the real run
against the calibrated prediction of its ops, and the heavy kernels' in-model per-call cost
against their microbenchmarks.

    python benchmarks/native_ops.py --model qwen3.5-397b-a17b            # decode step
    python benchmarks/native_ops.py --model llama-2-70b --phase prefill
    python benchmarks/native_ops.py --calibration hw_specs/calibration/cpu-host.yaml --rounds 8

The run is native-check's (`codesign.native.check`: fp32, seeded random weights, a prefill of
`--prompt-tokens` then `--decode-steps` decode steps, one torch thread, thread CPU time). Forward
hooks time each module of every layer (norms, token mixer, router, routed experts, shared expert)
and thin wrappers time each call of the heavy kernels (the three fused custom ops and the depthwise
convolution) inside the model; each module is reported at its quietest round (as native-check
measures a step: other jobs' contention comes and goes), the step at its quietest round. Hooks cost about a
microsecond each, so the hooked step is a little slower than native-check's. The prediction is
native-check's (`EagerCostModel` with the overlay), summed over the ops recorded under each module.
A diagnostic: nothing here feeds the calibration.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codesign.native.check import without_mtp  # noqa: E402

KERNELS = ("gated_delta_rule_step", "moe_experts", "attention", "conv1d")


def group_of(op_name: str) -> str:
    """The module an op was recorded under, as the hooks name it (layer index dropped)."""
    mod, _, leaf = op_name.partition("/")
    parts = mod.split(".")
    if parts[0] != "layers":
        return parts[0]
    sub = parts[2] if len(parts) > 2 and parts[2] != "add" else "residual add"
    if sub == "mlp" and len(parts) > 3 and parts[3] in ("gate", "experts", "shared_expert", "shared_expert_gate"):
        sub = f"mlp.{parts[3]}"
    if leaf in ("gated_delta_rule_step", "attention", "convolution", "moe_experts"):
        sub = f"{sub}/{'conv1d' if leaf == 'convolution' else leaf}"
    return sub


def predicted(cfg, cal, phase: str, prompt: int, steps: int) -> tuple[dict[str, float], dict[str, int]]:
    from codesign.graph import trace
    from codesign.mapping import map_step
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.native.check import eager_model

    prec = Precision(weights="fp32", activations="fp32", kv_cache="fp32", state="fp32")
    kw = dict(tokens=prompt, context=0) if phase == "prefill" else dict(context=prompt + steps // 2 + 1)
    mapped = map_step(trace(cfg, phase=phase, batch=1, **kw), cfg, cal.hw, ParallelPlan(), prec)
    ops = [op for _, op in mapped.graph.nodes(data="op")]
    cm = eager_model(cal, cfg, phase, 1, kw.get("tokens", 1), kw["context"], ops)
    out: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.Counter()
    for op in ops:
        g = group_of(op.name)
        out[g] += cm.cost(op).time_s
        count[g] += 1
    return out, count


class Timers:
    """Forward hooks on the modules and wrappers around the heavy kernels, accumulating thread CPU time."""

    def __init__(self, model) -> None:
        import codesign.models.gated_deltanet as gdn
        from codesign.models import kernels

        self.acc: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.Counter()
        self._stack: list[float] = []
        self._undo = []
        for layer in model.layers:
            self._hook(layer.input_layernorm, "input_layernorm")
            self._hook(layer.post_attention_layernorm, "post_attention_layernorm")
            self._hook(layer.mixer, layer.mixer_name)
            for name in ("gate", "experts", "shared_expert", "shared_expert_gate"):
                if getattr(layer.mlp, name, None) is not None:
                    self._hook(getattr(layer.mlp, name), f"mlp.{name}")
            self._hook(layer.mlp, "mlp")
        for mod, name in ((model.embed_tokens, "embedding"), (model.norm, "norm"), (model.lm_head, "lm_head")):
            self._hook(mod, name)
        self._wrap(gdn, "gated_delta_rule_step", "linear_attn/gated_delta_rule_step")
        self._wrap(kernels, "moe_experts", "mlp.experts/moe_experts")
        self._wrap(kernels, "attention", "self_attn/attention")
        self._wrap(F, "conv1d", "linear_attn/conv1d")

    def _hook(self, mod, key: str) -> None:
        now, stack, acc = time.thread_time, self._stack, self.acc
        h1 = mod.register_forward_pre_hook(lambda m, a: stack.append(now()))
        h2 = mod.register_forward_hook(lambda m, a, o: acc.__setitem__(key, acc[key] + now() - stack.pop()))
        self._undo += [h1.remove, h2.remove]

    def _wrap(self, owner, attr: str, key: str) -> None:
        inner, now, acc, calls = getattr(owner, attr), time.thread_time, self.acc, self.calls

        def timed(*args, **kwargs):
            t0 = now()
            out = inner(*args, **kwargs)
            acc[key] += now() - t0
            calls[key] += 1
            return out
        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, inner))

    def exclusive(self, per: int) -> dict[str, float]:
        """Seconds per step of each group, parents less their timed children."""
        a = {k: v / per for k, v in self.acc.items()}
        for parent in ("linear_attn", "self_attn"):
            a[parent] = a.get(parent, 0.0) - sum(v for k, v in a.items() if k.startswith(parent + "/"))
        a["mlp"] = a.get("mlp", 0.0) - sum(v for k, v in a.items() if k.startswith("mlp.") and "/" not in k)
        a["mlp.experts"] = a.get("mlp.experts", 0.0) - a.get("mlp.experts/moe_experts", 0.0)
        return a

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()


@torch.no_grad()
def measured(cfg, phase: str, prompt: int, steps: int, rounds: int) -> tuple[float, dict[str, float], dict[str, int]]:
    from codesign.native.replay import no_gc
    from codesign.native.run import build_native

    model = build_native(cfg, 0, torch.float32, "cpu")
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))
    timers = Timers(model)
    results = []
    with no_gc():
        try:
            for r in range(rounds + 1):  # the first round warms up
                caches = model.make_caches(1, prompt + steps + 1)
                timers.acc.clear()
                timers.calls.clear()
                t0 = time.thread_time()
                model.lm_head(model.norm(model.hidden_states(ids, 0, caches)[:, -1:]))
                per, t = 1, time.thread_time() - t0
                if phase == "decode":
                    timers.acc.clear()
                    timers.calls.clear()
                    tok = torch.zeros(1, 1, dtype=torch.long)
                    t0 = time.thread_time()
                    for i in range(steps):
                        tok = model(tok, prompt + i, caches)[:, -1].argmax(-1, keepdim=True)
                    per, t = steps, (time.thread_time() - t0) / steps
                if r:
                    results.append((t, timers.exclusive(per), {k: v // per for k, v in timers.calls.items()}))
        finally:
            timers.close()
    # each module at its quietest round (native-check's estimate, codesign.native.check.quiet_estimate)
    keys = set().union(*(r[1] for r in results))
    quiet = {k: min(r[1].get(k, 0.0) for r in results) for k in keys}
    return min(r[0] for r in results), quiet, results[0][2]


def main(argv: list[str] | None = None) -> int:
    from codesign.models import load_model
    from codesign.native.overlay import default_path, load_calibrated

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3.5-397b-a17b")
    ap.add_argument("--phase", choices=("decode", "prefill"), default="decode")
    ap.add_argument("--calibration", default=None, help="overlay (default: hw_specs/calibration/cpu-host.yaml)")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = without_mtp(load_model(args.model).tiny())
    cal = load_calibrated(args.calibration or default_path("cpu-host"))
    pred, count = predicted(cfg, cal, args.phase, args.prompt_tokens, args.decode_steps)
    step, meas, calls = measured(cfg, args.phase, args.prompt_tokens, args.decode_steps, args.rounds)
    print(f"{cfg.name} {args.phase}: hooked step {step * 1e6:.0f} us measured (quietest of {args.rounds} rounds), "
          f"{sum(pred.values()) * 1e6:.0f} us predicted; thread CPU time, 1 thread")
    print(f"{'module (all layers)':38s} {'ops':>4s} {'predicted us':>13s} {'measured us':>12s} {'error':>7s}")
    hooked = 0.0
    for g in sorted(set(pred) | set(meas)):
        p, m = pred.get(g, 0.0), meas.get(g, 0.0)
        hooked += m
        err = f"{100 * (p - m) / m:+6.1f}%" if m > 0 else "     -"
        print(f"{g:38s} {count.get(g, 0):4d} {p * 1e6:13.1f} {m * 1e6:12.1f} {err:>7s}")
    print(f"{'(between hooks: adds, argmax, Python)':38s} {'':4s} {'':13s} {(step - hooked) * 1e6:12.1f}")
    e, b = cal.eager, cal.calibration.benchmarks
    light = {"linear_attn/gated_delta_rule_step": b.get("gated_delta_rule_step_light_s"),
             "mlp.experts/moe_experts": None,
             "self_attn/attention": b.get("attention_1x16_gqa_light_s"),
             "linear_attn/conv1d": b.get("aten.convolution.default_light_s")}
    heavy = {"linear_attn/gated_delta_rule_step": e.gated_delta_rule_step_s, "self_attn/attention": e.attention_s,
             "linear_attn/conv1d": e.ops.get("aten.convolution.default")}
    print("\nheavy kernels, per call (us): in the model / calibrated light-cold / calibrated heavy-cold (+ re-warm "
          f"{e.heavy_rewarm_s * 1e6:.1f})")
    for k in sorted(calls):
        n = calls[k]
        if not n:
            continue
        per_call = meas.get(k, 0.0) / n
        lo, hi = light.get(k), heavy.get(k)
        fmt = lambda x: f"{x * 1e6:7.1f}" if x else "      -"  # noqa: E731
        print(f"  {k:38s} x{n:<3d} {per_call * 1e6:7.1f} / {fmt(lo)} / {fmt(hi)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
