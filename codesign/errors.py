"""User-facing errors.

Everything a user can get wrong (a name, a file, a field, a value) raises `CodesignError` with one
line that names the file and the field, what was expected and what was found. The CLI prints that
line and exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations


class CodesignError(Exception):
    """A problem with the user's input, reported in one line: control characters in the message
    (a newline inside a key or a value the user wrote) are shown escaped, so that the line stays one."""

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if not text.isprintable():
            text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
        super().__init__(text)


def format_validation_error(source: str, exc: Exception, path=None) -> str:
    """One line from a pydantic ValidationError: `file: field: message (found: value)`. `path`
    (optional) turns an error's location parts into the field name shown."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return f"{source}: {exc}"
    from codesign.limits import show

    parts = []
    for err in errors():
        loc = (path(err.get("loc", ())) if path else ".".join(str(p) for p in err.get("loc", ()))) or "(top level)"
        msg = err.get("msg", "invalid").removeprefix("Value error, ").removeprefix("Assertion failed, ")
        msg = " ".join(msg.split())  # one line, whatever the message held
        found = err.get("input")
        # the found value abbreviated (a huge or deeply nested input must not flood the line)
        found_s = "" if isinstance(found, dict) or "found" in msg else f" (found: {show(found)})"
        parts.append(f"{loc}: {msg}{found_s}")
    if len(parts) > 3:  # the first few; fixing them usually fixes the rest
        parts = parts[:3] + [f"and {len(parts) - 3} more"]
    return f"{source}: " + "; ".join(parts)
