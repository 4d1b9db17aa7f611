"""Prefill attention efficiency vs sequence length (`efficiency.attention_seq_half`): the curve
against a hand calculation, the lengths read from traced ops, the fit against its kernel rows, the
overrides, and bad input of the new field."""

from __future__ import annotations

import importlib.util

import pytest

import codesign as cs
from codesign import spec_files
from codesign.graph import trace
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions, attention_keys_per_row
from codesign.sim.kernel import KernelShape, build_op, predict
from tests.test_bad_input import one_error, spec


def _fit_module():
    s = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(s)
    s.loader.exec_module(fit)
    return fit


def _with_eff(hw, **upd):
    return hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update=upd)})


def test_causal_prefill_row_is_the_curve_by_hand():
    # FA3 causal forward, B=4, H=48, S=1024, D=128 on H100 (TritonBench PR 1267: 141.63 us), by hand:
    # pairs = S(S+1)/2, FLOPs = 2 B H pairs (D + D); keys per query row L = S - (S-1)/2 = 512.5;
    # compute = FLOPs / (989 TF x attention x L / (L + half)); memory = (q, k, v bf16 + o bf16) /
    # (3.35 TB/s x memory); p-norm overlap; + one kernel's fixed time.
    hw = load_hw("h100")
    e = hw.efficiency
    B, H, S, D = 4, 48, 1024, 128
    flops = 2.0 * B * H * S * (S + 1) / 2 * 2 * D
    L = 512.5
    compute = flops / (989e12 * e.attention * L / (L + e.attention_seq_half))
    memory = (4 * B * H * S * D * 2) / (3.35e12 * e.memory)
    p = e.overlap_exponent
    expected = (compute ** p + memory ** p) ** (1 / p) + e.kernel_overhead
    got = predict(KernelShape(op="attention", hw="h100", dtype="bf16", phase="prefill", batch=B, heads=H,
                              head_dim=D, seq_q=S, seq_kv=S, causal=True), hw)
    assert got.seconds == pytest.approx(expected, rel=1e-9)
    assert got.seconds == pytest.approx(141.63e-6, rel=0.15)  # the published row
    # the ramp at 1K causal is about 0.79 of the long-sequence rate, at 16K non-causal 0.99
    assert L / (L + e.attention_seq_half) == pytest.approx(0.787, abs=0.01)


def test_keys_per_row_from_shapes_causal_noncausal_and_chunk():
    causal = KernelShape(op="attention", hw="h100", phase="prefill", batch=2, heads=8, head_dim=64,
                         seq_q=512, seq_kv=4096, causal=True)
    assert attention_keys_per_row(build_op(causal)) == pytest.approx(4096 - 511 / 2)
    full = causal.model_copy(update={"causal": False})
    assert attention_keys_per_row(build_op(full)) == 4096.0


def test_traced_prefill_reads_one_sequence_length_from_its_shapes():
    # a batch of short prompts is short-sequence attention: 8 prompts of 256 tokens have L = 128.5
    # per sequence, not the step's 2048 tokens
    cfg = cs.load_model("qwen3-8b")
    g = trace(cfg, "prefill", batch=8, tokens=256, context=0)
    atts = [op for _, op in g.nodes(data="op") if op.kind == "attention"]
    assert atts and all(attention_keys_per_row(op) == pytest.approx(128.5) for op in atts)
    # the cost model charges the traced op at the curve's value for that length
    hw = load_hw("h200")
    cm = CostModel(hw, "bf16", "bf16")
    e = hw.efficiency
    op = atts[0]
    ramp = 128.5 / (128.5 + e.attention_seq_half)
    assert cm.compute_time(op)[0] == pytest.approx(op.flops / (989e12 * e.attention * ramp), rel=1e-12)
    # a chunk of 512 tokens after 3584 cached ones: L = 4096 - 511 / 2
    g2 = trace(cfg, "prefill", batch=1, tokens=512, context=3584)
    op2 = next(op for _, op in g2.nodes(data="op") if op.kind == "attention")
    assert attention_keys_per_row(op2) == pytest.approx(4096 - 255.5)


