"""MoE kernels through HBM (`CostOptions.moe_unfused_epilogue`): the permute, gated-activation and
un-permute kernels of TensorRT-LLM's CUTLASS MoE runner charged serially at HBM streaming bandwidth,
checked against hand calculations of their bytes."""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions

H, I, E = 4096, 14336, 8  # Mixtral-8x7B: hidden, expert intermediate, experts


def expert_op(tpe: tuple[int, ...]) -> Op:
    """A traced Mixtral expert block on one chip: inputs (tokens, ids, weights, gate/up, down)."""
    efpt = 2 * 3 * H * I
    return Op(
        name="layers.0.mlp.experts/moe_experts", target="t", kind="grouped_gemm", block="moe_experts", layer=0,
        layer_type="full_attention+moe", phase="decode",
        in_shapes=((sum(tpe), H), (sum(tpe), 2), (sum(tpe), 2), (E, 2 * I, H), (E, H, I)), out_shapes=((sum(tpe), H),),
        dtype="float8_e4m3fn", flops=float(efpt * sum(tpe)),
        bytes_read={"weight": E * 3 * H * I * 1.0, "activation": sum(tpe) * H * 1.0, "kv_cache": 0.0, "state": 0.0},
        bytes_written={"weight": 0.0, "activation": sum(tpe) / 2 * H * 2.0, "kv_cache": 0.0, "state": 0.0},
        tokens_per_expert=tpe, expert_flops_per_token=float(efpt),
    )


def model(hw: str = "h100", **opts) -> CostModel:
    return CostModel(load_hw(hw), matrix_dtype="fp8", attention_dtype="fp8", options=CostOptions(**opts))


def test_unfused_bytes_match_the_runner_kernels_by_hand():
    # 896 decode tokens, top-2 over 8 experts: 1792 routed rows. Per row, FP8 GEMM inputs (1 byte)
    # and BF16 GEMM outputs (2 bytes): permute 2 x 4096 x 1, activation 2 x 14336 x 2 + 14336 x 1,
    # un-permute 4096 x 2 = 88,064 bytes.
    o = expert_op((224,) * E)
    per_row = 2 * 4096 * 1 + 2 * 14336 * 2 + 14336 * 1 + 4096 * 2
    assert per_row == 88_064
    assert model(moe_unfused_epilogue=True).unfused_moe_bytes(o, 1792) == 1792 * per_row
    # serial seconds at H100 streaming bandwidth (3.35 TB/s x efficiency.memory 0.90): 52.3 us
    on = model(moe_unfused_epilogue=True).cost(o)
    off = model().cost(o)
    assert on.overhead_s - off.overhead_s == pytest.approx(1792 * 88_064 / (3.35e12 * 0.90), rel=1e-12)
    assert on.overhead_s - off.overhead_s == pytest.approx(52.3e-6, rel=2e-3)
    # inside the GEMMs: gate/up's BF16 output written (2 x 14336 x 2), the down GEMM's FP8 input read
    # (14336 x 1) and its BF16 output written (4096 x 2): 80,000 bytes a row at 3.35 TB/s x 0.94
    # (efficiency.matrix_memory), overlapped with the unchanged compute by the p-norm (p = 1.74)
    in_gemm = 1792 * (2 * 14336 * 2 + 14336 * 1 + 4096 * 2)
    assert model(moe_unfused_epilogue=True).unfused_gemm_bytes(o, 1792) == in_gemm
    assert on.memory_s - off.memory_s == pytest.approx(in_gemm / (3.35e12 * 0.94), rel=1e-9)
    c, m = on.compute_s, on.memory_s
    hi, lo = max(c, m), min(c, m)
    assert on.compute_s == off.compute_s
    assert on.time_s == pytest.approx(hi * (1 + (lo / hi) ** 1.74) ** (1 / 1.74) + on.overhead_s, rel=1e-12)
    # the full computation and the kept-parts path agree
    m = model(moe_unfused_epilogue=True)
    assert m.cost(o).time_s == m.reference_cost(o).time_s
    assert m.seconds(o) == m.cost(o).time_s


def test_unfused_bytes_scale_with_gemm_output_and_input_dtypes():
    o = expert_op((2048,) * E)  # a 8192-token prefill step: 16,384 rows
    rows = 16_384
    fp16_out = model(moe_unfused_epilogue=True).unfused_moe_bytes(o, rows)
    fp32_out = model(moe_unfused_epilogue=True, moe_gemm_output_bytes=4.0).unfused_moe_bytes(o, rows)
    assert fp32_out - fp16_out == rows * (2 * I + H) * 2.0  # the two output buffers' extra 2 bytes
    bf16 = CostModel(load_hw("h100"), matrix_dtype="bf16", options=CostOptions(moe_unfused_epilogue=True))
    assert bf16.unfused_moe_bytes(o, rows) - fp16_out == rows * (2 * H + I) * 1.0  # inputs at 2 bytes


def test_off_by_default_and_zero_for_a_single_grouped_gemm():
    o = expert_op((224,) * E)
    assert model().cost(o) == model(moe_unfused_epilogue=False).cost(o)
    assert model().unfused_moe_bytes(o, 1792) > 0 and model().grouped_overhead(o, 1792) == model().overhead(o)
    # off: the op's own HBM bytes only, its expert weights (its 14.7 MB of activations fit the SRAM budget)
    assert model().memory_time(o)[0] == pytest.approx(E * 3 * H * I / (3.35e12 * 0.94), rel=1e-12)
    # `codesign kernel grouped_gemm`: one GEMM command, no traced gate/up and down weights
    single = Op(name="k", target="t", kind="grouped_gemm", block="moe_experts", layer=0, layer_type="moe",
                phase="decode", in_shapes=(), out_shapes=(), dtype="float8_e4m3fn", flops=1e12,
                bytes_read={"weight": 1e8}, bytes_written={}, gemm=(8, 224, 4096, 14336),
                tokens_per_expert=(224,) * 8, expert_flops_per_token=1e9)
    assert model(moe_unfused_epilogue=True).cost(single) == model().cost(single)


def test_hbm_bandwidth_variants_do_not_share_the_serial_time():
    o = expert_op((224,) * E)
    a = model("h100", moe_unfused_epilogue=True)
    b = model("h200", moe_unfused_epilogue=True)  # same die and efficiencies, 4.8 TB/s
    assert a.static_key != b.static_key
    extra_a = a.cost(o).overhead_s - model("h100").cost(o).overhead_s
    extra_b = b.cost(o).overhead_s - model("h200").cost(o).overhead_s
    assert extra_a / extra_b == pytest.approx(4.8 / 3.35, rel=1e-12)


def test_bad_output_bytes_is_refused_with_the_field_named():
    with pytest.raises(CodesignError, match="moe_gemm_output_bytes"):
        CostOptions.from_dict({"moe_gemm_output_bytes": 0}, "scenario.cost")
    with pytest.raises(CodesignError, match="moe_unfused_epilogue"):
        CostOptions.from_dict({"moe_unfused_epilogue": "sometimes"}, "scenario.cost")
