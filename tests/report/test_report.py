"""HTML reports: content against the results they report, self-containment, determinism, the
page in headless Chromium (no console errors, no network), and the two CLI entry points."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import codesign as cs
from codesign.cli import main
from codesign.report import from_frame, from_results, read_results, render, write_report, write_results
from codesign.results import results_to_dataframe
from tests.report import browser
from tests.report.trace_schema import check_nesting, validate_trace

HW, MODEL, PLAN = "h200", "qwen3.5-35b-a3b", {"ep": 8, "attention_dp": 8}


@pytest.fixture(scope="module")
def point():
    results = cs.simulate(HW, MODEL, context=[32_768], plan=PLAN)
    data = from_results(results, hw=HW, model=MODEL)
    return results, data


@pytest.fixture(scope="module")
def page(point, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(point[1], path)
    return path


def test_sections_and_numbers_match_the_results(point, page):
    (r,), data = point
    html = page.read_text()
    for heading in ("Summary", "Memory per chip", "Throughput against context", "Time per block", "Roofline",
                    "Expert load", "Decode-step timeline", "Time per layer type"):
        assert f">{heading}</h" in html, heading
    assert f"{r.output_tokens_per_s:,.0f}" in html and f"{r.concurrency}" in html
    assert "Pareto" not in html  # one design point: no Pareto plots
    # the curve at the row's own context is the row (same public call, same plan)
    c = data.curves.set_index("context")
    assert c.loc[32_768, "output_tokens_per_s_per_chip"] == r.output_tokens_per_s_per_chip
    assert list(c.index) == [1024 * 2**k for k in range(9)]
    d = data.details[0]
    # every op's simulated time, times how often it runs, adds up to the engine's per-block sums
    assert (d.ops["time_s"] * d.ops["count"]).sum() == pytest.approx(sum(r.breakdown["block"].values()), rel=1e-9)
    # each MoE layer routes batch x top_k tokens, and every MoE layer is in the heatmap
    config = cs.load_model(MODEL)
    assert (d.expert_tokens.sum(axis=1) == r.concurrency * config.moe.top_k).all()
    assert len(d.expert_tokens) == sum(t == "moe" for t in config.mlp_types)
    assert d.expert_tokens.shape[1] == config.moe.num_experts
    assert d.timeline.time_s == pytest.approx(r.tpot_s["mean"], rel=1e-9)


def test_self_contained_and_deterministic(point, page):
    html = page.read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(u.startswith(("#", "data:")) for u in refs), {u[:40] for u in refs if not u.startswith(("#", "data:"))}
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html))
    assert "<script" not in html and "@import" not in html
    assert render(point[1]) == html


def test_page_opens_in_chromium_without_errors(page, tmp_path):
    if browser.chromium() is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    shot = tmp_path / "report.png"
    load = browser.load(page, shot)
    assert load.errors == []
    assert all(u.startswith(("file:", "data:")) for u in load.requests), load.requests
    assert load.svg_count == page.read_text().count("<svg ")
    assert load.svg_count == 7 and "Decode-step timeline" in load.body_text
    from PIL import Image

    im = Image.open(shot)
    assert im.size[0] == 1280 and im.size[1] == load.height > 3000
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # drawn, not blank


def sweep_frame() -> pd.DataFrame:
    """Three design points with swept HBM bandwidth, as a sweep would write them."""
    base = cs.load_hw(HW)
    rows = []
    for bw in (3.2e12, 4.8e12, 8.0e12):
        hw = base.model_copy(update={"chip": base.chip.model_copy(update={
            "hbm": base.chip.hbm.model_copy(update={"bandwidth": bw})})})
        (r,) = cs.simulate(hw, MODEL, context=[32_768], plan=PLAN, name=f"bw{bw / 1e12:g}")
        rows.append(r)
    df = results_to_dataframe(rows)
    df["chip.hbm.bandwidth"] = [3.2e12, 4.8e12, 8.0e12]
    return df


def test_cli_report_of_a_results_folder(tmp_path, capsys):
    df = sweep_frame()
    write_results(df, tmp_path / "sweep")
    out = tmp_path / "reports" / "sweep.html"
    assert main(["report", str(tmp_path / "sweep"), "--out", str(out)]) == 0
    assert "report of 3 rows written" in capsys.readouterr().err
    html = out.read_text()
    assert ">Pareto fronts</h2>" in html and "chip.hbm.bandwidth" in html
    # the detail row is the fastest one, re-derived with its swept bandwidth applied: its curve
    # at 32K reproduces the row
    data = from_frame(read_results(tmp_path / "sweep"), details=False)
    fastest = df.loc[df["output_tokens_per_s_per_chip"].idxmax()]
    assert fastest["name"] == "bw8"
    c = data.curves.set_index("context")
    assert c.loc[32_768, "output_tokens_per_s_per_chip"] == fastest["output_tokens_per_s_per_chip"]
    # more bandwidth at the same price: only the fastest point is on the front
    assert data.rows.set_index("name")["pareto"].to_dict() == {"bw8": True, "bw4.8": False, "bw3.2": False}


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codesign: error:") and "not a folder" in err and "\n" not in err
    (tmp_path / "adir").mkdir()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "adir")]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_cli_simulate_report_and_trace(tmp_path, capsys):
    rep, tr = tmp_path / "r" / "point.html", tmp_path / "t" / "step.json"
    assert main(["simulate", "--hw", HW, "--model", MODEL, "--context", "32k", "--plan", "ep=8,attention_dp=8",
                 "--report", str(rep), "--trace", str(tr)]) == 0
    err = capsys.readouterr().err
    assert "report written" in err and "trace of 1 decode step(s) written" in err
    assert ">Decode-step timeline</h3>" in rep.read_text()
    doc = json.loads(tr.read_text())
    validate_trace(doc)
    check_nesting(doc)
    (r,) = cs.simulate(HW, MODEL, context=[32_768], plan=PLAN)
    step = doc["metadata"]["steps"][0]
    assert step["process"] == r.name
    assert step["timeline_s"] == pytest.approx(r.tpot_s["mean"], rel=1e-9)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"matrix", "vector", "hbm"} <= names and any(n.startswith("link:") for n in names)
    assert any(e.get("name", "").endswith("experts/moe_experts") for e in doc["traceEvents"])


def test_cli_simulate_refuses_an_unwritable_report_before_simulating(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["simulate", "--hw", HW, "--report", str(tmp_path / "f" / "r.html")]) == 2
    err = capsys.readouterr()
    assert "is not a folder" in err.err and err.out == ""  # nothing simulated, nothing printed


def test_rows_that_cannot_be_re_derived_get_a_note(point):
    (r,), _ = point
    df = results_to_dataframe([r]).assign(hardware="not-a-spec")
    data = from_frame(df, curves=False)
    assert data.details == [] and any("no detail sections" in n and "not-a-spec" in n for n in data.notes)
    html = render(data)
    assert "no detail sections" in html and ">Pareto fronts</h2>" in html
    from codesign.errors import CodesignError

    with pytest.raises(CodesignError, match="--detail: no row named 'nope'"):
        from_frame(df, detail=["nope"])


def test_swept_spec_values_are_shown_with_units():
    from codesign.report.html import _si, summary_table

    assert [_si(4.8e12, "B/s"), _si(1e9, "B"), _si(2e-6, "s"), _si(700.0, "W")] == ["4.8 TB/s", "1 GB", "2 us", "700 W"]
    df = pd.DataFrame({"name": ["a"], "feasible": [True], "hardware": ["h200"], "model": ["m"], "chips": [8],
                       "output_tokens_per_s": [1.0], "chip.hbm.bandwidth": [8e12], "efficiency.gemm": [0.7]})
    t = summary_table(df)
    labels = [h["label"] for h in t["headers"]]
    cells = dict(zip(labels, (c["text"] for c in t["rows"][0]["cells"])))
    assert cells["chip.hbm.bandwidth"] == "8 TB/s" and cells["efficiency.gemm"] == "0.7"


def test_context_curve_stops_at_the_models_maximum():
    from codesign.report.inputs import DesignPoint, context_curve

    # qwen3-8b: 40960 tokens at most
    point = cs.design_point("h100", "qwen3-8b", context=[8192], chips=1, plan={"tp": 1})
    p = DesignPoint(label="q", point=point, batch=1)
    curve = context_curve(p, contexts=[16_384, 32_768, 65_536, 262_144])
    assert curve["context"].tolist() == [16_384, 32_768]
    assert context_curve(p, contexts=[65_536]).empty


def _op_seconds(detail) -> float:
    return float((detail.ops["time_s"] * detail.ops["count"]).sum())


def test_simulate_report_draws_the_point_it_simulated():
    # inputs that a row's columns do not carry: a cost-model option and a mapping option given
    # with the base point (not as overrides), and a bandwidth with more digits than a column shows
    base = cs.design_point(HW, MODEL, context=[32_768], plan=PLAN, cost={"launch_overhead_s": 2e-5},
                           mapping_options={"dispatch_fp8": False})
    p = cs.override(base, {"chip.hbm.bandwidth": 4.123456789e12})
    (r,) = cs.evaluate(p)
    data = from_results([r], points=[p], curves=False)
    (d,) = data.details
    assert d.point.point.cost.launch_overhead_s == 2e-5 and d.point.point.mapping.dispatch_fp8 is False
    assert d.hbm_bandwidth == 4.123456789e12
    # the detail step is the simulated step: its ops add up to the row's per-block sums
    assert _op_seconds(d) == pytest.approx(sum(r.breakdown["block"].values()), rel=1e-9)
    assert d.timeline.time_s == pytest.approx(r.tpot_s["mean"], rel=1e-9)
    # re-derived from the row alone, the base's options are lost (the row's overrides are kept)
    (q,) = from_results([r], curves=False).details
    assert q.hbm_bandwidth == 4.123456789e12 and q.point.point.cost.launch_overhead_s != 2e-5
    assert _op_seconds(q) != pytest.approx(_op_seconds(d), rel=1e-6)


def test_sweep_report_draws_each_row_at_its_stored_point(tmp_path):
    from codesign.report import read_points

    base = cs.design_point(HW, MODEL, context=[32_768], plan=PLAN, cost={"launch_overhead_s": 2e-5})
    df = cs.sweep(base, grid={"chip.hbm.bandwidth": ["4.8 TB/s", "8 TB/s"]}, out=tmp_path / "s", executor="serial")
    points = read_points(tmp_path / "s")
    assert sorted(points) == sorted(df["point_hash"]) and all(cs.point_hash(points[h]) == h for h in points)
    frame = read_results(tmp_path / "s")
    data = from_frame(frame, curves=False, points=points)
    (d,) = data.details  # the fastest row
    fastest = frame.loc[frame["output_tokens_per_s_per_chip"].idxmax()]
    # the sweep's points share a name; the report tells them apart by the swept value
    assert frame["name"].nunique() == 1
    assert sorted(data.rows["name"]) == [f"{fastest['name']} [4.8 TB/s]", f"{fastest['name']} [8 TB/s]"]
    assert d.point.label == f"{fastest['name']} [8 TB/s]"
    assert d.point.point.cost.launch_overhead_s == 2e-5 and d.hbm_bandwidth == 8e12
    (row,) = [json.loads(js) for js in frame["result_json"][frame["point_hash"] == fastest["point_hash"]]]
    assert _op_seconds(d) == pytest.approx(sum(row["breakdown"]["block"].values()), rel=1e-9)
    # the CLI reads the stored points too: its timeline caption is the stored step's
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "s"), "--out", str(out), "--no-curves"]) == 0
    assert f"Decode step {d.timeline.step_time_s * 1e3:.3g} ms" in out.read_text()
    slow = f"{fastest['name']} [4.8 TB/s]"
    assert main(["report", str(tmp_path / "s"), "--out", str(out), "--no-curves", "--detail", slow]) == 0
    assert f"{slow}: decode step" in out.read_text()
    # without the stored points the row is re-derived: swept bandwidth kept, base option lost
    (q,) = from_frame(frame, curves=False).details
    assert q.hbm_bandwidth == 8e12 and q.point.point.cost.launch_overhead_s != 2e-5
