"""Where a sweep's points are evaluated: in this process, in local worker processes, or on a Dask
cluster. Every executor runs `evaluate_one` on each point and hands the results back to the
sweep's process as they finish; that process is the only writer of the results store (one
transaction per finished point), so workers need no access to the store's folder and a Dask
cluster on other machines works as well as local processes.

Executor names: "local" (default: a process per core, `os.cpu_count()`), "local:N" (N processes),
"serial" (this process, one point after another), "dask://HOST:PORT" (an existing Dask
distributed scheduler; needs the `[dask]` extra), or an object: a `concurrent.futures.Executor` or a
`distributed.Client`.

Local processes start by fork on Linux (no re-import of torch per worker). The first point of a
local sweep runs in the sweep's process before the workers fork, so they start with its traces
cached (a hardware sweep shares every trace); a point travels to a worker as a pickled `Point`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from typing import Any, Iterator, Sequence

from codesign import progress
from codesign.errors import CodesignError


class _Silent:
    """An observer that drops progress events (a sweep reports per point, not per plan)."""

    def start(self, units: int) -> None: ...

    def advance(self, label: str) -> None: ...

    def stop(self) -> None: ...


def evaluate_one(p: Any) -> tuple[str, list[dict], float, str]:
    """(point hash, result rows as dicts, wall seconds, worker id) of one point. A point whose
    evaluation refuses its inputs (`CodesignError`) is an infeasible row with reason code
    `unsupported` and that message, so one such point never stops a sweep."""
    from codesign.point import evaluate, point_hash
    from codesign.results import infeasible

    t0 = time.perf_counter()
    with progress.observe(_Silent()):
        try:
            rows = evaluate(p)
        except CodesignError as e:
            chips = p.resolved_chips
            rows = [infeasible(p.name or f"{p.hw.name}-{p.model.name}-{chips}x", str(e), p.hw.name, p.model.name,
                               chips, context=ctx, mode=p.workload.mode, reason_code="unsupported")
                    for ctx in p.contexts]
            for r in rows:
                r.point_hash, r.overrides = point_hash(p), p.overrides
    wall = time.perf_counter() - t0
    worker = f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}"
    return point_hash(p), [r.to_dict() for r in rows], wall, worker


def _serial(points: Sequence[Any]) -> Iterator[tuple]:
    for p in points:
        yield evaluate_one(p)


def _pool(points: Sequence[Any], pool: Executor, window: int) -> Iterator[tuple]:
    """Submit at most `window` points ahead; yield results as they complete."""
    todo = iter(points)
    pending = set()
    try:
        for p in todo:
            pending.add(pool.submit(evaluate_one, p))
            if len(pending) >= window:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
                for p in todo:
                    pending.add(pool.submit(evaluate_one, p))
                    break
    finally:
        for f in pending:
            f.cancel()


def _local(points: Sequence[Any], workers: int) -> Iterator[tuple]:
    fork = sys.platform.startswith("linux")
    if fork:
        # the first point runs here, so that forked workers start with its traces (the model's
        # step graphs, shared by every hardware variant) already cached
        yield evaluate_one(points[0])
        points = points[1:]
        if not points:
            return
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(points)), mp_context=ctx)
    try:
        yield from _pool(points, pool, window=4 * workers)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _dask(points: Sequence[Any], client: Any) -> Iterator[tuple]:
    from distributed import as_completed

    futures = client.map(evaluate_one, list(points), pure=False)
    try:
        for f in as_completed(futures):
            yield f.result()
    finally:
        client.cancel(futures)


def _dask_client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise CodesignError("executor dask://: the Dask distributed package is not installed "
                            "(pip install 'codesign[dask]')") from None
    try:
        return Client(address, timeout=10)
    except (OSError, TimeoutError) as e:
        raise CodesignError(f"executor {address}: cannot reach the Dask scheduler ({e})") from None


def run(points: Sequence[Any], executor: Any = "local", workers: int | None = None) -> Iterator[tuple]:
    """`evaluate_one` of every point, yielded as each finishes (any order)."""
    if not points:
        return iter(())
    if executor is None or executor == "local" or (isinstance(executor, str) and executor.startswith("local:")):
        n = workers
        if isinstance(executor, str) and executor.startswith("local:"):
            try:
                n = int(executor.split(":", 1)[1])
            except ValueError:
                n = 0
            if n < 1:
                raise CodesignError(f"executor: expected local:N with N >= 1 workers, found {executor!r}")
        n = max(1, min(n or os.cpu_count() or 1, len(points)))
        return _serial(points) if n == 1 else _local(points, n)
    if executor == "serial":
        return _serial(points)
    if isinstance(executor, str) and executor.startswith("dask://"):
        return _dask_owned(points, executor[len("dask://"):])
    if isinstance(executor, Executor):
        return _pool(points, executor, window=4 * (workers or os.cpu_count() or 1))
    if hasattr(executor, "map") and hasattr(executor, "scheduler_info"):  # a distributed.Client
        return _dask(points, executor)
    raise CodesignError(f"executor: expected 'local', 'local:N', 'serial', 'dask://HOST:PORT', a "
                        f"concurrent.futures.Executor or a distributed.Client, found {executor!r}")


def _dask_owned(points: Sequence[Any], address: str) -> Iterator[tuple]:
    client = _dask_client(address)
    try:
        yield from _dask(points, client)
    finally:
        client.close()


__all__ = ["run", "evaluate_one"]
