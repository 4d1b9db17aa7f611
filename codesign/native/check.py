"""native-check: a small real configuration run natively and predicted by the simulator.

The run (`measure`): the model with seeded random weights (`codesign.native.run.build_native`), fp32
on the host device; rounds of `PREFILLS_PER_ROUND` prefills of `prompt_tokens` tokens into fresh
caches (the LM head on the last position only, as the tracer records it) and `decode_steps` decode
steps after the last, each timed alone; at least `repeats` rounds and as many more as fit in the
measuring time (`MEASURE_SECONDS`), after a discarded warm-up round, the garbage collector off.
The clock is `codesign.native.replay.clock`: the thread's CPU time on a CPU with one torch thread
(a shared machine's other processes then do not count), wall time otherwise. Every step is timed by
segment (`_segments`: the embedding, each decoder layer's four parts, the head) and measured as the
sum of each segment's least time over the samples (`quiet_estimate`): other jobs' contention comes
and goes, and the calibration keeps its least-contended figures the same way. Reported beside it:
the median prefill and decode step, their spread ((max - min) / median), and how contended the
machine was (`contention_pct`, the calibration's module-block benchmark timed between the rounds).

The prediction (`predict`): the same steps through the simulator's normal path — `codesign.trace`
(prefill: `batch` x `prompt_tokens` tokens after 0 cached; decode: one token at the middle decode
position), `codesign.mapping.map_step` on one chip (TP1, fp32 weights, activations and cache),
then `codesign.sim.engine.StepSimulator` with the calibrated spec and `EagerCostModel`
(`codesign.native.eager`): calibrated on microbenchmarks only, never on this check.

Both sides leave the MTP heads out (greedy decode without speculation runs none).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from codesign.errors import CodesignError
from codesign.models.config import ModelConfig
from codesign.native.overlay import Calibrated
from codesign.native.replay import _sync, clock, clock_name, no_gc
from codesign.native.run import build_native


@dataclass
class Measured:
    prefill_s: float  # the quiet-window estimate (`quiet_estimate`) of one prefill
    decode_step_s: float  # ... and of one decode step
    prefill_spread: float
    decode_spread: float
    prefill_median_s: float  # the median round, for comparison
    decode_step_median_s: float
    rounds: int
    probe_s: float  # the calibration's module-block benchmark between the rounds, median round (`_probe`)


@dataclass
class CheckResult:
    model: str
    device: str
    threads: int
    batch: int
    prompt_tokens: int
    decode_steps: int
    repeats: int  # measured rounds (at least the requested repeats, more to fill the measuring time)
    prefill_predicted_s: float
    prefill_measured_s: float  # quiet-window estimate (`quiet_estimate`)
    decode_step_predicted_s: float
    decode_step_measured_s: float
    error_pct: dict[str, float]
    noise_pct: dict[str, float]  # (max - min) / median of the measured rounds' totals
    measured_median_s: dict[str, float]  # the median round's total, per phase (contention included)
    # how much slower the calibration's module-block benchmark ran between the rounds than in the
    # calibration (its median round; None: an overlay without the figure)
    contention_pct: float | None
    clock: str  # what the measured seconds are: thread CPU time (CPU, one thread) or wall time
    predicted_by_kind_s: dict[str, dict[str, float]]
    calibration: str

    def as_dict(self) -> dict:
        return asdict(self)


def without_mtp(config: ModelConfig) -> ModelConfig:
    return config if config.mtp_layers == 0 else config.model_copy(update={"mtp_layers": 0})


# native-check measures for at least this long (rounds beyond `repeats` until it has): on a shared
# machine other jobs' contention comes and goes, and the longer the rounds span, the likelier each
# segment finds a quiet window (a named assumption, overridable: `--measure-seconds`).
MEASURE_SECONDS = 10.0


def _spread(xs: list[float]) -> float:
    med = statistics.median(xs)
    return (max(xs) - min(xs)) / med if med > 0 else 0.0


def quiet_estimate(rounds: list[list[float]]) -> float:
    """Seconds of one step from `rounds` (each a list of segment seconds, the same segments in every
    round): the sum over segments of each segment's least time over the rounds. A step's segments
    are its parts timed one after the other (`_segments`); other jobs' contention slows a segment
    while it lasts, and each segment's least time is its time in a quiet window (the
    calibration keeps each benchmark's least-contended pass, `codesign.native.calibrate.merge`)."""
    if not rounds or len({len(r) for r in rounds}) != 1:
        raise ValueError("quiet_estimate: expected rounds of the same segments")
    return sum(min(col) for col in zip(*rounds))


