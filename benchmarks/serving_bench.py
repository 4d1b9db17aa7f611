"""Serving benchmark: a long server-mode run, the step-time model's error, the SLO search and MTP.

    python benchmarks/serving_bench.py            # all parts
    python benchmarks/serving_bench.py long       # only the 10,000-request run (and its model error)

1. **long**: 10,000 Poisson requests of Qwen3.5-397B-A17B on 8x H200 (tp8/ep8, fp8 weights, bf16 KV)
   at 32K input and 1K output tokens, at 0.8 requests/s: wall and CPU time (step evaluations by the
   core and the event loop apart), throughput, TTFT/TPOT, Little's law, and the step-time model's
   error against the core's exact step on the shapes of every 1000th iteration as they are
   (decodes at their own cached lengths, no grid; not part of the timed run), split by the
   number of groups, the same for the steps holding a prompt's last chunk with and without
   `prompt_end_line`, and what costing mixed steps' groups apart would overstate.
2. **slo**: the SLO search on Qwen3-8B (1x H200): the rate found, p99s there and 10% above,
   against the ceiling (the steady-state offline throughput of the same requests, saturated-window
   rule) and the finite offline run's own figure.
3. **mtp**: Qwen3.5-35B-A3B (1x H200) decode throughput without MTP, with one drafted token at
   acceptance 0 and at 0.9, and the gain the model predicts.
"""

from __future__ import annotations

import sys
import time

from codesign import mapping
from codesign.graph import tracing
from codesign.hw import load_hw
from codesign.models import load_model
from codesign.scenario import SLO, Workload
from codesign.sim.serving import server as S
from codesign.sim.serving.steptime import StepTimeModel, StepTimeOptions, measure_error, measure_pooling, pool_decodes
from codesign.sim.stepper import Stepper

SAMPLE_EVERY = 1000  # iterations between shapes kept for the error measurement
PREC = mapping.Precision.from_dict({"weights": "fp8", "activations": "fp8", "kv_cache": "bf16"})


def stepper(hw: str, model: str, plan: dict) -> Stepper:
    return Stepper(load_hw(hw), load_model(model), mapping.ParallelPlan.from_dict(plan), PREC)


class _count_recordings:
    """Counts the segments recorded under torch (trace-cache misses) until `stop()`."""

    def __init__(self) -> None:
        from codesign.graph import recording

        self.module, self.original, self.n = recording, recording.record_segment, 0

        def counted(*args, **kwargs):
            self.n += 1
            return self.original(*args, **kwargs)

        recording.record_segment = counted

    def stop(self) -> int:
        self.module.record_segment = self.original
        return self.n


