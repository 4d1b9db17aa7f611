"""Result rows: the JSON keys of the design brief, to JSON and to pandas.

One `Result` per design point and context. Infeasible designs (does not fit, plan does not divide,
misses an SLO, unsupported mode) are rows with `feasible = False`, a one-line `reason` and a
`reason_code` (one of `REASON_CODES`, set where the reason is made), never exceptions.
Key order and names are the stable contract (`--json`, notebooks, golden tests, sweep stores): the
brief's keys first, then the ones added after it.

Rows are deterministic except `sim_wall_s` (how long the evaluation took): it is left out of
`deterministic_dict()` and of equality, so two runs of one point give identical rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Literal, Mapping

import pandas as pd

PLAN_KEYS = ("tp", "ep", "pp", "dp", "attention_dp")
MEMORY_KEYS = ("weights", "kv_cache", "state", "activations", "total", "capacity")
# Why a row is infeasible: it does not fit in memory (capacity), the plan does not divide the
# model or the chips (divisibility), it misses a service-level objective (slo), or the mode or a
# field is not modelled yet (unsupported).
ReasonCode = Literal["capacity", "divisibility", "slo", "unsupported"]
REASON_CODES: tuple[str, ...] = ("capacity", "divisibility", "slo", "unsupported")
NONDETERMINISTIC_KEYS = ("sim_wall_s",)


class Distribution(dict):
    """A latency distribution in seconds: {mean, p50, p90, p99}. A dict (JSON and older readers
    see the mapping they always did) with attribute access (`d.p99`). The steady-state modes give
    one value for all four (`Distribution.single`); request-level serving fills them apart."""

    KEYS = ("mean", "p50", "p90", "p99")

    def __init__(self, mean: Any = None, p50: float | None = None, p90: float | None = None,
                 p99: float | None = None) -> None:
        if isinstance(mean, Mapping) or (mean is not None and not isinstance(mean, (int, float))):
            pairs = dict(mean)  # from a mapping or (key, value) pairs, as dataclasses.asdict copies
            unknown = set(pairs) - set(self.KEYS)
            if unknown:
                raise ValueError(f"Distribution: unknown keys {sorted(unknown)}; expected {', '.join(self.KEYS)}")
            super().__init__((k, pairs.get(k)) for k in self.KEYS)
        else:
            super().__init__(mean=mean, p50=p50, p90=p90, p99=p99)

    @classmethod
    def single(cls, value: float | None) -> "Distribution":
        return cls(value, value, value, value)

    @property
    def mean(self) -> float | None:
        return self["mean"]

    @property
    def p50(self) -> float | None:
        return self["p50"]

    @property
    def p90(self) -> float | None:
        return self["p90"]

    @property
    def p99(self) -> float | None:
        return self["p99"]


def _stats(value: float | None = None) -> Distribution:
    return Distribution.single(value)


@dataclass
class Result:
    """One design point's outcome. Units are in the key names (seconds, tokens/s, GiB, USD, J)."""

    name: str
    feasible: bool
    reason: str | None
    hardware: str
    model: str
    chips: int
    plan: dict[str, int] = field(default_factory=lambda: {k: 1 for k in PLAN_KEYS})
    output_tokens_per_s: float | None = None
    input_tokens_per_s: float | None = None
    output_tokens_per_s_per_chip: float | None = None
    ttft_s: Distribution = field(default_factory=_stats)
    tpot_s: Distribution = field(default_factory=_stats)
    concurrency: int | None = None
    memory_per_chip_gib: dict[str, float | None] = field(default_factory=lambda: {k: None for k in MEMORY_KEYS})
    bottleneck: str | None = None
    # Wall-clock seconds of the evaluation: not deterministic, so not compared and not in
    # deterministic_dict().
    sim_wall_s: float = field(default=0.0, compare=False)
    # Beyond the brief's keys (kept after them): the context and workload mode of this row.
    context: int | None = None
    mode: str | None = None
    # Why an infeasible row is infeasible (REASON_CODES); None for feasible rows.
    reason_code: ReasonCode | None = None
    # Cost and energy per token: spec `cost.per_hour` x chips over output tokens per hour, and
    # output tokens per joule at `power.tdp` x `power.utilisation` per chip. None without output.
    usd_per_million_output_tokens: float | None = None
    output_tokens_per_joule: float | None = None
    # Identity of the inputs (codesign.point_hash) and the dotted-path overrides that made them
    # from their base point (codesign.override); {} when none.
    point_hash: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    # The per-resource/per-block time breakdown of the decode step (seconds per step).
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    # Server-mode figures (codesign.sim.serving): ITL, end-to-end, queueing, goodput, the SLO
    # search, concurrency and KV-use series, ... (docs/serving.md); empty for steady-state modes.
    serving: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def deterministic_dict(self) -> dict[str, Any]:
        """`to_dict()` without the wall-clock keys: equal for equal inputs, bit for bit."""
        d = self.to_dict()
        for k in NONDETERMINISTIC_KEYS:
            d.pop(k, None)
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        """A row back from `to_dict()` (e.g. read from a sweep store)."""
        d = dict(d)
        for k in ("ttft_s", "tpot_s"):
            v = d.get(k)
            if isinstance(v, dict):
                d[k] = Distribution(v)
        return cls(**d)


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN or infinity; rows
    from `simulate` never hold one, see `check_row`, but a hand-built row must still print)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _numbers(prefix: str, value: Any) -> Iterable[tuple[str, float]]:
    """(dotted key, value) of every float in a row (nested mappings walked, and dataclass
    instances as `asdict` gives them: `_numbers("", row)` yields what `_numbers("", row.to_dict())`
    does, without copying the row)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, float):
        yield prefix, value
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _numbers(f"{prefix}.{f.name}" if prefix else f.name, getattr(value, f.name))


def check_row(r: Result) -> Result:
    """`r` itself, or a `CodesignError` when its numbers cannot be a result: any NaN or infinity,
    or a feasible row whose throughput or step times are not positive (a zero-token or zero-time
    "success" means the inputs fall outside what the cost model covers, never a real design)."""
    from codesign.errors import CodesignError

    where = f"{r.name}: simulate on {r.hardware} / {r.model}"
    for key, v in _numbers("", r):
        if not math.isfinite(v):
            raise CodesignError(f"{where}: {key}: expected a finite number, found {v!r} (inputs outside the "
                                "range the cost model covers)")
    if r.feasible:
        rate_key = "input_tokens_per_s" if r.mode == "prefill" else "output_tokens_per_s"
        checks = [(rate_key, getattr(r, rate_key)), ("ttft_s.mean", r.ttft_s.get("mean")),
                  ("tpot_s.mean", r.tpot_s.get("mean"))]
        for key, v in checks:
            if v is not None and not v > 0:
                raise CodesignError(f"{where}: {key}: expected a positive number for a feasible design, "
                                    f"found {v!r} (inputs outside the range the cost model covers)")
        if getattr(r, rate_key) is None:
            raise CodesignError(f"{where}: {rate_key}: expected a positive number for a feasible design, found none")
    return r


def infeasible(name: str, reason: str, hardware: str, model: str, chips: int, plan: dict | None = None,
               memory: dict | None = None, context: int | None = None, mode: str | None = None,
               sim_wall_s: float = 0.0, reason_code: ReasonCode = "unsupported") -> Result:
    """A row for a design that cannot run, with the reason in one line and its code. A capacity
    row's bottleneck is "capacity"."""
    if reason_code not in REASON_CODES:
        raise ValueError(f"reason_code: expected one of {', '.join(REASON_CODES)}, found {reason_code!r}")
    r = Result(name=name, feasible=False, reason=reason, hardware=hardware, model=model, chips=chips,
               context=context, mode=mode, sim_wall_s=sim_wall_s, reason_code=reason_code,
               bottleneck="capacity" if reason_code == "capacity" else None)
    if plan:
        r.plan = {k: int(plan.get(k, 1)) for k in PLAN_KEYS}
    if memory:
        r.memory_per_chip_gib = {k: memory.get(k) for k in MEMORY_KEYS}
    return check_row(r)


