"""Kernel tables (benchmarks/kernels/), the `codesign kernel` prediction path and its bad input."""

from __future__ import annotations

import json
import math

import pytest

from codesign.cli import main
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.sim.kernel import KernelShape, predict
from codesign.sim.kernel_table import kernel_mape, load_table, table_files, validate_kernels


def test_every_table_loads_and_every_row_is_sourced():
    files = table_files()
    assert {f.name for f in files} >= {"deepgemm.yaml", "deepep.yaml", "attention.yaml", "collectives.yaml"}
    for f in files:
        t = load_table(f)
        for r in t.rows:
            assert t.sources[r.source]


def test_every_row_predicts_within_a_loose_bound_and_the_table_within_target():
    results = validate_kernels()
    assert len(results) >= 50
    # a transcription guard (a mistyped figure is off by far more than this); the worst fitted row is
    # cuBLAS BF16 on B200 at 128x28672x4096, +30%: one small-M ramp serves every GEMM library
    # AITER's fused-MoE rows on CDNA3 (cdna_grouped.yaml) are shown, not calibrated: the grouped rule
    # is -62% there and no CDNA field is set from them (docs/cost-model.md, "CDNA grouped expert
    # GEMMs"); their transcription is checked in tests/sim/test_cdna_grouped.py. Likewise AITER's CK
    # FP8 GEMM tuning on MI300X at Llama-70B shapes (cdna_llama_gemm.yaml: shown, not fitted; the
    # CDNA rule is 18-51% faster there; tests/sim/test_cdna_llama_gemm.py), the BF16 rows of
    # TensorRT-LLM's MoE at Mixtral's shape (trtllm_moe_fp8.yaml, grouped rule up to +42%; checked in
    # tests/sim/test_fused_moe_trtllm_fp8.py), and vLLM 0.14's BF16 GEMM, FlashAttention and
    # all-reduce rows from aiconfigurator's databases (aic_vllm_*.yaml except the fitted MoE rows):
    # the Hopper GEMM curve is DeepGEMM's (docs/cost-model.md "vLLM kernel rows on H100 / H200"); the
    # FlashAttention file's decode rows are fitted (`attention_decode_gqa`, 17.5%) but keep rows up to
    # -64% (batch vs heads at one unit count: docs "GQA decode attention occupancy"); its prefill rows
    # and those of aic_vllm_attention_prefill.yaml are fitted (`attention_paged`, 6.4%) but keep four
    # H100 rows at 12K-16K that are slower than their neighbours in the database itself (-43% to
    # -73%, the files' headers); their shapes and figures are checked in tests/sim/test_aic_vllm_kernels.py.
    # vLLM 0.24.0's head-dim-256 prefill rows are fitted (`attention_paged`, 4.7%); its head-dim-256
    # decode rows (aic_vllm_attention_decode_d256.yaml) are shown, not fitted: up to +102% at batch 1-8,
    # as the 0.24.0 head-dim-128 rows of the same heads (tests/sim/test_attention_paged_head_dim.py).
    # vLLM 0.14's MLA calls (aic_mla.yaml, `mla_call: vllm_impl`) are timed eagerly by their collector
    # and keep rows near its ~0.15 ms host floor (docs "MLA attention kernels by engine"): shown, not fitted.
    # vLLM 0.24's GatedDeltaNet decode and conv rows (aic_vllm_gdn.yaml, gdn_recurrent, gdn_conv) are
    # shown, not fitted: element-wise ops at the memory rates, up to +39% slow where the states fit in
    # L2 and +56% at the conv update's 1.9 us floor (docs/cost-model.md "GatedDeltaNet kernel rows of
    # vLLM 0.24 on H100 / H200"; tests/sim/test_aic_vllm_gdn.py).
    # TensorRT-LLM 1.2.0rc5's rows from the same databases (aic_trtllm_*.yaml): its AUTO all-reduce
    # -63% to +73% against the per-algorithm curves, its BF16 GEMMs up to +63% (shown, not fitted); its
    # context attention and FP8 GEMMs are on curves of their own (`trtllm_attention` 6.3%,
    # `cublaslt_fp8` 7.8%, worst +41%: one curve over 14 shapes) (docs/cost-model.md "TensorRT-LLM
    # kernel rows on H100 / H200"); checked in tests/sim/test_aic_trtllm_kernels.py.
    # FlashInfer's fused RMSNorm + FP8 quant on H100 (elementwise.yaml) is shown, not fitted: the
    # traced decomposition at the element-wise rule is +360% to +480% (docs/cost-model.md
    # "Element-wise regions"; tests/sim/test_elementwise_kernels.py).
    shown = {"elementwise.yaml", "cdna_grouped.yaml", "cdna_llama_gemm.yaml", "aic_vllm_gemm_bf16.yaml", "aic_vllm_attention.yaml",
             "aic_vllm_attention_prefill.yaml", "aic_vllm_allreduce.yaml", "aic_trtllm_allreduce.yaml",
             "aic_trtllm_gemm.yaml", "aic_vllm_attention_decode_d256.yaml"}
    bad = [(r.label(), round(r.error, 3)) for r in results
           if abs(r.error) > 0.35 and r.file not in shown
           and not (r.file == "trtllm_moe_fp8.yaml" and r.row.dtype == "bf16")
           and not (r.file == "aic_mla.yaml" and r.row.mla_call == "vllm_impl")
           and not (r.file == "aic_vllm_gdn.yaml" and r.row.op in ("gdn_recurrent", "gdn_conv"))]
    assert not bad
    # every row (the bound), and the rows the curves answer for alone
    assert kernel_mape(results) <= 0.15
    assert kernel_mape([r for r in results if r.file not in shown]) <= 0.15