def _segments(model, ids: torch.Tensor, pos: int, caches: list, last_only: bool, now, device: torch.device
              ) -> tuple[torch.Tensor, list[float]]:
    """One step of `model`, each part timed: the embedding; per decoder layer its input norm, its
    token mixer (with the residual add), its post-attention norm, its feed-forward (with the add); the
    final norm + LM head + greedy pick. Returns (next token (B, 1), seconds per part). `last_only`:
    the head on the last position only. A clock read costs ~0.5 us on the reference VM: 4 per layer,
    under 0.5% of a tiny model's decode step."""
    _sync(device)
    marks = [now()]
    x = model.embed_tokens(ids)
    _sync(device)
    marks.append(now())
    for layer, cache in zip(model.layers, caches):
        # DecoderLayer.forward, its four parts timed: x + mixer(norm(x)), then + ffn(norm(.))
        a = layer.input_layernorm(x)
        _sync(device)
        marks.append(now())
        h = x + layer.mixer(a, pos, cache)
        _sync(device)
        marks.append(now())
        a = layer.post_attention_layernorm(h)
        _sync(device)
        marks.append(now())
        x = h + layer.mlp(a)
        _sync(device)
        marks.append(now())
    if last_only:
        x = x[:, -1:]
    token = model.lm_head(model.norm(x))[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    marks.append(now())
    return token, [b - a for a, b in zip(marks, marks[1:])]


# prefills per round, each into fresh caches (a prefill gives one sample of each of its segments, a
# round's decode steps `decode_steps` samples: more prefills balance the two phases' samples)
PREFILLS_PER_ROUND = 4
# light-cold calls of the calibration's module block after each round (their median; `_probe`)
PROBES_PER_ROUND = 5
# a probe this much slower than the calibration's figure says the machine was contended in most rounds
CONTENDED_PCT = 25.0


def _probe(device: torch.device, now) -> Callable[[], float]:
    """Seconds of one light-cold call of the calibration's RMSNorm + MLP block (`microbench.module_block`
    after `microbench.Scrub`, as `codesign calibrate` times it for `module_block_s`): between the
    rounds it says how contended the machine was while they ran, against the calibration's figure."""
    from codesign.native import microbench as mb

    block, _ = mb.module_block(64, 128, device, torch.float32)
    scrub = mb.Scrub(device)

    return lambda: mb.cold_call(block, scrub, device, now)


@torch.no_grad()
def measure(config: ModelConfig, batch: int, prompt_tokens: int, decode_steps: int, repeats: int,
            device: torch.device, seed: int = 0, min_seconds: float = 0.0) -> Measured:
    """Prefill and decode rounds (`repeats`, more until `min_seconds` of rounds have run), after a
    discarded warm-up round, with the garbage collector off; each step timed by segment (`_segments`).
    A round is `PREFILLS_PER_ROUND` prefills, then `decode_steps` decode steps after the last one.
    The estimates (`quiet_estimate`): prefill over every prefill, a decode step over every step of
    every round (the decode positions differ by under 7% of the context). The median and the spread:
    prefill totals, and per round the sum of its segments' medians over its steps."""
    model = build_native(config, seed, torch.float32, str(device))
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_tokens), generator=g).to(device)
    max_len = prompt_tokens + decode_steps + 1
    now = clock(device)

    probe = _probe(device, now)

    def one_round() -> tuple[list[list[float]], list[list[float]]]:
        pre = []
        for _ in range(PREFILLS_PER_ROUND):  # each into fresh caches; the decode continues the last
            caches = model.make_caches(batch, max_len)
            token, seg = _segments(model, prompt, 0, caches, True, now, device)
            pre.append(seg)
        steps = []
        for i in range(decode_steps):
            token, seg = _segments(model, token, prompt_tokens + i, caches, False, now, device)
            steps.append(seg)
        return pre, steps

    with no_gc():
        one_round()  # warm-up, discarded
        pre, dec, steps, probes = [], [], [], []
        t0 = time.perf_counter()
        while len(dec) < repeats or time.perf_counter() - t0 < min_seconds:
            p, d = one_round()
            pre += p
            steps += d
            dec.append([statistics.median(col) for col in zip(*d)])  # the round's median step, by segment
            probes.append(statistics.median(probe() for _ in range(PROBES_PER_ROUND)))
    pre_tot, dec_tot = [sum(r) for r in pre], [sum(r) for r in dec]
    return Measured(quiet_estimate(pre), quiet_estimate(steps), _spread(pre_tot), _spread(dec_tot),
                    statistics.median(pre_tot), statistics.median(dec_tot), len(dec), statistics.median(probes))


