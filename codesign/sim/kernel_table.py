"""Published kernel microbenchmarks (`benchmarks/kernels/*.yaml`): the only data that sets the cost
model's efficiency curves (docs/cost-model.md "Kernel calibration").

A table file is

    description: what the table holds
    sources: {tag: "repository + file/section + date, or paper + table/figure"}
    rows:
      - {op: gemm, hw: h800, m: 64, n: 2112, k: 7168, dtype: fp8, tflops: 206, source: tag}

Each row is a `KernelShape` plus exactly one measured figure (`seconds`, `tflops` or `gbps`), the
tag of its source, and `derived:` where anything in it was not printed by the source (a shape read
from a plot, a figure computed from a ratio). `check_*` fields hold a second figure printed beside
the measured one (e.g. DeepGEMM's GB/s column), which the loader checks against the shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from codesign import spec_files
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.sim.kernel import KernelPrediction, KernelShape, predict

KERNEL_DIR = spec_files.ROOT / "benchmarks" / "kernels"
METRICS = ("seconds", "tflops", "gbps")
# Kernel libraries a matrix row's source ran (what `library:` may name): DeepGEMM, TileLang,
# cuBLAS (BF16/FP16 `torch.mm` / `F.linear`), cuBLASLt (per-tensor FP8 `torch._scaled_mm`,
# TensorRT-LLM's FP8 GEMM plugin), CUTLASS (vLLM's `cutlass_scaled_mm`, FBGEMM's and ATen's
# row-wise FP8 kernels), hipBLASLt, CK (AMD's Composable Kernel, as AITER's tuned GEMMs run it).
LIBRARIES = ("deepgemm", "tilelang", "cublas", "cublaslt", "cutlass", "hipblaslt", "ck")


class KernelRow(KernelShape):
    seconds: float | None = Field(default=None, gt=0)
    tflops: float | None = Field(default=None, gt=0)
    gbps: float | None = Field(default=None, gt=0)  # GB/s (1e9 bytes/s); what is counted: docs/cost-model.md
    check_gbps: float | None = Field(default=None, gt=0)  # second published column (consistency check)
    source: str
    derived: str | None = None  # what in this row is not printed by the source, and how it was obtained
    note: str | None = None
    # Matrix rows: the kernel library the source ran (`LIBRARIES`); none where the table's
    # description names it for every row (DeepGEMM, TileLang, AMD's MAF).
    library: Literal[LIBRARIES] | None = None  # type: ignore[valid-type]
    # The board power limit the source states, watts (an H100 SXM capped at 500 W is a different
    # operating point from the 700 W TDP the spec describes: such rows are shown, never fitted).
    power_w: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_measurement(self) -> "KernelRow":
        given = [m for m in METRICS if getattr(self, m) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(METRICS)}, found {len(given)}")
        return self

    @property
    def metric(self) -> str:
        return next(m for m in METRICS if getattr(self, m) is not None)

    @property
    def measured(self) -> float:
        return float(getattr(self, self.metric))


class KernelTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    sources: dict[str, str] = Field(min_length=1)
    rows: list[KernelRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _sources_known(self) -> "KernelTable":
        for i, r in enumerate(self.rows):
            if r.source not in self.sources:
                raise ValueError(f"rows.{i}.source: unknown tag {r.source!r}; expected one of {', '.join(self.sources)}")
        return self


@dataclass(frozen=True)
class KernelResult:
    file: str
    index: int
    row: KernelRow
    predicted: KernelPrediction

    @property
    def predicted_value(self) -> float:
        return float(getattr(self.predicted, self.row.metric))

    @property
    def error(self) -> float:
        return (self.predicted_value - self.row.measured) / self.row.measured

    def label(self) -> str:
        r = self.row
        if r.op == "gemm":
            shape = f"{r.m}x{r.n}x{r.k}" + (f" {r.library}" if r.library else "") + (
                f" {r.gemm_kernel}" if r.gemm_kernel else "") + (f" {r.power_w:g}W" if r.power_w else "")
        elif r.op == "grouped_gemm":
            shape = f"{r.groups}x{r.m}x{r.n}x{r.k}"
        elif r.op == "fused_moe":
            kernel = f" {r.moe_kernel}" if r.moe_kernel else ""
            ep = f" ep{r.ranks}" if r.ranks else ""
            shape = f"E{r.groups} k{r.top_k} {r.hidden}x{r.n}{ep} {r.tokens}tok{kernel}"
        elif r.op == "attention":
            shape = f"b{r.batch} h{r.heads}/{r.kv_heads or r.heads} d{r.head_dim} q{r.seq_q} kv{r.seq_kv}" + (
                f" {r.attention_kernel}" if r.attention_kernel else "")
        elif r.op == "mla":
            shape = f"b{r.batch} h{r.heads} q{r.seq_q} kv{r.seq_kv} {r.phase} {r.mla_call}" + (
                f" {r.mla_form}" if r.mla_form else "")
        elif r.op == "gdn_chunk":
            shape = f"b{r.batch} t{r.seq_q} h{r.kv_heads or r.heads}/{r.heads} d{r.head_dim}"
        elif r.op == "gdn_recurrent":
            shape = f"b{r.batch} h{r.kv_heads or r.heads}/{r.heads} d{r.head_dim}"
        elif r.op == "gdn_conv":
            shape = f"{r.phase} b{r.batch} t{r.seq_q} h{r.kv_heads or r.heads}/{r.heads} d{r.head_dim}"
        elif r.op == "rmsnorm":
            shape = f"{r.tokens}x{r.hidden}"
        elif r.op == "all_to_all":
            shape = f"ep{r.ranks} {r.tokens}tok {r.algorithm or 'normal'}"
        else:
            shape = f"n{r.ranks} {r.bytes:.3g}B {r.algorithm or 'auto'}"
        return f"{r.op} {r.hw} {r.dtype} {shape}"


def _check_columns(row: KernelRow, source: str) -> None:
    """A second printed column must agree with the measured one and the shape (catches a
    mistyped figure): GB/s = (A + B + C bytes) / (FLOPs / TFLOPS) for matrix kernels."""
    if row.check_gbps is None or row.tflops is None or row.op not in ("gemm", "grouped_gemm"):
        return
    from codesign.sim.kernel import build_op

    op = build_op(row)
    seconds = op.flops / (row.tflops * 1e12)
    implied = op.bytes_total / seconds / 1e9
    if abs(implied - row.check_gbps) > 0.01 * row.check_gbps:
        raise CodesignError(f"{source}: check_gbps: expected about {implied:.0f} from tflops and the shape, "
                            f"found {row.check_gbps:g}")


def load_table(path: str | Path) -> KernelTable:
    path = Path(path)
    table = spec_files.validate(KernelTable, spec_files.read_yaml(path), str(path))
    for i, r in enumerate(table.rows):
        _check_columns(r, f"{path}: rows.{i}")
    return table


def table_files(folder: str | Path | None = None) -> list[Path]:
    d = Path(folder) if folder else KERNEL_DIR
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise CodesignError(f"{d}: no kernel tables (*.yaml)")
    return files


def validate_kernels(folder: str | Path | None = None, hw_overrides: dict | None = None) -> list[KernelResult]:
    """Predict every row of every table in `folder` (default benchmarks/kernels/).

    `hw_overrides` maps a spec name to an already-built `HardwareSpec` (the fit uses it to try
    candidate efficiencies without writing files)."""
    specs: dict[str, object] = dict(hw_overrides or {})
    out = []
    for f in table_files(folder):
        table = load_table(f)
        for i, r in enumerate(table.rows):
            hw = specs.get(r.hw)
            if hw is None:
                hw = specs[r.hw] = load_hw(r.hw)
            try:
                p = predict(r, hw)
            except CodesignError as e:
                raise CodesignError(f"{f}: rows.{i}: {e}") from None
            out.append(KernelResult(str(f.name), i, r, p))
    return out


def kernel_mape(results: list[KernelResult]) -> float:
    return sum(abs(r.error) for r in results) / len(results) if results else float("nan")
