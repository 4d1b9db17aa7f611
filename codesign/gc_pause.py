"""`gc_paused()`: pause CPython's cyclic garbage collector around allocation-heavy, acyclic work.

Why: mapping and simulating a step allocate ~10^4 short-lived objects (ops, byte dicts, SimPy
events) next to large long-lived traced graphs; each allocation burst triggers generational
collections that traverse those graphs, measured at about half of map_step's time and up to half
of the engine's. Reference counting still frees everything at once; any cycle is collected by the
next collection after the pause.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the duration; restore it as it was (nests)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
