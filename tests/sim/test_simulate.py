"""simulate() end to end (tracer -> mapping -> engine) on a small model and a fixed test chip."""

from __future__ import annotations

import json

import pytest

import codesign as cs
from codesign.cli import main
from codesign.mapping import ParallelPlan, Precision, map_step
from codesign.models import load_model
from codesign.sim.engine import simulate_step
from tests.sim.helpers import make_hw

BF16 = {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}


def sim(hw, **kw):
    return cs.simulate(hw, "qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16, **kw)[0]


def test_more_hbm_bandwidth_never_slower_and_more_capacity_never_fewer_sequences():
    base = sim(make_hw(), context=4096)
    fast = sim(make_hw(**{"chip.hbm.bandwidth": "8 TB/s"}), context=4096)
    big = sim(make_hw(**{"chip.hbm.capacity": "192 GB"}), context=4096)
    assert fast.tpot_s["mean"] <= base.tpot_s["mean"]
    assert fast.concurrency == base.concurrency
    assert big.concurrency >= base.concurrency


def test_step_never_faster_than_roofline():
    hw = make_hw()
    cfg = load_model("qwen3-8b")
    for phase, batch, tokens, ctx in (("decode", 16, 1, 4096), ("prefill", 1, 2048, 0)):
        g = cs.trace(cfg, phase=phase, batch=batch, tokens=tokens, context=ctx)
        m = map_step(g, cfg, hw, ParallelPlan(), Precision())
        flops = sum(d["op"].flops for _, d in m.graph.nodes(data=True))
        nbytes = sum(d["op"].bytes_total for _, d in m.graph.nodes(data=True))
        floor = max(flops / hw.chip.matrix.peak("bf16"), nbytes / max(hw.chip.hbm.bandwidth, hw.chip.sram.bandwidth))
        assert simulate_step(m, hw).time_s >= floor


def test_same_input_identical_output():
    a = sim(make_hw(), context=4096).to_dict()
    b = sim(make_hw(), context=4096).to_dict()
    a["sim_wall_s"] = b["sim_wall_s"] = 0.0
    assert a == b


def test_infeasible_rows_not_exceptions():
    hw = make_hw(**{"chip.hbm.capacity": "8 GB"})
    r = sim(hw, context=4096)
    assert not r.feasible and r.reason.startswith("does not fit: short by ")
    assert r.memory_per_chip_gib["capacity"] == pytest.approx(8e9 / 2**30)
    r = cs.simulate(make_hw(), "qwen3-8b", chips=2, plan={"tp": 4}, context=4096)[0]
    assert not r.feasible and "uses dp*pp*tp*attention_dp = 4 chips, the deployment has 2" in r.reason
    r = cs.simulate(make_hw(), "qwen3-8b", chips=1, workload={"mode": "server", "rate_per_s": 1})[0]
    assert (r.feasible, r.reason) == (False, "server mode not yet supported")


def test_cli_simulate_json_and_bad_plan(capsys, tmp_path):
    import yaml

    from tests.sim.helpers import HW_DICT

    p = tmp_path / "chip.yaml"
    p.write_text(yaml.safe_dump(HW_DICT))
    assert main(["simulate", "--hw", str(p), "--model", "qwen3-8b", "--chips", "1", "--plan", "tp=1",
                 "--context", "4k", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == "qwen3-8b" and d["context"] == 4096 and d["feasible"] is True
    assert main(["simulate", "--hw", str(p), "--plan", "tp:8"]) == 2
    assert "--plan: expected 'auto' or e.g. tp=8,ep=8, found 'tp:8'" in capsys.readouterr().err
