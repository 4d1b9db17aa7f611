"""Progress events of long evaluations, for whoever wants to show them.

The library itself never draws anything: `simulate()` (and sweeps, serving runs) announce their
work to the observers registered with `observe(...)`; the command line registers a progress bar
(`codesign.commands.progress`), a notebook may register its own. With no observer, reporting costs
one list lookup.

An observer has three methods: `start(units)` (that many more units of work are coming),
`advance(label)` (one unit starts; `label` says which) and `stop()` (the announcing call returns).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol


class Observer(Protocol):
    def start(self, units: int) -> None: ...

    def advance(self, label: str) -> None: ...

    def stop(self) -> None: ...


_OBSERVERS: list[Observer] = []


@contextmanager
def observe(observer: Observer) -> Iterator[Observer]:
    """Within this block, progress events go to `observer` (the innermost one only)."""
    _OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        _OBSERVERS.remove(observer)


def current() -> Observer | None:
    """The observer of the innermost `observe` block, if any."""
    return _OBSERVERS[-1] if _OBSERVERS else None


class Counter:
    """An observer that only counts (tests, notebooks that poll)."""

    def __init__(self) -> None:
        self.total = self.done = 0
        self.label = ""
        self.active = False

    def start(self, units: int) -> None:
        self.total += units
        self.active = True

    def advance(self, label: str) -> None:
        self.done += 1
        self.label = label

    def stop(self) -> None:
        self.active = False


__all__ = ["Observer", "observe", "current", "Counter"]
