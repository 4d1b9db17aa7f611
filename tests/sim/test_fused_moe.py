"""The fused_moe kernel-table op (one MoE layer's routed experts) and `cost.moe_kernel`."""

from __future__ import annotations

import math

import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.graph.router import UniformRouter
from codesign.hw import load_hw
from codesign.sim.cost import CostOptions
from codesign.sim.kernel import KernelShape, fused_moe_op, predict
from codesign.sim.kernel_table import load_table, KERNEL_DIR

BF16 = {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}
MIXTRAL_TP2 = dict(op="fused_moe", hw="h100", dtype="bf16", groups=8, top_k=2, hidden=4096, n=7168)


def _pad(x: int, step: int) -> int:
    return -(-x // step) * step


def test_triton_fused_prediction_is_an_independent_hand_calculation():
    # Mixtral-8x7B at TP2 on H100, 512 tokens, the tuned Triton curve. By hand from the spec fields
    # and the router's own per-expert counts (the input the simulator uses, seed 0, layer 0):
    # FLOPs = routed x (2 H 2N + 2 N H); each expert's tokens padded to 16 below 64, to 64 above;
    # compute = FLOPs x padded/routed / (BF16 peak x moe_triton x P / (P + tokens_half) x K ramp),
    # P = padded, K ramp the FLOP-weighted harmonic mean of K / (K + moe_triton_k_half) over gate/up
    # (K = H, 2/3 of the FLOPs) and down (K = N, 1/3);
    # weights (touched experts x 3 H N x 2 B) stream from HBM at moe_triton_memory; the gathered
    # tokens, routing ids/weights and output (12.6 MB) fit half the L2 and move at L2 x memory;
    # time = p-norm(compute, memory) + 5 kernels x kernel_overhead + moe_triton_overhead.
    hw = load_hw("h100")
    e = hw.efficiency
    B, E, k, H, N = 512, 8, 2, 4096, 7168
    counts = UniformRouter(seed=0).tokens_per_expert(0, B, E, k)
    routed = int(sum(counts))
    padded = sum(_pad(int(t), 16 if t < 64 else 64) for t in counts if t > 0)
    touched = sum(1 for t in counts if t > 0)
    flops = routed * (2 * H * 2 * N + 2 * N * H)
    half = e.moe_triton_tokens_half
    k_ramp = 3.0 / (2.0 / (H / (H + e.moe_triton_k_half)) + 1.0 / (N / (N + e.moe_triton_k_half)))
    compute = flops * padded / routed / (989e12 * e.moe_triton * padded / (padded + half) * k_ramp)
    weights = touched * 3 * H * N * 2
    act = routed * H * 2 + B * k * 8 + B * k * 2 + B * H * 2
    assert act <= 0.5 * 50e6  # SRAM-resident (cost.sram_fraction of the 50 MB L2)
    memory = max(weights / (3.35e12 * e.moe_triton_memory), act / (7e12 * e.memory))
    p = e.overlap_exponent
    hi, lo = max(compute, memory), min(compute, memory)
    expected = hi * (1 + (lo / hi) ** p) ** (1 / p) + 5 * e.kernel_overhead + e.moe_triton_overhead
    got = predict(KernelShape(**MIXTRAL_TP2, tokens=B, moe_kernel="triton_fused"), hw)
    assert got.seconds == pytest.approx(expected, rel=1e-9)
    assert got.flops == flops
    assert got.bound == ("matrix" if compute >= memory else "hbm")


def test_fused_moe_op_is_the_traced_expert_op_of_that_layer():
    # The op is the tracer's: per-expert counts sum to the routed slots, FLOPs and weight bytes follow
    # them, bytes are rescaled to the kernel's dtype (FP8: half the BF16 bytes).
    s = KernelShape(op="fused_moe", hw="h100", dtype="bf16", groups=128, top_k=8, hidden=2048, n=768, tokens=64)
    op = fused_moe_op(s)
    assert op.kind == "grouped_gemm" and op.block == "moe_experts"
    assert sum(op.tokens_per_expert) == 64 * 8
    assert op.flops == 64 * 8 * 6 * 2048 * 768
    touched = sum(1 for t in op.tokens_per_expert if t)
    assert op.bytes_read["weight"] == touched * 3 * 2048 * 768 * 2
    fp8 = fused_moe_op(s.model_copy(update={"dtype": "fp8"}))
    assert fp8.bytes_read["weight"] == op.bytes_read["weight"] / 2
    assert fp8.flops == op.flops


def test_kernel_rows_name_their_kernel_and_stay_within_bounds():
    t = load_table(KERNEL_DIR / "fused_moe.yaml")
    assert len(t.rows) >= 30 and all(r.moe_kernel for r in t.rows)
    from codesign.sim.kernel_table import validate_kernels

    rows = [r for r in validate_kernels() if r.file == "fused_moe.yaml"]
    assert rows and max(abs(r.error) for r in rows) < 0.25
    assert sum(abs(r.error) for r in rows) / len(rows) < 0.08


def test_moe_kernel_option_acts_in_a_simulation():
    run = dict(model="qwen3.5-35b-a3b", chips=1, plan={"tp": 1}, precision=BF16, context=4096)
    base = cs.simulate(load_hw("h200"), **run)[0]
    triton = cs.simulate(load_hw("h200"), cost={"moe_kernel": "triton_fused"}, **run)[0]
    assert triton.tpot_s["mean"] != base.tpot_s["mean"]
    assert math.isfinite(triton.tpot_s["mean"]) and triton.tpot_s["mean"] > 0


def test_bad_moe_kernel_is_one_line_naming_the_field():
    with pytest.raises(CodesignError, match=r"^cost: moe_kernel: .*'grouped', 'triton_fused', 'triton_fused_default', 'triton_fused_block_fp8', 'trtllm_cutlass_block_fp8', 'trtllm_cutlass_fp8' or 'triton_mxfp4'"):
        CostOptions.from_dict({"moe_kernel": "cutlass"})
    with pytest.raises(CodesignError) as e:
        cs.simulate(load_hw("h200"), "qwen3.5-35b-a3b", chips=1, plan={"tp": 1}, cost={"moe_kernel": "x"})
    assert "moe_kernel" in str(e.value) and "\n" not in str(e.value)


def test_a_curve_without_data_for_the_dtype_or_chip_is_refused():
    # The tuned curve has BF16 rows only; H20 and B200 have no Triton curve at all.
    with pytest.raises(CodesignError, match=r"efficiency\.moe_triton of h100 for fp8 .*moe_triton_dtypes: bf16$"):
        predict(KernelShape(**{**MIXTRAL_TP2, "dtype": "fp8"}, tokens=8, moe_kernel="triton_fused"), load_hw("h100"))
    with pytest.raises(CodesignError, match=r"efficiency\.moe_triton of b200 for bf16 .*moe_triton_dtypes: none$"):
        predict(KernelShape(**{**MIXTRAL_TP2, "hw": "b200"}, tokens=8, moe_kernel="triton_fused"), load_hw("b200"))


def test_bad_fused_moe_shapes_are_refused():
    with pytest.raises(ValueError, match="top_k"):
        KernelShape(**{**MIXTRAL_TP2, "top_k": 9}, tokens=4)
    with pytest.raises(ValueError, match="moe_kernel applies to fused_moe only"):
        KernelShape(op="gemm", hw="h100", m=1, n=1, k=1, moe_kernel="triton_fused")
    with pytest.raises(ValueError, match="fused_moe needs tokens"):
        KernelShape(**MIXTRAL_TP2)


def test_layers_routed_together_cost_as_their_ops_under_the_triton_curve():
    # The per-layer fast path (codesign.sim.routed) uses the cost model's scalar functions; with the
    # Triton curve (its padding, rate, ramp, memory fraction, fixed time and no K ramp) it must still
    # equal building and costing each layer's expert op, to the bit.
    from codesign import mapping
    from codesign.graph import tracing as tr
    from codesign.graph.shape import StepShape
    from codesign.mapping import ParallelPlan, Precision
    from codesign.models import load_model
    from codesign.sim.cost import Residency
    from codesign.sim.routed import route
    from codesign.sim.stepmodel import StepModel
    from tests.sim.helpers import make_hw

    hw = make_hw(**{"system.chips": 8, "efficiency.moe_triton": 0.4, "efficiency.moe_triton_dtypes": ["fp8"],
                    "efficiency.moe_triton_tokens_half": 50.0,
                    "efficiency.moe_triton_memory": 0.7, "efficiency.moe_triton_overhead": "20 us"})
    cfg, plan, prec = load_model("qwen3.5-35b-a3b"), ParallelPlan(tp=8, ep=8), Precision(weights="fp8", activations="fp8")
    opts = CostOptions(moe_kernel="triton_fused")
    base = StepModel(hw, cfg, plan, prec, cache=False).cost_model
    model = StepModel(hw, cfg, plan, prec, cost=opts, cache=False)
    cm = model.cost_model
    checked = 0
    for shape in (StepShape.decode(150, 9000), StepShape.prefill(1, 700)):
        skeleton, routing = model._skeleton_graph(shape)
        mapped = mapping.map_step(skeleton, cfg, hw, plan, prec, **model.options.map_kwargs(), rates=cm.rank_rates())
        by_layer: dict[int, list] = {}
        for _, op in mapped.graph.nodes(data="op"):
            by_layer.setdefault(op.layer, []).append(op)
        for tmpl, (traced, layers, counts) in routing.items():
            ops = by_layer[tmpl]
            group = route(cm, mapped.experts, traced, counts, tmpl, layers, ops)
            fast = group.costs(cm, Residency(), ops)
            for j in range(len(layers)):
                new, _, _ = mapped.experts.map(tr._rescale_experts(traced, tuple(counts[j].tolist())))
                assert fast[j][0] == cm.cost(new)
                assert fast[j][0].time_s != base.cost(new).time_s  # the option acts on the op
                checked += 1
    assert checked > 0
