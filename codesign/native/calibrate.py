"""Calibrating a spec's efficiencies on the host device from microbenchmarks (`codesign calibrate`).

Each overlay field comes from kernel-level measurements only (`codesign.native.microbench`), solved
with the cost model's own formulas so that the model reproduces the benchmark it came from:

| field | benchmark | derivation |
| --- | --- | --- |
| `eager.view_s` | Python-level view ops (view, transpose, select, t, expand, slice, unsqueeze) of a small tensor | seconds per view dispatch |
| `cost.launch_overhead_s` | RMSNorm + SwiGLU MLP modules at one token (hidden 64) | (t - its views x `view_s`) / its other aten dispatches |
| `efficiency.gemm` | fp32 matmul, M in (64, 256, 1024), N = K = 512 | median of 2MNK / ((t - overhead) x peak) |
| `efficiency.small_m_half` | fp32 matmul, M in (1, 2, 4, 8), N = K = 512 | median h of t - overhead = 2 M N K (M + h) / (M peak eff) |
| `efficiency.memory` | copy of 256 MiB | (read + write bytes) / t / spec HBM bandwidth |
| `efficiency.vector` | element-wise mul of two 64 Ki-element vectors (L2-resident) | elements / (t - overhead) / spec vector peak |
| `efficiency.attention` | `codesign::attention`, fresh prompts T = S in (128, 256, 512), 4 query heads over 2 KV heads of dim 16 | median causal FLOPs / ((t - light per-call) x peak) |
| `eager.attention_s` | `codesign::attention` at T = 1, S = 16, 4 query heads of 16 over 2 KV heads, heavy-cold | t |
| `eager.moe_experts_s`, `moe_expert_s`, `moe_route_s` | `codesign::moe_experts`, 8 tokens top-1 over 1 and over 8 experts, and 256 tokens top-4 over 8 experts (hidden 64, width 32), heavy-cold | per route = (t256 - FLOPs at the GEMM rate - t8) / 1016; per expert = (t8 - t1) / 7; per call = t1 - per expert - 8 routes |
| `eager.gated_delta_rule_step_s` | the fused decode step, 2 key heads and 4 value heads of 16 x 16, heavy-cold | t |
| `eager.ops` | every aten target the tracer emits for the tiny configs, replayed (`codesign.native.replay`) cold at its smallest traced shape (heavy-cold where heavy) | t per target |
| `eager.op_views`, `eager.op_others` | the same calls, counted (`dispatch.count_call`), not timed | views and other dispatches beyond the op itself |
| `eager.heavy_ops`, `eager.heavy_rewarm_s` | the RMSNorm + MLP block after one call of each heavy kernel vs after the light scrub | aten targets timed heavy; median excess |

**Cold regimes** (a named assumption; `heavy_dispatches` overrides it, `codesign calibrate
--heavy-dispatches`): a per-call cost is timed after the light `microbench.Scrub` — right for aten
ops, whose kind recurs within a few ops in a model and whose dispatch path every other op keeps
hot — except for **heavy kernels**, timed after `microbench.VocabularyScrub` (one call of every
other op of the `vocabulary`): the three fused kernels (Python custom ops: the torch.library
dispatch machinery and a Python body that no other op shares) and every aten target whose light
cold cost is at least `HEAVY_OP_DISPATCHES` per-dispatch costs (`cost.launch_overhead_s`: a kernel
with a setup of its own, the oneDNN convolution). A heavy kernel runs once per layer, and between
two calls the layer's other heavy kernels evict what only it uses. Both figures of every heavy
kernel are kept in `benchmarks` (the light one as `..._light_s`). The light ops right after a heavy
kernel find the shared dispatch path evicted too: `eager.heavy_rewarm_s` is the median over the
heavy kernels of what the RMSNorm + MLP block costs more right after one call of that kernel than
after the light scrub (`microbench.rewarm`; each figure in `benchmarks` as `rewarm_after_<op>_s`),
charged once per heavy kernel call; `eager.heavy_ops` lists the aten targets found heavy.

**Passes** (`passes`, default `CALIBRATION_PASSES`; `codesign calibrate --passes`): the whole set
of microbenchmarks runs that many times one after the other; every benchmark figure keeps its
least over the passes (on a shared machine other jobs' contention comes and goes and slows whatever
runs meanwhile, by up to 2x; the least of several passes is the benchmark in a quiet window, and
native-check measures its side the same way, `codesign.native.check.quiet_estimate`) and every
field is derived again from those figures (`derive`), so that a field solved from two timings
(the GEMM efficiency less the dispatch, `small_m_half`, the MoE per-expert cost) comes from two
least-contended ones. The re-warm figures, paired differences timed together, keep their median.
A target heavy in any pass is heavy, at the least of its heavy figures.

Efficiencies are capped at 1 (a benchmark faster than the spec's peak says the peak is wrong: the
command says so). `cost` also records the eager-execution switches: `fused_activations_on_chip:
false` (eager torch writes every intermediate). All timings at `threads` torch threads.
"""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from codesign.errors import CodesignError
from codesign.hw.spec import HardwareSpec
from codesign.native import microbench as mb
from codesign.native.dispatch import count_call
from codesign.native.overlay import Calibration, EagerCosts

