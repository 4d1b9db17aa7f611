"""The vLLM 0.14 kernel rows from aiconfigurator's H100 / H200 databases (benchmarks/kernels/aic_vllm_*.yaml):
their shapes against the models' own configs (model_graphs/), a few figures against the database's
printed latencies, which rows the fits read, and the refitted tuned Triton fused_moe curve."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from codesign import spec_files
from codesign.hw import load_hw
from codesign.sim.kernel import KernelShape, predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table

COMMIT = "095f58a51c4ca8e61b66ec108d86f223f8d559ce"
# (model graph, tensor-parallel degree) of the GPUStack rows the tables serve
MODELS = {"qwen3-32b": 1, "qwen3-14b": 1, "qwen3-235b-a22b": 8, "glm-4.5-air": 4}


def _graph(name: str) -> dict:
    return yaml.safe_load((spec_files.ROOT / "model_graphs" / f"{name}.yaml").read_text())


def _rows(name: str):
    return load_table(KERNEL_DIR / name).rows


def test_every_source_names_the_database_file_and_commit():
    for name in ("aic_vllm_gemm_bf16.yaml", "aic_vllm_moe_bf16.yaml", "aic_vllm_attention.yaml",
                 "aic_vllm_attention_prefill.yaml", "aic_vllm_allreduce.yaml"):
        t = load_table(KERNEL_DIR / name)
        for tag, text in t.sources.items():
            hw = "h100_sxm" if "h100" in tag else "h200_sxm"
            assert COMMIT in text and f"systems/data/{hw}/" in text and "/vllm/0.14.0/" in text, tag
        assert {r.hw for r in t.rows} == {"h100", "h200"}


def test_gemm_shapes_are_the_models_attention_projections_per_rank():
    expected = set()
    for model, tp in MODELS.items():
        a, hidden = _graph(model)["attention"], _graph(model)["hidden_size"]
        heads, kv = a["num_heads"] // tp, max(1, a["num_kv_heads"] // tp)
        qkv, o = ((heads + 2 * kv) * a["head_dim"], hidden), (hidden, heads * a["head_dim"])
        expected |= {qkv, o}
    got = {(r.n, r.k) for r in _rows("aic_vllm_gemm_bf16.yaml")}
    # Qwen3-235B's TP8 QKV (N = (8 + 2 x 1) x 128 = 1280) is not in the database's N grid (header)
    assert got == expected - {(1280, 4096)}
    assert all(r.dtype == "bf16" and r.library == "cublas" for r in _rows("aic_vllm_gemm_bf16.yaml"))


def test_attention_heads_are_the_models_heads_per_rank():
    expected = set()
    for model, tp in MODELS.items():
        a = _graph(model)["attention"]
        expected.add((a["num_heads"] // tp, max(1, a["num_kv_heads"] // tp), a["head_dim"]))
    rows = _rows("aic_vllm_attention.yaml")
    assert {(r.heads, r.kv_heads, r.head_dim) for r in rows} == expected
    prefill = [r for r in rows if r.phase == "prefill"]
    assert all(r.causal and r.seq_q == r.seq_kv for r in prefill)
    assert {r.seq_q for r in prefill} == {2048, 4096, 8192, 16384}  # the database stops at 16K
    assert all(r.seq_q == 1 and not r.causal for r in rows if r.phase == "decode")


def test_moe_rows_are_qwen3_shapes_under_the_curve_of_the_config_vllm_ran():
    rows = _rows("aic_vllm_moe_bf16.yaml")
    q235, q30 = _graph("qwen3-235b-a22b")["moe"], 768  # Qwen3-30B-A3B: moe_intermediate_size 768
    tuned = [r for r in rows if r.moe_kernel == "triton_fused"]
    default = [r for r in rows if r.moe_kernel == "triton_fused_default"]
    assert len(tuned) == 54 and len(default) == 135 and len(rows) == 189  # 27 token counts per shape
    for r in tuned:  # TP8: vLLM ships E=128,N=192 for H100 and H200
        assert (r.groups, r.top_k, r.hidden, r.n) == (q235["num_experts"], q235["top_k"], 4096, q235["intermediate_size"] // 8)
    # no 16-bit H100 file for these N in vLLM 0.14 (its E=128 files: N = 192, 512, 928, 1856)
    assert {(r.hidden, r.n) for r in default} == {(4096, 1536), (4096, 768), (4096, 384), (2048, q30), (2048, q30 // 2)}
    assert all(r.hw == "h100" and r.groups == 128 and r.top_k == 8 for r in default)


def test_default_curve_takes_its_16_bit_fraction_by_hand():
    # the same shape, BF16 against FP8, compute-bound at 16384 tokens: compute time scales by
    # (FP8 peak x moe_triton_default) / (BF16 peak x moe_triton_default_bf16)
    hw = load_hw("h100")
    e = hw.efficiency
    shape = dict(op="fused_moe", hw="h100", groups=128, top_k=8, hidden=4096, n=384, tokens=16384,
                 moe_kernel="triton_fused_default")
    bf16 = predict(KernelShape(dtype="bf16", **shape), hw)
    fp8 = predict(KernelShape(dtype="fp8", **shape), hw)
    ratio = (1979e12 * e.moe_triton_default) / (989e12 * e.moe_triton_default_bf16)
    assert bf16.compute_s == pytest.approx(fp8.compute_s * ratio, rel=1e-9)


def test_a_bf16_fraction_without_bf16_in_the_curves_dtypes_is_refused():
    from codesign.hw.spec import Efficiency

    e = load_hw("h100").efficiency.model_dump()
    e["moe_triton_default_dtypes"] = ["fp8"]
    with pytest.raises(ValueError, match=r"moe_triton_default_bf16: expected bf16 among moe_triton_default_dtypes, found fp8"):
        Efficiency(**e)


def test_figures_are_the_databases_latencies():
    # database latency (ms) at a few rows, read from the parquet files at the cited commit
    moe = {(r.hw, r.tokens): r.seconds for r in _rows("aic_vllm_moe_bf16.yaml") if r.n == 192}
    assert moe[("h100", 64)] == pytest.approx(0.230997e-3, rel=1e-5)
    assert moe[("h200", 16384)] == pytest.approx(2.102613e-3, rel=1e-5)
    tp4 = {r.tokens: r.seconds for r in _rows("aic_vllm_moe_bf16.yaml") if (r.hidden, r.n) == (4096, 384)}
    assert tp4[16384] == pytest.approx(5.868677e-3, rel=1e-5)
    ar = {(r.hw, r.ranks, r.bytes): r.seconds for r in _rows("aic_vllm_allreduce.yaml")}
    assert ar[("h100", 4, 256)] == pytest.approx(4.577e-6, rel=1e-3)  # message_size 128 elements
    assert all(r.bytes % 2 == 0 and r.algorithm is None for r in _rows("aic_vllm_allreduce.yaml"))


def test_which_rows_each_fit_reads():
    s = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(s)
    s.loader.exec_module(fit)
    keep = fit.GROUPS["attention_seq"][0]
    rows = _rows("aic_vllm_attention.yaml") + _rows("aic_vllm_attention_prefill.yaml")
    assert not any(keep(r) for r in rows)  # vLLM's paged prefill rows: `attention_paged` (test_attention_kernel.py)
    assert sum(1 for f in ("attention.yaml",) for r in _rows(f) if keep(r)) == 15
    assert {r.source for r in _rows("aic_vllm_allreduce.yaml")} <= set(fit.SHOWN_NOT_FITTED)
    tuned = fit.GROUPS["moe_triton"][0]
    assert sum(1 for f in ("fused_moe.yaml", "aic_vllm_moe_bf16.yaml") for r in _rows(f) if tuned(r)) == 69
    default = fit.GROUPS["moe_triton_default"][0]
    assert sum(1 for f in ("fused_moe.yaml", "aic_vllm_moe_bf16.yaml") for r in _rows(f) if default(r)) == 153


def test_tuned_curve_k_ramp_slows_the_short_k_shape_by_hand():
    # The K ramp K / (K + moe_triton_k_half) over gate/up (K = hidden, 2/3 of the FLOPs) and down
    # (K = n, 1/3): Qwen3-235B's TP8 shape (n = 192) runs its compute at that fraction of the
    # no-ramp rate; at 16384 tokens the op is compute-bound, so compute time scales by 1 / ramp.
    hw = load_hw("h100")
    half = hw.efficiency.moe_triton_k_half
    shape = dict(op="fused_moe", hw="h100", dtype="bf16", groups=128, top_k=8, hidden=4096, n=192,
                 tokens=16384, moe_kernel="triton_fused")
    with_ramp = predict(KernelShape(**shape), hw)
    no_ramp = predict(KernelShape(**shape), hw.model_copy(update={
        "efficiency": hw.efficiency.model_copy(update={"moe_triton_k_half": None})}))
    ramp = 3.0 / (2.0 / (4096 / (4096 + half)) + 1.0 / (192 / (192 + half)))
    assert with_ramp.compute_s == pytest.approx(no_ramp.compute_s / ramp, rel=1e-9)
    assert with_ramp.bound == "matrix"