def eager_model(cal: Calibrated, config: ModelConfig, phase: str, batch: int, tokens: int, context: int, ops: list):
    """The `EagerCostModel` of one step whose recorded ops are `ops`: its dispatch and view ratios
    from the step's dispatches counted on the meta device (`codesign.native.dispatch.counts`)."""
    from codesign.native import dispatch
    from codesign.native.eager import EagerCostModel, step_ratios

    n, views = dispatch.counts(config, phase, batch, tokens, context)
    ratio, view_ratio = step_ratios(cal.eager, ops, n, views)
    return EagerCostModel(cal.hw, cal.eager, "fp32", "fp32", cal.options, dispatch_ratio=ratio, view_ratio=view_ratio)


def predict(config: ModelConfig, cal: Calibrated, batch: int, prompt_tokens: int, decode_steps: int
            ) -> tuple[float, float, dict[str, dict[str, float]]]:
    """(prefill seconds, decode-step seconds, seconds by op kind per phase) from the simulator."""
    from codesign.graph import trace
    from codesign.mapping import map_step
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.sim.engine import StepSimulator

    prec = Precision(weights="fp32", activations="fp32", kv_cache="fp32", state="fp32")
    out, kinds = [], {}
    steps = (("prefill", dict(tokens=prompt_tokens, context=0)),
             ("decode", dict(context=prompt_tokens + decode_steps // 2 + 1)))
    for phase, kw in steps:
        g = trace(config, phase=phase, batch=batch, **kw)
        mapped = map_step(g, config, cal.hw, ParallelPlan(), prec)
        cm = eager_model(cal, config, phase, batch, kw.get("tokens", 1), kw["context"],
                         [op for _, op in mapped.graph.nodes(data="op")])
        sim = StepSimulator(cal.hw, cm, False)
        out.append(sim.simulate(mapped.graph, mapped.stage_layers).time_s)
        by: dict[str, float] = {}
        for _, op in mapped.graph.nodes(data="op"):
            by[op.kind] = by.get(op.kind, 0.0) + cm.cost(op).time_s
        kinds[phase] = dict(sorted(by.items()))
    return out[0], out[1], kinds


def native_check(config: ModelConfig, cal: Calibrated, batch: int = 1, prompt_tokens: int = 256,
                 decode_steps: int = 16, repeats: int = 5, device: str = "cpu", seed: int = 0,
                 min_seconds: float = 0.0) -> CheckResult:
    if min(batch, prompt_tokens, decode_steps, repeats) < 1 or min_seconds < 0:
        raise CodesignError(f"native-check: batch, prompt tokens, decode steps and repeats must be >= 1 "
                            f"and the measuring time >= 0 (found {batch}, {prompt_tokens}, {decode_steps}, {repeats}, "
                            f"{min_seconds})")
    longest = prompt_tokens + decode_steps + 1
    if longest > config.max_position_embeddings:
        raise CodesignError(f"native-check: {prompt_tokens} prompt tokens + {decode_steps} decode steps exceed "
                            f"{config.name}'s {config.max_position_embeddings} positions; the largest prompt that fits "
                            f"is {config.max_position_embeddings - decode_steps - 1} tokens")
    config = without_mtp(config)
    dev = torch.device(device)
    meas = measure(config, batch, prompt_tokens, decode_steps, repeats, dev, seed, min_seconds)
    pre_p, dec_p, kinds = predict(config, cal, batch, prompt_tokens, decode_steps)

    def err(p: float, m: float) -> float:
        return round(100.0 * (p - m) / m, 1)

    ref = cal.calibration.benchmarks.get("module_block_s")
    contention = err(meas.probe_s, ref) if ref and meas.probe_s > 0 else None

    return CheckResult(
        model=config.name, device=str(dev), threads=torch.get_num_threads(), batch=batch,
        prompt_tokens=prompt_tokens, decode_steps=decode_steps, repeats=meas.rounds,
        prefill_predicted_s=pre_p, prefill_measured_s=meas.prefill_s,
        decode_step_predicted_s=dec_p, decode_step_measured_s=meas.decode_step_s,
        error_pct={"prefill": err(pre_p, meas.prefill_s), "decode": err(dec_p, meas.decode_step_s)},
        noise_pct={"prefill": round(100 * meas.prefill_spread, 1), "decode": round(100 * meas.decode_spread, 1)},
        measured_median_s={"prefill": meas.prefill_median_s, "decode": meas.decode_step_median_s},
        contention_pct=contention,
        clock=clock_name(dev), predicted_by_kind_s=kinds, calibration=str(cal.path),
    )
