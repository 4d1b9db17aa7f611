"""TensorRT-LLM 1.2.0rc5 kernel rows from aiconfigurator's H100 / H200 databases
(benchmarks/kernels/aic_trtllm_*.yaml): their shapes against the models' own configs (model_graphs/),
figures against the database's printed latencies, the FP8 rows' quantisation subtraction, and that no
fit reads the shown rows."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from codesign import spec_files
from codesign.sim.kernel_table import KERNEL_DIR, load_table

COMMIT = "095f58a51c4ca8e61b66ec108d86f223f8d559ce"
FILES = ("aic_trtllm_gemm.yaml", "aic_trtllm_attention.yaml", "aic_trtllm_allreduce.yaml")


def _graph(name: str) -> dict:
    return yaml.safe_load((spec_files.ROOT / "model_graphs" / f"{name}.yaml").read_text())


def _rows(name: str):
    return load_table(KERNEL_DIR / name).rows


def _fit():
    s = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(s)
    s.loader.exec_module(fit)
    return fit


def test_every_source_names_the_database_file_and_commit():
    for name in FILES:
        t = load_table(KERNEL_DIR / name)
        for tag, text in t.sources.items():
            hw = "h100_sxm" if "h100" in tag else "h200_sxm"
            assert COMMIT in text and f"systems/data/{hw}/" in text and "/trtllm/1.2.0rc5/" in text, tag
            assert tag.startswith("trtllm_"), tag  # never a vLLM table's tag (fit.py selects by tag)
        assert {r.hw for r in t.rows} == {"h100", "h200"}


def test_gemm_shapes_are_the_models_projections_per_rank_in_the_grid():
    llama, mixtral = _graph("llama-2-70b"), _graph("mixtral-8x7b")
    a, h, inter = llama["attention"], llama["hidden_size"], llama["intermediate_size"]
    wanted = set()
    for tp in (1, 2, 4, 8):
        heads, kv = a["num_heads"] // tp, a["num_kv_heads"] // tp
        wanted |= {((heads + 2 * kv) * a["head_dim"], h), (h, heads * a["head_dim"]),
                   (2 * inter // tp, h), (h, inter // tp)}
    ma, mh = mixtral["attention"], mixtral["hidden_size"]
    wanted |= {((ma["num_heads"] + 2 * ma["num_kv_heads"]) * ma["head_dim"], mh), (mh, ma["num_heads"] * ma["head_dim"])}
    got = {(r.n, r.k) for r in _rows("aic_trtllm_gemm.yaml")}
    # not in the database's (n, k) grid (header): TP1/2/4 gate/up, TP1/2 down, TP8 QKV
    missing = {(57344, 8192), (28672, 8192), (14336, 8192), (8192, 28672), (8192, 14336), (1280, 8192)}
    neighbours = {(65536, 8192), (8192, 16384)}  # the grid's nearest to the TP1 gate/up and TP2 down
    assert got == (wanted - missing) | neighbours
    rows = _rows("aic_trtllm_gemm.yaml")
    assert all((r.dtype, r.library) in (("fp8", "cublaslt"), ("bf16", "cublas")) for r in rows)
    assert len(rows) == 14 * 11 * 4 + 14  # 14 shapes x 11 M x (2 dtypes x 2 chips), H100 BF16 also M 16384


def test_fp8_rows_are_the_gemm_less_the_dynamic_quantisation():
    pat = re.compile(r"([\d.]+) us \(gemm_perf\) - ([\d.]+) \(compute_scale\) - ([\d.]+) \(scale_matrix\)")
    fp8 = [r for r in _rows("aic_trtllm_gemm.yaml") if r.dtype == "fp8"]
    assert fp8
    for r in fp8:
        total, scale, quant = (float(x) for x in pat.fullmatch(r.derived).groups())
        assert r.seconds == pytest.approx((total - scale - quant) * 1e-6, abs=1.5e-9)
        assert 0 < scale + quant < total
    assert all(r.derived is None for r in _rows("aic_trtllm_gemm.yaml") if r.dtype == "bf16")


def test_figures_are_the_databases_latencies():
    # database latency (ms) at a few rows, read from the parquet files at the cited commit
    g = {(r.hw, r.dtype, r.m, r.n, r.k): r for r in _rows("aic_trtllm_gemm.yaml")}
    assert g[("h200", "bf16", 1024, 7168, 8192)].seconds == pytest.approx(0.165075e-3, rel=1e-4)
    assert g[("h200", "fp8", 1024, 7168, 8192)].derived.startswith("124.100 us (gemm_perf)")
    assert g[("h100", "fp8", 8192, 10240, 8192)].derived == "1204.891 us (gemm_perf) - 111.170 (compute_scale) - 140.352 (scale_matrix)"
    att = {(r.hw, r.phase, r.dtype, r.batch, r.heads, r.kv_heads, r.seq_kv): r.seconds
           for r in _rows("aic_trtllm_attention.yaml")}
    assert att[("h100", "prefill", "fp8", 16, 64, 8, 256)] == pytest.approx(0.152827e-3, rel=1e-4)
    assert att[("h100", "prefill", "bf16", 16, 64, 8, 256)] == pytest.approx(0.180187e-3, rel=1e-4)  # FP8 KV
    assert att[("h200", "decode", "fp8", 256, 64, 8, 512)] == pytest.approx(0.065515e-3, rel=1e-4)  # step 511
    ar = {(r.hw, r.ranks, r.bytes): r.seconds for r in _rows("aic_trtllm_allreduce.yaml")}
    assert ar[("h100", 2, 2 * 8388608)] == pytest.approx(0.083142e-3, rel=1e-4)  # message_size in elements
    assert all(r.algorithm is None and r.dtype == "bf16" for r in _rows("aic_trtllm_allreduce.yaml"))
    assert {r.ranks for r in _rows("aic_trtllm_allreduce.yaml")} == {2, 4, 8}


def test_attention_heads_are_the_models_heads_per_rank():
    a, m = _graph("llama-2-70b")["attention"], _graph("mixtral-8x7b")["attention"]
    expected = {(a["num_heads"] // tp, a["num_kv_heads"] // tp, a["head_dim"]) for tp in (1, 2, 4, 8)}
    expected.add((m["num_heads"], m["num_kv_heads"], m["head_dim"]))
    rows = _rows("aic_trtllm_attention.yaml")
    assert {(r.heads, r.kv_heads, r.head_dim) for r in rows} == expected
    assert all(r.causal and r.seq_q == r.seq_kv for r in rows if r.phase == "prefill")
    decode = [r for r in rows if r.phase == "decode"]
    assert decode and all(r.seq_q == 1 and r.dtype == "fp8" for r in decode)
    assert {r.seq_kv for r in decode} == {128, 512, 2048, 8192}  # the collector's step + 1


def test_no_fit_reads_the_shown_rows():
    fit = _fit()
    rows = [r for f in FILES for r in _rows(f)]
    for group in ("attention", "attention_seq", "attention_decode_gqa", "matrix", "cutlass_block_fp8"):
        keep = fit.GROUPS[group][0]
        assert not any(keep(r) for r in rows), group
    assert {r.source for r in _rows("aic_trtllm_allreduce.yaml")} <= set(fit.SHOWN_NOT_FITTED)
    # the FP8 attention fraction is still set from FlashAttention-3's one FP8 row
    keep = fit.GROUPS["attention"][0]
    assert sum(1 for f in sorted(KERNEL_DIR.glob("*.yaml")) for r in load_table(f).rows if keep(r)) == \
        sum(1 for r in _rows("attention.yaml") if keep(r))


def test_decode_size_fp8_rows_stream_the_weights_below_the_curves_rate():
    # The finding docs/cost-model.md states: at M = 1 the FP8 GEMM alone moves its N x K weights at
    # less than the Hopper curve's matrix_memory x HBM (the curve predicts these rows too fast).
    from codesign.hw import load_hw

    for r in _rows("aic_trtllm_gemm.yaml"):
        if r.dtype != "fp8" or r.m != 1 or r.k < 8192:
            continue
        hw = load_hw(r.hw)
        achieved = r.n * r.k / r.seconds
        assert achieved < hw.chip.hbm.bandwidth * hw.efficiency.matrix_memory, (r.hw, r.n, r.k)
