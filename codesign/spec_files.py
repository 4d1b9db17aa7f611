"""Finding and reading the project's YAML inputs (hardware specs, model configs, scenarios).

A name resolves in the project's folder for that input (`hw_specs/`, `model_graphs/`); a path is
read as given. Every failure is a `CodesignError` with one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Strict, ValidationError

from codesign.errors import CodesignError, format_validation_error
from codesign.limits import MAX_FILE_BYTES, show

ROOT = Path(__file__).resolve().parent.parent  # the project checkout (editable install)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader when built with it
T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """The base of every input schema (hardware specs, model configs, scenarios): unknown keys are
    errors (a typo never passes silently), instances are frozen, and no float field takes NaN or
    infinity (no spec can mean one; a NaN bandwidth would read as infinitely fast)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# An integer field: booleans, floats and strings are refused (`true` is not a layer count). Schemas
# bound each one, e.g. `Annotated[Int, Field(ge=1, le=MAX_LAYERS)]` (bounds in `codesign.limits`).
Int = Annotated[int, Strict()]


def folder(kind: str) -> Path:
    return ROOT / kind


def available(kind: str) -> list[str]:
    """Names of the YAML files in `kind` (e.g. 'hw_specs'), sorted."""
    return sorted(p.stem for p in folder(kind).glob("*.yaml"))


def resolve(name_or_path: str | Path, kind: str, what: str) -> Path:
    """A path to an existing file, or the file `<kind>/<name>.yaml`; else an error listing the names."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        if not is_file(p):
            raise CodesignError(f"{shown(p)}: no such {what} file")
        return p
    cand = folder(kind) / f"{name_or_path}.yaml"
    if is_file(cand):
        return cand
    names = ", ".join(available(kind))
    raise CodesignError(f"unknown {what} {show(str(name_or_path))}; available: {names}")


def shown(p: Path | str) -> str:
    """A path for an error line (a very long one abbreviated)."""
    s = str(p)
    return s if len(s) <= 200 else show(s)


def is_file(p: Path) -> bool:
    """Whether `p` names an existing file (a name with a NUL byte or too long for the OS names none)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def read_text(path: Path) -> str:
    """The file's text: UTF-8, at most `MAX_FILE_BYTES`; else one line saying what is wrong."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CodesignError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_FILE_BYTES:
        raise CodesignError(f"{path}: expected a text file of at most {MAX_FILE_BYTES:,} bytes, found a larger file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodesignError(f"{path}: expected UTF-8 text, found byte 0x{data[e.start]:02x} at offset {e.start} "
                            "(a binary file, or text in another encoding)") from None


def read_yaml(path: Path) -> Any:
    return parse_yaml(read_text(path), path)


def parse_yaml(text: str, path: Path) -> Any:
    """The YAML document of `text` (read from `path`, named in errors)."""
    if "\x00" in text:
        raise CodesignError(f"{path}: expected YAML text, found a NUL byte (a binary file)")
    try:
        return yaml.load(text, Loader=_LOADER)
    except RecursionError:
        raise CodesignError(f"{path}: malformed YAML: nested too deeply") from None
    except ValueError as e:  # a value the YAML constructor cannot build (a 5000-digit integer, a bad date)
        problem = "an integer of more than 4,300 digits" if "integer string conversion" in str(e) else str(e)[:200]
        raise CodesignError(f"{path}: malformed YAML: {problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CodesignError(f"{path}:{where}: malformed YAML: {problem}") from None


def validate(cls: type[T], data: Any, source: str) -> T:
    if not isinstance(data, dict):
        raise CodesignError(f"{source}: expected a mapping of fields, found {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise CodesignError(format_validation_error(source, e)) from None


# Validated inputs by (schema, path, file text): a sweep or a plan search that names the same
# unchanged file again gets the same (frozen) object back without parsing and validating it again.
# The file is read every time, so an edited file is loaded afresh. Bounded: cleared when full.
_LOADED: dict[tuple[type, str, str], Any] = {}
_LOADED_MAX = 256


def load(cls: type[T], name_or_path: str | Path, kind: str, what: str) -> T:
    path = resolve(name_or_path, kind, what)
    text = read_text(path)
    key = (cls, str(path), text)
    hit = _LOADED.get(key)
    if hit is None:
        hit = validate(cls, parse_yaml(text, path), str(path))
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.clear()
        _LOADED[key] = hit
    return hit
