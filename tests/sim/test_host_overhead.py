"""Engine host overhead (`codesign.sim.host_overhead`, `workload.engine`): the overlap rules against
hand calculations on a synthetic step function, the table's figures against the numbers their
sources print, the path through `simulate`, and bad input."""

from __future__ import annotations

import math

import pytest

from codesign.errors import CodesignError
from codesign.graph.shape import StepShape
from codesign.scenario import parse_scenarios
from codesign.sim.engine import StepResult
from codesign.sim.host_overhead import ENGINES, EngineProfile, engine_profile
from codesign.sim.workload import PREFILL_TOKENS_PER_STEP, decode_mode, prefill_mode, serving_mode

W = 0.010  # weight streaming per step, s
KV = 1e-7  # s per token of KV read per sequence


def step(shape: StepShape) -> StepResult:
    (g,) = shape.groups
    t = W + g.seqs * (g.kv_len * KV if g.phase == "decode" else g.new_tokens * 2e-6)
    return StepResult(time_s=t, bottleneck="hbm", breakdown={})


SYNC = EngineProfile("sync", step_s=2e-3, per_seq_s=5e-5, overlap=False)


def test_vllm_v0_figures_are_the_sources_numbers():
    e = ENGINES["vllm-0.5"]
    assert e.step_s == 4e-3  # ~4 ms GPU bubble per decode step (vllm issue 6854)
    assert e.per_seq_s == pytest.approx((3.4e-3 - 0.2e-3) / 31)  # issue 6913: 0.2 ms at 1, 3.4 ms at 32
    samples_us = [18.12, 17.88, 17.64, 37.91, 29.56, 55.55, 22.17, 17.88, 17.17]  # issue 5206
    assert e.detokenize_per_seq_s == pytest.approx(sum(samples_us) / 9 * 1e-6)
    assert not e.overlap
    for name in ("tensorrt-llm-mlperf-v4.1", "tensorrt-llm-mlperf-v5.0", "vllm-0.11", "vllm-0.17", "deepseek-production"):
        assert ENGINES[name].neutral, name  # nothing published: no overhead
    # vLLM 0.14+: asynchronous scheduling by default (vllm PR 33352): host work overlaps the step
    assert ENGINES["vllm-0.17"].overlap and ENGINES["vllm-0.17"].step_time(0.05, 512) == 0.05


