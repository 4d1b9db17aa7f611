"""Fused GatedDeltaNet chunk kernel: the chunked prefill's traced ops costed as one kernel at the chip's
measured rate and occupancy (`CostModel.gdn_chunk_cost`), each number against an independent calculation."""

from __future__ import annotations

import math

import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.hw.spec import Efficiency
from codesign.models.gated_deltanet import CHUNK_RULE_SCOPE, RECURRENCE_SCOPE
from codesign.sim import gdn_chunk
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.kernel import KernelShape, gdn_chunk_ops, predict

H200 = load_hw("h200")
PEAK = 989e12  # H200 dense BF16 (hw_specs/h200.yaml)
EFF, UNITS, FIXED = 0.307, 132, 2.8e-6  # efficiency.gdn_chunk, gdn_chunk_units, kernel_overhead
STATE_S, CALL_S = 7.9e-6, 1.81e-6  # efficiency.gdn_chunk_state_s (per wave), gdn_chunk_fixed_s (per call)


def recurrence_flops(batch: int, tokens: int, heads: int, dk: int, dv: int, chunk: int = 64) -> float:
    """Matrix FLOPs of the chunk loop, by hand: per trip and (sequence, head), w S and q S (2 C dk dv
    each), attn v_new (2 C^2 dv) and k^T v_new (2 dk C dv)."""
    trips = math.ceil(tokens / chunk)
    return batch * heads * trips * (6.0 * chunk * dk * dv + 2.0 * chunk * chunk * dv)


def expected_seconds(batch: int, tokens: int, heads: int, dk: int = 128, dv: int = 128, eff: float = EFF,
                     state: float | None = STATE_S, call: float = CALL_S) -> float:
    """Compute of the waves, plus (with the state term) each wave's state load/store and the call's
    fixed time, else one kernel_overhead per recurrence product."""
    pairs = batch * heads
    waves = math.ceil(pairs / UNITS)
    occupancy = pairs / (waves * UNITS)
    compute = recurrence_flops(batch, tokens, heads, dk, dv) / (PEAK * eff * occupancy)
    if state is None:
        return compute + 4 * FIXED
    return compute + waves * state + call


def test_spec_values_are_the_documented_ones():
    eff = H200.efficiency
    assert (eff.gdn_chunk, eff.gdn_chunk_units, eff.kernel_overhead) == (EFF, UNITS, FIXED)
    assert (eff.gdn_chunk_state_s, eff.gdn_chunk_fixed_s) == pytest.approx((STATE_S, CALL_S), rel=1e-12)
    assert H200.chip.matrix.peak("bf16") == PEAK


def test_scope_names_agree():
    assert gdn_chunk._GDN_SCOPE == f".{CHUNK_RULE_SCOPE}"
    assert gdn_chunk._GDN_RECURRENCE == f".{CHUNK_RULE_SCOPE}.{RECURRENCE_SCOPE}/"


def test_a_single_chunk_still_pays_its_recurrence():
    # 12 tokens after a 1000-token prefix, 16 sequences: one (padded) chunk each, so the loop is not
    # a repeat (repeat = 1); 16 x 32 = 512 pairs = 4 waves of 132 blocks
    g = cs.trace("qwen3.5-35b-a3b", phase="prefill", batch=16, tokens=12, context=1000)
    cm = CostModel(H200, "bf16", "bf16", CostOptions())
    t = sum(cm.cost(o).time_s for _, o in g.nodes(data="op") if o.layer == 0 and f".{CHUNK_RULE_SCOPE}" in o.name)
    assert t == pytest.approx(expected_seconds(16, 12, 32), rel=1e-9)
    assert t > 4 * STATE_S + CALL_S


@pytest.mark.parametrize("batch,tokens,heads", [(1, 16384, 32), (1, 2048, 8), (8, 1024, 32), (4, 8192, 64)])
def test_kernel_time_is_waves_of_recurrence_work(batch, tokens, heads):
    s = KernelShape(op="gdn_chunk", hw="h200", batch=batch, seq_q=tokens, kv_heads=16 if heads >= 16 else 2,
                    heads=heads, head_dim=128)
    p = predict(s, H200)
    assert p.seconds == pytest.approx(expected_seconds(batch, tokens, heads), rel=1e-9)
    assert p.overhead_s == pytest.approx(CALL_S, rel=1e-12)
    assert p.memory_s == pytest.approx(math.ceil(batch * heads / UNITS) * STATE_S, rel=1e-12)


def test_one_wave_does_not_depend_on_heads_and_a_second_wave_doubles_it():
    # FlashInfer's SM90 kernel: one block per (sequence, head); up to 132 pairs run at once.
    t = {h: predict(KernelShape(op="gdn_chunk", hw="h200", batch=1, seq_q=16384, heads=h, head_dim=128), H200).seconds
         for h in (8, 32, 128)}
    assert t[8] == pytest.approx(t[32], rel=1e-9) == pytest.approx(t[128], rel=1e-9)
    two = predict(KernelShape(op="gdn_chunk", hw="h200", batch=2, seq_q=16384, heads=128, head_dim=128), H200).seconds
    assert two - CALL_S == pytest.approx(2 * (t[128] - CALL_S), rel=1e-9)


