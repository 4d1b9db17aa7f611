"""Result rows: the JSON keys of the design brief, to JSON and to pandas.

One `Result` per scenario and context. Infeasible designs (does not fit, plan does not divide,
unsupported mode) are rows with `feasible = False` and a one-line `reason`, never exceptions.
Key order and names are the stable contract (`--json`, notebooks, golden tests).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import pandas as pd

PLAN_KEYS = ("tp", "ep", "pp", "dp", "attention_dp")
MEMORY_KEYS = ("weights", "kv_cache", "state", "activations", "total", "capacity")


def _stats(value: float | None = None) -> dict[str, float | None]:
    """{mean, p50, p99} of a latency; the steady-state simulator gives one value for all three."""
    return {"mean": value, "p50": value, "p99": value}


@dataclass
class Result:
    """One design point's outcome. Units are in the key names (seconds, tokens/s, GiB)."""

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
    ttft_s: dict[str, float | None] = field(default_factory=_stats)
    tpot_s: dict[str, float | None] = field(default_factory=_stats)
    concurrency: int | None = None
    memory_per_chip_gib: dict[str, float | None] = field(default_factory=lambda: {k: None for k in MEMORY_KEYS})
    bottleneck: str | None = None
    sim_wall_s: float = 0.0
    # Beyond the brief's keys (kept after them): the context and workload mode of this row, and
    # the per-resource/per-block time breakdown of the decode step (seconds per step).
    context: int | None = None
    mode: str | None = None
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=indent, allow_nan=False)


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
    """(dotted key, value) of every float in a row (nested mappings walked)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, float):
        yield prefix, value


def check_row(r: Result) -> Result:
    """`r` itself, or a `CodesignError` when its numbers cannot be a result: any NaN or infinity,
    or a feasible row whose throughput or step times are not positive (a zero-token or zero-time
    "success" means the inputs fall outside what the cost model covers, never a real design)."""
    from codesign.errors import CodesignError

    where = f"{r.name}: simulate on {r.hardware} / {r.model}"
    for key, v in _numbers("", r.to_dict()):
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
               sim_wall_s: float = 0.0) -> Result:
    """A row for a design that cannot run, with the reason in one line."""
    r = Result(name=name, feasible=False, reason=reason, hardware=hardware, model=model, chips=chips,
               context=context, mode=mode, sim_wall_s=sim_wall_s, bottleneck="capacity" if "short by" in reason else None)
    if plan:
        r.plan = {k: int(plan.get(k, 1)) for k in PLAN_KEYS}
    if memory:
        r.memory_per_chip_gib = {k: memory.get(k) for k in MEMORY_KEYS}
    return check_row(r)


def results_to_json(results: Iterable[Result], indent: int | None = 2) -> str:
    """A JSON list of result objects."""
    return json.dumps([json_safe(r.to_dict()) for r in results], indent=indent, allow_nan=False)


def results_to_dataframe(results: Iterable[Result]) -> pd.DataFrame:
    """One row per result; nested mappings flattened to `plan.tp`, `ttft_s.p99`,
    `memory_per_chip_gib.total`, ... (the breakdown is left out: it is per-step detail)."""
    rows = []
    for r in results:
        d = r.to_dict()
        d.pop("breakdown", None)
        rows.append(d)
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize(rows, sep=".")


__all__ = ["Result", "infeasible", "check_row", "json_safe", "results_to_json", "results_to_dataframe", "PLAN_KEYS", "MEMORY_KEYS"]
