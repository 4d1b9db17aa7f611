"""Design-space sweeps: grids and seeded samples over dotted paths, a resumable SQLite results
store, local/Dask executors and Pareto fronts (docs/sweep.md).

`codesign.sweep(...)` is `codesign.sweeps.run.sweep`; `codesign.sweep.pareto` is
`codesign.sweeps.pareto.pareto`.
"""

from __future__ import annotations

from codesign.sweeps.pareto import pareto, pareto_mask
from codesign.sweeps.run import sweep, sweep_file
from codesign.sweeps.spec import SweepFile, load_sweep
from codesign.sweeps.store import Store, recover

__all__ = ["sweep", "sweep_file", "pareto", "pareto_mask", "SweepFile", "load_sweep", "Store", "recover"]
