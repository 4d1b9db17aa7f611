"""Scenario files: one deployment question each (hardware, chips, model, precision, plan, workload).

A file holds one mapping or a list of them (schema: docs/simulator.md and the design brief).
Validation is strict: unknown keys, wrong types and bad values are `CodesignError`s with one line
naming the file, the scenario (for lists) and the field, the expected and the found value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from codesign import spec_files
from codesign.errors import CodesignError, format_validation_error
from codesign.limits import MAX_BATCH, MAX_CHIPS, MAX_TOKENS
from codesign.spec_files import Int, StrictModel
from codesign.units import parse_tokens

Mode = Literal["offline", "server", "batch", "decode", "prefill"]


_Strict = StrictModel  # unknown keys are errors; no NaN or infinity
Tokens = Annotated[Int, Field(ge=1, le=MAX_TOKENS)]
Batch = Annotated[Int, Field(ge=1, le=MAX_BATCH)]
Seconds = Annotated[float, Field(gt=0, le=1e6)]


def _tokens(v: Any) -> Any:
    """A token count ("32k", 4096) through `parse_tokens`; a mapping is left to `TokenDist`."""
    if isinstance(v, (dict, TokenDist)):
        return v
    try:
        return parse_tokens(v)
    except ValueError as e:
        raise ValueError(str(e)) from None


class TokenDist(_Strict):
    """A token count with a distribution; the steady-state simulator uses the mean."""

    mean: Tokens
    dist: Literal["fixed", "uniform", "normal", "lognormal", "exponential"] = "fixed"

    _mean = field_validator("mean", mode="before")(_tokens)


class MTP(_Strict):
    """Multi-token prediction: `tokens` drafted per step, each accepted with `acceptance`."""

    tokens: Annotated[Int, Field(ge=1, le=64)] = 1
    acceptance: float = Field(default=0.8, ge=0, le=1)


class Workload(_Strict):
    mode: Mode = "decode"
    input_tokens: Tokens | TokenDist = Field(default=32_768)  # mean context per request
    output_tokens: Tokens | TokenDist = Field(default=1024)
    concurrency: Batch | None = None  # batch mode
    rate_per_s: float | None = Field(default=None, gt=0, le=1e9)  # server mode
    # Running-batch cap for the whole deployment (sequences in flight, summed over data-parallel
    # replicas): serving engines bound it (TensorRT-LLM max_batch_size, MLPerf gpu_batch_size, vLLM
    # max_num_seqs), so offline/decode use min(largest that fits, max_batch). None: no cap.
    max_batch: Batch | None = None
    mtp: MTP | None = None

    _tok = field_validator("input_tokens", "output_tokens", mode="before")(_tokens)

    @property
    def input_mean(self) -> int:
        return self.input_tokens.mean if isinstance(self.input_tokens, TokenDist) else int(self.input_tokens)

    @property
    def output_mean(self) -> int:
        return self.output_tokens.mean if isinstance(self.output_tokens, TokenDist) else int(self.output_tokens)


class SLO(_Strict):
    ttft_s: Seconds | None = None
    tpot_s: Seconds | None = None


class Measured(_Strict):
    """Published measurements (validation files only); any subset."""

    output_tokens_per_s: float | None = Field(default=None, gt=0)
    input_tokens_per_s: float | None = Field(default=None, gt=0)
    tpot_s: Seconds | None = None
    ttft_s: Seconds | None = None


class Scenario(_Strict):
    name: str = Field(min_length=1)
    hardware: str  # name in hw_specs/ or a path
    chips: Annotated[Int, Field(ge=1, le=MAX_CHIPS)] | None = None  # default: the spec's system size
    model: str  # name in model_graphs/ or a path
    precision: dict[str, Any] = {}  # codesign.mapping.Precision fields
    parallel: Literal["auto"] | dict[str, Int | Literal["auto"]] = "auto"  # values checked by ParallelPlan
    workload: Workload = Workload()
    slo: SLO | None = None
    measured: Measured | None = None
    cost: dict[str, Any] = {}  # cost-model overrides (codesign.sim.cost.CostOptions fields)
    notes: str | None = None


def _check_parts(s: Scenario, source: str) -> None:
    """Precision, plan and cost-model fields are owned by their modules: validate through them."""
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.sim.cost import CostOptions

    try:
        Precision.from_dict(s.precision or None)
        if isinstance(s.parallel, dict):
            ParallelPlan.from_dict(s.parallel)
        CostOptions.from_dict(s.cost or None)
    except (CodesignError, TypeError) as e:
        raise CodesignError(f"{source}: {e}") from None
    w = s.workload
    if w.mode == "batch" and w.concurrency is None:
        raise CodesignError(f"{source}: workload.concurrency: required for mode 'batch', found nothing")
    if w.concurrency is not None and w.max_batch is not None and w.concurrency > w.max_batch:
        raise CodesignError(f"{source}: workload.concurrency: expected at most workload.max_batch = {w.max_batch}, found {w.concurrency}")


def parse_scenarios(data: Any, source: str) -> list[Scenario]:
    """Scenarios from parsed YAML (one mapping or a list of mappings)."""
    if data is None:
        raise CodesignError(f"{source}: empty scenario file; expected a mapping or a list of mappings")
    items = data if isinstance(data, list) else [data]
    if not items:
        raise CodesignError(f"{source}: empty scenario list")
    out = []
    names: set[str] = set()
    for i, item in enumerate(items):
        where = source if not isinstance(data, list) else f"{source}[{i}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            where = f"{source}: {item['name']}" if isinstance(data, list) else source
        if not isinstance(item, dict):
            raise CodesignError(f"{where}: expected a mapping of scenario fields, found {type(item).__name__}")
        try:
            s = Scenario.model_validate(item)
        except ValidationError as e:
            raise CodesignError(format_validation_error(where, e)) from None
        _check_parts(s, where)
        if s.name in names:
            raise CodesignError(f"{where}: name: duplicate scenario name {s.name!r}")
        names.add(s.name)
        out.append(s)
    return out


def load_scenarios(path: str | Path) -> list[Scenario]:
    """All scenarios of a YAML file."""
    p = Path(path)
    if not spec_files.is_file(p):
        raise CodesignError(f"{spec_files.shown(p)}: no such scenario file")
    return parse_scenarios(spec_files.read_yaml(p), str(p))


__all__ = ["Scenario", "Workload", "SLO", "Measured", "MTP", "TokenDist", "load_scenarios", "parse_scenarios"]