def long_run() -> None:
    st = stepper("h200", "qwen3.5-397b-a17b", {"tp": 8, "ep": 8})
    wl = Workload(mode="server", rate_per_s=0.8, requests=10_000, input_tokens=32_768, output_tokens=1024)
    pt = S.serving_point(st, wl)
    eval_s = eval_cpu = 0.0
    core = pt.model._step

    def timed_core(shape):
        nonlocal eval_s, eval_cpu
        t, c = time.perf_counter(), time.process_time()
        r = core(shape)
        eval_s += time.perf_counter() - t
        eval_cpu += time.process_time() - c
        return r

    pt.model._step = timed_core
    recorded = _count_recordings()
    t0, c0 = time.perf_counter(), time.process_time()
    m = pt.run(S.stream_of(wl), sample_every=SAMPLE_EVERY)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pt.model._step, iterations = core, pt.last_iterations
    fresh = recorded.stop()
    print("== long run: Qwen3.5-397B-A17B, 8x H200 tp8/ep8, 10,000 Poisson requests at 0.8/s, 32K in / 1K out ==")
    print(f"wall {wall:.2f} s (CPU {cpu:.2f} s) = core step evaluations {eval_s:.2f} s (CPU {eval_cpu:.2f} s, "
          f"{pt.model.evaluations} grid shapes) + event loop {wall - eval_s:.2f} s (CPU {cpu - eval_cpu:.2f} s); "
          f"{m.steps} engine steps in {iterations} simulated iterations")
    print(f"trace cache: {fresh} segments recorded under torch during the run "
          + ("(a warm cache: every recording was kept from an earlier run)" if fresh == 0 else
             f"(a cold cache, {tracing.cache_dir()}: the first run on a machine or after a code change records "
             "them and keeps them; run again for the warm figure)"))
    print(f"simulated {m.duration_s:.0f} s: {m.output_tokens_per_s:,.0f} output tok/s, {m.request_rate_per_s:.3f} req/s, "
          f"TTFT p50/p99 {m.ttft_s['p50']:.3f}/{m.ttft_s['p99']:.3f} s, TPOT p50/p99 "
          f"{m.tpot_s['p50'] * 1e3:.1f}/{m.tpot_s['p99'] * 1e3:.1f} ms, mean running {m.mean_running:.1f}, "
          f"KV use mean/peak {m.mean_kv_use:.1%}/{m.peak_kv_use:.1%}, preemptions {m.preemptions}")
    print(f"Little's law: L = {m.mean_in_system:.2f} requests, lambda x W = {m.request_rate_per_s * m.e2e_s['mean']:.2f} "
          f"(ratio {m.littles_law_ratio:.4f})")
    sample = pt.last_sample or []
    t0 = time.perf_counter()
    width = [len(pool_decodes(s).groups) for s in sample]
    mixed = [s for s, w in zip(sample, width) if w > 1]
    single = [s for s, w in zip(sample, width) if w == 1]
    three = [s for s, w in zip(sample, width) if w > 2]
    print(f"step-time model vs the core's exact step on the shape as it is (decodes at their own cached lengths, "
          f"no grid), every {SAMPLE_EVERY}th iteration of the run:")
    for label, part in (("all", sample), ("mixed", mixed), ("3+ groups", three), ("single-group", single)):
        if part:
            print(f"  {label:>12}: {str(measure_error(pt.model, part))[:160]}")
    print(f"  [exact evaluations {time.perf_counter() - t0:.1f} s, not in the run]")
    off = StepTimeModel(pt.model._step, pt.model.max_len, StepTimeOptions(prompt_end_line=False))
    pkv = set(pt.model._pkv_grid)
    line = [s for s in mixed if any(g.seqs == 1 and g.new_tokens > 1 and g.cached_tokens not in pkv
                                    and g.cached_tokens + g.new_tokens in pkv for g in s.groups)]
    if line:
        on_e, off_e = measure_error(pt.model, line), measure_error(off, line)
        print(f"  prompt_end_line (a prompt's last chunk along its prompt's line), on the {len(line)} sampled steps that "
              f"hold one: mean |error| {on_e.mean_abs:.2%}, max {on_e.max_abs:.2%}; with prompt_end_line: false "
              f"{off_e.mean_abs:.2%}, max {off_e.max_abs:.2%} (the whole run then needs ~30 more grid shapes)")
    sep = StepTimeModel(pt.model._step, pt.model.max_len, StepTimeOptions(mixed_steps=False))
    if mixed:
        over = [sep.step_time(s) / pt.model.exact(s) - 1 for s in mixed]
        print(f"  the groups of a mixed step costed apart and summed (mixed_steps: false) would overstate mixed steps by "
              f"{sum(over) / len(over):.1%} on average (max {max(over):.1%}): weights read once per group")
    dec = next((s.groups[0] for s in sample if s.groups[0].new_tokens == 1), None)
    if dec is not None:
        print(f"pooling (step time linear in cached length) at {dec.seqs} sequences, cached 16K vs 48K around 32K: "
              f"{measure_pooling(pt.model, dec.seqs, (16_384, 49_152)):.3%} error")


