"""native-check: a small real configuration run natively and predicted by the simulator.

The run (`measure`): the model with seeded random weights (`codesign.native.run.build_native`), fp32
on the host device; a prefill of `prompt_tokens` tokens into fresh caches (the LM head on the last
position only, as the tracer records it), repeated `repeats` times; then `decode_steps` decode steps
after a prefill, each timed alone, over `repeats` rounds. A discarded warm-up round comes first.
The clock is `codesign.native.replay.clock`: the thread's CPU time on a CPU with one torch thread
(a shared machine's other processes then do not count), wall time otherwise.
Reported: the median prefill and the median decode step, and their spread (the noise of a shared
machine: (max - min) / median over the repeats).

The prediction (`predict`): the same steps through the simulator's normal path — `codesign.trace`
(prefill: `batch` x `prompt_tokens` tokens after 0 cached; decode: one token at the middle decode
position), `codesign.mapping.map_step` on one chip (TP1, fp32 weights, activations and cache),
then `codesign.sim.engine.StepSimulator` with the calibrated spec and `EagerCostModel`
(`codesign.native.eager`): calibrated on microbenchmarks only, never on this check.

Both sides leave the MTP heads out (greedy decode without speculation runs none).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch

from codesign.errors import CodesignError
from codesign.models.config import ModelConfig
from codesign.native.overlay import Calibrated
from codesign.native.replay import clock, clock_name
from codesign.native.run import _sync, build_native


@dataclass
class Measured:
    prefill_s: float
    decode_step_s: float
    prefill_spread: float
    decode_spread: float


@dataclass
class CheckResult:
    model: str
    device: str
    threads: int
    batch: int
    prompt_tokens: int
    decode_steps: int
    repeats: int
    prefill_predicted_s: float
    prefill_measured_s: float
    decode_step_predicted_s: float
    decode_step_measured_s: float
    error_pct: dict[str, float]
    noise_pct: dict[str, float]  # (max - min) / median of the measured repeats
    clock: str  # what the measured seconds are: thread CPU time (CPU, one thread) or wall time
    predicted_by_kind_s: dict[str, dict[str, float]]
    calibration: str

    def as_dict(self) -> dict:
        return asdict(self)


def without_mtp(config: ModelConfig) -> ModelConfig:
    return config if config.mtp_layers == 0 else config.model_copy(update={"mtp_layers": 0})


def _spread(xs: list[float]) -> float:
    med = statistics.median(xs)
    return (max(xs) - min(xs)) / med if med > 0 else 0.0


@torch.no_grad()
def measure(config: ModelConfig, batch: int, prompt_tokens: int, decode_steps: int, repeats: int,
            device: torch.device, seed: int = 0) -> Measured:
    model = build_native(config, seed, torch.float32, str(device))
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_tokens), generator=g).to(device)
    max_len = prompt_tokens + decode_steps + 1
    now = clock(device)

    def prefill() -> tuple[list, torch.Tensor, float]:
        caches = model.make_caches(batch, max_len)
        _sync(device)
        t0 = now()
        logits = model.lm_head(model.norm(model.hidden_states(prompt, 0, caches)[:, -1:]))
        _sync(device)
        return caches, logits[:, -1].argmax(-1, keepdim=True), now() - t0

    def decode(caches: list, token: torch.Tensor) -> list[float]:
        times = []
        for i in range(decode_steps):
            _sync(device)
            t0 = now()
            token = model(token, prompt_tokens + i, caches)[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            times.append(now() - t0)
        return times

    caches, tok, _ = prefill()  # warm-up round, discarded
    decode(caches, tok)
    pre, steps = [], []
    for _ in range(repeats):
        caches, tok, t = prefill()
        pre.append(t)
        steps.append(statistics.median(decode(caches, tok)))
    return Measured(statistics.median(pre), statistics.median(steps), _spread(pre), _spread(steps))


def predict(config: ModelConfig, cal: Calibrated, batch: int, prompt_tokens: int, decode_steps: int
            ) -> tuple[float, float, dict[str, dict[str, float]]]:
    """(prefill seconds, decode-step seconds, seconds by op kind per phase) from the simulator."""
    from codesign.graph import trace
    from codesign.mapping import map_step
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.native import dispatch
    from codesign.native.eager import EagerCostModel, recorded_dispatches
    from codesign.sim.engine import StepSimulator

    prec = Precision(weights="fp32", activations="fp32", kv_cache="fp32", state="fp32")
    out, kinds = [], {}
    steps = (("prefill", dict(tokens=prompt_tokens, context=0)),
             ("decode", dict(context=prompt_tokens + decode_steps // 2 + 1)))
    for phase, kw in steps:
        g = trace(config, phase=phase, batch=batch, **kw)
        mapped = map_step(g, config, cal.hw, ParallelPlan(), prec)
        recorded = recorded_dispatches(op for _, op in mapped.graph.nodes(data="op"))
        n = dispatch.count(config, phase, batch, kw.get("tokens", 1), kw["context"])
        cm = EagerCostModel(cal.hw, cal.eager, "fp32", "fp32", cal.options, dispatch_ratio=n / max(recorded, 1))
        sim = StepSimulator(cal.hw, cm, False)
        out.append(sim.simulate(mapped.graph, mapped.stage_layers).time_s)
        by: dict[str, float] = {}
        for _, op in mapped.graph.nodes(data="op"):
            by[op.kind] = by.get(op.kind, 0.0) + cm.cost(op).time_s
        kinds[phase] = dict(sorted(by.items()))
    return out[0], out[1], kinds


def native_check(config: ModelConfig, cal: Calibrated, batch: int = 1, prompt_tokens: int = 256,
                 decode_steps: int = 16, repeats: int = 5, device: str = "cpu", seed: int = 0) -> CheckResult:
    if min(batch, prompt_tokens, decode_steps, repeats) < 1:
        raise CodesignError(f"native-check: batch, prompt tokens, decode steps and repeats must be >= 1 "
                            f"(found {batch}, {prompt_tokens}, {decode_steps}, {repeats})")
    longest = prompt_tokens + decode_steps + 1
    if longest > config.max_position_embeddings:
        raise CodesignError(f"native-check: {prompt_tokens} prompt tokens + {decode_steps} decode steps exceed "
                            f"{config.name}'s {config.max_position_embeddings} positions; the largest prompt that fits "
                            f"is {config.max_position_embeddings - decode_steps - 1} tokens")
    config = without_mtp(config)
    dev = torch.device(device)
    meas = measure(config, batch, prompt_tokens, decode_steps, repeats, dev, seed)
    pre_p, dec_p, kinds = predict(config, cal, batch, prompt_tokens, decode_steps)

    def err(p: float, m: float) -> float:
        return round(100.0 * (p - m) / m, 1)

    return CheckResult(
        model=config.name, device=str(dev), threads=torch.get_num_threads(), batch=batch,
        prompt_tokens=prompt_tokens, decode_steps=decode_steps, repeats=repeats,
        prefill_predicted_s=pre_p, prefill_measured_s=meas.prefill_s,
        decode_step_predicted_s=dec_p, decode_step_measured_s=meas.decode_step_s,
        error_pct={"prefill": err(pre_p, meas.prefill_s), "decode": err(dec_p, meas.decode_step_s)},
        noise_pct={"prefill": round(100 * meas.prefill_spread, 1), "decode": round(100 * meas.decode_spread, 1)},
        clock=clock_name(dev), predicted_by_kind_s=kinds, calibration=str(cal.path),
    )
