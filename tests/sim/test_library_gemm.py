"""Dense GEMM rows of the kernel libraries (benchmarks/kernels/library_gemm.yaml): the `library` and
`power_w` fields, the per-library summary of `codesign validate --kernels`, and the rule that
power-capped rows are never fitted."""

from __future__ import annotations

import importlib.util
import json

import pytest

from codesign import spec_files
from codesign.cli import main
from codesign.commands.validate import library_summary
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.sim.kernel import predict
from codesign.sim.kernel_table import KERNEL_DIR, LIBRARIES, KernelResult, load_table, validate_kernels


def _fit_module():
    spec = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    return fit


def test_library_table_rows_name_their_library_and_capped_rows_their_limit():
    t = load_table(KERNEL_DIR / "library_gemm.yaml")
    assert all(r.library in LIBRARIES for r in t.rows)
    assert {r.library for r in t.rows} == {"cublas", "cublaslt", "cutlass"}
    capped = [r for r in t.rows if r.power_w is not None]
    assert capped and all(r.power_w == 500 and r.source == "fbgemm_2546" for r in capped)


@pytest.mark.parametrize("field, value, message", [
    ("library", "cublass", r"t.yaml: rows.0.library: Input should be 'deepgemm', .* \(found: 'cublass'\)"),
    ("power_w", "0", r"t.yaml: rows.0.power_w: .*greater than 0"),
])
def test_a_bad_library_or_power_limit_is_one_line_naming_the_field(tmp_path, field, value, message):
    bad = tmp_path / "t.yaml"
    bad.write_text("description: x\nsources: {a: b}\nrows:\n"
                   f"  - {{op: gemm, hw: h100, dtype: fp8, {field}: {value}, m: 64, n: 256, k: 512, tflops: 1, source: a}}\n")
    with pytest.raises(CodesignError, match=message) as e:
        load_table(bad)
    assert "\n" not in str(e.value)


def test_cublaslt_row_prediction_is_the_hopper_gemm_rule():
    # float8_experimental's ffn.w13 at TP8 (M 16384, N 7168, K 8192; multiples of the 64x256 tile, so
    # no padding) from the H100 fields: compute, operand streaming, p-norm overlap, fixed time.
    hw = load_hw("h100")
    e = hw.efficiency
    m, n, k = 16384, 7168, 8192
    compute = 2 * m * n * k / (1979e12 * e.gemm * m / (m + e.small_m_half) * k / (k + e.gemm_k_half))
    memory = (m * k + n * k + 2 * m * n) / (3.35e12 * e.matrix_memory)
    p = e.overlap_exponent
    expected = (compute ** p + memory ** p) ** (1 / p) + e.kernel_overhead
    (row,) = [r for r in load_table(KERNEL_DIR / "library_gemm.yaml").rows
              if r.library == "cublaslt" and (r.m, r.n, r.k) == (m, n, k)]
    assert predict(row, hw).seconds == pytest.approx(expected, rel=1e-9)
    assert expected / row.seconds - 1 == pytest.approx(-0.012, abs=0.002)  # 1.452 ms vs the measured 1.470 ms


def test_power_capped_rows_are_shown_but_never_fitted():
    fit = _fit_module()
    rows = load_table(KERNEL_DIR / "library_gemm.yaml").rows
    capped = [r for r in rows if r.power_w is not None]
    assert capped and not any(fit.at_tdp(r) for r in capped)
    assert all(fit.at_tdp(r) for r in rows if r.power_w is None)
    assert fit.at_tdp(capped[0].model_copy(update={"power_w": 700.0}))  # at the H100's TDP


def test_library_summary_reads_every_metric_as_a_time_error():
    # a seconds row predicted 10% slow and a TFLOPS row predicted at 80% of the measured rate
    # (time 1/0.8 = +25%): mean time error +17.5%, MAPE (10% + 20%) / 2
    rows = load_table(KERNEL_DIR / "library_gemm.yaml").rows
    sec = next(r for r in rows if r.metric == "seconds" and r.library == "cublaslt")
    tfl = next(r for r in rows if r.metric == "tflops").model_copy(update={"library": "cublaslt"})

    class P:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    results = [KernelResult("t", 0, sec, P(seconds=sec.seconds * 1.1)), KernelResult("t", 1, tfl, P(tflops=tfl.tflops * 0.8))]
    s = library_summary(results)["cublaslt"]
    assert s["rows"] == 2
    assert s["mape"] == pytest.approx(0.15)
    assert s["mean_time_error"] == pytest.approx(0.175)


def test_validate_kernels_json_carries_library_power_and_the_per_library_gap(capsys):
    assert main(["validate", "--kernels", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lib = [r for r in out["rows"] if r["file"] == "library_gemm.yaml"]
    assert len(lib) == len(load_table(KERNEL_DIR / "library_gemm.yaml").rows)
    assert {r["library"] for r in lib} == {"cublas", "cublaslt", "cutlass"}
    assert {r["power_w"] for r in lib} == {None, 500}
    by = out["by_library"]
    assert set(by) >= {"cublas", "cublaslt", "cutlass", "cublas@500W", "cutlass@500W"}
    # the finding the docs quote for library_gemm.yaml: at TDP every library runs at or above the
    # DeepGEMM-calibrated Hopper curve on average (the model is slower than the kernels), the 500 W
    # rows below it. (TensorRT-LLM's cuBLASLt rows at decode sizes, aic_trtllm_gemm.yaml, run slower
    # than the curve: docs/cost-model.md "TensorRT-LLM kernel rows on H100 / H200".)
    own = library_summary([r for r in validate_kernels() if r.file == "library_gemm.yaml"])
    assert all(own[k]["mean_time_error"] > 0 for k in ("cublas", "cublaslt", "cutlass"))
    assert all(own[k]["mean_time_error"] < 0 for k in ("cublas@500W", "cutlass@500W"))
    assert sum(r.row.library is not None for r in validate_kernels()) == sum(v["rows"] for v in by.values())


def test_library_gap_report_leaves_capped_rows_out_and_reads_errors_as_time():
    spec = importlib.util.spec_from_file_location("library_gap", spec_files.ROOT / "benchmarks" / "kernels" / "library_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    rows = gap.library_rows("cublas")
    assert rows and all(r.power_w is None for r in rows)
    # every table's cuBLAS rows on the full-rate Hopper parts (library_gemm.yaml's and the
    # short-run / sustained pair of max_achievable_gemm.yaml), the power-capped ones left out
    assert len(rows) == sum(r.library == "cublas" and r.power_w is None and r.hw in ("h100", "h200", "h800")
                            for f in sorted(KERNEL_DIR.glob("*.yaml")) for r in load_table(f).rows)
    # (+ the 154 vLLM BF16 RowParallelLinear rows of aic_vllm_gemm_bf16.yaml, cuBLAS through F.linear,
    # and TensorRT-LLM's BF16 Linear rows of aic_trtllm_gemm.yaml)
    assert len(rows) == 1 + sum(r.library == "cublas" and r.power_w is None
                                for f in ("library_gemm.yaml", "aic_vllm_gemm_bf16.yaml", "aic_trtllm_gemm.yaml")
                                for r in load_table(KERNEL_DIR / f).rows)
    r = next(r for r in rows if r.metric == "tflops")
    # a TFLOPS row predicted at p TFLOPS against m measured takes m / p of the measured time
    assert gap.time_error(r) == pytest.approx(r.tflops / predict(r, load_hw(r.hw)).tflops - 1)