GEMM_LARGE = (64, 256, 1024)
GEMM_SMALL = (1, 2, 4, 8)
GEMM_NK = 512
# Fresh prompts (T = S), 4 query heads over 2 KV heads of dim 16 (the tiny configs' own). The eager
# kernel computes the whole T x S score matrix and its softmax and masking scale with T x S x heads,
# not with the causal FLOPs the cost model counts: its efficiency depends on the head dim and on
# S / T, which one efficiency cannot carry (a named limit, docs/native.md).
ATTENTION_SHAPES = ((128, 128, 4, 16), (256, 256, 4, 16), (512, 512, 4, 16))
STREAM_BYTES = 256 << 20
VECTOR_ELEMENTS = 64 << 10
# An aten op whose light cold call costs at least this many per-dispatch costs is a heavy kernel
# (timed after the vocabulary scrub): on the reference VM the oneDNN convolution (~15-25) is the
# only one; every other target costs 1-4 (the module docstring's "Cold regimes").
HEAVY_OP_DISPATCHES = 10.0
# The fused kernels at the tiny configs' shapes: what their per-call costs are timed at and what
# the vocabulary scrub runs of them.
FUSED_TARGETS = ("codesign.attention", "codesign.gated_delta_rule_step", "codesign.moe_experts")
# Passes over the whole set of microbenchmarks; each field keeps its least-contended figure (`merge`).
CALIBRATION_PASSES = 8


