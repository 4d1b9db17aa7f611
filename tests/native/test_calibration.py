"""Calibration overlays, the eager cost model, dispatch counts and the native-check path."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

import codesign as cs
from codesign.cli import main
from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.native import dispatch
from codesign.native.calibrate import calibrate
from codesign.native.check import native_check, predict, without_mtp
from codesign.native.eager import EagerCostModel, recorded_dispatches
from codesign.native.overlay import Calibration, EagerCosts, load_calibrated, write

EAGER = {"attention_s": 5e-5, "moe_experts_s": 4e-5, "moe_expert_s": 2e-5, "gated_delta_rule_step_s": 1e-4}
OVERLAY = {
    "base": "cpu-host", "device": "cpu", "threads": 1, "torch": "2.13.0", "measured": "test fixture",
    "efficiency": {"gemm": 0.4, "small_m_half": 2, "memory": 0.5, "vector": 0.05, "attention": 0.02},
    "cost": {"launch_overhead_s": 3e-6, "fused_activations_on_chip": False},
    "eager": EAGER,
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "overlay.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_overlay_refines_the_base_spec(tmp_path):
    cal = load_calibrated(_write(tmp_path, OVERLAY))
    base = cs.load_hw("cpu-host")
    assert cal.hw.efficiency.gemm == 0.4 and cal.hw.efficiency.small_m_half == 2
    assert cal.hw.efficiency.collective == base.efficiency.collective  # not in the overlay: the base's
    assert cal.hw.chip == base.chip
    assert cal.options.launch_overhead_s == 3e-6 and cal.options.fused_activations_on_chip is False
    assert cal.eager.gated_delta_rule_step_s == 1e-4


@pytest.mark.parametrize("change, message", [
    ({"efficiency": {"gemm": 1.5}}, "efficiency.gemm"),
    ({"cost": {"launch_overhead": 1e-6}}, "cost.launch_overhead: unknown cost-model option"),
    ({"eager": {**EAGER, "attention_s": -1}}, "eager.attention_s"),
    ({"extends": "h200"}, "extends"),
    ({"base": "no-such-chip"}, "unknown hardware spec 'no-such-chip'"),
])
def test_bad_overlay_is_one_line_naming_the_field(tmp_path, change, message):
    path = _write(tmp_path, {**OVERLAY, **change})
    with pytest.raises(CodesignError, match=message) as e:
        load_calibrated(path)
    assert "\n" not in str(e.value)


def test_missing_overlay_says_how_to_make_one(tmp_path):
    with pytest.raises(CodesignError, match="codesign calibrate --device cpu"):
        load_calibrated(tmp_path / "none.yaml")


def _op(target: str, kind: str, repeat: int = 1, tpe=None) -> Op:
    return Op("x", target, kind, "other", 0, "t", "decode", ((1, 64),), ((1, 64),), "float32",
              flops=0.0, repeat=repeat, tokens_per_expert=tpe)


def test_eager_overheads_per_op():
    cm = EagerCostModel(cs.load_hw("cpu-host"), EagerCosts(**EAGER), options=None, dispatch_ratio=1.5)
    launch = cm.launch_s  # the chip's kernel overhead (no options given)
    assert cm.overhead(_op("aten.mul.Tensor", "vector")) == pytest.approx(1.5 * launch)
    assert cm.overhead(_op("aten.bmm.default", "gemm", repeat=4)) == pytest.approx(4 * 1.5 * launch)
    assert cm.overhead(_op("codesign.attention.default", "attention")) == pytest.approx(5e-5)
    assert cm.overhead(_op("codesign.gated_delta_rule_step.default", "vector")) == pytest.approx(1e-4)
    moe = _op("codesign.moe_experts.default", "grouped_gemm", tpe=(3, 0, 1, 0))
    assert cm.overhead(moe) == pytest.approx(4e-5 + 2 * 2e-5)  # two experts received tokens
    assert recorded_dispatches([_op("aten.add.Tensor", "vector", 3), moe, _op("aten.mm.default", "gemm")]) == 4


def test_a_scalar_operand_has_its_own_per_call_cost():
    import dataclasses

    from codesign.native.calibrate import tiny_op_shapes
    from codesign.native.replay import cost_key

    scalar = _op("aten.add.Tensor", "vector")  # one recorded tensor: the other operand a Python scalar
    tensors = dataclasses.replace(scalar, in_shapes=((1, 64), (1, 64)))
    assert cost_key(scalar) == "aten.add.Tensor[scalar]" and cost_key(tensors) == "aten.add.Tensor"
    assert cost_key(_op("aten.rsqrt.default", "vector")) == "aten.rsqrt.default"  # unary: its target
    both = EagerCosts(**EAGER, ops={"aten.add.Tensor": 10e-6, "aten.add.Tensor[scalar]": 25e-6})
    cm = EagerCostModel(cs.load_hw("cpu-host"), both, options=None)
    assert cm.overhead(scalar) == pytest.approx(25e-6) and cm.overhead(tensors) == pytest.approx(10e-6)
    older = EagerCostModel(cs.load_hw("cpu-host"), EagerCosts(**EAGER, ops={"aten.add.Tensor": 25e-6}), options=None)
    assert older.overhead(scalar) == older.overhead(tensors) == pytest.approx(25e-6)  # an overlay without the key
    # the calibration measures both variants, each at an op of its own arity
    shapes = tiny_op_shapes()
    assert len(shapes["aten.add.Tensor[scalar]"].in_shapes) == 1 and len(shapes["aten.add.Tensor"].in_shapes) == 2
    assert all(cost_key(op) == key for key, op in shapes.items())


def test_views_pay_the_view_cost_and_other_unrecorded_dispatches_the_launch():
    costs = EagerCosts(**EAGER, view_s=1e-6)
    cm = EagerCostModel(cs.load_hw("cpu-host"), costs, options=None, dispatch_ratio=2.0, view_ratio=0.6)
    launch = cm.launch_s
    # by hand: its own call, 0.6 views at 1 us, the other 0.4 unrecorded dispatches at the launch cost
    assert cm.overhead(_op("aten.mul.Tensor", "vector")) == pytest.approx(launch + 0.6e-6 + 0.4 * launch)
    assert cm.overhead(_op("aten.bmm.default", "gemm", repeat=3)) == pytest.approx(3 * (1.4 * launch + 0.6e-6))
    # more views than unrecorded dispatches (recorded casts that an fp32 run does not dispatch): no others
    many = EagerCostModel(cs.load_hw("cpu-host"), costs, options=None, dispatch_ratio=1.5, view_ratio=0.8)
    assert many.overhead(_op("aten.mul.Tensor", "vector")) == pytest.approx(launch + 0.8e-6)
    # an overlay without view_s charges a view as any dispatch: the formula before views were split
    old = EagerCostModel(cs.load_hw("cpu-host"), EagerCosts(**EAGER), options=None, dispatch_ratio=2.0, view_ratio=0.6)
    assert old.overhead(_op("aten.mul.Tensor", "vector")) == pytest.approx(2.0 * launch)


def _cast(src_bytes: int, out: str, numel: int = 64) -> Op:
    return Op("x", "aten._to_copy.default", "memory", "other", 0, "t", "decode", ((1, numel),), ((1, numel),), out,
              bytes_read={"activation": float(src_bytes * numel)})


def test_float_casts_are_not_dispatched_in_an_fp32_run():
    from codesign.native.eager import is_native_identity

    assert is_native_identity(_cast(2, "float32")) and is_native_identity(_cast(4, "bfloat16"))  # bf16 <-> fp32
    assert not is_native_identity(_cast(8, "float32"))  # int64 positions -> fp32: a real cast
    assert not is_native_identity(_cast(4, "float32"))  # int32 -> fp32
    cm = EagerCostModel(cs.load_hw("cpu-host"), EagerCosts(**EAGER), options=None)
    assert cm.cost(_cast(2, "float32")).time_s == 0.0 and cm.cost(_cast(8, "float32")).time_s > 0
    assert recorded_dispatches([_cast(2, "float32"), _cast(8, "float32"), _op("aten.mm.default", "gemm")]) == 2


@pytest.mark.parametrize("model", ["qwen3.5-35b-a3b", "llama-2-70b", "deepseek-v3"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_casts_charged_are_those_the_fp32_run_dispatches(model, phase):
    """Independent check of the rule: the traced casts it keeps are as many as the casts the model's
    own fp32 forward dispatches (counted on the meta device)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from codesign.native.eager import is_native_identity

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += str(func) == "aten._to_copy.default"
            return func(*args, **(kwargs or {}))

    cfg = without_mtp(cs.load_model(model).tiny())
    m = cs.models.decoder.CausalLM(cfg, dtype=torch.float32, device="meta")
    T, ctx = (16, 0) if phase == "prefill" else (1, 17)
    caches = m.make_caches(1, ctx + T, device="meta", dtype=torch.float32)
    ids = torch.zeros(1, T, dtype=torch.long, device="meta")
    with torch.no_grad(), Casts() as c:
        if phase == "prefill":
            m.lm_head(m.norm(m.hidden_states(ids, 0, caches)[:, -1:]))
        else:
            m(ids, ctx - 1, caches)
    kw = dict(tokens=16, context=0) if phase == "prefill" else dict(context=18)
    ops = [op for _, op in cs.trace(cfg, phase=phase, batch=1, **kw).nodes(data="op")]
    traced = [op for op in ops if op.target == "aten._to_copy.default"]
    kept = sum(op.repeat for op in traced if not is_native_identity(op))
    assert len(traced) > kept and kept == c.n


