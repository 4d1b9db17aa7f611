"""Reports on finished results: one self-contained HTML file (`html.py`, figures in `plots.py`),
Chrome/Perfetto trace JSON of a simulated step (`perfetto.py`), Pareto fronts (`pareto.py`) and the
results-folder format a sweep writes (`store.py`). Reads results and calls public functions only;
it never instruments a simulation. See docs/report.md.

    from codesign.report import from_results, write_report
    write_report(from_results(cs.simulate("h200")), "reports/h200.html")
"""

from __future__ import annotations

from codesign.report.build import from_frame, from_results
from codesign.report.html import render, write_report
from codesign.report.pareto import pareto_front, with_costs
from codesign.report.store import read_points, read_results, write_results

__all__ = ["from_results", "from_frame", "render", "write_report", "pareto_front", "with_costs", "read_results",
           "read_points", "write_results"]
