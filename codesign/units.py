"""Quantities with units, as written in specs: "4.8 TB/s", "141 GB", "989 TFLOPS", "3 us".

Specs accept strings with units and store SI floats internally (bytes, bytes/s, FLOP/s, seconds,
watts). Decimal prefixes (k, M, G, T, P) are powers of 1000; binary prefixes (KiB, MiB, GiB, TiB)
are powers of 1024. Bits ("Gb/s", "Gbps") are converted to bytes. A bare number is taken as already
being in SI base units.
"""

from __future__ import annotations

import re

_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}

# unit kind -> accepted suffixes (after the prefix) and the factor to the SI base unit
_KINDS: dict[str, dict[str, float]] = {
    "bytes": {"B": 1.0, "b": 1 / 8},
    "bandwidth": {"B/s": 1.0, "b/s": 1 / 8, "bps": 1 / 8, "Bps": 1.0},
    "flops": {"FLOPS": 1.0, "FLOP/s": 1.0, "OPS": 1.0, "OP/s": 1.0, "flops": 1.0},
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9},
    "power": {"W": 1.0},
    "count": {"": 1.0},
}

_NUM = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def parse_quantity(value: str | int | float, kind: str) -> float:
    """Parse `value` as a quantity of `kind` and return it in SI base units.

    >>> parse_quantity("4.8 TB/s", "bandwidth")
    4800000000000.0
    >>> parse_quantity("141 GB", "bytes")
    141000000000.0
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} quantity, found a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found {value!r}")
    m = _NUM.match(value)
    if not m:
        raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found {value!r}")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "":  # a bare number written as text (YAML reads 3.0e12 as a string): SI base units
        return number
    if kind == "time":
        if unit in _KINDS["time"]:
            return number * _KINDS["time"][unit]
        raise ValueError(f"unknown time unit {unit!r} in {value!r} (use s, ms, us, ns)")
    suffixes = _KINDS[kind]
    for suffix in sorted(suffixes, key=len, reverse=True):
        if not unit.endswith(suffix):
            continue
        prefix = unit[: len(unit) - len(suffix)] if suffix else unit
        if prefix in _BIN:
            return number * _BIN[prefix] * suffixes[suffix]
        if prefix in _DEC:
            return number * _DEC[prefix] * suffixes[suffix]
    raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found {value!r}")


def example(kind: str) -> str:
    return {
        "bytes": "141 GB",
        "bandwidth": "4.8 TB/s",
        "flops": "989 TFLOPS",
        "time": "3 us",
        "power": "700 W",
        "count": "8",
    }[kind]


def parse_tokens(value: str | int) -> int:
    """Token counts as users write them: 32k = 32768, 256K = 262144, 1M = 1048576, or a plain integer."""
    if isinstance(value, int):
        return value
    s = str(value).strip().lower().replace("_", "")
    mult = 1
    if s.endswith("k"):
        mult, s = 1024, s[:-1]
    elif s.endswith("m"):
        mult, s = 1024 * 1024, s[:-1]
    try:
        n = float(s)
    except ValueError:
        raise ValueError(f"expected a token count such as 32k or 4096, found {value!r}") from None
    if n <= 0 or n * mult != int(n * mult):
        raise ValueError(f"expected a positive whole token count, found {value!r}")
    return int(n * mult)


GiB = 2.0**30
MiB = 2.0**20
KiB = 2.0**10