def test_dispatches_a_per_call_figure_holds_are_not_charged_again():
    from codesign.native.calibrate import held_dispatches
    from codesign.native.eager import step_ratios

    # the batched GEMM's figure is timed through torch.matmul: four views and an _unsafe_view around it
    views, others = held_dispatches()
    a, b = torch.randn(4, 8, 16), torch.randn(4, 16, 8)
    n, v = dispatch.count_call(lambda: torch.matmul(a, b))
    assert (views, others) == ({"aten.bmm.default": v}, {"aten.bmm.default": n - v - 1}) and (n, v) == (6, 4)
    costs = EagerCosts(**EAGER, op_views=views, op_others=others)
    ops = [_op("aten.bmm.default", "gemm", repeat=3), _op("aten.mul.Tensor", "vector")]
    # by hand: 4 recorded dispatches; 30 dispatches, 20 views; the bmm trips hold 12 views and 3 others
    ratio, view_ratio = step_ratios(costs, ops, 30, 20)
    assert view_ratio == pytest.approx((20 - 12) / 4) and ratio == pytest.approx(1 + (8 + (30 - 20 - 4 - 3)) / 4)
    assert step_ratios(EagerCosts(**EAGER), ops, 30, 20) == pytest.approx((30 / 4, 20 / 4))  # an older overlay


