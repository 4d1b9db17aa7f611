"""The dense MLP's SwiGLU as a kernel of its own through HBM (`CostOptions.mlp_unfused_activation`):
the activation kernel's bytes counted by hand on Llama-2-70B's down projection, charged serially at
HBM streaming bandwidth with one kernel's fixed time, off by default, and on dense MLPs only."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions
from tests.sim.helpers import op

H, I = 8192, 28672  # Llama-2-70B: hidden, intermediate


def down(tokens: int, tp: int, name: str = "layers.3.mlp.down_proj/mm", block: str = "mlp"):
    """Llama-2-70B's down projection on one of `tp` chips (row-parallel: K = I / tp), FP8."""
    k = I // tp
    return op(name, "gemm", 3, "full_attention", block, flops=2.0 * tokens * H * k, w=H * k * 1.0,
              a=tokens * k * 1.0, gemm=(1, tokens, H, k))


def model(hw: str = "h100", **opts) -> CostModel:
    return CostModel(load_hw(hw), matrix_dtype="fp8", attention_dtype="fp8", options=CostOptions(**opts))


def test_activation_kernel_bytes_and_seconds_by_hand():
    # 1,024 decode tokens on one of two H100s: K = 14,336. Per token the SwiGLU kernel reads the
    # gate/up output, 2 x 14,336 x 2 bytes (FP16), and writes the down GEMM's FP8 input, 14,336 x 1:
    # 71,680 bytes, 73.4 MB a layer.
    o = down(1024, 2)
    per_token = 2 * 14336 * 2 + 14336 * 1
    assert per_token == 71_680
    on, off = model(mlp_unfused_activation=True), model()
    assert on.unfused_mlp_bytes(o.gemm) == 1024 * per_token
    # serial seconds at H100 streaming bandwidth (3.35 TB/s x efficiency.memory 0.90) plus one
    # kernel's fixed time (efficiency.kernel_overhead): 24.3 us + launch
    launch = load_hw("h100").efficiency.kernel_overhead
    extra = on.cost(o).overhead_s - off.cost(o).overhead_s
    assert extra == pytest.approx(1024 * per_token / (3.35e12 * 0.90) + launch, rel=1e-12)
    assert 1024 * per_token / (3.35e12 * 0.90) == pytest.approx(24.35e-6, rel=1e-3)
    # compute and memory seconds are the GEMM's own; the kernel is serial (added to the time)
    assert on.cost(o).compute_s == off.cost(o).compute_s and on.cost(o).memory_s == off.cost(o).memory_s
    assert on.cost(o).time_s == pytest.approx(off.cost(o).time_s + extra, rel=1e-12)
    assert on.cost(o) == on.reference_cost(o)


def test_bytes_scale_with_output_and_matrix_dtypes():
    o = down(64, 1)
    fp16_out = model(mlp_unfused_activation=True).unfused_mlp_bytes(o.gemm)
    fp32_out = model(mlp_unfused_activation=True, mlp_gemm_output_bytes=4.0).unfused_mlp_bytes(o.gemm)
    assert fp32_out - fp16_out == 64 * 2 * I * 2.0  # the 2 x intermediate read at 4 bytes, not 2
    bf16 = CostModel(load_hw("h100"), matrix_dtype="bf16", options=CostOptions(mlp_unfused_activation=True))
    assert bf16.unfused_mlp_bytes(o.gemm) - fp16_out == 64 * I * 1.0  # the down input written at 2 bytes
    # an H200 (4.8 TB/s, same efficiencies) pays the bytes at its own bandwidth
    a, b = model("h100", mlp_unfused_activation=True), model("h200", mlp_unfused_activation=True)
    da = a.cost(o).overhead_s - model("h100").cost(o).overhead_s
    db = b.cost(o).overhead_s - model("h200").cost(o).overhead_s
    launch = load_hw("h100").efficiency.kernel_overhead
    assert (da - launch) / (db - launch) == pytest.approx(4.8 / 3.35, rel=1e-9)


def test_off_by_default_and_dense_mlp_down_only():
    o = down(1024, 2)
    assert model().cost(o) == model(mlp_unfused_activation=False).cost(o)
    on = model(mlp_unfused_activation=True)
    # the gate/up GEMMs, a shared expert's down projection and an attention projection: unchanged
    for other in (down(1024, 2, name="layers.3.mlp.gate_proj/mm"),
                  down(1024, 2, name="layers.3.mlp.shared_expert.down_proj/mm", block="moe_shared"),
                  down(1024, 2, name="layers.3.self_attn.o_proj/mm", block="attention")):
        assert on.cost(other) == model().cost(other), other.name
    # equal content, different op: a content key tells the down projection from the others
    keys = {on.content_key(o), on.content_key(down(1024, 2, name="layers.3.self_attn.o_proj/mm"))}
    assert len(keys) == 2


def test_bad_values_are_refused_with_the_field():
    with pytest.raises(CodesignError, match="mlp_gemm_output_bytes"):
        CostOptions.from_dict({"mlp_gemm_output_bytes": 0})
    with pytest.raises(CodesignError, match="mlp_unfused_activation"):
        CostOptions.from_dict({"mlp_unfused_activation": "sometimes"})
