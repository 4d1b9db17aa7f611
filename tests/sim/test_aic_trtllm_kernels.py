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
    # the database's decode rows are left out (a K-only cache: the file's header)
    assert all(r.phase == "prefill" and r.causal and r.seq_q == r.seq_kv for r in rows)


def test_no_fit_reads_the_shown_rows():
    fit = _fit()
    rows = [r for f in FILES for r in _rows(f)]
    # (the context attention rows by their kernel, `attention_kernel: trtllm`; the all-reduce rows by source)
    for group in ("attention", "attention_seq", "attention_decode_gqa", "matrix", "cutlass_block_fp8",
                  "attention_h20"):
        keep = fit.GROUPS[group][0]
        assert not any(keep(r) for r in rows), group
    assert {r.source for r in _rows("aic_trtllm_allreduce.yaml")} <= set(fit.SHOWN_NOT_FITTED)
    # ... except their own groups: the prefill rows set `trtllm_attention`, no decode row is fitted
    keep = fit.GROUPS["trtllm_attention"][0]
    att = _rows("aic_trtllm_attention.yaml")
    assert sum(keep(r) for r in att) == 140 and all(r.phase == "prefill" for r in att if keep(r))
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


# -- the fitted curve of these rows: cost.gemm_kernel "trtllm_cublaslt_fp8" -----------------------


def _cl_opts():
    from codesign.sim.cost import CostOptions

    return CostOptions(gemm_kernel="trtllm_cublaslt_fp8")


def test_cublaslt_curve_is_the_family_rule_with_its_own_fields_by_hand():
    # compute = 2MNK / (FP8 peak x cublaslt_fp8 x M/(M+m_half) x K/(K+k_half)) (no padding: multiples of
    # the 64 x 256 tile), memory = (A + B fp8, C bf16) / (HBM x cublaslt_fp8_memory), time = the
    # family's p-norm + fixed time per kernel (no element-wise kernels around one kernel alone)
    from codesign.hw import load_hw
    from codesign.sim.kernel import KernelShape, predict

    for name, peak, hbm in (("h100", 1979e12, 3.35e12), ("h200", 1979e12, 4.8e12)):
        hw = load_hw(name)
        e = hw.efficiency
        for m, n, k in ((4096, 8192, 8192), (64, 10240, 8192)):
            compute = 2 * m * n * k / (peak * e.cublaslt_fp8 * m / (m + e.cublaslt_fp8_m_half)
                                       * k / (k + e.cublaslt_fp8_k_half))
            # at M = 64 the activations (0.5 MB in, 1.3 MB out) are served from SRAM (`sram_activations`,
            # under half the 50 MB L2): only the weights stream from HBM
            streamed = m * k + n * k + 2 * m * n if m == 4096 else n * k
            memory = streamed / (hbm * e.cublaslt_fp8_memory)
            hi, lo = max(compute, memory), min(compute, memory)
            p = e.overlap_exponent
            expected = hi * (1 + (lo / hi) ** p) ** (1 / p) + e.kernel_overhead
            got = predict(KernelShape(op="gemm", hw=name, dtype="fp8", m=m, n=n, k=k,
                                      gemm_kernel="trtllm_cublaslt_fp8"), hw)
            assert got.seconds == pytest.approx(expected, rel=1e-9), (name, m)
    # decode sizes stream the weights slower than the family curve, large M computes faster
    hw = load_hw("h200")
    small = KernelShape(op="gemm", hw="h200", dtype="fp8", m=8, n=10240, k=8192)
    large = small.model_copy(update={"m": 8192})
    for s, slower in ((small, True), (large, False)):
        cl = predict(s.model_copy(update={"gemm_kernel": "trtllm_cublaslt_fp8"}), hw).seconds
        assert (cl > predict(s, hw).seconds) is slower


