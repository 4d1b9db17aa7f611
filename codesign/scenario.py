"""Scenario files: one deployment question each (hardware, chips, model, precision, plan, workload).

A file holds one mapping or a list of them (schema: docs/simulator.md and the design brief).
Validation is strict: unknown keys, wrong types and bad values are `CodesignError`s with one line
naming the file, the scenario (for lists) and the field, the expected and the found value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

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
    """A token count with a distribution. Server mode draws from it; offline and batch modes use an
    output-length distribution's mean and cv (the token-weighted decode context,
    `codesign.sim.workload.decode_context`); other steady-state modes take `dist: fixed` only.
    `cv`: coefficient of variation; defaults per distribution in codesign.sim.serving.arrivals."""

    mean: Tokens
    dist: Literal["fixed", "uniform", "normal", "lognormal", "exponential"] = "fixed"
    cv: float | None = Field(default=None, gt=0)

    _mean = field_validator("mean", mode="before")(_tokens)


class MTP(_Strict):
    """Multi-token prediction: `tokens` drafted per step; `acceptance` the probability that a draft
    position is accepted given the previous one was (one value for all, or one per position)."""

    tokens: Annotated[Int, Field(ge=1, le=64)] = 1
    acceptance: float | list[float] = Field(default=0.8)

    @field_validator("acceptance")
    @classmethod
    def _acceptance(cls, v: float | list[float]) -> float | list[float]:
        vals = v if isinstance(v, list) else [v]
        if not vals or any(not 0 <= a <= 1 for a in vals):
            raise ValueError(f"expected a probability in [0, 1] or a non-empty list of them, found {v!r}")
        return v


class EngineSpec(_Strict):
    """``workload.engine`` as a mapping: a table engine (`codesign.sim.host_overhead.ENGINES`) by
    `name` with any figure overridden, or a custom engine (no name: unset figures are zero,
    synchronous, one forward pass per scheduler call). Seconds per scheduler iteration."""

    name: str | None = Field(default=None, min_length=1)
    step_s: float | None = Field(default=None, ge=0.0, le=10.0)
    per_seq_s: float | None = Field(default=None, ge=0.0, le=1.0)
    detokenize_per_seq_s: float | None = Field(default=None, ge=0.0, le=1.0)
    overlap: bool | None = None
    multi_step: Annotated[Int, Field(ge=1, le=1024)] | None = None
    detokenize: bool | None = None  # the requests are detokenised (None: the engine's default, yes)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        from codesign.sim.host_overhead import ENGINES

        if v is not None and v not in ENGINES:
            raise ValueError(f"expected one of {', '.join(sorted(ENGINES))} (or no name and the figures "
                             f"step_s / per_seq_s of a custom engine), found {v!r}")
        return v

    @model_validator(mode="after")
    def _detok_within_per_seq(self) -> "EngineSpec":
        if (self.per_seq_s is not None and self.detokenize_per_seq_s is not None
                and self.detokenize_per_seq_s > self.per_seq_s):
            raise ValueError(f"detokenize_per_seq_s ({self.detokenize_per_seq_s}) is the detokenisation share of "
                             f"per_seq_s ({self.per_seq_s}): expected at most per_seq_s")
        return self


class Workload(_Strict):
    mode: Mode = "decode"
    input_tokens: Tokens | TokenDist = Field(default=32_768)  # mean context per request
    output_tokens: Tokens | TokenDist = Field(default=1024)
    concurrency: Batch | None = None  # batch mode
    rate_per_s: float | None = Field(default=None, gt=0, le=1e9)  # server mode
    # How requests at `rate_per_s` arrive (server mode): exponential gaps, or fixed intervals of
    # 1 / rate (guidellm's constant profile); the SLO search's rates use it too.
    arrival: Literal["poisson", "constant"] = "poisson"
    # Running-batch cap for the whole deployment (sequences in flight, summed over data-parallel
    # replicas): serving engines bound it (TensorRT-LLM max_batch_size, MLPerf gpu_batch_size, vLLM
    # max_num_seqs), so offline/decode use min(largest that fits, max_batch). None: no cap.
    max_batch: Batch | None = None
    mtp: MTP | None = None
    # The serving engine whose per-iteration host overhead applies (codesign.sim.host_overhead):
    # a name from its ENGINES table, or an EngineSpec mapping. None: no host overhead.
    engine: EngineSpec | None = None
    # Request streams (server mode, codesign.sim.serving): how many requests, a replayed trace
    # file, the seed of every random draw, and the scheduler's knobs (SchedulerConfig fields).
    requests: int | None = Field(default=None, gt=0)
    trace: str | None = None
    seed: int = Field(default=0, ge=0)
    scheduler: dict[str, Any] = {}
    disaggregation: dict[str, Any] = {}  # prefill/decode pools (codesign.sim.serving.config)
    step_model: dict[str, Any] = {}  # step-time model resolution (codesign.sim.serving.steptime)
    slo_search: dict[str, Any] = {}  # the SLO search's offline ceiling (codesign.sim.serving.ceiling)
    frontend: dict[str, Any] = {}  # the request path in front of the engine (codesign.sim.serving.frontend)

    _tok = field_validator("input_tokens", "output_tokens", mode="before")(_tokens)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_name(cls, v: Any) -> Any:
        """``engine: NAME`` is ``engine: {name: NAME}``."""
        if isinstance(v, str):
            return {"name": v}
        if v is not None and not isinstance(v, (dict, EngineSpec)):
            raise ValueError(f"expected an engine name or a mapping of engine figures, found {v!r}")
        return v

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
    tpot_s: Seconds | None = None  # mean time per output token
    ttft_s: Seconds | None = None  # mean time to first token
    tpot_p50_s: Seconds | None = None  # medians (benchmark clients report both)
    ttft_p50_s: Seconds | None = None
    e2e_s: Seconds | None = None  # mean end-to-end request latency (server mode)
    e2e_p50_s: Seconds | None = None
    requests_per_s: float | None = Field(default=None, gt=0)  # completed requests / duration (server mode)


class Scenario(_Strict):
    name: str = Field(min_length=1)
    hardware: str  # name in hw_specs/ or a path
    chips: Annotated[Int, Field(ge=1, le=MAX_CHIPS)] | None = None  # default: the spec's system size
    model: str  # name in model_graphs/ or a path
    precision: dict[str, Any] = {}  # codesign.mapping.Precision fields
    parallel: Literal["auto"] | dict[str, Int | Literal["auto"] | list[Int]] = "auto"  # ParallelPlan fields, checked there
    workload: Workload = Workload()
    slo: SLO | None = None
    measured: Measured | None = None
    cost: dict[str, Any] = {}  # cost-model overrides (codesign.sim.cost.CostOptions fields)
    mapping: dict[str, Any] = {}  # mapping options (codesign.mapping.options.MappingOptions fields)
    notes: str | None = None


STEADY_STATE_MODES = ("offline", "batch", "decode", "prefill")


def unsupported(w: Workload, slo: SLO | None = None) -> str | None:
    """One line naming the first parsed field that the workload's mode does not act on, or None.

    Steady-state modes (offline, batch, decode, prefill) have no arrival process and simulate the
    mean token counts: multi-token prediction, token-count distributions and arrival rates belong
    to server mode and are refused elsewhere, never silently dropped."""
    mode = w.mode
    if mode == "server":
        if w.engine is not None:
            return ("workload.engine: not yet supported in mode 'server' (the host overhead acts in the "
                    "steady-state modes offline, batch, decode and prefill)")
        if w.arrival != "poisson":
            if w.trace is not None:
                return (f"workload.arrival: {w.arrival!r} with workload.trace: a trace gives its own arrival "
                        "times (expected the default 'poisson', which then does not act, or no trace)")
            searching = slo is not None and bool(slo.ttft_s or slo.tpot_s)
            if w.rate_per_s is None and not searching:
                return (f"workload.arrival: {w.arrival!r} needs workload.rate_per_s (or an SLO search over "
                        "rates); without either the requests are sent at once")
        if w.max_batch is not None:  # the scheduler's own cap acts there, per engine
            return ("workload.max_batch: not yet supported in mode 'server': the running-batch cap of a request stream "
                    "is workload.scheduler.max_num_seqs (per engine, i.e. per data-parallel replica)")
        return None
    where = f"in steady-state mode {mode!r}"
    if w.mtp is not None:
        return f"workload.mtp: not yet supported {where} (multi-token prediction belongs to server mode)"
    for name in ("input_tokens", "output_tokens"):
        t = getattr(w, name)
        if isinstance(t, TokenDist) and t.cv is not None and t.dist in ("fixed", "exponential"):
            if t.dist == "fixed":
                return (f"workload.{name}.cv: a fixed length has no spread; expected no cv, or dist uniform, "
                        f"normal, lognormal or exponential, found cv {t.cv} with dist 'fixed'")
            if abs(t.cv - 1.0) > 1e-9:
                return f"workload.{name}.cv: an exponential distribution has cv 1 by definition, found {t.cv}"
        # An output-length distribution acts in offline and batch modes through the token-weighted
        # decode context (codesign.sim.workload.decode_context); elsewhere only server mode uses one.
        if name == "output_tokens" and mode in ("offline", "batch"):
            continue
        if isinstance(t, TokenDist) and t.dist != "fixed":
            return (f"workload.{name}.dist: not yet supported {where}: found {t.dist!r}, expected 'fixed' "
                    "(length distributions belong to server mode; an output-length distribution also "
                    "acts in offline and batch modes)")
    if w.rate_per_s is not None:
        return f"workload.rate_per_s: not yet supported {where} (an arrival rate belongs to server mode)"
    if w.arrival != "poisson":
        return f"workload.arrival: not yet supported {where} (an arrival process belongs to server mode)"
    if w.concurrency is not None and mode != "batch":
        return f"workload.concurrency: not yet supported {where} (a fixed concurrency is mode 'batch')"
    if slo is not None and slo.tpot_s is not None and mode == "prefill":
        return "slo.tpot_s: not yet supported in mode 'prefill' (prefill produces no output tokens)"
    return None


def check_workload(w: Workload, slo: SLO | None, source: str) -> None:
    """The cross-field rules of a workload: `CodesignError` naming the field, else nothing."""
    why = unsupported(w, slo)
    if why is not None:
        raise CodesignError(f"{source}: {why}")
    if w.mode == "batch" and w.concurrency is None:
        raise CodesignError(f"{source}: workload.concurrency: required for mode 'batch', found nothing")
    if w.concurrency is not None and w.max_batch is not None and w.concurrency > w.max_batch:
        raise CodesignError(f"{source}: workload.concurrency: expected at most workload.max_batch = {w.max_batch}, found {w.concurrency}")


def _check_parts(s: Scenario, source: str) -> None:
    """Precision, plan, cost-model and mapping fields are owned by their modules: validate through them."""
    from codesign.mapping.options import MappingOptions
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.sim.cost import CostOptions

    try:
        Precision.from_dict(s.precision or None)
        if isinstance(s.parallel, dict):
            ParallelPlan.from_dict(s.parallel)
        CostOptions.from_dict(s.cost or None)
        MappingOptions.from_dict(s.mapping or None)
    except (CodesignError, TypeError) as e:
        raise CodesignError(f"{source}: {e}") from None
    check_workload(s.workload, s.slo, source)
    from codesign.sim.serving.config import check_workload as check_serving

    check_serving(s.workload, source, s.slo)  # the server-mode fields (request streams, scheduler, pools, MTP)




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


__all__ = ["unsupported", "check_workload", "STEADY_STATE_MODES", "Scenario", "Workload", "EngineSpec", "SLO", "Measured", "MTP", "TokenDist", "load_scenarios", "parse_scenarios"]