def test_gemm_prediction_is_the_cost_model_rule():
    # Independent calculation of DeepGEMM's 4096x7168x16384 FP8 on H800 from the Hopper fields:
    # compute = 2MNK / (peak x gemm x M/(M+half) x K/(K+k_half)) (no padding: multiples of 64x256),
    # memory = (A + B fp8, C bf16) / (HBM x matrix_memory), time = p-norm + fixed per kernel.
    hw = load_hw("h800")
    e = hw.efficiency
    m, n, k = 4096, 7168, 16384
    compute = 2 * m * n * k / (1979e12 * e.gemm * m / (m + e.small_m_half) * k / (k + e.gemm_k_half))
    memory = (m * k + n * k + 2 * m * n) / (3.35e12 * e.matrix_memory)
    p = e.overlap_exponent
    expected = (compute ** p + memory ** p) ** (1 / p) + e.kernel_overhead
    got = predict(KernelShape(op="gemm", hw="h800", dtype="fp8", m=m, n=n, k=k), hw)
    assert got.seconds == pytest.approx(expected, rel=1e-9)
    assert got.bound == "matrix"
    assert got.tflops == pytest.approx(2 * m * n * k / expected / 1e12)


def test_all_reduce_bus_bandwidth_is_the_ring_rule():
    # H100's kernel-calibrated ring curve: overhead + 2(n-1) steps + 2(n-1)/n m over the ramped link
    hw = load_hw("h100")
    cc = hw.efficiency.collective_curves
    n, nbytes = 8, 1e9
    ramp = (nbytes / (nbytes + cc.ring.ramp_bytes)) ** cc.ramp_exponent
    t = cc.ring.overhead + 2 * (n - 1) * cc.step + 2 * (n - 1) / n * nbytes / (450e9 * cc.ring.efficiency * ramp)
    got = predict(KernelShape(op="all_reduce", hw="h100", ranks=n, bytes=nbytes, algorithm="ring"), hw)
    assert got.seconds == pytest.approx(t, rel=1e-9)
    assert got.gbps == pytest.approx(2 * (n - 1) / n * nbytes / t / 1e9)
    # the flat rule where a spec has no curves
    flat = hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update={"collective_curves": None})})
    t = 2 * (n - 1) / n * nbytes / (450e9 * hw.efficiency.collective) + 2 * (n - 1) * hw.system.scale_up.latency
    assert predict(KernelShape(op="all_reduce", hw="h100", ranks=n, bytes=nbytes, algorithm="ring"), flat).seconds \
        == pytest.approx(t, rel=1e-9)
    # all-gather: nccl-tests' busBw counts (n-1)/n x message
    ag = predict(KernelShape(op="all_gather", hw="h100", ranks=n, bytes=nbytes), hw)
    assert ag.gbps == pytest.approx((n - 1) / n * nbytes / ag.seconds / 1e9)


def test_non_positive_shape_and_missing_fields_are_refused():
    with pytest.raises(ValueError, match="greater than 0"):
        KernelShape(op="gemm", hw="h800", m=0, n=1, k=1)
    with pytest.raises(ValueError, match="gemm needs k"):
        KernelShape(op="gemm", hw="h800", m=1, n=1)


def test_dtype_the_chip_cannot_run_is_refused():
    with pytest.raises(CodesignError, match="h100 has no fp4 matrix path"):
        predict(KernelShape(op="gemm", hw="h100", dtype="fp4", m=64, n=64, k=64), load_hw("h100"))