def test_cublaslt_curve_acts_on_every_dense_gemm_and_not_on_other_ops():
    from codesign.hw import load_hw
    from codesign.sim.cost import CostModel, CostOptions

    hw = load_hw("h100")
    cl, cal = CostModel(hw, "fp8", "fp8", _cl_opts()), CostModel(hw, "fp8", "fp8", CostOptions())
    assert cl.matrix_hbm_bw == pytest.approx(3.35e12 * hw.efficiency.cublaslt_fp8_memory, rel=1e-12)
    assert cal.matrix_hbm_bw == pytest.approx(3.35e12 * hw.efficiency.matrix_memory, rel=1e-12)
    assert cl.hbm_bw == cal.hbm_bw and cl.grouped_hbm_bw == cal.grouped_hbm_bw
    assert cl.static_key != cal.static_key  # no shared kept parts between the two
    for block in ("attention", "mlp", "lm_head"):  # every 2-D GEMM, whatever its block
        t_cl = cl._gemm_seconds(2.0 * 512 * 8192 * 8192, (1, 512, 8192, 8192), block)
        assert t_cl == pytest.approx(2.0 * 512 * 8192 * 8192 / (
            1979e12 * hw.efficiency.cublaslt_fp8 * 512 / (512 + hw.efficiency.cublaslt_fp8_m_half)
            * 8192 / (8192 + hw.efficiency.cublaslt_fp8_k_half)), rel=1e-12)


def test_cublaslt_curve_is_refused_off_fp8_and_on_chips_without_it():
    from codesign.errors import CodesignError
    from codesign.hw import load_hw
    from codesign.sim.cost import CostModel

    with pytest.raises(CodesignError, match="trtllm_cublaslt_fp8 is a per-tensor FP8 kernel; this deployment's GEMMs compute in bf16"):
        CostModel(load_hw("h200"), "bf16", "bf16", _cl_opts())
    with pytest.raises(CodesignError, match="needs efficiency.cublaslt_fp8 of h20"):
        CostModel(load_hw("h20"), "fp8", "bf16", _cl_opts())


def test_fit_group_reads_the_fp8_rows_only_and_the_rows_name_the_kernel():
    fit = _fit()
    keep = fit.GROUPS["cublaslt_fp8"][0]
    rows = [r for f in sorted(KERNEL_DIR.glob("*.yaml")) for r in load_table(f).rows if keep(r)]
    assert len(rows) == 308 and all(r.dtype == "fp8" and r.library == "cublaslt" for r in rows)
    assert {r.source for r in rows} == {"trtllm_gemm_h100", "trtllm_gemm_h200"}
    assert all(r.gemm_kernel is None for r in _rows("aic_trtllm_gemm.yaml") if r.dtype == "bf16")


def test_validation_rows_set_the_kernel_where_their_engine_states_it():
    # the trtllm-bench rows (PyTorch backend: FP8QDQLinearMethod -> cublas_scaled_mm) and no other
    from codesign.scenario import load_scenarios

    set_on = sorted(s.name for s in load_scenarios(spec_files.ROOT / "benchmarks" / "validation" / "public.yaml")
                    if s.cost.get("gemm_kernel") == "trtllm_cublaslt_fp8")
    assert set_on == ["trtllm-bench-1xh200-llama3.3-70b-fp8-1000-1000", "trtllm-bench-1xh200-llama3.3-70b-fp8-128-2048",
                      "trtllm-bench-1xh200-llama3.3-70b-fp8-2048-128", "trtllm-bench-2xh100-llama3.3-70b-fp8-1000-1000"]


# -- TensorRT-LLM's context attention: cost.attention_kernel: trtllm -------------------------------------

def test_trtllm_context_attention_is_the_prefill_rule_with_its_own_fields_by_hand():
    # compute = causal FLOPs / (peak x trtllm_attention(_fp8) x L / (L + trtllm_attention_seq_half)),
    # L = (T + 1) / 2 for a fresh prompt; + kernel_overhead + trtllm_attention_fixed_s per call
    from codesign.hw import load_hw
    from codesign.sim.kernel import KernelShape, predict

    hw = load_hw("h100")
    e = hw.efficiency
    for dtype, peak, frac in (("bf16", 989e12, e.trtllm_attention), ("fp8", 1979e12, e.trtllm_attention_fp8)):
        b, h, kv, d, t = 16, 64, 8, 128, 4096
        s = KernelShape(op="attention", hw="h100", dtype=dtype, phase="prefill", causal=True, batch=b, heads=h,
                        kv_heads=kv, head_dim=d, seq_q=t, seq_kv=t, attention_kernel="trtllm")
        flops = 2.0 * b * h * (t * (t + 1) / 2) * 2 * d
        keys = (t + 1) / 2
        compute = flops / (peak * frac * keys / (keys + e.trtllm_attention_seq_half))
        got = predict(s, hw)
        assert got.compute_s == pytest.approx(compute, rel=1e-9)
        assert got.overhead_s == pytest.approx(e.kernel_overhead + e.trtllm_attention_fixed_s, rel=1e-12)
        assert got.bound == "matrix"
        # the FlashAttention curve (the default) is faster at every length of these rows
        assert predict(s.model_copy(update={"attention_kernel": None}), hw).seconds < got.seconds


