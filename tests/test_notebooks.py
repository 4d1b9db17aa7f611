"""The example notebooks run top to bottom (nbclient, a fresh kernel), so they never rot."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(path: Path, cwd: Path, timeout: int = 600):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_design_space_sweep_notebook(tmp_path):
    pytest.importorskip("nbclient")
    nb = run_notebook(ROOT / "examples" / "design_space_sweep.ipynb", tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert text.count("tok/s/chip") == 8  # the 2 x 2 x 2 grid, one line per point
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    # cs.sweep wrote its store; the rows' $/Mtok is the spec's price over the row's throughput
    from codesign.hw import load_hw
    from codesign.report import read_results

    frame = read_results(tmp_path / "sweep-results")
    assert len(frame) == 8 and frame["point_hash"].nunique() == 8
    per_hour = load_hw("moe-concept").cost.per_hour
    expected = per_hour * frame["chips"] / (frame["output_tokens_per_s"] * 3600) * 1e6
    assert ((frame["usd_per_million_output_tokens"] - expected).abs() <= 1e-9 * expected).all()
    assert sorted(frame["chip.sram.capacity"].unique()) == [1e9, 16e9]
    assert (tmp_path / "sweep-results" / "report.html").read_text().count("<svg ") >= 5
