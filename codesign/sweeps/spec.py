"""Sweep definitions: a base point and the dotted paths to vary, from a YAML file or from Python.

    name: hbm-x-sram
    base:                      # a scenario mapping (docs/simulator.md); name optional
      hardware: moe-concept
      model: qwen3.5-397b-a17b
      parallel: auto
      workload: {mode: decode, input_tokens: 256k}
    grid:                      # dotted path -> list of values (or, with samples, a range)
      chip.hbm.bandwidth: ["8 TB/s", "16 TB/s"]
      chip.sram.capacity: {low: "256 MB", high: "4 GB", log: true}
    samples: 50                # optional: seeded random draws instead of the full grid
    seed: 0
    constraints:               # pandas query expressions over input and result columns
      - "usd_per_million_output_tokens < 5"
    pareto: {maximize: [output_tokens_per_s_per_chip], minimize: [usd_per_million_output_tokens]}

Without `samples` the grid is the Cartesian product of its lists, in file order (the last path
varies fastest). With `samples: N`, N points are drawn with `numpy.random.default_rng(seed)`: a
list is a uniform choice, a range `{low, high, log}` is uniform (log-uniform with `log: true`)
between its ends, whole numbers when the path holds an integer. Ends take units as the file
fields do. Duplicate draws are kept once (same point hash).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codesign import spec_files
from codesign.errors import CodesignError, format_validation_error
from codesign.point import Point, get, override


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A range to draw from (with `samples`): `low` and `high` as the path's field takes them."""

    low: Any
    high: Any
    log: bool = False


class Pareto(_Strict):
    maximize: list[str] = []
    minimize: list[str] = []


class SweepFile(_Strict):
    """A sweep YAML file (see module docstring)."""

    name: str = "sweep"
    base: dict[str, Any] | str  # a scenario mapping, or a scenario file with one entry
    grid: dict[str, list[Any] | Range]
    samples: int | None = Field(default=None, gt=0, le=10_000_000)
    seed: int = 0
    constraints: list[str] = []
    pareto: Pareto | None = None
    executor: str | None = None  # "local" (default), "local:N", "serial", "dask://HOST:PORT"

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, grid: dict[str, Any]) -> dict[str, Any]:
        if not grid:
            raise ValueError("empty grid: give at least one dotted path with a list of values")
        for path, values in grid.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"{path}: empty list of values")
        return grid


def load_sweep(path: str | Path) -> SweepFile:
    p = Path(path)
    if not p.exists():
        raise CodesignError(f"{p}: no such sweep file")
    data = spec_files.read_yaml(p)
    if not isinstance(data, dict):
        raise CodesignError(f"{p}: expected a mapping with base and grid, found {type(data).__name__}")
    try:
        return SweepFile.model_validate(data)
    except ValidationError as e:
        raise CodesignError(format_validation_error(str(p), e)) from None


def base_point(base: Any, source: str, name: str = "sweep", **kwargs: Any) -> Point:
    """The base point of a sweep: a `Point`, a scenario (object, mapping or one-entry file), or a
    hardware name/spec with `simulate()`'s keyword arguments (model, chips, plan, workload...)."""
    from codesign.scenario import Scenario, load_scenarios, parse_scenarios

    if isinstance(base, Point):
        if kwargs:
            raise CodesignError(f"{source}: base is a Point; give changes as grid paths, not {', '.join(kwargs)}")
        return base
    if isinstance(base, Scenario):
        return Point.from_scenario(base)
    if isinstance(base, dict):
        (s,) = parse_scenarios({"name": name, **base}, f"{source}: base")
        return Point.from_scenario(s)
    if isinstance(base, (str, Path)) and str(base).endswith((".yaml", ".yml")) and Path(base).exists() and not kwargs:
        first = spec_files.read_yaml(Path(base))
        if isinstance(first, dict) and "hardware" in first:
            ss = load_scenarios(base)
            if len(ss) != 1:
                raise CodesignError(f"{base}: a sweep base is one scenario, found {len(ss)}")
            return Point.from_scenario(ss[0])
    return Point.from_kwargs(base, **kwargs)


def _resolve(base: Point, path: str, value: Any) -> Any:
    """The value a path holds once `value` is set (units parsed): for drawing between range ends."""
    return get(override(base, {path: value}), path)


def _draw(rng: np.random.Generator, spec: list[Any] | Range, ends: tuple[Any, Any] | None) -> Any:
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    lo, hi = ends
    whole = isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool)
    if spec.log:
        x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        x = rng.uniform(lo, hi)
    return int(round(x)) if whole else float(x)


def _values(path: str, v: Any, source: str) -> list[Any] | Range:
    """A grid entry as a list of plain values (tuples, numpy arrays and scalars accepted) or a Range."""
    if isinstance(v, Range):
        return v
    if isinstance(v, dict):
        try:
            return Range(**v)
        except (TypeError, ValidationError):
            raise CodesignError(f"{source}: grid.{path}: expected {{low, high, log}}, found {v!r}") from None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise CodesignError(f"{source}: grid.{path}: expected a list of values or {{low, high}}, found {v!r}")
    return [x.item() if hasattr(x, "item") and not isinstance(x, (list, dict, str)) else x for x in v]


def variations(base: Point, grid: dict[str, list[Any] | Range], samples: int | None, seed: int,
               source: str = "sweep") -> list[dict[str, Any]]:
    """The override mappings of a sweep (see module docstring), each path checked against the tree."""
    if not grid:
        raise CodesignError(f"{source}: empty grid: give at least one dotted path with a list of values")
    grid = {p: _values(p, v, source) for p, v in grid.items()}
    ends: dict[str, tuple[Any, Any]] = {}
    for path, spec in grid.items():
        if isinstance(spec, list):
            if not spec:
                raise CodesignError(f"{source}: grid.{path}: empty list of values")
            get(base, path)  # an unknown path fails here, naming its neighbours
            continue
        if not isinstance(spec, Range):
            raise CodesignError(f"{source}: grid.{path}: expected a list of values or {{low, high}}, found {spec!r}")
        if samples is None:
            raise CodesignError(f"{source}: grid.{path}: a range needs `samples` (a grid takes lists of values)")
        lo, hi = _resolve(base, path, spec.low), _resolve(base, path, spec.high)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not lo <= hi:
            raise CodesignError(f"{source}: grid.{path}: expected numeric low <= high, found {spec.low!r}, {spec.high!r}")
        if spec.log and lo <= 0:
            raise CodesignError(f"{source}: grid.{path}: a log range needs low > 0, found {spec.low!r}")
        ends[path] = (lo, hi)
    paths = list(grid)
    if samples is None:
        return [dict(zip(paths, combo)) for combo in itertools.product(*(grid[p] for p in paths))]
    rng = np.random.default_rng(seed)
    return [{p: _draw(rng, grid[p], ends.get(p)) for p in paths} for _ in range(samples)]


__all__ = ["SweepFile", "Range", "Pareto", "load_sweep", "base_point", "variations"]
