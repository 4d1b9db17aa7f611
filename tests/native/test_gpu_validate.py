"""benchmarks/gpu_validate.py --dry-run: the GPU benchmark's whole path on small CPU shapes."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from codesign.spec_files import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("gpu_validate", ROOT / "benchmarks" / "gpu_validate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_validate"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_covers_every_layer_kind_and_phase(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert _module().main(["--dry-run", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    totals = {(r["layer"], r["phase"]) for r in rows if r["op_kind"] == "layer total"}
    assert {layer for layer, _ in totals} == {"GatedDeltaNet", "gated attention", "MoE (512 experts)"}
    assert len(totals) == 6  # three kinds x (decode, prefill)
    kinds = {(r["layer"], r["op_kind"]) for r in rows}
    assert ("gated attention", "attention") in kinds and ("MoE (512 experts)", "grouped_gemm") in kinds
    assert ("GatedDeltaNet", "GatedDeltaNet step") in kinds  # the fused decode step
    for r in rows:
        assert r["measured_s"] > 0 and r["predicted_s"] >= 0
        if r["op_kind"] == "layer total":
            parts = [x for x in rows if (x["layer"], x["phase"]) == (r["layer"], r["phase"])
                     and x["op_kind"] not in ("layer total", "kernels (like for like)")]
            assert r["measured_s"] == pytest.approx(sum(x["measured_s"] for x in parts))
            assert r["predicted_s"] == pytest.approx(sum(x["predicted_s"] for x in parts))
    assert "predicted with hw_specs/h200.yaml" in capsys.readouterr().out


def test_without_a_gpu_the_full_run_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert _module().main([]) == 2
    assert "no CUDA device is present" in capsys.readouterr().err
