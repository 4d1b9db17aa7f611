"""Quantities with units, as written in specs: "4.8 TB/s", "141 GB", "989 TFLOPS", "3 us".

Specs accept strings with units and store SI floats internally (bytes, bytes/s, FLOP/s, seconds,
watts). Decimal prefixes (k, M, G, T, P) are powers of 1000; binary prefixes (KiB, MiB, GiB, TiB)
are powers of 1024. Bits ("Gb/s", "Gbps") are converted to bytes. A bare number is taken as already
being in SI base units.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from codesign.limits import MAX_TOKENS, show

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


# The range of every quantity a spec may hold, in SI base units (one rule for every kind): values
# outside it (zero, negative, NaN, inf, or absurdly large or small) are refused at load. Each range
# spans far beyond any chip built or announced, and keeps every product and sum the cost model forms
# finite. Times may be zero (a latency of 0 s is an idealised link).
RANGES: dict[str, tuple[float, float]] = {
    "bytes": (1.0, 1e21),  # 1 B .. 1 ZB
    "bandwidth": (1.0, 1e18),  # 1 B/s .. 1 EB/s
    "flops": (1.0, 1e21),  # 1 FLOP/s .. 1 ZFLOP/s
    "time": (0.0, 3600.0),  # 0 .. 1 hour
    "power": (1e-3, 1e9),  # 1 mW .. 1 GW
    "count": (0.0, 1e18),
}
_RANGE_TEXT = {
    "bytes": "1 B to 1 ZB",
    "bandwidth": "1 B/s to 1 EB/s",
    "flops": "1 FLOP/s to 1 ZFLOPS",
    "time": "0 s to 3600 s",
    "power": "1 mW to 1 GW",
    "count": "0 to 1e18",
}


def parse_quantity(value: str | int | float, kind: str) -> float:
    """Parse `value` as a quantity of `kind` and return it in SI base units, within `RANGES[kind]`.

    >>> parse_quantity("4.8 TB/s", "bandwidth")
    4800000000000.0
    >>> parse_quantity("141 GB", "bytes")
    141000000000.0
    """
    si = _parse(value, kind)
    lo, hi = RANGES[kind]
    if not (math.isfinite(si) and lo <= si <= hi):
        raise ValueError(f"expected a {kind} quantity from {_RANGE_TEXT[kind]}, found {show(value)}")
    return si


def _parse(value: object, kind: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found a boolean")
    if isinstance(value, int):
        return float(value) if abs(value) < 1 << 1000 else math.inf
    if isinstance(value, float):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found {type(value).__name__}")
    m = _NUM.match(value)
    if not m:
        raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found {value[:60]!r}")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "":  # a bare number written as text (YAML reads 3.0e12 as a string): SI base units
        return number
    if kind == "time":
        if unit in _KINDS["time"]:
            return number * _KINDS["time"][unit]
        raise ValueError(f"unknown time unit {unit[:20]!r} in {value[:60]!r} (use s, ms, us, ns)")
    suffixes = _KINDS[kind]
    for suffix in sorted(suffixes, key=len, reverse=True):
        if not unit.endswith(suffix):
            continue
        prefix = unit[: len(unit) - len(suffix)] if suffix else unit
        if prefix in _BIN:
            return number * _BIN[prefix] * suffixes[suffix]
        if prefix in _DEC:
            return number * _DEC[prefix] * suffixes[suffix]
    raise ValueError(f"expected a {kind} quantity such as {example(kind)!r}, found {value[:60]!r}")


def example(kind: str) -> str:
    return {
        "bytes": "141 GB",
        "bandwidth": "4.8 TB/s",
        "flops": "989 TFLOPS",
        "time": "3 us",
        "power": "700 W",
        "count": "8",
    }[kind]


_TOKENS = re.compile(r"^((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[-+]?[0-9]{1,3})?)([km]?)$")


def parse_tokens(value: str | int) -> int:
    """Token counts as users write them: 32k = 32768, 256K = 262144, 1M = 1048576, or a plain
    integer; whole, positive and at most `codesign.limits.MAX_TOKENS`."""
    bound = f"expected a positive whole token count up to {MAX_TOKENS:,} (e.g. 32k or 4096)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4096.0 from a computation is 4096 tokens
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{bound}, found {type(value).__name__} {show(value)}")
    if isinstance(value, int):
        if not 0 < value <= MAX_TOKENS:
            raise ValueError(f"{bound}, found {show(value)}")
        return value
    s = value.strip().lower().replace("_", "")
    m = _TOKENS.match(s)
    if not m:
        raise ValueError(f"expected a token count such as 32k or 4096, found {value[:60]!r}")
    mult = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)]
    digits = m.group(1)
    if len(digits) > 40:
        raise ValueError(f"{bound}, found {value[:60]!r}")
    n = Fraction(digits) * mult  # exact: 1.5k = 1536, 0.3k is not whole
    if n.denominator != 1 or not 0 < n <= MAX_TOKENS:
        raise ValueError(f"{bound}, found {value[:60]!r}")
    return int(n)


GiB = 2.0**30
MiB = 2.0**20
KiB = 2.0**10