def cpu_name() -> str:
    """The host CPU's model name (what an overlay's `measured` names)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _capped(name: str, value: float, notes: list[str]) -> float:
    if value > 1.0:
        notes.append(f"{name}: measured {value:.2f} of the spec's peak; capped at 1 (the peak is too low)")
        return 1.0
    return max(value, 1e-4)


def tiny_op_shapes() -> dict[str, object]:
    """Per-call cost key (`codesign.native.replay.cost_key`: the aten target, a binary op with a
    scalar operand apart) -> its smallest traced op over every tiny config (prefill of 16 tokens,
    decode at batch 1): the shapes the per-op costs are measured at."""
    from codesign.graph import trace
    from codesign.models import load_model
    from codesign.native.replay import cost_key
    from codesign.spec_files import available

    smallest: dict[str, object] = {}
    for name in available("model_graphs"):
        cfg = load_model(name).tiny()
        for kw in (dict(phase="prefill", batch=1, tokens=16, context=0), dict(phase="decode", batch=1, context=17)):
            for _, op in trace(cfg, **kw).nodes(data="op"):
                if op.target.startswith("codesign."):
                    continue
                key = cost_key(op)
                best = smallest.get(key)
                if best is None or op.bytes_total / max(op.repeat, 1) < best.bytes_total / max(best.repeat, 1):
                    smallest[key] = op
    return smallest


def vocabulary(device: torch.device, shapes: dict) -> dict[str, Callable[[], object]]:
    """Every op kind of the tracer's vocabulary as a call: each aten target of `shapes` at its
    shape (`codesign.native.replay.build`) and the fused kernels at the tiny shapes they are timed
    at. What `microbench.VocabularyScrub` runs between two calls of a heavy kernel."""
    from codesign.native.replay import build

    f32 = torch.float32
    calls: dict[str, Callable[[], object]] = {t: build(op, device, f32) for t, op in sorted(shapes.items())}
    calls["codesign.attention"] = mb.attention_call(1, 16, 4, 16, device, f32, kv_heads=2)
    calls["codesign.gated_delta_rule_step"] = mb.gdn_step_call(1, 2, 4, 16, 16, device, f32)
    calls["codesign.moe_experts"] = mb.moe_experts_call(8, 1, 8, 64, 32, device, f32)
    return calls


def held_dispatches(shapes: dict | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """(views, other dispatches) that the timed call of each per-call cost key dispatches beyond the
    op itself, where it dispatches any (`eager.op_views`, `op_others`): structural counts of the
    calls `per_target_costs` times, on the CPU at their tiny shapes (no timing)."""
    from codesign.native.replay import build

    views, others = {}, {}
    for target, op in sorted((shapes or tiny_op_shapes()).items()):
        n, v = count_call(build(op, torch.device("cpu"), torch.float32))
        if v:
            views[target] = v
        if n - v > 1:
            others[target] = n - v - 1
    return views, others


def per_target_costs(device: torch.device, repeats: int, shapes: dict | None = None, heavy_s: float = math.inf,
                     calls: dict | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Cold seconds of one call of each aten target at its smallest tiny-config shape, and the light
    figures of the heavy ones: a target whose light cold call takes >= `heavy_s` is timed again
    after the vocabulary scrub (`calls`, default `vocabulary(device, shapes)`), and that is its cost."""
    from codesign.native.replay import build

    shapes = shapes or tiny_op_shapes()
    out, light = {}, {}
    for target, op in sorted(shapes.items()):
        fn = build(op, device, torch.float32)
        t = mb.cold(fn, device, repeats)
        if t >= heavy_s:
            calls = calls or vocabulary(device, shapes)
            light[target] = t
            t = mb.cold(fn, device, repeats, mb.VocabularyScrub(calls, target))
        out[target] = t
    return out, light


def calibrate(hw: HardwareSpec, device: torch.device, repeats: int = 7,
              step: Callable[[str], None] | None = None,
              heavy_dispatches: float = HEAVY_OP_DISPATCHES,
              passes: int = CALIBRATION_PASSES) -> tuple[Calibration, list[str]]:
    """Run the microbenchmarks on `device` `passes` times and derive the overlay for `hw` (name = its
    base), each field at its least-contended pass (`merge`). `step(label)` is called before each
    benchmark (progress). `heavy_dispatches`: the light cold cost, in per-dispatch costs, from which
    an aten op is a heavy kernel (`inf`: none is; the fused kernels always are). Returns the overlay
    and notes."""
    say = step or (lambda label: None)
    if not heavy_dispatches > 0:
        raise CodesignError(f"calibrate: heavy_dispatches: expected a positive number, found {heavy_dispatches}")
    if passes < 1:
        raise CodesignError(f"calibrate: passes: expected a positive number, found {passes}")
    shapes = tiny_op_shapes()
    runs = []
    for i in range(passes):
        label = (lambda text: say(f"pass {i + 1}/{passes}: {text}")) if passes > 1 else say
        runs.append(_calibrate(hw, device, repeats, label, shapes, heavy_dispatches))
    notes = list(dict.fromkeys(n for _, ns in runs for n in ns))
    return merge([c for c, _ in runs]), notes


# Fields that are differences or ratios of two timings of one pass, where a pass lacks the benchmark
# figures to derive them from: contention moves both terms, they keep their median.
PAIRED_EAGER = ("moe_expert_s", "heavy_rewarm_s")
MOE_TOKENS, MOE_TOP_K = 256, 4  # the per-routed-token benchmark: a prefill-sized call, 128 routes per expert
MOE_BENCHMARKS = ("moe_experts_8tok_1expert_s", "moe_experts_8tok_8experts_s",
                  f"moe_experts_{MOE_TOKENS}tok_top{MOE_TOP_K}_8experts_s")
