"""The command line's progress bar: a `codesign.progress` observer drawn with rich on stderr.

Drawn on terminals only, once the command has run `PROGRESS_DELAY_S` (short runs stay silent), and
only while an announcing call (a `simulate()`) runs, so tables and JSON printed between calls never
interleave with it. A timer makes the bar appear during a single long evaluation too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from codesign import progress

PROGRESS_DELAY_S = 2.0


class ProgressBar:
    """A transient rich bar counting announced units of work (see module docstring)."""

    def __init__(self, description: str, delay_s: float = PROGRESS_DELAY_S) -> None:
        from rich.console import Console

        self.description = self.label = description
        self.total = self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._due = self._active = False
        self._console = Console(stderr=True)
        self._timer = threading.Timer(delay_s, self._on_timer) if self._console.is_terminal else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._due = True
            if self._active:
                self._show()

    def _show(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        if self._bar is None:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self._console,
                                 transient=True,
                                 redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None, completed=self.done)

    def _hide(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def start(self, units: int) -> None:
        with self._lock:
            self._active = True
            self.total += units
            if self._due:
                self._show()
            self._update()

    def stop(self) -> None:
        with self._lock:
            self._active = False
            self._hide()

    def advance(self, label: str) -> None:
        """One more unit starts (counted as done: the bar reads "n of total under way")."""
        with self._lock:
            self.done += 1
            self.label = label
            self._update()

    def _update(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=self.total or None, completed=self.done, description=self.label)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._active = False
            self._hide()


@contextmanager
def progress_bar(description: str, delay_s: float = PROGRESS_DELAY_S) -> Iterator[ProgressBar]:
    """A progress bar observing every announcing call within the block."""
    bar = ProgressBar(description, delay_s)
    try:
        with progress.observe(bar):
            yield bar
    finally:
        bar.close()