def test_trtllm_attention_leaves_decode_and_other_ops_alone():
    from codesign.hw import load_hw
    from codesign.sim.cost import CostModel, CostOptions
    from codesign.sim.kernel import KernelShape, predict

    hw = load_hw("h200")
    dec = dict(op="attention", hw="h200", dtype="fp8", phase="decode", causal=True, batch=256, heads=64,
               kv_heads=8, head_dim=128, seq_q=1, seq_kv=512)
    with pytest.raises(ValueError, match="attention_kernel applies to prefill attention only"):
        KernelShape(**dec, attention_kernel="trtllm")
    opts = CostOptions(elementwise_kernels_per_matrix_kernel=0.0, grouped_op_kernels=1.0, attention_kernel="trtllm")
    assert predict(KernelShape(**dec), hw, opts) == predict(KernelShape(**dec), hw)
    g = dict(op="gemm", hw="h200", dtype="fp8", m=512, n=8192, k=8192)
    on = CostModel(hw, "fp8", "fp8", CostOptions(attention_kernel="trtllm"))
    off = CostModel(hw, "fp8", "fp8", CostOptions())
    assert on.matrix_rate == off.matrix_rate and on.decode_fixed_s == off.decode_fixed_s
    assert on.static_key != off.static_key
    assert predict(KernelShape(**g), hw).seconds > 0
    with pytest.raises(ValueError, match="attention_kernel applies to prefill attention only"):
        KernelShape(**g, attention_kernel="trtllm")


def test_trtllm_attention_is_refused_on_chips_without_the_curve():
    from codesign.errors import CodesignError
    from codesign.hw import load_hw
    from codesign.sim.cost import CostModel, CostOptions

    with pytest.raises(CodesignError, match="cost.attention_kernel: trtllm is not yet supported on h20"):
        CostModel(load_hw("h20"), "fp8", "fp8", CostOptions(attention_kernel="trtllm"))


def test_validation_rows_set_trtllm_attention_where_their_engine_runs_it():
    from codesign.scenario import load_scenarios

    on = {s.name for s in load_scenarios(spec_files.ROOT / "benchmarks" / "validation" / "public.yaml")
          if s.cost.get("attention_kernel") == "trtllm"}
    assert len(on) == 22
    assert all(n.startswith(("mlperf-v4.1-8xh100-", "mlperf-v4.1-8xh200-", "mlperf-v5.1-8xh200-mixtral",
                             "trtllm-v0.9-", "trtllm-bench-1xh200-llama", "trtllm-bench-2xh100-llama")) for n in on)
    # the TensorRT engines' builds have no FP8 context FMHA flag: 16-bit attention on the FP8 cache
    scen = load_scenarios(spec_files.ROOT / "benchmarks" / "validation" / "public.yaml")
    bf16 = {s.name for s in scen if s.cost.get("attention_dtype") == "bf16" and s.name in on}
    assert bf16 == {n for n in on if not n.startswith("trtllm-bench-")} and len(bf16) == 18
    assert all(s.precision.get("kv_cache") == "fp8" for s in scen if s.name in bf16)


def test_cli_kernel_takes_the_trtllm_flags(capsys):
    import json

    from codesign.cli import main
    from codesign.hw import load_hw
    from codesign.sim.kernel import KernelShape, predict

    args = ["kernel", "--hw", "h100", "attention", "--batch", "16", "--heads", "64", "--kv-heads", "8", "--head-dim",
            "128", "--seq-q", "256", "--seq-kv", "256", "--phase", "prefill", "--causal", "--dtype", "fp8"]
    assert main(args + ["--attention-kernel", "trtllm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = KernelShape(op="attention", hw="h100", dtype="fp8", phase="prefill", causal=True, batch=16, heads=64,
                    kv_heads=8, head_dim=128, seq_q=256, seq_kv=256, attention_kernel="trtllm")
    assert out["seconds"] == pytest.approx(predict(s, load_hw("h100")).seconds, rel=1e-12)
    assert out["seconds"] == pytest.approx(152.8e-6, rel=0.1)  # the database's row (aic_trtllm_attention.yaml)
    assert main(["kernel", "--hw", "h200", "gemm", "--m", "64", "--n", "10240", "--k", "8192", "--dtype", "fp8",
                 "--gemm-kernel", "trtllm_cublaslt_fp8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seconds"] == pytest.approx(26.6e-6, rel=0.1)  # measured, derived