MOE_HIDDEN, MOE_WIDTH = 64, 32


def merge(passes: list[Calibration]) -> Calibration:
    """One overlay from several passes, at the least-contended figures (the module docstring's
    "Passes"): every benchmark figure at its least over the passes (the re-warm figures, paired
    differences, at their median) and every field derived again from them (`derive`: a field that is
    a difference or ratio of two timings must come from least-contended figures, not from the pass
    where the difference came out largest); the per-target op costs at their least; an aten target
    heavy in any pass is heavy, at the least of its heavy figures; `heavy_rewarm_s` at its median.
    Fields of passes without the benchmark figures: seconds at their least, efficiencies at their
    greatest, `small_m_half` and `PAIRED_EAGER` at their median."""
    first = passes[0]
    if len(passes) == 1:
        return first
    med = statistics.median
    eff = {k: (med if k == "small_m_half" else max)([p.efficiency[k] for p in passes]) for k in first.efficiency}
    eff["small_m_half"] = max(1, round(eff["small_m_half"]))
    cost = {k: (v if isinstance(v, bool) else min(p.cost[k] for p in passes)) for k, v in first.cost.items()}
    heavy = sorted({t for p in passes for t in p.eager.heavy_ops})
    ops = {t: min(p.eager.ops[t] for p in passes if t not in heavy or t in p.eager.heavy_ops)
           for t in first.eager.ops}
    e = {k: (med if k in PAIRED_EAGER else min)([getattr(p.eager, k) for p in passes])
         for k in ("attention_s", "moe_experts_s", "moe_expert_s", "gated_delta_rule_step_s", "heavy_rewarm_s",
                   "view_s", "moe_route_s")}
    bench = {k: (med if k.startswith("rewarm_after_") else min)([p.benchmarks[k] for p in passes if k in p.benchmarks])
             for k in dict.fromkeys(k for p in passes for k in p.benchmarks)}
    from codesign.hw import load_hw

    d_eff, d_cost, d_eager = derive(load_hw(first.base), bench, [])  # from the least-contended figures
    eff.update(d_eff)
    cost.update(d_cost)
    e.update(d_eager)
    return first.model_copy(update={
        "measured": f"{first.measured} ({len(passes)} passes, least-contended figures)",
        "efficiency": eff, "cost": cost, "benchmarks": bench,
        "eager": EagerCosts(**e, ops=ops, heavy_ops=heavy, op_views=first.eager.op_views,
                            op_others=first.eager.op_others),  # structural: the same in every pass
    })