def test_the_state_term_is_per_wave_and_the_old_rule_without_it():
    """aiconfigurator's one-token rows (vLLM 0.24 on H100): 64 sequences x 32 heads of a single
    chunk are 16 waves, each paying the state load/store; without the two fields the rule is the
    compute plus one kernel_overhead per recurrence product."""
    s = KernelShape(op="gdn_chunk", hw="h200", batch=64, seq_q=1, kv_heads=16, heads=32, head_dim=128)
    p = predict(s, H200)
    assert p.seconds == pytest.approx(expected_seconds(64, 1, 32), rel=1e-9)
    assert p.memory_s == pytest.approx(16 * STATE_S, rel=1e-12) and p.bound == "hbm"
    eff = H200.efficiency.model_copy(update={"gdn_chunk_state_s": None, "gdn_chunk_fixed_s": None})
    old = predict(s, H200.model_copy(update={"efficiency": eff}))
    assert old.seconds == pytest.approx(expected_seconds(64, 1, 32, state=None), rel=1e-9)
    assert old.overhead_s == pytest.approx(4 * FIXED, rel=1e-12) and old.memory_s == 0.0


def test_only_the_recurrence_pays_and_the_rest_of_the_region_is_free():
    ops = gdn_chunk_ops(KernelShape(op="gdn_chunk", hw="h200", batch=1, seq_q=4096, heads=32, head_dim=128))
    cm = CostModel(H200, "bf16", "bf16", CostOptions(elementwise_kernels_per_matrix_kernel=0.0))
    paying = [o for o in ops if cm.cost(o).time_s > 0]
    assert {o.kind for o in paying} == {"gemm"} and all(o.repeat == 4096 // 64 for o in paying)
    assert len(paying) == 4
    assert sum(o.flops for o in paying) == pytest.approx(recurrence_flops(1, 4096, 32, 128, 128), rel=1e-12)
    assert all(o.block == "linear_attention" and f".{CHUNK_RULE_SCOPE}" in o.name for o in ops)
    assert all(f".{CHUNK_RULE_SCOPE}.{RECURRENCE_SCOPE}/" in o.name for o in paying)


def test_option_off_and_chips_without_the_curve_cost_the_eager_ops():
    ops = gdn_chunk_ops(KernelShape(op="gdn_chunk", hw="h200", batch=1, seq_q=4096, heads=32, head_dim=128))
    fused = CostModel(H200, "bf16", "bf16", CostOptions())
    eager = CostModel(H200, "bf16", "bf16", CostOptions(fused_gdn_chunk=False))
    t_fused = sum(fused.cost(o).time_s for o in ops)
    t_eager = sum(eager.cost(o).time_s for o in ops)
    assert t_eager > 3 * t_fused  # the eager decomposition: every product, solve and element-wise op alone
    # the eager sum is the plain per-op rule (the same ops through CostModel.compute_time/memory_time)
    by_rule = sum(eager.combine(*eager.compute_time(o), *eager.memory_time(o), eager.overhead(o)).time_s for o in ops)
    assert t_eager == pytest.approx(by_rule, rel=1e-12)
    b200 = load_hw("b200")
    assert b200.efficiency.gdn_chunk is None
    assert CostModel(b200, "bf16", "bf16").gdn_rate is None


def test_model_prefill_trace_charges_each_layer_as_the_formula():
    """A real traced prefill of Qwen3.5-35B-A3B (one sequence of 2048 tokens): each GatedDeltaNet
    layer's chunk region costs the kernel formula at the model's heads and head dims."""
    g = cs.trace("qwen3.5-35b-a3b", phase="prefill", batch=1, tokens=2048, context=0)
    cm = CostModel(H200, "bf16", "bf16", CostOptions())
    per_layer: dict[int, float] = {}
    for _, o in g.nodes(data="op"):
        if f".{CHUNK_RULE_SCOPE}" in o.name:
            per_layer[o.layer] = per_layer.get(o.layer, 0.0) + cm.cost(o).time_s
    assert len(per_layer) == 30  # 3 of every 4 of the 40 layers
    want = expected_seconds(1, 2048, 32)  # 32 value heads, dk = dv = 128
    for t in per_layer.values():
        assert t == pytest.approx(want, rel=1e-9)


def test_efficiency_needs_both_fields():
    with pytest.raises(ValueError, match="gdn_chunk and gdn_chunk_units"):
        Efficiency(gdn_chunk=0.3)
    with pytest.raises(ValueError):
        Efficiency(gdn_chunk=0.3, gdn_chunk_units=0)
    with pytest.raises(ValueError, match="gdn_chunk_state_s and gdn_chunk_fixed_s"):
        Efficiency(gdn_chunk=0.3, gdn_chunk_units=132, gdn_chunk_state_s="8 us")
    with pytest.raises(ValueError, match="expected gdn_chunk and gdn_chunk_units"):
        Efficiency(gdn_chunk_state_s="8 us", gdn_chunk_fixed_s="2 us")


def test_bad_kernel_shapes_are_refused():
    with pytest.raises(ValueError, match="not a multiple of kv_heads"):
        KernelShape(op="gdn_chunk", hw="h200", batch=1, seq_q=64, heads=32, kv_heads=12, head_dim=128)
    with pytest.raises(ValueError):
        KernelShape(op="gdn_chunk", hw="h200", batch=0, seq_q=64, heads=32, head_dim=128)
    with pytest.raises(CodesignError, match="exceeds"):
        predict(KernelShape(op="gdn_chunk", hw="h200", batch=1 << 20, seq_q=1 << 20, heads=64, head_dim=128), H200)


def test_cli_kernel_gdn_chunk(capsys):
    import json

    from codesign.cli import main

    assert main(["kernel", "--hw", "h200", "gdn_chunk", "--batch", "1", "--seq-q", "16384", "--heads", "32",
                 "--kv-heads", "16", "--head-dim", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seconds"] == pytest.approx(expected_seconds(1, 16384, 32), rel=1e-9)
    assert out["bound"] == "matrix"
    assert main(["kernel", "--hw", "h200", "gdn_chunk", "--batch", "1", "--seq-q", "0", "--heads", "32",
                 "--head-dim", "128"]) != 0
    err = capsys.readouterr().err
    assert "seq_q" in err and "Traceback" not in err
