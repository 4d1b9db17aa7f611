"""Calibration overlays, the eager cost model, dispatch counts and the native-check path."""

from __future__ import annotations

import json
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


def test_dispatch_count_on_meta_equals_the_real_run():
    cfg = without_mtp(cs.load_model("qwen3.5-35b-a3b").tiny())
    meta = dispatch.count(cfg, "decode", 1, 1, 20)
    torch.manual_seed(0)
    model = cs.models.decoder.CausalLM(cfg, dtype=torch.float32)
    caches = model.make_caches(1, 20)
    real = dispatch.count_module(lambda ids: model(ids, 19, caches), torch.zeros(1, 1, dtype=torch.long))
    assert meta == real
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
    ratio = dispatch.count(cfg, "decode", 1, 1, 35) / recorded_dispatches(op for _, op in mapped.graph.nodes(data="op"))
    cm = EagerCostModel(cal.hw, cal.eager, "fp32", "fp32", cal.options, ratio)
    total = sum(cm.cost(op).time_s for _, op in mapped.graph.nodes(data="op"))
    assert decode == pytest.approx(total, rel=1e-9)
    assert sum(kinds["decode"].values()) == pytest.approx(total, rel=1e-9)


def test_calibrate_writes_a_valid_overlay(tmp_path):
    cal, _ = calibrate(cs.load_hw("cpu-host"), torch.device("cpu"), repeats=1)
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
               "--decode-steps", "2", "--repeats", "1", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("prefill_predicted_s", "prefill_measured_s", "decode_step_predicted_s", "decode_step_measured_s", "error_pct"):
        assert key in d


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