def _attention_benchmarks(device: torch.device, repeats: int, bench: dict, heavy: mb.VocabularyScrub) -> None:
    """The per-call cost at a tiny GQA decode shape (light and heavy-cold), and fresh prompts timed back
    to back (their overhead as warm as the light per call that `derive` subtracts)."""
    f32 = torch.float32
    bench["attention_1x16_gqa_light_s"] = mb.attention(1, 16, 4, 16, device, f32, repeats, kv_heads=2)
    bench["attention_1x16_gqa_s"] = mb.attention(1, 16, 4, 16, device, f32, repeats, kv_heads=2, scrub=heavy)
    for T, S, H, D in ATTENTION_SHAPES:
        bench[f"attention_{T}x{S}_h{H}_d{D}_s"] = mb.attention(T, S, H, D, device, f32, repeats, kv_heads=H // 2)


def _fused_benchmarks(device: torch.device, repeats: int, bench: dict, calls: dict) -> None:
    """`moe_experts` over 1 and 8 experts and the GatedDeltaNet step, light and heavy-cold."""
    f32 = torch.float32
    moe = mb.VocabularyScrub(calls, "codesign.moe_experts")
    for scrub, tail in ((None, "_light_s"), (moe, "_s")):
        bench[f"moe_experts_8tok_1expert{tail}"] = mb.moe_experts(8, 1, 8, 64, 32, device, f32, repeats, scrub)
        bench[f"moe_experts_8tok_8experts{tail}"] = mb.moe_experts(8, 8, 8, 64, 32, device, f32, repeats, scrub)
    bench[MOE_BENCHMARKS[2]] = mb.moe_experts(MOE_TOKENS, 8, 8, 64, 32, device, f32, repeats, moe, top_k=MOE_TOP_K)
    bench["gated_delta_rule_step_light_s"] = mb.gdn_step(1, 2, 4, 16, 16, device, f32, repeats)
    gdn = mb.VocabularyScrub(calls, "codesign.gated_delta_rule_step")
    bench["gated_delta_rule_step_s"] = mb.gdn_step(1, 2, 4, 16, 16, device, f32, repeats, gdn)


def moe_fields(t1: float, t8: float, t_many: float | None = None, flop_s: float = math.inf) -> tuple[float, float, float]:
    """(eager.moe_experts_s, eager.moe_expert_s, eager.moe_route_s) from `moe_experts` of 8 tokens at
    top-1 over 1 and over 8 experts (8 routes each) and of `MOE_TOKENS` tokens at top-`MOE_TOP_K`
    over 8 experts, solved with the eager model's time = per call + active experts x per expert +
    routes x per route + FLOPs / `flop_s` (the cost model's compute term: on cpu-host, tile M 1 and
    no grouped efficiency, the GEMM rate): per route = the large call's time beyond the 8-expert
    call's, less its FLOP time, over its extra routes; per expert = (t8 - t1) / 7; per call = t1 -
    per expert - 8 routes. Without the large call: no per-route term (0)."""
    per_expert = max(0.0, (t8 - t1) / 7)
    per_route = 0.0
    if t_many is not None:
        routes = MOE_TOKENS * MOE_TOP_K
        flops = routes * 6.0 * MOE_HIDDEN * MOE_WIDTH  # gate/up (2 x width rows) and down, 2 FLOPs per MAC
        per_route = max(0.0, (t_many - flops / flop_s - t8) / (routes - 8))
    return max(0.0, t1 - per_expert - 8 * per_route), per_expert, per_route


def _g(x: float) -> float:
    return float(f"{x:.4g}")


def _calibrate(hw: HardwareSpec, device: torch.device, repeats: int, say: Callable[[str], None],
               shapes: dict, heavy_dispatches: float) -> tuple[Calibration, list[str]]:
    f32 = torch.float32
    notes: list[str] = []
    bench: dict[str, float] = {}
    say("per-op overhead")
    view_s = bench["view_op_s"] = mb.view_ops(device, repeats)[0]
    op_s, n_ops, n_block_views = mb.module_ops(64, 128, device, f32, repeats, view_s)
    bench["module_block_s"] = op_s * (n_ops - n_block_views) + view_s * n_block_views  # the block's cold call
    say("GEMM")
    for m in (*GEMM_LARGE, *GEMM_SMALL):
        bench[f"gemm_{m}x{GEMM_NK}x{GEMM_NK}_s"] = mb.gemm(m, GEMM_NK, GEMM_NK, device, f32, repeats)
    say("memory bandwidth")
    bench["copy_256MiB_s"] = mb.stream_copy(STREAM_BYTES, device, max(3, repeats // 2))
    say("vector throughput")
    bench["mul_64Ki_s"] = mb.vector_mul(VECTOR_ELEMENTS, device, repeats)
    calls = vocabulary(device, shapes)
    say("attention")
    _attention_benchmarks(device, repeats, bench, mb.VocabularyScrub(calls, "codesign.attention"))
    say("MoE experts and the GatedDeltaNet step")
    _fused_benchmarks(device, repeats, bench, calls)
    say("per-op costs")
    op_costs, light = per_target_costs(device, repeats, shapes, heavy_dispatches * op_s, calls)
    bench.update({f"{target}_light_s": t for target, t in light.items()})
    held = held_dispatches(shapes)
    say("re-warm after heavy kernels")
    heavy = sorted(light)
    block, _ = mb.module_block(64, 128, device, f32)
    excess = mb.rewarm(block, {name: calls[name] for name in (*FUSED_TARGETS, *heavy)}, device, repeats)
    bench.update({f"rewarm_after_{name}_s": t for name, t in excess.items()})
    rewarm_s = max(0.0, statistics.median(excess.values()))
    bench = {k: _g(v) for k, v in bench.items()}
    eff, cost, eager = derive(hw, bench, notes)
    cal = Calibration(
        base=hw.name, device=device.type, threads=torch.get_num_threads(), torch=torch.__version__.split("+")[0],
        measured=f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ} on {cpu_name()}",
        efficiency=eff, cost={**cost, "fused_activations_on_chip": False},
        eager=EagerCosts(**eager, ops={k: _g(v) for k, v in sorted(op_costs.items())},
                         heavy_ops=heavy, heavy_rewarm_s=_g(rewarm_s), op_views=held[0], op_others=held[1]),
        benchmarks=bench,
    )
    return cal, notes


def derive(hw: HardwareSpec, bench: dict[str, float], notes: list[str]) -> tuple[dict, dict, dict]:
    """(efficiency, cost, eager fields) solved from the benchmark figures with the cost model's own
    formulas (the module docstring's table): what one pass derives from its figures and `merge` from
    the passes' least-contended figures. Fields whose benchmarks are missing are left out."""
    out_eff: dict[str, float] = {}
    cost: dict[str, float] = {}
    eager: dict[str, float] = {}
    if "view_op_s" not in bench or "module_block_s" not in bench:
        return out_eff, cost, eager
    call, _ = mb.module_block(64, 128, torch.device("meta"), torch.float32)
    n, views = count_call(call)  # structural: 20 dispatches, 6 of them views
    view_s = bench["view_op_s"]
    op_s = (bench["module_block_s"] - views * view_s) / (n - views)
    cost["launch_overhead_s"], eager["view_s"] = _g(op_s), _g(view_s)
    matrix, nk = hw.chip.matrix.peak("fp32"), GEMM_NK
    large = [2 * m * nk * nk / (max(bench[f"gemm_{m}x{nk}x{nk}_s"] - op_s, 1e-9) * matrix) for m in GEMM_LARGE]
    gemm = _capped("gemm", statistics.median(large), notes)
    halves = [max(bench[f"gemm_{m}x{nk}x{nk}_s"] - op_s, 1e-9) * matrix * gemm / (2 * nk * nk) - m for m in GEMM_SMALL]
    out_eff["gemm"], out_eff["small_m_half"] = round(gemm, 4), max(1, round(statistics.median(halves)))
    out_eff["memory"] = round(_capped("memory", 2 * STREAM_BYTES / bench["copy_256MiB_s"] / hw.chip.hbm.bandwidth,
                                      notes), 4)
    out_eff["vector"] = round(_capped("vector", VECTOR_ELEMENTS / max(bench["mul_64Ki_s"] - op_s, 1e-9)
                                      / hw.chip.vector.fp32, notes), 4)
    per_call = bench["attention_1x16_gqa_light_s"]
    attn = []
    for T, S, H, D in ATTENTION_SHAPES:
        pairs = T * (S - T) + T * (T + 1) // 2
        attn.append(4 * H * D * pairs / (max(bench[f"attention_{T}x{S}_h{H}_d{D}_s"] - per_call, 1e-9) * matrix))
    out_eff["attention"] = round(_capped("attention", statistics.median(attn), notes), 4)
    eager["attention_s"] = bench["attention_1x16_gqa_s"]
    t_many = bench.get(MOE_BENCHMARKS[2])
    moe = moe_fields(bench[MOE_BENCHMARKS[0]], bench[MOE_BENCHMARKS[1]], t_many, matrix * gemm)
    eager["moe_experts_s"], eager["moe_expert_s"], eager["moe_route_s"] = (_g(x) for x in moe)
    eager["gated_delta_rule_step_s"] = bench["gated_delta_rule_step_s"]
    return out_eff, cost, eager