def test_moe_pays_per_call_per_active_expert_and_per_route():
    costs = EagerCosts(**{**EAGER, "moe_route_s": 0.5e-6})
    cm = EagerCostModel(cs.load_hw("cpu-host"), costs, options=None)
    moe = _op("codesign.moe_experts.default", "grouped_gemm", tpe=(3, 0, 1, 0))
    assert cm.overhead(moe) == pytest.approx(4e-5 + 2 * 2e-5 + 4 * 0.5e-6)  # 2 experts active, 4 routes


def test_moe_fields_solve_the_three_benchmarks():
    from codesign.native.calibrate import moe_fields

    call, expert, route, rate = 100e-6, 20e-6, 0.4e-6, 150e9
    flops = 1024 * 6 * 64 * 32  # 256 tokens x top-4, gate/up and down of hidden 64, width 32
    t1 = call + expert + 8 * route
    t8 = call + 8 * expert + 8 * route
    t_many = call + 8 * expert + 1024 * route + flops / rate
    got = moe_fields(t1, t8, t_many, rate)
    assert got == pytest.approx((call, expert, route), rel=1e-9)
    assert moe_fields(t1, t8) == pytest.approx((t1 - (t8 - t1) / 7, (t8 - t1) / 7, 0.0))


def test_view_benchmark_is_views_only_and_the_block_splits_them_out(monkeypatch):
    from codesign.native import microbench as mb

    cpu = torch.device("cpu")
    assert dispatch.count_call(mb.view_call(cpu)) == (7, 7)  # view, transpose, select, t, expand, slice, unsqueeze
    call, _ = mb.module_block(64, 128, cpu, torch.float32)
    n, views = dispatch.count_call(call)
    assert (n, views) == (20, 6)  # RMSNorm + SwiGLU MLP: 3 linears (a transpose each), 3 reshapes
    monkeypatch.setattr(mb, "cold", lambda fn, device, repeats, scrub=None: 62e-6)
    assert mb.view_ops(cpu, 1) == (pytest.approx(62e-6 / 7), 7)
    per, n2, v2 = mb.module_ops(64, 128, cpu, torch.float32, 1, view_s=1e-6)
    assert (n2, v2) == (20, 6) and per == pytest.approx((62e-6 - 6 * 1e-6) / 14)


def test_dispatch_count_on_meta_equals_the_real_run():
    cfg = without_mtp(cs.load_model("qwen3.5-35b-a3b").tiny())
    meta = dispatch.count(cfg, "decode", 1, 1, 20)
    torch.manual_seed(0)
    model = cs.models.decoder.CausalLM(cfg, dtype=torch.float32)
    caches = model.make_caches(1, 20)
    real = dispatch.count_module(lambda ids: model(ids, 19, caches), torch.zeros(1, 1, dtype=torch.long))
    assert meta == real
    real_views = dispatch.count_call(lambda: model(torch.zeros(1, 1, dtype=torch.long), 19, caches))[1]
    assert dispatch.counts(cfg, "decode", 1, 1, 20) == (meta, real_views) and 0 < real_views < meta
    g = cs.trace(cfg, phase="decode", batch=1, context=20)
    assert meta > recorded_dispatches(op for _, op in g.nodes(data="op"))  # views are dispatched, not recorded


def test_prediction_is_the_sum_of_eager_op_costs(tmp_path):
    """On one chip every op holds the memory channel, so the step is the sum of its ops' costs."""
    from codesign.mapping import map_step
    from codesign.mapping.plan import ParallelPlan, Precision

    cal = load_calibrated(_write(tmp_path, OVERLAY))
    cfg = without_mtp(cs.load_model("llama-3.1-70b").tiny())
    _, decode, kinds = predict(cfg, cal, 1, 32, 4)
    g = cs.trace(cfg, phase="decode", batch=1, context=32 + 2 + 1)
    mapped = map_step(g, cfg, cal.hw, ParallelPlan(), Precision(weights="fp32", activations="fp32", kv_cache="fp32"))
    recorded = recorded_dispatches(op for _, op in mapped.graph.nodes(data="op"))
    n, views = dispatch.counts(cfg, "decode", 1, 1, 35)
    cm = EagerCostModel(cal.hw, cal.eager, "fp32", "fp32", cal.options, n / recorded, views / recorded)
    total = sum(cm.cost(op).time_s for _, op in mapped.graph.nodes(data="op"))
    assert decode == pytest.approx(total, rel=1e-9)
    assert sum(kinds["decode"].values()) == pytest.approx(total, rel=1e-9)


