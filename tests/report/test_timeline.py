"""Step timelines: the engine's recorder hook, `step_timeline` and the Chrome/Perfetto trace JSON."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest

from codesign.report.perfetto import trace_events, write_trace
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.elementwise_regions import charged_ops
from codesign.sim.engine import _contract, _SimpySchedule, simulate_step
from codesign.sim.schedule import list_schedule
from codesign.sim.timeline import step_timeline
from tests.report.trace_schema import check_nesting, validate_trace
from tests.sim.helpers import FakeMapped, FakePlan, layer_ops, make_hw, op, simple_collective_time

HW = make_hw()


def tpe_for(layer: int, batch: int = 64) -> tuple[int, ...]:
    counts = [0] * 128
    for t in range(batch * 8):
        counts[(t * 7 + layer * 13 + t // 8) % 128] += 1
    return tuple(counts)


def branchy_layer(layer: int) -> list[tuple[int, object, list[int]]]:
    """A layer whose collective can overlap a GEMM: (id, op, predecessor ids)."""
    ops = layer_ops(layer, 64, tpe_for(layer))
    base = layer * 100
    return [(base + i, o, [base + i - 1] if i else []) for i, o in enumerate(ops)] + [
        (base + 50, op(f"{layer}.side", "gemm", layer, flops=2.0 * 64 * 4096 * 4096, w=4096 * 4096 * 2.0,
                       gemm=(1, 64, 4096, 4096)), [base + 4])]


def graph_of(layers: list[list[tuple[int, object, list[int]]]]) -> nx.DiGraph:
    g = nx.DiGraph()
    for layer in layers:
        for n, o, _ in layer:
            g.add_node(n, op=o)
        for n, _, preds in layer:
            for p in preds:
                g.add_edge(p, n)
    return g


def test_recorder_sees_every_process_and_keeps_chain_members():
    items = [("a", "gemm", 1.0, []), ("b", "vector", 2.0, ["a"]), ("c", "collective", 5.0, ["a"]),
             ("d", "gemm", 0.5, ["b", "c"])]
    seen = []
    sim = _SimpySchedule(lambda key, units, start, end: seen.append((key, units, start, end)))
    assert sim.run(_contract(items, sim.members)) == pytest.approx(6.5)
    by = {k: (u, s, e) for k, u, s, e in seen}
    # a has two successors, so a and b are separate processes; c overlaps b on the link
    assert by["a"] == (("matrix", "hbm"), 0.0, 1.0)
    assert by["b"] == (("vector", "hbm"), 1.0, 3.0)
    assert by["c"] == (("link",), 1.0, 6.0)
    assert by["d"] == (("matrix", "hbm"), 6.0, 6.5)
    assert sim.members["a"] == [("a", "gemm", 1.0)]
    # a chain is one process; its members are kept in order with their own seconds
    chain = [("x", "gemm", 1.0, []), ("y", "vector", 2.0, ["x"]), ("z", "memory", 3.0, ["y"])]
    seen.clear()
    sim = _SimpySchedule(lambda key, units, start, end: seen.append((key, units, start, end)))
    assert sim.run(_contract(chain, sim.members)) == pytest.approx(6.0)
    assert seen == [("x", ("matrix", "vector", "hbm"), 0.0, 6.0)]
    assert sim.members["x"] == [("x", "gemm", 1.0), ("y", "vector", 2.0), ("z", "memory", 3.0)]


def test_recorded_schedule_is_the_engines():
    """The timeline's SimPy schedule with a recorder gives the engine's own layer makespan."""
    items = [("a", "gemm", 1.0, []), ("b", "vector", 2.0, ["a"]), ("c", "collective", 5.0, ["a"])]
    rec = _SimpySchedule(lambda *a: None)
    assert rec.run(_contract(items, rec.members)) == list_schedule(_contract(items))


def _timeline(g: nx.DiGraph, opts: CostOptions | None = None):
    m = FakeMapped(g, plan=FakePlan(two_batch_overlap=False))
    opts = opts or CostOptions()
    return step_timeline(m, HW, opts, simple_collective_time), simulate_step(m, HW, opts, simple_collective_time)


@pytest.mark.parametrize("model", ["sram_per_op", "regions"])
def test_timeline_matches_the_step_and_each_op_cost(model):
    # under either element-wise rule: with regions each element-wise op's span is its region op's cost
    layers = [branchy_layer(i) for i in range(4)]
    g = graph_of(layers)
    opts = CostOptions(elementwise_model=model)
    tl, step = _timeline(g, opts)
    assert tl.time_s == pytest.approx(step.time_s, rel=1e-12)
    assert tl.step_time_s == step.time_s
    cm = CostModel(HW, "bf16", "bf16", opts, simple_collective_time)
    charged = charged_ops(g, opts.elementwise_regions)  # element-wise ops as their regions'
    # every op once on each unit it holds, for exactly its own cost
    for n, o in g.nodes(data="op"):
        spans = [s for s in tl.spans if s.name == o.name]
        units = {"gemm": 2, "grouped_gemm": 2, "attention": 2, "vector": 2, "collective": 1}[o.kind]
        assert len(spans) == units
        for s in spans:
            assert s.end_s - s.start_s == pytest.approx(cm.cost(charged[n]).time_s, rel=1e-9)
    # dependencies hold: an op starts after each predecessor ends
    end = {s.name: s.end_s for s in tl.spans}
    start = {s.name: s.start_s for s in tl.spans}
    for u, v in g.edges:
        assert start[g.nodes[v]["op"].name] >= end[g.nodes[u]["op"].name] - 1e-15
    # the collective overlaps the side GEMM in the first layer (different tracks, same time)
    side = next(s for s in tl.spans if s.name == "0.side" and s.track == "matrix")
    disp = next(s for s in tl.spans if s.name == "0.dispatch")
    assert disp.track == "link:scale_up"
    assert min(side.end_s, disp.end_s) > max(side.start_s, disp.start_s)
    # layers one after another
    assert sorted(tl.layer_start_s) == [0, 1, 2, 3]
    assert all(b > a for a, b in zip(list(tl.layer_start_s.values()), list(tl.layer_start_s.values())[1:]))


def test_no_track_has_overlapping_spans():
    tl, _ = _timeline(graph_of([branchy_layer(i) for i in range(3)]))
    for track in tl.tracks:
        spans = sorted((s for s in tl.spans if s.track == track), key=lambda s: s.start_s)
        for a, b in zip(spans, spans[1:]):
            assert b.start_s >= a.end_s - 1e-12 * max(1.0, a.end_s)


def test_trace_json_is_valid_chrome_trace_and_nests():
    tl, _ = _timeline(graph_of([branchy_layer(i) for i in range(3)]))
    doc = trace_events([tl, tl], ["step a", "step b"])
    validate_trace(doc)
    check_nesting(doc)
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == 2 * len(tl.spans)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"matrix", "vector", "hbm", "link:scale_up"}
    # durations sum (per process and track) to the spans' seconds, to the nanosecond rounding
    for track in tl.tracks:
        want = sum(s.end_s - s.start_s for s in tl.spans if s.track == track) * 1e6
        tid = {e["args"]["name"]: e["tid"] for e in doc["traceEvents"] if e["name"] == "thread_name" and e["pid"] == 1}
        got = sum(e["dur"] for e in xs if e["pid"] == 1 and e["tid"] == tid[track])
        assert got == pytest.approx(want, abs=1e-3 * len(tl.spans) + 1e-9)


def test_write_trace_round_trips_and_errors(tmp_path):
    tl, _ = _timeline(graph_of([branchy_layer(0)]))
    p = write_trace(tmp_path / "sub" / "step.json", [tl], ["s"])
    doc = json.loads(p.read_text())
    validate_trace(doc)
    assert doc["metadata"]["steps"][0]["step_time_s"] == tl.step_time_s
    from codesign.errors import CodesignError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(CodesignError, match="cannot write"):
        write_trace(tmp_path / "afile" / "step.json", [tl], ["s"])
    with pytest.raises(CodesignError, match="1 timelines but 2 labels"):
        trace_events([tl], ["a", "b"])


def test_perfetto_trace_processor_loads_the_trace(tmp_path):
    """Perfetto's own trace processor (the `perfetto` package) parses the file: slices per thread
    equal the spans per track. Needs the trace_processor_shell binary: $PERFETTO_TRACE_PROCESSOR,
    or the copy the package caches (.ci/run fetches it); skipped without one (no downloads here)."""
    from tests.report.trace_schema import trace_processor_binary

    binary = trace_processor_binary()
    if binary is None:
        pytest.skip("no trace_processor_shell binary (set PERFETTO_TRACE_PROCESSOR; .ci/run fetches it)")
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    tl, _ = _timeline(graph_of([branchy_layer(i) for i in range(2)]))
    p = write_trace(tmp_path / "step.json", [tl], ["step"])
    with TraceProcessor(trace=str(p), config=TraceProcessorConfig(bin_path=binary)) as tp:
        rows = tp.query("select t.name as track, count(*) as n, sum(s.dur) as dur from slice s "
                        "join thread_track tt on s.track_id = tt.id join thread t using(utid) group by t.name").as_pandas_dataframe()
        names = set(tp.query("select name from slice").as_pandas_dataframe()["name"])
    got = {r.track: (int(r.n), int(r.dur)) for r in rows.itertuples()}
    for track in tl.tracks:
        spans = [s for s in tl.spans if s.track == track]
        assert got[track][0] == len(spans)
        assert got[track][1] == pytest.approx(sum(s.end_s - s.start_s for s in spans) * 1e9, abs=len(spans) + 1)
    assert {s.name for s in tl.spans} == names
    assert not math.isnan(tl.time_s)


def test_two_batch_overlap_steps_are_flagged_and_shown_plain():
    g = graph_of([branchy_layer(i) for i in range(2)])
    m = FakeMapped(g, plan=FakePlan(two_batch_overlap=True))
    tl = step_timeline(m, HW, CostOptions(), simple_collective_time)
    plain = step_timeline(FakeMapped(g, plan=FakePlan(two_batch_overlap=False)), HW, CostOptions(),
                          simple_collective_time)
    assert tl.two_batch_overlap and not plain.two_batch_overlap
    assert tl.step_time_s == simulate_step(m, HW, CostOptions(), simple_collective_time).time_s
    assert tl.time_s == plain.time_s  # the plain schedule, whatever the step used
    assert trace_events([tl])["metadata"]["steps"][0]["two_batch_overlap"] is True


def test_pipeline_stages_are_laid_out_in_turn():
    layers = [branchy_layer(i) for i in range(4)]
    g = graph_of(layers)
    m = FakeMapped(g, plan=FakePlan(two_batch_overlap=False, pp=2), stage_layers=[[0, 1], [2, 3]])
    tl = step_timeline(m, HW, CostOptions(), simple_collective_time)
    step = simulate_step(m, HW, CostOptions(), simple_collective_time)
    assert tl.time_s == pytest.approx(step.time_s, rel=1e-12)
    assert tl.layer_start_s[2] == pytest.approx(step.stage_times_s[0], rel=1e-12)
