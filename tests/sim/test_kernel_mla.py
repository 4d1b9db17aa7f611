"""MLA attention calls as kernel-table ops (`op: mla`, codesign.sim.kernel_mla) and the engines' MLA
kernels (`cost.mla_kernel`): the ops against their FLOPs and bytes by hand, the kernels' terms
against the calibrated prediction plus exactly those terms, refusals with clear messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.kernel import KernelShape, predict
from codesign.sim.kernel_mla import mla_ops
from codesign.sim.kernel_table import load_table

DIMS = dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)


def _mla(**kw) -> KernelShape:
    return KernelShape(op="mla", hw="h200", dtype="bf16", **{**DIMS, **kw})


def test_vllm_prefill_call_is_kv_b_proj_then_expanded_attention_by_hand():
    b, h, t = 4, 16, 2048
    gemm, att = mla_ops(_mla(phase="prefill", batch=b, heads=h, seq_q=t, seq_kv=t, mla_call="vllm_impl"))
    assert gemm.kind == "gemm" and gemm.gemm == (1, b * t, h * (128 + 128), 512)
    assert gemm.flops == 2.0 * b * t * h * 256 * 512
    assert att.kind == "attention" and att.block == "mla" and att.phase == "prefill"
    # causal pairs of a fresh prompt: T (T + 1) / 2 per head; q.k over 192 dims, p.v over 128
    assert att.flops == 2.0 * b * h * (t * (t + 1) / 2) * (192 + 128)
    assert att.in_shapes == ((b, h, t, 192), (b, h, t, 192), (b, h, t, 128))


def test_vllm_decode_call_is_the_absorbed_attention_between_two_bmms_by_hand():
    b, h, s = 128, 16, 2048
    w_uk, att, w_uv = mla_ops(_mla(phase="decode", batch=b, heads=h, seq_q=1, seq_kv=s, mla_call="vllm_impl"))
    assert w_uk.gemm == (h, b, 512, 128) and w_uk.flops == 2.0 * h * b * 512 * 128
    assert w_uv.gemm == (h, b, 128, 512) and w_uv.flops == 2.0 * h * b * 128 * 512
    # one latent KV head of 576 values read once (V is its first 512), 2 bytes each
    assert att.in_shapes[1] == (b, 1, s, 576) and att.bytes_read["kv_cache"] == b * s * 576 * 2.0
    assert att.flops == 2.0 * b * h * s * (576 + 512)


def test_attention_call_holds_only_the_attention_op():
    (att,) = mla_ops(_mla(phase="decode", batch=8, heads=128, seq_q=1, seq_kv=1024))
    assert att.block == "mla" and att.in_shapes[1][1] == 1
    (pre,) = mla_ops(_mla(phase="prefill", batch=1, heads=16, seq_q=1024, seq_kv=1024, mla_form="absorbed"))
    assert pre.in_shapes[0][3] == 576 and pre.in_shapes[2][3] == 512  # SGLang's collector form


def test_mla_prediction_is_the_sum_of_its_ops_costs():
    hw = load_hw("h200")
    s = _mla(phase="prefill", batch=4, heads=16, seq_q=2048, seq_kv=2048, mla_call="vllm_impl")
    cm = CostModel(hw, "bf16", "bf16", CostOptions(elementwise_kernels_per_matrix_kernel=0.0, grouped_op_kernels=1.0))
    want = sum(cm.cost(op).time_s for op in mla_ops(s))
    assert predict(s, hw).seconds == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("hw_name", ["h100", "h200"])
def test_trtllm_decode_adds_its_fixed_time_per_call(hw_name):
    hw = load_hw(hw_name)
    s = _mla(phase="decode", batch=128, heads=128, seq_q=1, seq_kv=2048)
    base = predict(s, hw)
    got = predict(s.model_copy(update={"mla_kernel": "trtllm"}), hw)
    assert got.compute_s == base.compute_s and got.memory_s == base.memory_s
    assert got.seconds - base.seconds == pytest.approx(hw.efficiency.mla_trtllm_decode_fixed_s, rel=1e-9)
    sg = predict(s.model_copy(update={"mla_kernel": "sglang_fa3"}), hw)
    assert sg.seconds - base.seconds == pytest.approx(hw.efficiency.mla_sglang_fa3_decode_fixed_s, rel=1e-9)


def test_trtllm_prefill_runs_at_its_fraction_of_the_curve_plus_its_fixed_time():
    hw = load_hw("h200")
    e = hw.efficiency
    s = _mla(phase="prefill", batch=1, heads=128, seq_q=4096, seq_kv=4096)
    base, got = predict(s, hw), predict(s.model_copy(update={"mla_kernel": "trtllm"}), hw)
    assert got.compute_s == pytest.approx(base.compute_s / e.mla_trtllm_prefill, rel=1e-12)
    assert got.overhead_s == pytest.approx(base.overhead_s + e.mla_trtllm_prefill_fixed_s, rel=1e-12)


def test_default_leaves_attention_ops_of_mla_layers_as_before():
    # `calibrated` (the default) and a GQA decode op: the mla terms touch neither
    hw = load_hw("h200")
    op = mla_ops(_mla(phase="decode", batch=64, heads=128, seq_q=1, seq_kv=4096))[0]
    gqa = Op(name="a", target="codesign.attention", kind="attention", block="attention", layer=0, layer_type="x",
             phase="decode", in_shapes=((8, 32, 1, 128), (8, 8, 4096, 128), (8, 8, 4096, 128)), out_shapes=(),
             dtype="bf16", flops=1e9, bytes_read={"kv_cache": 1e8}, bytes_written={})
    cal = CostModel(hw, "bf16", "bf16", CostOptions())
    trt = CostModel(hw, "bf16", "bf16", CostOptions(mla_kernel="trtllm"))
    assert cal.attention_terms(op) == (1.0, 0.0)
    assert trt.reference_cost(gqa) == cal.reference_cost(gqa)
    assert trt.cost(op).time_s == pytest.approx(cal.cost(op).time_s + hw.efficiency.mla_trtllm_decode_fixed_s)


def test_a_chip_without_the_kernels_rows_refuses_it():
    with pytest.raises(CodesignError, match="cost.mla_kernel: .*no kernel rows of 'trtllm'"):
        CostModel(load_hw("mi300x"), "bf16", "bf16", CostOptions(mla_kernel="trtllm"))


def test_bad_shapes_and_options_are_refused_with_the_field():
    with pytest.raises(ValidationError, match="mla needs kv_lora_rank"):
        KernelShape(op="mla", hw="h200", phase="decode", batch=1, heads=16, seq_q=1, seq_kv=10, qk_nope_head_dim=128,
                    qk_rope_head_dim=64, v_head_dim=128)
    with pytest.raises(ValidationError, match="apply to mla only"):
        KernelShape(op="attention", hw="h200", phase="decode", batch=1, heads=16, head_dim=128, seq_q=1, seq_kv=10,
                    mla_kernel="trtllm")
    with pytest.raises(CodesignError, match="mla_kernel: Input should be .calibrated., .trtllm. or .sglang_fa3."):
        CostOptions.from_dict({"mla_kernel": "flashinfer"})


def test_table_rows_are_dims_of_deepseek_v3_and_every_engine_is_present():
    t = load_table("benchmarks/kernels/aic_mla.yaml")
    assert all((r.kv_lora_rank, r.qk_nope_head_dim, r.qk_rope_head_dim, r.v_head_dim) == (512, 128, 64, 128)
               for r in t.rows)
    calls = {(r.source.split("_")[2], r.mla_call, r.mla_kernel) for r in t.rows}
    assert ("vllm", "vllm_impl", None) in calls and ("trtllm", "attention", "trtllm") in calls
    assert ("sglang", "attention", "sglang_fa3") in calls


@pytest.mark.parametrize("phase,tokens,context", [("decode", 1, 63), ("prefill", 64, 0)])
def test_the_terms_act_on_the_traced_mla_attention_ops_and_nothing_else(config_of, phase, tokens, context):
    from codesign.graph.tracing import trace

    g = trace(config_of("deepseek-mla"), phase=phase, batch=4, tokens=tokens, context=context, disk_cache=False)
    ops = [d["op"] for _, d in g.nodes(data=True) if "op" in d]
    hw = load_hw("h200")
    e = hw.efficiency
    cal = CostModel(hw, "bf16", "bf16", CostOptions())
    trt = CostModel(hw, "bf16", "bf16", CostOptions(mla_kernel="trtllm"))
    att = [op for op in ops if op.kind == "attention"]
    assert att and all(op.block == "mla" and op.phase == phase for op in att)
    for op in att:
        c, t = cal.reference_cost(op), trt.reference_cost(op)
        fixed = e.mla_trtllm_decode_fixed_s if phase == "decode" else e.mla_trtllm_prefill_fixed_s
        assert t.overhead_s == pytest.approx(c.overhead_s + fixed, rel=1e-12)
        want = c.compute_s if phase == "decode" else c.compute_s / e.mla_trtllm_prefill
        assert t.compute_s == pytest.approx(want, rel=1e-12)
        assert trt.cost(op) == t  # the kept-parts path agrees with the reference
    assert all(trt.reference_cost(op) == cal.reference_cost(op) for op in ops if op.kind != "attention")


def _row(t, **kw):
    (r,) = [r for r in t.rows if all(getattr(r, k) == v for k, v in kw.items())]
    return r


def test_transcription_matches_the_figures_read_from_the_databases_before():
    # the figures docs/cost-model.md quoted from aiconfigurator's H200 databases before this table
    # existed (vLLM 0.14 context_mla at 16 heads; TensorRT-LLM 1.2.0rc5 mla_generation at 128 heads)
    t = load_table("benchmarks/kernels/aic_mla.yaml")
    for seq, ms in ((2048, 0.326), (4096, 0.783)):
        r = _row(t, hw="h200", phase="prefill", batch=4, heads=16, seq_q=seq, mla_call="vllm_impl")
        assert r.seconds == pytest.approx(ms * 1e-3, abs=0.5e-6)
    for kv, ms in ((1024, 0.108), (2048, 0.164), (4096, 0.278)):
        r = _row(t, hw="h200", phase="decode", batch=128, heads=128, seq_kv=kv, mla_kernel="trtllm")
        assert r.seconds == pytest.approx(ms * 1e-3, abs=0.5e-6)
    assert {r.source.split("_")[2] for r in t.rows if r.mla_kernel == "trtllm"} == {"trtllm"}
    assert {r.source.split("_")[2] for r in t.rows if r.mla_call == "vllm_impl"} == {"vllm"}


def test_fitted_kernels_meet_their_rows():
    # the fit's figures (fit.py --group mla_trtllm / mla_sglang_fa3: MAPE 6.9% / 7.6%), through predict
    t = load_table("benchmarks/kernels/aic_mla.yaml")
    hw = {n: load_hw(n) for n in ("h100", "h200")}
    for kernel, mape in (("trtllm", 0.069), ("sglang_fa3", 0.076)):
        errs = [abs(predict(r, hw[r.hw]).seconds / r.seconds - 1) for r in t.rows if r.mla_kernel == kernel]
        assert sum(errs) / len(errs) == pytest.approx(mape, abs=0.002) and max(errs) < 0.29