def test_calibrate_writes_a_valid_overlay(tmp_path):
    cal, _ = calibrate(cs.load_hw("cpu-host"), torch.device("cpu"), repeats=1, passes=2)
    assert "2 passes" in cal.measured
    out = tmp_path / "cal.yaml"
    write(cal, out, "test")
    back = load_calibrated(out)
    assert back.calibration == Calibration.model_validate(yaml.safe_load(out.read_text()))
    assert all(0 < v <= 1 for k, v in cal.efficiency.items() if k != "small_m_half")
    assert cal.cost["launch_overhead_s"] > 0 and out.read_text().startswith("# test")
    # the command's printout: every eager entry, the per-target table as its range
    from codesign.commands.calibrate import summary

    text = summary(cs.load_hw("cpu-host"), "cpu", cal, ["n1"])
    assert "eager.ops" in text and "op targets measured" in text and text.endswith("note: n1")


def test_native_check_reports_both_phases(tmp_path):
    cal = load_calibrated(_write(tmp_path, OVERLAY))
    r = native_check(cs.load_model("llama-3.1-70b").tiny(), cal, prompt_tokens=16, decode_steps=2, repeats=1)
    for phase, p, m in (("prefill", r.prefill_predicted_s, r.prefill_measured_s),
                        ("decode", r.decode_step_predicted_s, r.decode_step_measured_s)):
        assert p > 0 and m > 0
        assert r.error_pct[phase] == pytest.approx(100 * (p - m) / m, abs=0.05)


