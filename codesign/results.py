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
    # Server-mode figures (codesign.sim.serving): ITL, end-to-end, queueing, goodput, the SLO
    # search, concurrency and KV-use series, ... (docs/serving.md); empty for steady-state modes.
    serving: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
    return r


def results_to_json(results: Iterable[Result], indent: int | None = 2) -> str:
    """A JSON list of result objects."""
    return json.dumps([r.to_dict() for r in results], indent=indent, allow_nan=False)


def results_to_dataframe(results: Iterable[Result]) -> pd.DataFrame:
    """One row per result; nested mappings flattened to `plan.tp`, `ttft_s.p99`,
    `memory_per_chip_gib.total`, ... (the breakdown and the server-mode `serving` figures are left
    out: per-step detail and series)."""
    rows = []
    for r in results:
        d = r.to_dict()
        d.pop("breakdown", None)
        d.pop("serving", None)
        rows.append(d)
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize(rows, sep=".")


__all__ = ["Result", "infeasible", "results_to_json", "results_to_dataframe", "PLAN_KEYS", "MEMORY_KEYS"]
