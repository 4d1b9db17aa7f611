"""Bounded caches and cache-key parts shared by the step evaluation (codesign.sim.stepper,
codesign.sim.stepmodel)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Hashable

from codesign.hw import HardwareSpec


class BoundedCache:
    """A least-recently-used mapping with at most `size` entries, and hit/miss counts."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def info(self) -> dict[str, int]:
        return {"entries": len(self._data), "size": self.size, "hits": self.hits, "misses": self.misses}


def router_key(router: Any) -> Hashable | None:
    """A cache key part for `router`, or None when it cannot be keyed safely (unhashable)."""
    if router is None or isinstance(router, str):
        return ("router", router)
    try:
        hash(router)
    except TypeError:
        return None
    return router  # frozen dataclasses compare by value


def hw_key(hw: HardwareSpec) -> str:
    """The full spec's digest: two specs with the same name but other numbers never share steps."""
    return hashlib.sha256(hw.model_dump_json().encode()).hexdigest()