def results_to_json(results: Iterable[Result], indent: int | None = 2) -> str:
    """A JSON list of result objects."""
    return json.dumps([json_safe(r.to_dict()) for r in results], indent=indent, allow_nan=False)


def flat_row(r: Result) -> dict[str, Any]:
    """One row's flattened columns: nested mappings as `plan.tp`, `ttft_s.p99`,
    `memory_per_chip_gib.total`; `overrides` as a JSON string; the breakdown left out."""
    d = r.to_dict()
    d.pop("breakdown", None)
    d.pop("serving", None)
    d["overrides"] = json.dumps(d.get("overrides") or {}, sort_keys=True)
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


def results_to_dataframe(results: Iterable[Result]) -> pd.DataFrame:
    """One row per result; nested mappings flattened to `plan.tp`, `ttft_s.p99`,
    `memory_per_chip_gib.total`, ... (the breakdown and the server-mode `serving` figures are left
    out: per-step detail and series)."""
    rows = [flat_row(r) for r in results]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows)


__all__ = ["Result", "Distribution", "infeasible", "check_row", "json_safe", "results_to_json", "results_to_dataframe",
           "flat_row", "PLAN_KEYS", "MEMORY_KEYS", "REASON_CODES", "ReasonCode", "NONDETERMINISTIC_KEYS"]