def test_decode_and_chips_without_the_curve_stay_flat():
    h200 = load_hw("h200")
    dec = KernelShape(op="attention", hw="h200", phase="decode", batch=64, heads=32, kv_heads=8, head_dim=128,
                      seq_q=1, seq_kv=8192, causal=True)
    cm = CostModel(h200, "bf16", "bf16")
    op = build_op(dec)
    assert cm.compute_time(op)[0] == pytest.approx(op.flops / (989e12 * h200.efficiency.attention_decode))
    a100 = load_hw("a100")
    assert a100.efficiency.attention_seq_half is None
    pre = KernelShape(op="attention", hw="a100", phase="prefill", batch=4, heads=32, head_dim=128,
                      seq_q=512, seq_kv=512, causal=True)
    cma = CostModel(a100, "bf16", "bf16")
    assert cma.attention_seq_ramp(build_op(pre)) == 1.0


def test_overrides_act():
    hw = load_hw("h100")
    s = KernelShape(op="attention", hw="h100", dtype="bf16", phase="prefill", batch=4, heads=48, head_dim=128,
                    seq_q=1024, seq_kv=1024, causal=True)
    op = build_op(s)
    base = CostModel(hw).compute_time(op)[0]
    # a larger half-length makes short sequences slower, by the ratio of the ramps
    slow = CostModel(_with_eff(hw, attention_seq_half=1024.0)).compute_time(op)[0]
    r = lambda h: 512.5 / (512.5 + h)  # noqa: E731
    assert slow / base == pytest.approx(r(hw.efficiency.attention_seq_half) / r(1024.0), rel=1e-12)
    # none: the flat rule; the cost option switches the ramp off
    flat = CostModel(_with_eff(hw, attention_seq_half=None)).compute_time(op)[0]
    off = CostModel(hw, options=CostOptions(attention_seq_ramp=False)).compute_time(op)[0]
    assert flat == off == pytest.approx(op.flops / (989e12 * hw.efficiency.attention))
    # a point's dotted override reaches the spec
    p = cs.override(cs.Point(model="qwen3-8b", hw="h100"), {"hw.efficiency.attention_seq_half": 2048})
    assert p.hw.efficiency.attention_seq_half == 2048


def test_fit_reproduces_its_rows_and_the_shipped_values():
    fit = _fit_module()
    r = fit.fit("attention_seq")
    # FA3 paper peak + TritonBench's 4 causal, 4 + 6 non-causal H100 rows
    assert r["rows"] == 15
    assert r["mape"] < 0.07 and r["worst"] < 0.12
    e = load_hw("h100").efficiency
    assert e.attention == pytest.approx(r["params"]["attention"], abs=1e-3)
    assert e.attention_seq_half == pytest.approx(r["params"]["attention_seq_half"], rel=0.01)
    for chip in ("h200", "h800"):  # one SM design at full rate: they carry the H100 fit
        f = load_hw(chip).efficiency
        assert (f.attention, f.attention_seq_half) == (e.attention, e.attention_seq_half)
    # H20: the shared half-length, its own fraction from its 4 rows
    h20 = fit.fit("attention_h20")
    assert h20["rows"] == 4 and h20["mape"] < 0.07
    g = load_hw("h20").efficiency
    assert g.attention_seq_half == e.attention_seq_half
    assert g.attention == pytest.approx(h20["params"]["attention"], abs=1e-3)


@pytest.mark.parametrize("value, found", [
    ("0", "attention_seq_half: Input should be greater than 0 (found: 0)"),
    ("-10", "attention_seq_half: Input should be greater than 0 (found: -10)"),
    ("long", "attention_seq_half: Input should be a valid number"),
])
def test_bad_attention_seq_half_is_one_line(tmp_path, capsys, value, found):
    p = spec(tmp_path, "attention_seq_half: 139 ", f"attention_seq_half: {value} ")
    msg = one_error(capsys, "simulate", "--hw", str(p))
    assert msg.startswith(f"{p}: efficiency.{found}"), msg
