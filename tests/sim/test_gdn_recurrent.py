"""`codesign kernel gdn_recurrent`: the GatedDeltaNet decode step as the tracer records it (the fused
`gated_delta_rule_step`) costed alone, against a hand count of its state traffic."""

from __future__ import annotations

import json

import pytest

import codesign as cs
from codesign.cli import main
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.sim.kernel import KernelShape, gdn_recurrent_op, predict

H100 = load_hw("h100")
HBM, MEMORY, LAUNCH = 3.35e12, 0.90, 2.8e-6  # hw_specs/h100.yaml: bandwidth, efficiency.memory, kernel_overhead


def state_bytes(batch: int, heads: int, dk: int = 128, dv: int = 128) -> float:
    """The fp32 state read once and written once: 2 x B x Hv x dk x dv x 4 bytes."""
    return 2.0 * batch * heads * dk * dv * 4


def test_the_op_is_the_traced_decode_step():
    s = KernelShape(op="gdn_recurrent", hw="h100", batch=8, kv_heads=16, heads=32, head_dim=128)
    op = gdn_recurrent_op(s)
    assert op.block == "linear_attention" and op.target.startswith("codesign.gated_delta_rule_step")
    # its bytes: the state each way, plus q, k (fp32 after the norm), v, g, beta and the fp32 output
    io = 8 * (2 * 16 * 128 * 4 + 32 * 128 * 2 + 32 * 4 + 32 * 2 + 32 * 128 * 4)
    assert op.bytes_total == pytest.approx(state_bytes(8, 32) + io, rel=1e-12)
    # the same op as a real decode trace of Qwen3.5-9B (16 / 32 heads of 128) records
    g = cs.trace("qwen3.5-9b", phase="decode", batch=8, context=1024)
    traced = [o for _, o in g.nodes(data="op") if o.layer == 0 and "gated_delta_rule_step" in o.name]
    assert len(traced) == 1 and traced[0].bytes_total == pytest.approx(op.bytes_total, rel=1e-12)


@pytest.mark.parametrize("batch", [64, 1024])
def test_large_batches_stream_the_state_at_hbm_rate(batch):
    s = KernelShape(op="gdn_recurrent", hw="h100", batch=batch, kv_heads=16, heads=32, head_dim=128)
    p = predict(s, H100)
    assert p.bound == "hbm" and p.overhead_s == pytest.approx(LAUNCH, rel=1e-12)
    # memory-bound: the state at the streaming rate, at most all its bytes (the state is over 96% of
    # them; the small q/k/v/output tensors may be kept on chip by the byte split)
    total = gdn_recurrent_op(s).bytes_total
    assert state_bytes(batch, 32) / total > 0.96
    assert state_bytes(batch, 32) / (HBM * MEMORY) * (1 - 1e-9) <= p.memory_s <= total / (HBM * MEMORY) * (1 + 1e-9)
    # plus one launch (the compute/memory overlap adds under 0.5%)
    assert p.seconds == pytest.approx(p.memory_s + LAUNCH, rel=0.005)


def test_one_sequence_is_its_launch_and_two_states():
    p = predict(KernelShape(op="gdn_recurrent", hw="h100", batch=1, kv_heads=16, heads=32, head_dim=128), H100)
    assert p.seconds == pytest.approx(LAUNCH + state_bytes(1, 32) / (HBM * MEMORY), rel=0.01)


def test_bad_shapes_are_refused(capsys):
    with pytest.raises(ValueError, match="not a multiple of kv_heads"):
        KernelShape(op="gdn_recurrent", hw="h100", batch=1, heads=32, kv_heads=12, head_dim=128)
    with pytest.raises(ValueError, match="needs head_dim"):
        KernelShape(op="gdn_recurrent", hw="h100", batch=1, heads=32)
    with pytest.raises(CodesignError, match="exceeds"):
        predict(KernelShape(op="gdn_recurrent", hw="h100", batch=1 << 24, heads=64, head_dim=128), H100)
    assert main(["kernel", "--hw", "h100", "gdn_recurrent", "--batch", "0", "--heads", "32", "--head-dim", "128"]) != 0
    err = capsys.readouterr().err
    assert "batch" in err and "Traceback" not in err


def test_cli_kernel_gdn_recurrent(capsys):
    assert main(["kernel", "--hw", "h100", "gdn_recurrent", "--batch", "1024", "--heads", "32", "--kv-heads", "16",
                 "--head-dim", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seconds"] == pytest.approx(state_bytes(1024, 32) / (HBM * MEMORY) + LAUNCH, rel=0.02)
    assert out["shape"]["op"] == "gdn_recurrent" and out["bound"] == "hbm"
