"""Design points: one tree of fully resolved inputs, reachable by dotted paths, with a stable hash.

A `Point` is everything one evaluation depends on: the hardware spec, the model config, the chip
count, the parallel plan (or "auto"), the precision, the workload, the SLO, the cost-model options
and the mapping options. Every part validates through pydantic, as the files they come from do.
Build one from a scenario (`Point.from_scenario`), from `simulate()`'s keyword arguments or names
(`design_point(hw, model, ...)`); change it with `override(point, {"chip.hbm.bandwidth": "8 TB/s"})`;
evaluate it with `evaluate(point)`; identify it with `point_hash(point)`.

Dotted paths (docs/point.md lists them all; `leaf_paths(point)` gives a point's):

* ``chip.*``, ``efficiency.*``, ``system.*``, ``power.*`` -- the hardware spec's sections;
  ``price.*`` is the spec's ``cost:`` section (``price.per_hour``, ``price.source``); ``hw.*``
  reaches the whole spec by its own names too (``hw.name``, ``hw.cost.per_hour``).
* ``model.*`` -- the model config (``model.moe.num_experts``).
* ``chips``, ``context``, ``name``.
* ``parallel.*`` (``parallel.ep``; ``parallel`` itself takes "auto" or a mapping),
  ``precision.*``, ``workload.*``, ``slo.*``.
* ``cost.*`` -- the cost-model options (`codesign.sim.cost.CostOptions`: ``cost.launch_overhead_s``).
* ``mapping.*`` -- the mapping options (`codesign.mapping.options.MappingOptions`).

Two values have defaults from elsewhere in the tree: ``chips`` None means ``system.chips``, and
``context`` None means ``workload.input_tokens``. An override of ``system.chips`` (or
``workload.input_tokens``) clears an explicit ``chips`` (``context``) unless the same call sets it,
so that the override acts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from codesign.errors import CodesignError, format_validation_error
from codesign.hw.spec import HardwareSpec
from codesign.mapping.options import MappingOptions
from codesign.mapping.plan import ParallelPlan, Precision
from codesign.models.config import ModelConfig
from codesign.scenario import SLO, Scenario, Workload, unsupported
from codesign.sim.cost import CostOptions
from codesign.sim.simulate import DEFAULT_CONTEXTS, DEFAULT_MODEL, DEFAULT_OUTPUT_TOKENS, DEFAULT_PRECISION
from codesign.units import parse_tokens

# Short roots of dotted paths -> their place in the tree.
ALIASES = {"chip": "hw.chip", "efficiency": "hw.efficiency", "system": "hw.system", "power": "hw.power",
           "price": "hw.cost"}
_SHORT = {v: k for k, v in ALIASES.items()}


class Point(BaseModel):
    """One design point's fully resolved inputs (see module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None  # row name; None: "<hw>-<model>-<chips>x"
    hw: HardwareSpec
    model: ModelConfig
    chips: int | None = Field(default=None, gt=0, le=1_000_000)  # None: hw.system.chips
    # KV lengths to evaluate, one result row each; None: workload.input_tokens
    context: tuple[int, ...] | None = None
    parallel: Literal["auto"] | ParallelPlan = "auto"
    precision: Precision = Precision(**DEFAULT_PRECISION)
    workload: Workload = Workload(mode="decode", output_tokens=DEFAULT_OUTPUT_TOKENS)
    slo: SLO = SLO()
    cost: CostOptions = CostOptions()
    mapping: MappingOptions = MappingOptions()

    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("context", mode="before")
    @classmethod
    def _contexts(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, (int, str)):
            v = [v]
        try:
            out = tuple(parse_tokens(c) for c in v)
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ValueError(f"expected token counts such as 32k or 4096, found {v!r} ({e})") from None
        if not out:
            raise ValueError("expected at least one context length, found none")
        return out

    @field_validator("hw", mode="before")
    @classmethod
    def _hw_by_name(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            from codesign.hw import load_hw

            return load_hw(v)  # a name in hw_specs/ or a path, as --hw takes
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            from codesign.models import load_model

            return load_model(v)  # a name in model_graphs/, a path or an HF config.json
        return v

    @field_validator("parallel", mode="before")
    @classmethod
    def _plan(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return ParallelPlan.from_dict(v) if v else ParallelPlan()
        if isinstance(v, str) and v != "auto":
            raise ValueError(f"expected 'auto' or a mapping such as {{tp: 8}}, found {v!r}")
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        if v is None or (isinstance(v, dict) and not v):  # unset: the deployment default, as simulate()
            return Precision(**DEFAULT_PRECISION)
        return Precision.from_dict(v) if isinstance(v, dict) else v

    @field_validator("slo", "cost", "mapping", mode="before")
    @classmethod
    def _unset(cls, v: Any) -> Any:
        return {} if v is None else v  # an unset section: its defaults

    @model_validator(mode="after")
    def _acts(self) -> "Point":
        why = unsupported(self.workload, self.slo)
        if why is not None:
            raise ValueError(why)
        w = self.workload
        if w.mode == "batch" and w.concurrency is None:
            raise ValueError("workload.concurrency: required for mode 'batch', found nothing")
        if w.concurrency is not None and w.max_batch is not None and w.concurrency > w.max_batch:
            raise ValueError(f"workload.concurrency: expected at most workload.max_batch = {w.max_batch}, "
                             f"found {w.concurrency}")
        return self

    def __eq__(self, other: object) -> bool:
        """Equal inputs (the overrides history is not an input)."""
        return isinstance(other, Point) and self.__dict__ == other.__dict__

    __hash__ = BaseModel.__hash__

    # -- derived ---------------------------------------------------------------------------------
    @property
    def resolved_chips(self) -> int:
        return int(self.chips or self.hw.system.chips)

    @property
    def contexts(self) -> list[int]:
        return list(self.context) if self.context else [self.workload.input_mean]

    @property
    def overrides(self) -> dict[str, Any]:
        """The dotted-path overrides (resolved values) that made this point from its base."""
        return dict(self._overrides)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_kwargs(cls, hw: HardwareSpec | str, model: ModelConfig | str = DEFAULT_MODEL,
                    context: Any = None, chips: int | None = None, plan: Any = "auto", precision: Any = None,
                    workload: Workload | dict | None = None, slo: SLO | dict | None = None,
                    name: str | None = None, cost: CostOptions | dict | None = None,
                    mapping_options: MappingOptions | dict | None = None, source: str = "point") -> "Point":
        """The point `codesign.simulate(...)` evaluates for these arguments (same defaults)."""
        from codesign.hw import load_hw
        from codesign.models import load_model

        if context is None and workload is None:
            context = DEFAULT_CONTEXTS
        if isinstance(workload, dict):
            from codesign.scenario import parse_scenarios  # one-line errors naming workload fields

            workload = parse_scenarios({"name": "api", "hardware": "-", "model": "-", "workload": workload},
                                       "workload")[0].workload
        data = {"name": name, "hw": load_hw(hw), "model": load_model(model), "chips": chips, "context": context,
                "parallel": plan, "precision": DEFAULT_PRECISION if precision is None else precision,
                "slo": slo, "cost": cost, "mapping": mapping_options}
        if workload is not None:
            data["workload"] = workload
        return validate_point(data, source)

    from_names = from_kwargs

    @classmethod
    def from_scenario(cls, s: Scenario) -> "Point":
        """A scenario file entry's point (its context is the workload's input_tokens)."""
        from codesign.hw import load_hw
        from codesign.models import load_model

        data = {"name": s.name, "hw": load_hw(s.hardware), "model": load_model(s.model), "chips": s.chips,
                "parallel": s.parallel, "precision": s.precision or None, "workload": s.workload, "slo": s.slo,
                "cost": s.cost or None, "mapping": s.mapping or None}
        return validate_point(data, f"scenario {s.name}")


def design_point(hw: HardwareSpec | str, model: ModelConfig | str = DEFAULT_MODEL, **kwargs: Any) -> Point:
    """A point from names or objects and `simulate()`'s keyword arguments."""
    return Point.from_kwargs(hw, model, **kwargs)


# ---- validation and errors ---------------------------------------------------------------------

def short_path(path: str) -> str:
    """The short form of an internal path ('hw.chip.hbm' -> 'chip.hbm')."""
    for long, short in _SHORT.items():
        if path == long or path.startswith(long + "."):
            return short + path[len(long):]
    return path


def long_path(path: str) -> str:
    """The internal form of a dotted path ('chip.hbm.bandwidth' -> 'hw.chip.hbm.bandwidth')."""
    head = path.split(".", 1)[0]
    if head in ALIASES:
        return ALIASES[head] + path[len(head):]
    return path


def _format(source: str, exc: ValidationError) -> str:
    """The project's one-line validation message, with locations as the tree's short paths."""
    return format_validation_error(
        source, exc, lambda loc: short_path(".".join(str(p) for p in loc if not str(p).startswith("function-"))))


def validate_point(data: Mapping[str, Any], source: str) -> Point:
    """A `Point` from a mapping; every error is one `CodesignError` line naming the path."""
    try:
        return Point.model_validate(dict(data))
    except ValidationError as e:
        raise CodesignError(_format(source, e)) from None
    except CodesignError as e:  # raised by a part's own validation (plan, precision), already named
        raise CodesignError(f"{source}: {e}") from None


# ---- paths -------------------------------------------------------------------------------------

def _unwrap(tp: Any) -> list[Any]:
    """The model/dataclass types an annotation can hold (through Optional, Union, Annotated)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if isinstance(tp, type) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp)):
        return [tp]
    return []


def _children(cls: type) -> dict[str, Any]:
    if issubclass(cls, BaseModel):
        return {k: f.annotation for k, f in cls.model_fields.items()}
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@lru_cache(maxsize=1)
def schema_paths() -> tuple[str, ...]:
    """Every dotted path the tree's schema has (leaves and sections), short forms, sorted."""
    out: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        for name, ann in _children(cls).items():
            path = f"{prefix}{name}"
            out.add(short_path(path))
            for sub in _unwrap(ann):
                walk(sub, path + ".")

    walk(Point, "")
    for long in _SHORT:
        out.add(long)  # 'hw.chip' etc. stay valid spellings, listed once
    return tuple(sorted(out))


def _dump(p: Point) -> dict[str, Any]:
    return p.model_dump(mode="python")


def leaf_paths(p: Point) -> list[str]:
    """The leaf paths of this point (short forms), in tree order: each holds a value (a number,
    string, list or None), not a section."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out.append(short_path(prefix[:-1]))

    walk(_dump(p), "")
    return out


def unknown_path(path: str) -> CodesignError:
    """The error for a path the tree does not have, naming the nearest valid ones."""
    valid = schema_paths()
    near = difflib.get_close_matches(path, valid, n=5, cutoff=0.6)
    if not near:
        head = path.split(".", 1)[0]
        same_root = [v for v in valid if v.split(".", 1)[0] == head]
        near = (difflib.get_close_matches(path, same_root, n=5, cutoff=0.0) if same_root
                else sorted({v.split(".", 1)[0] for v in valid}))
    hint = ""
    rest = path.split(".", 1)[1] if "." in path else ""
    if path.startswith("cost.") and rest in ("per_hour", "source"):
        hint = f" (cost.* are the cost-model options; the spec's cost section is price.{rest})"
    listing = ", ".join(near) if near else "see docs/point.md"
    return CodesignError(f"{path}: unknown path{hint}; nearest valid: {listing}")


def get(p: Point, path: str) -> Any:
    """The value at a dotted path (a leaf or a section, as plain data)."""
    if short_path(long_path(path)) not in schema_paths():
        raise unknown_path(path)
    node: Any = _dump(p)
    for part in long_path(path).split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# ---- overrides ---------------------------------------------------------------------------------

_RELAYOUT = ("model.num_layers", "model.first_dense_layers", "model.layer_pattern")


def _relayout(model: dict[str, Any], before: dict[str, Any]) -> None:
    """After num_layers/first_dense_layers/layer_pattern change, derive the per-layer lists again
    where they were derived before (from a pattern, or one kind for every layer)."""
    types_, mlps = before.get("layer_types") or [], before.get("mlp_types") or []
    if model.get("layer_types") == types_ and (before.get("layer_pattern") or len(set(types_)) <= 1):
        model["layer_types"] = []
    k = int(before.get("first_dense_layers") or 0)
    default = "moe" if before.get("moe") else "dense"
    if model.get("mlp_types") == mlps and mlps == ["dense" if i < k else default for i in range(len(mlps))]:
        model["mlp_types"] = []


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = long_path(path).split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, dict):
            child = dict(child)
        elif child is None or isinstance(child, str):  # an unset section, or parallel: "auto"
            child = {}
        else:  # a scalar that can also be a section: a token count -> {mean: n}
            child = {"mean": child}
        node[part] = child
        node = child
    node[parts[-1]] = value


def _section_by_name(path: str, value: Any) -> Any:
    """A whole spec or model given by name, as the mapping its fields are set in."""
    if long_path(path) == "hw" and isinstance(value, (str, Path)):
        from codesign.hw import load_hw

        return load_hw(value).model_dump()
    if long_path(path) == "model" and isinstance(value, (str, Path)):
        from codesign.models import load_model

        return load_model(value).model_dump()
    return value


def override(p: Point, changes: Mapping[str, Any]) -> Point:
    """A new point with `changes` ({dotted path: value}) applied and validated as a file's values
    are (units parse, bounds apply). An unknown path is an error listing the nearest valid ones.
    The returned point remembers its overrides (resolved values), on top of `p`'s own."""
    if not isinstance(changes, Mapping):
        raise CodesignError(f"override: expected a mapping of dotted paths to values, found {type(changes).__name__}")
    valid = set(schema_paths())
    tree = copy.deepcopy(_dump(p))
    before_model = copy.deepcopy(tree["model"])
    keys = [long_path(str(k)) for k in changes]
    for path in changes:
        if not isinstance(path, str) or short_path(long_path(path)) not in valid:
            raise unknown_path(str(path))
    # sections before the fields inside them ({"parallel": {...}, "parallel.ep": 8} in any order)
    for path in sorted(changes, key=lambda k: long_path(k).count(".")):
        _set(tree, path, _section_by_name(path, changes[path]))
    if any(k in _RELAYOUT for k in keys):
        _relayout(tree["model"], before_model)
    if "hw.system.chips" in keys and "chips" not in keys:
        tree["chips"] = None
    if "workload.input_tokens" in keys and "context" not in keys:
        tree["context"] = None
    names = ", ".join(str(k) for k in changes)
    new = validate_point(tree, f"override {names}" if changes else "override")
    new._overrides = {**p._overrides, **{short_path(long_path(k)): _recorded(new, k, v) for k, v in changes.items()}}
    return new


def _recorded(p: Point, path: str, given: Any) -> Any:
    """The value an override is recorded as: the resolved leaf, or the name of a whole spec or
    model given by name."""
    if long_path(path) in ("hw", "model") and isinstance(given, (str, Path)):
        return str(given)
    return _plain(get(p, path))


def _plain(v: Any) -> Any:
    """A JSON-able form of a resolved value (tuples as lists)."""
    return json.loads(json.dumps(v, default=list))


# ---- identity ----------------------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 of the package's Python sources (relative path and bytes of every file, sorted)."""
    h = hashlib.sha256()
    for f in sorted(PACKAGE.rglob("*.py")):
        h.update(str(f.relative_to(PACKAGE)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def canonical_json(p: Point) -> str:
    """The point's inputs as canonical JSON (sorted keys, no spaces; floats as Python repr)."""
    return json.dumps(p.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_hash(p: Point) -> str:
    """A stable identity of the point: sha256 of its canonical JSON, `codesign.__version__` and the
    package's source hash. Equal inputs under equal code give the same hash in every process;
    any changed field, or changed code, gives another. Overrides history is not part of it."""
    from codesign import __version__

    h = hashlib.sha256()
    for part in (canonical_json(p), __version__, source_hash()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# ---- evaluation --------------------------------------------------------------------------------

def evaluate(p: Point, router: Any = None, cache: bool = True) -> list:
    """The point's result rows (one per context), through `codesign.sim.simulate`."""
    from codesign.sim.simulate import simulate_point

    return simulate_point(p, router=router, cache=cache)


def points(base: Point, variations: Iterable[Mapping[str, Any]]) -> list[Point]:
    """`override(base, v)` for each mapping of overrides."""
    return [override(base, v) for v in variations]


__all__ = ["Point", "design_point", "override", "evaluate", "point_hash", "leaf_paths", "schema_paths", "get",
           "canonical_json", "source_hash", "validate_point", "short_path", "long_path", "ALIASES", "points"]