def slo_run() -> None:
    st = stepper("h200", "qwen3-8b", {"tp": 1})
    wl = Workload(mode="server", requests=400, input_tokens=2048, output_tokens=256)
    slo = SLO(ttft_s=0.5, tpot_s=0.02)
    t0 = time.perf_counter()
    pt = S.serving_point(st, wl)
    m, extra, reason = S.serve(pt, wl, slo)
    print("== SLO search: Qwen3-8B, 1x H200, 400 requests, 2K in / 256 out, p99 TTFT <= 0.5 s, TPOT <= 20 ms ==")
    if m is None:
        print("no rate:", reason)
        return
    a = extra["above_rate"]
    print(f"rate {extra['rate_per_s']:.3f} req/s ({extra['search_runs']} runs, {time.perf_counter() - t0:.1f} s): "
          f"p99 TTFT {m.ttft_s['p99']:.3f} s, p99 TPOT {m.tpot_s['p99'] * 1e3:.2f} ms; at 1.1x: p99 TTFT "
          f"{a['ttft_p99_s']:.3f} s, p99 TPOT {a['tpot_p99_s'] * 1e3:.2f} ms, meets: {a['meets_slo']}")
    w = extra["offline_window"]
    finite = pt.run(S.stream_of(wl)).request_rate_per_s  # the 400 requests all at once, drain included
    print(f"server throughput {m.output_tokens_per_s:,.0f} tok/s <= offline {extra['offline_output_tokens_per_s']:,.0f} tok/s "
          f"({m.output_tokens_per_s / extra['offline_output_tokens_per_s']:.1%}); the ceiling "
          f"{extra['offline_request_rate_per_s']:.3f} req/s by the saturated-window rule ({w['requests']} requests, "
          f"{w['runs']} offline run, stopped after its window: {w['turnovers']:.1f} batches of {w['running']}); the 400 "
          f"requests' own offline run {finite:.3f} req/s (drain included)")


def mtp_run() -> None:
    st = stepper("h200", "qwen3.5-35b-a3b", {"tp": 1})
    print("== MTP: Qwen3.5-35B-A3B, 1x H200, 64 requests at once (concurrency 64), 1K in / 512 out ==")
    base = dict(mode="server", requests=64, concurrency=64, input_tokens=1024, output_tokens=512)
    rows, points = {}, {}
    for label, mtp in (("no MTP", None), ("k=1, a=0", {"tokens": 1, "acceptance": 0.0}),
                       ("k=1, a=0.9", {"tokens": 1, "acceptance": 0.9}),
                       ("k=2, a=[0.9, 0.8]", {"tokens": 2, "acceptance": [0.9, 0.8]})):
        wl = Workload(**base, mtp=mtp)
        pt = S.serving_point(st, wl)
        m = pt.run(S.stream_of(wl))
        rows[label], points[label] = m, pt
        e = pt.draft.expected_tokens if pt.draft else 1.0
        print(f"{label:>18}: {m.output_tokens_per_s:,.0f} tok/s, TPOT p50 {m.tpot_s['p50'] * 1e3:.2f} ms, "
              f"{e:.2f} tokens per step")
    b = rows["no MTP"].output_tokens_per_s
    n, c = 64, 1024 + 256  # the batch and its mean KV length while decoding
    t_d = points["no MTP"].model.time_of(n, 1, c)
    p = points["k=1, a=0.9"]
    t_v, t_h = p.model.time_of(n, 2, c, 2), p.draft_time(n, c)
    print(f"k=1, a=0.9 vs none: x{rows['k=1, a=0.9'].output_tokens_per_s / b:.2f} end to end. From the model at "
          f"{n} sequences, KV {c}: decode step {t_d * 1e3:.2f} ms, verify step of 2 tokens {t_v * 1e3:.2f} ms + MTP head "
          f"{t_h * 1e3:.2f} ms for 1.9 tokens -> decode speed x{1.9 * t_d / (t_v + t_h):.2f}; the prefills, "
          f"unchanged, dilute it")


if __name__ == "__main__":
    parts = sys.argv[1:] or ["long", "slo", "mtp"]
    for p in parts:
        {"long": long_run, "slo": slo_run, "mtp": mtp_run}[p]()