def test_synchronous_engine_adds_host_time_to_every_step():
    b, inp, out, reps = 64, 300, 200, 2
    r = serving_mode(step, b, inp, out, None, host=SYNC, replicas=reps)
    d = W + b * (inp + out // 2) * KV
    p = W + b * inp * 2e-6
    per_rep = b / reps
    k = math.ceil(per_rep * inp / PREFILL_TOKENS_PER_STEP)
    d_t = d + 2e-3 + per_rep * 5e-5
    p_t = p + k * 2e-3 + per_rep * 5e-5
    total = p_t + out * d_t
    assert r.tpot_s == pytest.approx(total / out)
    assert r.output_tokens_per_s == pytest.approx(b * out / total)
    assert r.host_s == pytest.approx((total - p - out * d) / out)
    plain = serving_mode(step, b, inp, out, None)
    assert plain.tpot_s == pytest.approx((p + out * d) / out) and plain.host_s == 0.0


def test_overlapping_engine_hides_host_time_up_to_the_gpu_step():
    ctx = 8192
    gpu = W + 100 * ctx * KV  # 0.0919 s
    hidden = EngineProfile("ovl", step_s=0.05, per_seq_s=0.0, overlap=True)
    assert decode_mode(step, 100, ctx, ctx, None, host=hidden).tpot_s == pytest.approx(gpu)
    exposed = EngineProfile("ovl", step_s=0.2, per_seq_s=0.0, overlap=True)
    r = decode_mode(step, 100, ctx, ctx, None, host=exposed)
    assert r.tpot_s == pytest.approx(0.2)  # max(gpu, host)
    assert r.bottleneck == "host"  # host time exceeds the accelerator's
    sync = EngineProfile("sync", step_s=0.05, per_seq_s=0.0, overlap=False)
    assert decode_mode(step, 100, ctx, ctx, None, host=sync).tpot_s == pytest.approx(gpu + 0.05)


def test_multi_step_and_detokenize_off_scale_the_host_time():
    p = EngineProfile("m", step_s=8e-3, per_seq_s=1e-4, overlap=False, multi_step=8, detokenize_per_seq_s=4e-5)
    assert p.host_s(100) == pytest.approx((8e-3 + 100 * 1e-4) / 8)
    off = engine_profile({"name": "vllm-0.5", "detokenize": False})
    v0 = ENGINES["vllm-0.5"]
    assert off.host_s(1000) == pytest.approx(v0.step_s + 1000 * (v0.per_seq_s - v0.detokenize_per_seq_s))
    assert off.name == "vllm-0.5"  # no figure overridden


def test_multi_step_per_step_outputs_pay_the_sequence_term_every_forward_pass():
    """`multi_step_outputs: per_step` (vLLM V0 multi-step without asynchronous output processing):
    only the per-iteration term is amortised; the per-sequence term is paid every forward pass. The
    AMD v5.1 Llama-2-70B MI300X row's figures by hand: 1,687 running sequences per engine, 11 steps."""
    v0 = ENGINES["vllm-0.5"]
    e = engine_profile({"name": "vllm-0.5", "detokenize": False, "multi_step": 11, "multi_step_outputs": "per_step"})
    seq = (3.4e-3 - 0.2e-3) / 31 - v0.detokenize_per_seq_s  # 77 us per sequence, detokenisation off
    assert e.host_s(1687) == pytest.approx(4e-3 / 11 + 1687 * seq)  # 0.36 ms + 130 ms
    amortized = engine_profile({"name": "vllm-0.5", "detokenize": False, "multi_step": 11})
    assert amortized.multi_step_outputs == "amortized"
    assert amortized.host_s(1687) == pytest.approx((4e-3 + 1687 * seq) / 11)
    assert e.host_s(1687) / amortized.host_s(1687) == pytest.approx(11 * (4e-3 / 11 + 1687 * seq) / (4e-3 + 1687 * seq))
    # multi_step 1: the two readings agree
    one = engine_profile({"name": "vllm-0.5", "multi_step_outputs": "per_step"})
    assert one.host_s(500, iterations=3) == pytest.approx(v0.host_s(500, iterations=3))
    # through a simulated decode step: gpu + host, the host term as above
    ctx = 4096
    r = decode_mode(step, 100, ctx, ctx, None, host=EngineProfile("p", step_s=8e-3, per_seq_s=1e-4, overlap=False,
                                                                  multi_step=8, multi_step_outputs="per_step"))
    assert r.tpot_s == pytest.approx(W + 100 * ctx * KV + 8e-3 / 8 + 100 * 1e-4)
    assert "multi_step_outputs" in _scenario({"name": "vllm-0.5", "multi_step_outputs": "sometimes"})


def test_tpot_slo_search_counts_host_time():
    ctx, slo = 8192, 0.05
    slow = EngineProfile("s", step_s=0.01, per_seq_s=0.0, overlap=False)
    r = decode_mode(step, 1000, ctx, ctx, slo, host=slow)
    # W + 0.01 + b ctx KV <= slo  <=>  b <= (slo - W - 0.01) / (ctx KV)
    assert r.batch == int((slo - W - 0.01) / (ctx * KV))


def test_prefill_mode_pays_one_iteration_per_step():
    r = prefill_mode(step, 1000, 1000, host=SYNC, replicas=4)
    batch = 4 * (PREFILL_TOKENS_PER_STEP // 1000)  # every engine instance its own budget
    gpu = W + batch * 1000 * 2e-6
    assert r.ttft_s == pytest.approx(gpu + 2e-3 + batch / 4 * 5e-5)


def test_overrides_and_custom_engines():
    e = engine_profile({"name": "vllm-0.5", "step_s": 1e-3})
    assert e.step_s == 1e-3 and e.per_seq_s == ENGINES["vllm-0.5"].per_seq_s and e.name == "vllm-0.5 (overridden)"
    c = engine_profile({"per_seq_s": 2e-5, "overlap": True})
    assert (c.step_s, c.per_seq_s, c.overlap, c.name) == (0.0, 2e-5, True, "custom")
    assert engine_profile(None) is None


def test_simulate_adds_exactly_the_engine_step_time():
    """Batch mode on a real model: a custom engine of 1 ms per iteration, nothing per sequence,
    adds 1 ms to every decode step and 1 ms to the (single-iteration) prefill."""
    from codesign.sim.simulate import simulate

    kw = dict(hw="h100", model="qwen3-8b", plan={"tp": 1}, chips=1,
              precision={"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"})
    wl = {"mode": "batch", "concurrency": 4, "input_tokens": 220, "output_tokens": 200}
    base = simulate(**kw, workload=wl)[0]
    with_host = simulate(**kw, workload={**wl, "engine": {"step_s": 1e-3}})[0]
    assert with_host.tpot_s.mean - base.tpot_s.mean == pytest.approx(1e-3 * (1 + 1 / 200), rel=1e-9)
    neutral = simulate(**kw, workload={**wl, "engine": "vllm-0.11"})[0]
    assert neutral.tpot_s.mean == base.tpot_s.mean


def _scenario(engine, mode: str = "offline") -> str:
    row = {"name": "x", "hardware": "h100", "model": "qwen3-8b",
           "workload": {"mode": mode, "input_tokens": 100, "output_tokens": 50, "engine": engine}}
    if mode == "server":
        row["workload"]["rate_per_s"] = 1.0
    with pytest.raises(CodesignError) as e:
        parse_scenarios(row, "s.yaml")
    return str(e.value)


def test_bad_engine_input_is_one_line_naming_the_field():
    msg = _scenario("vllm-9")
    assert msg.startswith("s.yaml: workload.engine.name: expected one of ") and "vllm-0.5" in msg and "'vllm-9'" in msg
    assert _scenario(3) == "s.yaml: workload.engine: expected an engine name or a mapping of engine figures, found 3"
    msg = _scenario({"name": "vllm-0.5", "step_s": -1})
    assert msg == "s.yaml: workload.engine.step_s: Input should be greater than or equal to 0 (found: -1)"
    msg = _scenario({"name": "vllm-0.5", "steps": 2})
    assert "workload.engine" in msg and "steps" in msg
    msg = _scenario({"per_seq_s": 1e-5, "detokenize_per_seq_s": 2e-5})
    assert "detokenize_per_seq_s" in msg and "at most per_seq_s" in msg
    msg = _scenario("vllm-0.5", mode="server")
    assert "workload.engine: not yet supported in mode 'server'" in msg
    assert "\n" not in msg
