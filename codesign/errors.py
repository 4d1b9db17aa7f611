"""User-facing errors.

Everything a user can get wrong (a name, a file, a field, a value) raises `CodesignError` with one
line that names the file and the field, what was expected and what was found. The CLI prints that
line and exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations


class CodesignError(Exception):
    """A problem with the user's input, reported in one line."""


def format_validation_error(source: str, exc: Exception) -> str:
    """One line from a pydantic ValidationError: `file: field: message (found: value)`."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return f"{source}: {exc}"
    parts = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        msg = err.get("msg", "invalid").removeprefix("Value error, ").removeprefix("Assertion failed, ")
        found = err.get("input")
        found_s = "" if isinstance(found, dict) else f" (found: {found!r})"
        parts.append(f"{loc}: {msg}{found_s}")
    return f"{source}: " + "; ".join(parts)