def test_cli_native_check_json(tmp_path, capsys):
    path = _write(tmp_path, OVERLAY)
    rc = main(["native-check", "--model", "llama-3.1-70b", "--tiny", "--calibration", str(path), "--prompt-tokens", "8",
               "--decode-steps", "2", "--repeats", "2", "--measure-seconds", "0", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("prefill_predicted_s", "prefill_measured_s", "decode_step_predicted_s", "decode_step_measured_s", "error_pct"):
        assert key in d
    assert d["repeats"] == 2  # no measuring time: exactly the rounds asked for
    for phase in ("prefill", "decode"):  # each segment's least is at most the median round's total
        measured = d["prefill_measured_s" if phase == "prefill" else "decode_step_measured_s"]
        assert 0 < measured <= d["measured_median_s"][phase] * (1 + 1e-9)


def test_cli_native_check_rejects_a_negative_measuring_time(tmp_path, capsys):
    path = _write(tmp_path, OVERLAY)
    assert main(["native-check", "--tiny", "--calibration", str(path), "--measure-seconds", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "codesign: error: --measure-seconds: expected a number >= 0, found -1.0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_absent_device_is_one_line(capsys):
    assert main(["calibrate", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "codesign: error: --device: cuda requested but no CUDA device is present (torch.cuda.is_available() is False)"


def test_model_too_large_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, OVERLAY)
    assert main(["native-check", "--model", "qwen3.5-397b-a17b", "--calibration", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp32 weights need" in err[0] and "use --tiny" in err[0]


def test_calibration_of_another_device_is_refused(tmp_path, capsys):
    path = _write(tmp_path, {**OVERLAY, "device": "cuda"})
    assert main(["native-check", "--tiny", "--calibration", str(path)]) == 2
    assert "measured on cuda, not on cpu" in capsys.readouterr().err


def test_prompt_beyond_the_models_positions_is_refused_before_running(tmp_path, capsys):
    path = _write(tmp_path, OVERLAY)
    assert main(["native-check", "--model", "llama-3.1-70b", "--tiny", "--calibration", str(path),
                 "--prompt-tokens", "5000", "--decode-steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the largest prompt that fits is 4091 tokens") and "\n" not in err


def test_calibrating_a_gpu_is_not_yet_supported(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert main(["calibrate", "--device", "cuda"]) == 2
    assert "not yet supported" in capsys.readouterr().err


# -- cold regimes: heavy kernels, the vocabulary scrub, re-warm ---------------------------------------


def test_vocabulary_covers_every_traced_target_and_fused_kernel():
    from codesign.native.calibrate import FUSED_TARGETS, tiny_op_shapes, vocabulary

    shapes = tiny_op_shapes()
    calls = vocabulary(torch.device("cpu"), shapes)
    assert set(calls) == set(shapes) | set(FUSED_TARGETS)
    assert len(FUSED_TARGETS) == 3 and all(t.startswith("codesign.") for t in FUSED_TARGETS)
    # every fused kernel the tracer emits is in the vocabulary
    traced = {op.target.rsplit(".", 1)[0] for name in ("qwen3.5-397b-a17b", "llama-2-70b")
              for _, op in cs.trace(without_mtp(cs.load_model(name).tiny()), phase="decode", batch=1,
                                    context=17).nodes(data="op") if op.target.startswith("codesign.")}
    assert traced <= set(FUSED_TARGETS)
    calls["codesign.gated_delta_rule_step"]()  # each is a runnable call


def test_vocabulary_scrub_runs_every_other_op_once():
    from codesign.native.microbench import VocabularyScrub

    ran = []
    calls = {n: (lambda n=n: ran.append(n)) for n in ("a", "b", "c")}
    scrub = VocabularyScrub(calls, "b")
    scrub()
    assert ran == ["a", "c"]
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        VocabularyScrub(calls, "z")


def _fake_cold(light: dict, heavy: dict):
    """mb.cold stand-in: the figure of a call after the light scrub or after a vocabulary scrub."""
    from codesign.native import microbench as mb

    def cold(fn, device, repeats, scrub=None):
        name = fn.name
        return heavy[name] if isinstance(scrub, mb.VocabularyScrub) else light[name]
    return cold


class _Named:
    def __init__(self, name):
        self.name = name

    def __call__(self):
        return None


def test_heavy_targets_are_timed_after_the_vocabulary_scrub(monkeypatch):
    from codesign.native import calibrate as calmod
    from codesign.native import microbench as mb

    shapes = {"aten.mul.Tensor": None, "aten.convolution.default": None, "aten.topk.default": None}
    monkeypatch.setattr("codesign.native.replay.build", lambda op, device, dtype: _Named(target_of[id(op)]))
    ops = {t: object() for t in shapes}
    target_of = {id(o): t for t, o in ops.items()}
    light = {"aten.mul.Tensor": 3e-6, "aten.convolution.default": 70e-6, "aten.topk.default": 29e-6}
    heavy = {"aten.mul.Tensor": 9e-6, "aten.convolution.default": 120e-6, "aten.topk.default": 50e-6}
    monkeypatch.setattr(mb, "cold", _fake_cold(light, heavy))
    calls = {t: (lambda: None) for t in shapes}
    # threshold 10 dispatches of 3 us = 30 us: only the convolution is heavy
    costs, light_of_heavy = calmod.per_target_costs(torch.device("cpu"), 1, ops, 10 * 3e-6, calls)
    assert costs == {"aten.convolution.default": 120e-6, "aten.mul.Tensor": 3e-6, "aten.topk.default": 29e-6}
    assert light_of_heavy == {"aten.convolution.default": 70e-6}
    costs, _ = calmod.per_target_costs(torch.device("cpu"), 1, ops, float("inf"), calls)
    assert costs == light  # no heavy targets


def test_rewarm_is_the_block_after_one_heavy_call_minus_after_the_light_scrub(monkeypatch):
    """A fake clock advances by what each call costs: the block 50 us, plus the heavy kernel's
    eviction penalty when that kernel ran just before it; the heavy kernels themselves take no time."""
    from codesign.native import microbench as mb

    state = {"t": 0.0, "last": None}
    monkeypatch.setattr("codesign.native.replay.clock", lambda device: lambda: state["t"])

    def heavy(name):
        def fn():
            state["last"] = name
        return fn

    penalty = {"x": 12e-6, "y": 20e-6}

    def block():
        state["t"] += 50e-6 + penalty.get(state["last"], 0.0)
        state["last"] = None
    out = mb.rewarm(block, {"x": heavy("x"), "y": heavy("y")}, torch.device("cpu"), 1)
    assert out == pytest.approx(penalty)


def test_heavy_kernels_pay_the_rewarm_once_per_call():
    costs = EagerCosts(**EAGER, ops={"aten.convolution.default": 7e-5}, heavy_ops=["aten.convolution.default"],
                       heavy_rewarm_s=1e-5)
    cm = EagerCostModel(cs.load_hw("cpu-host"), costs, options=None, dispatch_ratio=1.0)
    assert cm.overhead(_op("codesign.attention.default", "attention")) == pytest.approx(5e-5 + 1e-5)
    assert cm.overhead(_op("codesign.gated_delta_rule_step.default", "vector")) == pytest.approx(1e-4 + 1e-5)
    moe = _op("codesign.moe_experts.default", "grouped_gemm", tpe=(3, 0, 1, 0))
    assert cm.overhead(moe) == pytest.approx(4e-5 + 2 * 2e-5 + 1e-5)
    assert cm.overhead(_op("aten.convolution.default", "vector")) == pytest.approx(7e-5 + 1e-5)
    assert cm.overhead(_op("aten.convolution.default", "vector", repeat=3)) == pytest.approx(3 * 8e-5)
    assert cm.overhead(_op("aten.mul.Tensor", "vector")) == pytest.approx(cm.launch_s)  # light: no re-warm
    # an overlay without the fields (written before them) charges no re-warm
    old = EagerCostModel(cs.load_hw("cpu-host"), EagerCosts(**EAGER), options=None)
    assert old.overhead(_op("codesign.attention.default", "attention")) == pytest.approx(5e-5)


def test_calibration_derives_the_heavy_fields_from_its_benchmarks(tmp_path):
    import statistics

    cal, _ = calibrate(cs.load_hw("cpu-host"), torch.device("cpu"), repeats=1, passes=1)  # one pass: its own figures
    b, e = cal.benchmarks, cal.eager
    assert e.gated_delta_rule_step_s == b["gated_delta_rule_step_s"] and "gated_delta_rule_step_light_s" in b
    assert e.attention_s == b["attention_1x16_gqa_s"] and "attention_1x16_gqa_light_s" in b
    per_expert = max(0.0, (b["moe_experts_8tok_8experts_s"] - b["moe_experts_8tok_1expert_s"]) / 7)
    assert e.moe_expert_s == pytest.approx(per_expert, rel=1e-3)
    assert e.heavy_ops == sorted(k[: -len("_light_s")] for k in b if k.startswith("aten.") and k.endswith("_light_s"))
    for target in e.heavy_ops:  # timed light first, and heavy because the light figure passed the threshold
        assert b[f"{target}_light_s"] >= 10 * cal.cost["launch_overhead_s"] * (1 - 1e-3)
    rewarm = [v for k, v in b.items() if k.startswith("rewarm_after_")]
    assert len(rewarm) == 3 + len(e.heavy_ops)
    assert e.heavy_rewarm_s == pytest.approx(max(0.0, statistics.median(rewarm)), rel=1e-3, abs=1e-9)


def test_calibrate_rejects_a_non_positive_heavy_threshold(capsys):
    assert main(["calibrate", "--device", "cpu", "--heavy-dispatches", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "codesign: error: --heavy-dispatches: expected a positive number, found 0.0"


# -- the measurement on a fake clock; calibration passes merged field by field ----------------------------


# seconds each decoder layer takes on the fake clock, per measured round (round 0 is the warm-up):
# prefill one figure per layer, decode one per step; contention slows some layers in some rounds
PREFILL_MS = {0: [9, 3, 1, 1], 1: [9, 2, 5, 2]}
DECODE_MS = {0: [[9, 9], [0.5, 0.5], [0.4, 2.0], [1.5, 1.5]], 1: [[9, 9], [1, 1], [1, 1], [3, 3]]}


def _fake_clock_model(monkeypatch, check):
    """A tiny Llama whose two decoder layers' attention advances a fake clock by PREFILL_MS /
    DECODE_MS; everything else takes no time on it."""
    state = {"t": 0.0}
    monkeypatch.setattr(check, "clock", lambda device: (lambda: state["t"]))
    monkeypatch.setattr(check, "PREFILLS_PER_ROUND", 1)
    real_build = check.build_native

    def build(config, seed, dtype, device):
        model = real_build(config, seed, dtype, device)
        assert len(model.layers) == 2

        class Timed(torch.nn.Module):
            def __init__(self, inner, i):
                super().__init__()
                self.inner, self.i, self.calls = inner, i, 0

            def forward(self, x, pos, cache):
                rnd, call = divmod(self.calls, 3)  # per round: one prefill, 2 decode steps
                self.calls += 1
                ms = PREFILL_MS[self.i][rnd] if call == 0 else DECODE_MS[self.i][rnd][call - 1]
                state["t"] += ms * 1e-3
                return self.inner(x, pos, cache)

            def make_cache(self, *a):
                return self.inner.make_cache(*a)
        for i, layer in enumerate(model.layers):
            setattr(layer, layer.mixer_name, Timed(layer.mixer, i))
        return model
    monkeypatch.setattr(check, "build_native", build)


def test_native_check_measures_each_segment_in_its_quietest_round(monkeypatch):
    from codesign.native import check

    _fake_clock_model(monkeypatch, check)
    cfg = without_mtp(cs.load_model("llama-2-70b").tiny())
    m = check.measure(cfg, 1, 4, 2, 3, torch.device("cpu"))
    assert m.rounds == 3
    # by hand: prefill layer 0 at its least 1 ms (rounds 2, 3), layer 1 at 2 ms (rounds 1, 3)
    assert m.prefill_s == pytest.approx(3e-3)
    # decode: each layer at its least over every step of every round (layer 0: 0.4 ms, round 2's first
    # step; layer 1: 1 ms)
    assert m.decode_step_s == pytest.approx(1.4e-3)
    # the median round, for comparison: prefill totals 5, 6, 3 ms; decode, per round the sum of the
    # layers' medians over its steps: 1.5, 1.2 + 1 = 2.2, 4.5 ms
    assert m.prefill_median_s == pytest.approx(5e-3) and m.decode_step_median_s == pytest.approx(2.2e-3)
    assert m.prefill_spread == pytest.approx((6 - 3) / 5) and m.decode_spread == pytest.approx((4.5 - 1.5) / 2.2)


def test_contention_is_the_probe_against_the_calibrations_figure(tmp_path, monkeypatch, capsys):
    from codesign.native import check

    path = _write(tmp_path, {**OVERLAY, "benchmarks": {"module_block_s": 50e-6}})
    fake = check.Measured(3e-3, 1e-3, 0.1, 0.1, 3.5e-3, 1.2e-3, 7, probe_s=80e-6)
    monkeypatch.setattr(check, "measure", lambda *a, **k: fake)
    r = native_check(cs.load_model("llama-2-70b").tiny(), load_calibrated(path), prompt_tokens=16, decode_steps=2)
    assert r.contention_pct == pytest.approx(100 * (80 / 50 - 1))  # +60%
    assert r.prefill_measured_s == 3e-3 and r.measured_median_s == {"prefill": 3.5e-3, "decode": 1.2e-3}
    assert main(["native-check", "--model", "llama-2-70b", "--tiny", "--calibration", str(path), "--json"]) == 0
    assert "the machine was contended while measuring" in json.loads(capsys.readouterr().out)["warning"]
    quiet = check.Measured(3e-3, 1e-3, 0.1, 0.1, 3.5e-3, 1.2e-3, 7, probe_s=52e-6)
    monkeypatch.setattr(check, "measure", lambda *a, **k: quiet)
    assert main(["native-check", "--model", "llama-2-70b", "--tiny", "--calibration", str(path), "--json"]) == 0
    assert "warning" not in json.loads(capsys.readouterr().out)
    fast = check.Measured(3e-3, 1e-3, 0.1, 0.1, 3.5e-3, 1.2e-3, 7, probe_s=30e-6)  # -40%: a contended calibration
    monkeypatch.setattr(check, "measure", lambda *a, **k: fast)
    assert main(["native-check", "--model", "llama-2-70b", "--tiny", "--calibration", str(path), "--json"]) == 0
    assert "the calibration was contended" in json.loads(capsys.readouterr().out)["warning"]
    # an overlay without the figure: no reading
    plain = native_check(cs.load_model("llama-2-70b").tiny(), load_calibrated(_write(tmp_path, OVERLAY)),
                         prompt_tokens=16, decode_steps=2)
    assert plain.contention_pct is None


def test_an_overlay_from_another_cpu_is_named_not_read_as_contention(tmp_path, monkeypatch, capsys):
    from codesign.native import calibrate as calib
    from codesign.native import check
    from codesign.native.overlay import calibrated_host

    measured = "2026-12-01T21:57Z on Intel(R) Xeon(R) Processor (8 passes, least-contended\n  figures)"
    path = _write(tmp_path, {**OVERLAY, "measured": measured, "benchmarks": {"module_block_s": 50e-6}})
    assert calibrated_host(load_calibrated(path).calibration) == "Intel(R) Xeon(R) Processor"
    (tmp_path / "plain").mkdir()
    assert calibrated_host(load_calibrated(_write(tmp_path / "plain", OVERLAY)).calibration) is None  # says no host
    slow = check.Measured(3e-3, 1e-3, 0.1, 0.1, 3.5e-3, 1.2e-3, 7, probe_s=300e-6)  # the probe 6x slower
    monkeypatch.setattr(check, "measure", lambda *a, **k: slow)
    monkeypatch.setattr(calib, "cpu_name", lambda: "AMD EPYC")
    assert main(["native-check", "--model", "llama-2-70b", "--tiny", "--calibration", str(path), "--json"]) == 0
    warning = json.loads(capsys.readouterr().out)["warning"]
    assert "measured on Intel(R) Xeon(R) Processor, this host is AMD EPYC" in warning and "--recalibrate" in warning
    assert "contended" not in warning
    monkeypatch.setattr(calib, "cpu_name", lambda: "Intel(R) Xeon(R) Processor")  # the same CPU: contention
    assert main(["native-check", "--model", "llama-2-70b", "--tiny", "--calibration", str(path), "--json"]) == 0
    assert "the machine was contended while measuring" in json.loads(capsys.readouterr().out)["warning"]


@pytest.mark.parametrize("name", ["llama-2-70b", "qwen3.5-397b-a17b"])
def test_the_segmented_step_is_the_models_own(name):
    """native-check times a step in parts; the parts compute what the model's forward computes."""
    from codesign.native import check

    cfg = without_mtp(cs.load_model(name).tiny())
    model = check.build_native(cfg, 0, torch.float32, "cpu")
    ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    a, b = model.make_caches(1, 14), model.make_caches(1, 14)
    now = check.clock(torch.device("cpu"))
    with torch.no_grad():
        tok, parts = check._segments(model, ids, 0, a, True, now, torch.device("cpu"))
        ref = model(ids, 0, b)[:, -1]
        assert torch.equal(tok, ref.argmax(-1, keepdim=True))
        assert len(parts) == 2 + 4 * cfg.num_layers and all(t >= 0 for t in parts)
        tok2, _ = check._segments(model, tok, 12, a, False, now, torch.device("cpu"))
        ref2 = model(tok, 12, b)[:, -1]
        assert torch.equal(tok2, ref2.argmax(-1, keepdim=True))
        assert all(torch.equal(x, y) for ca, cb in zip(a, b) for x, y in zip(ca.buffers(), cb.buffers()))


def test_quiet_estimate_is_the_sum_of_segment_minima():
    from codesign.native.check import quiet_estimate

    assert quiet_estimate([[1.0, 5.0, 2.0], [3.0, 1.0, 2.5]]) == 1.0 + 1.0 + 2.0
    assert quiet_estimate([[4.0, 2.0]]) == 6.0
    with pytest.raises(ValueError):
        quiet_estimate([[1.0], [1.0, 2.0]])


def test_native_check_keeps_measuring_for_the_measuring_time(monkeypatch):
    """Rounds continue past `repeats` until `min_seconds` have passed (a fake wall clock: 1 s per read)."""
    from codesign.native import check

    _fake_clock_model(monkeypatch, check)
    ticks = iter(range(100))
    monkeypatch.setattr(check.time, "perf_counter", lambda: float(next(ticks)))
    cfg = without_mtp(cs.load_model("llama-2-70b").tiny())
    m = check.measure(cfg, 1, 4, 2, 1, torch.device("cpu"), min_seconds=2.5)
    assert m.rounds == 3  # read at 0 (start), after rounds 1 and 2 (1 s, 2 s < 2.5 s), after round 3 (3 s): stop
    assert m.prefill_s == pytest.approx(3e-3) and m.decode_step_s == pytest.approx(1.4e-3)


def test_passes_merge_to_the_least_contended_figures():
    from codesign.native.calibrate import merge

    def cal(gemm, half, launch, gdn, conv, heavy, rewarm, bench):
        return Calibration.model_validate({
            **OVERLAY, "efficiency": {**OVERLAY["efficiency"], "gemm": gemm, "small_m_half": half},
            "cost": {"launch_overhead_s": launch, "fused_activations_on_chip": False},
            "eager": {**EAGER, "gated_delta_rule_step_s": gdn, "ops": {"aten.convolution.default": conv,
                                                                        "aten.mul.Tensor": 3e-6 + launch},
                      "heavy_ops": heavy, "heavy_rewarm_s": rewarm},
            "benchmarks": {"copy_s": bench, "rewarm_after_x_s": rewarm}})
    a = cal(0.40, 3, 3e-6, 1.2e-4, 1.3e-4, ["aten.convolution.default"], 10e-6, 0.04)
    b = cal(0.30, 2, 5e-6, 1.9e-4, 0.7e-4, [], 30e-6, 0.06)  # contended; conv not found heavy here
    c = cal(0.35, 4, 4e-6, 1.5e-4, 1.4e-4, ["aten.convolution.default"], 12e-6, 0.05)
    m = merge([a, b, c])
    # times at their least, efficiencies at their greatest (the least-contended pass, field by field)
    assert m.efficiency["gemm"] == 0.40 and m.cost["launch_overhead_s"] == 3e-6
    assert m.cost["fused_activations_on_chip"] is False
    assert m.eager.gated_delta_rule_step_s == 1.2e-4
    assert m.eager.heavy_ops == ["aten.convolution.default"]
    assert m.eager.ops["aten.convolution.default"] == pytest.approx(1.3e-4)  # the least of the heavy figures only
    assert m.eager.ops["aten.mul.Tensor"] == pytest.approx(6e-6)
    assert m.benchmarks["copy_s"] == 0.04
    # differences and ratios of two timings of one pass at their median
    assert m.efficiency["small_m_half"] == 3
    assert m.eager.heavy_rewarm_s == 12e-6 and m.benchmarks["rewarm_after_x_s"] == 12e-6
    assert "3 passes" in m.measured
    assert merge([a]) == a


def _bench(**change):
    """A complete set of benchmark figures (seconds), as one calibration pass writes them."""
    b = {"view_op_s": 1.5e-6, "module_block_s": 60e-6, "copy_256MiB_s": 0.05, "mul_64Ki_s": 9e-6,
         "attention_1x16_gqa_light_s": 80e-6, "attention_1x16_gqa_s": 120e-6,
         "attention_128x128_h4_d16_s": 4e-4, "attention_256x256_h4_d16_s": 1.2e-3, "attention_512x512_h4_d16_s": 4e-3,
         "moe_experts_8tok_1expert_s": 150e-6, "moe_experts_8tok_8experts_s": 360e-6, "gated_delta_rule_step_s": 170e-6}
    b.update({f"gemm_{m}x512x512_s": 2 * m * 512 * 512 / 150e9 + 4e-6 for m in (1, 2, 4, 8, 64, 256, 1024)})
    return {**b, **change}


def test_passes_derive_every_field_from_the_least_figures():
    """Pass a: the module block contended; pass b: the vector mul and the 8-expert MoE call contended.
    Every field comes from the least figures, not from the pass where it came out best."""
    from codesign.native.calibrate import derive, merge

    def cal(bench):
        eff, cost, eager = derive(cs.load_hw("cpu-host"), bench, [])
        return Calibration.model_validate({**OVERLAY, "efficiency": eff, "cost": {**cost, "fused_activations_on_chip":
                                          False}, "eager": {**EAGER, **eager}, "benchmarks": bench})
    a = cal(_bench(module_block_s=120e-6, moe_experts_8tok_1expert_s=140e-6))
    b = cal(_bench(mul_64Ki_s=20e-6, moe_experts_8tok_8experts_s=500e-6))
    m = merge([a, b])
    launch = (60e-6 - 6 * 1.5e-6) / 14  # by hand: the quiet block less its 6 views, over its 14 other dispatches
    assert m.cost["launch_overhead_s"] == pytest.approx(launch, rel=1e-3) and m.eager.view_s == 1.5e-6
    assert m.efficiency["vector"] == pytest.approx(65536 / (9e-6 - launch) / 192e9, abs=1e-4)
    per_expert = (360e-6 - 140e-6) / 7  # the least 8-expert and 1-expert figures
    assert m.eager.moe_expert_s == pytest.approx(per_expert, rel=1e-3)
    assert m.eager.moe_experts_s == pytest.approx(140e-6 - per_expert, rel=1e-3)
    gemm = statistics.median(2 * k * 512 * 512 / ((2 * k * 512 * 512 / 150e9 + 4e-6 - launch) * 384e9)
                             for k in (64, 256, 1024))
    assert m.efficiency["gemm"] == pytest.approx(gemm, abs=1e-4)
    assert m.eager.gated_delta_rule_step_s == 170e-6 and m.eager.attention_s == 120e-6