def test_cli_kernel_json_and_one_line_errors(capsys):
    assert main(["kernel", "--hw", "h800", "gemm", "--m", "64", "--n", "2112", "--k", "7168", "--dtype", "fp8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"seconds", "tflops", "gbps", "bound"} <= set(out)
    assert out["tflops"] == pytest.approx(2 * 64 * 2112 * 7168 / out["seconds"] / 1e12)
    assert main(["kernel", "--hw", "h800", "gemm", "--m", "-4", "--n", "2112", "--k", "7168"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m: Input should be greater than 0" in err[0]
    assert main(["kernel", "--hw", "a100", "grouped_gemm", "--groups", "4", "--m", "256", "--n", "7168",
                 "--k", "2048", "--dtype", "fp8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a100 has no fp8 matrix path" in err[0]


def test_table_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("description: x\nsources: {a: b}\nrows:\n"
                   "  - {op: gemm, hw: h800, dtype: fp8, m: 64, n: 2112, k: 7168, tflops: 206, check_gbps: 1000, source: a}\n")
    with pytest.raises(CodesignError, match=r"t.yaml: rows.0: check_gbps: expected about 1687"):
        load_table(bad)
    bad.write_text("description: x\nsources: {a: b}\nrows:\n  - {op: gemm, hw: h800, m: 1, n: 1, k: 1, source: a}\n")
    with pytest.raises(CodesignError, match=r"t.yaml: rows.0: .*exactly one of seconds, tflops, gbps"):
        load_table(bad)
    bad.write_text("description: x\nsources: {a: b}\nrows:\n  - {op: gemm, hw: h800, m: 1, n: 1, k: 1, tflops: 1, source: z}\n")
    with pytest.raises(CodesignError, match="unknown tag 'z'"):
        load_table(bad)


def test_low_latency_rows_follow_a_bandwidth_latency_line():
    # DeepEP low-latency dispatch across nodes: time = fixed + RDMA bytes / (NIC x fraction); the
    # fitted fixed time and fraction reproduce both ends of the README's table within 10%
    hw = load_hw("h800")
    e = hw.efficiency
    nbytes = 128 * 8 * 7168 * (1 + 4 / 128)
    for ranks, measured in ((16, 118e-6), (256, 194e-6)):
        t = e.low_latency_overhead + nbytes * (ranks - 8) / ranks / (50e9 * e.low_latency_collective)
        assert math.isclose(t, measured, rel_tol=0.10)
        got = predict(KernelShape(op="all_to_all", hw="h800", dtype="fp8", ranks=ranks, tokens=128, hidden=7168,
                                  top_k=8, algorithm="low_latency"), hw)
        assert got.seconds == pytest.approx(t, rel=1e-9)


def test_cli_validate_kernels_prints_every_row_and_the_mape(capsys):
    assert main(["validate", "--kernels", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert len(rows) == len(validate_kernels())
    assert out["mape"] == pytest.approx(sum(abs(r["error"]) for r in rows) / len(rows))
    assert out["worst"] == pytest.approx(max(abs(r["error"]) for r in rows))
    assert main(["validate"]) == 2
    assert "expected a validation file (or --kernels)" in capsys.readouterr().err


def test_cdna_fp8_gemm_runs_at_its_own_sustained_fraction():
    # Independent calculation of AMD's MAF FP8 shape on MI300X: 2MNK / (peak x gemm_by_dtype.fp8 x
    # M/(M+small_m_half)) + the per-kernel fixed time (CDNA: no K ramp, perfect overlap; memory is
    # far below compute). 32x32 tiles: no padding at 4096 x 3648.
    hw = load_hw("mi300x")
    e = hw.efficiency
    m, n, k = 4096, 3648, 32896
    expected = 2 * m * n * k / (2614.9e12 * e.gemm_by_dtype["fp8"] * m / (m + e.small_m_half)) + e.kernel_overhead
    got = predict(KernelShape(op="gemm", hw="mi300x", dtype="fp8", m=m, n=n, k=k), hw)
    assert got.seconds == pytest.approx(expected, rel=1e-9)
    assert got.tflops == pytest.approx(1273, rel=0.005)  # the AMD MAF row it was solved from
    # BF16 on the same chip runs at `gemm`, a larger fraction of its (half) peak
    bf = predict(KernelShape(op="gemm", hw="mi300x", dtype="bf16", m=4096, n=4864, k=k), hw)
    assert bf.tflops == pytest.approx(708, rel=0.005)


def test_maf_solver_reproduces_every_amd_row():
    import importlib.util
    from codesign import spec_files

    spec = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    solved = fit.solve_maf()
    assert {(c, d) for c, d, _, _ in solved} == {("mi300x", "bf16"), ("mi300x", "fp8"), ("mi325x", "bf16"), ("mi325x", "fp8")}
    for chip, dtype, frac, err in solved:
        assert abs(err) < 1e-6
        # the shipped spec carries the solved value to 3 decimals
        assert load_hw(chip).efficiency.gemm_for(dtype) == pytest.approx(frac, abs=6e-4)
