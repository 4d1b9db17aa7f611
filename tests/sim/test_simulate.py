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


# ---- speed machinery: memoised steps and traces, deferred TTFT in plan searches, progress ----------

def _rows(results):
    out = []
    for r in results:
        d = r.to_dict()
        d["sim_wall_s"] = 0.0
        out.append(d)
    return out


def test_cached_and_uncached_results_identical():
    from codesign.sim.simulate import cache_info, clear_caches

    clear_caches()
    kw = dict(model="qwen3-8b", chips=2, context=[2048, 8192])
    uncached = _rows(cs.simulate(make_hw(**{"system.chips": 2}), cache=False, **kw))
    assert cache_info()["steps"]["entries"] == 0 and cache_info()["traces"]["entries"] == 0
    first = _rows(cs.simulate(make_hw(**{"system.chips": 2}), **kw))
    filled = cache_info()["steps"]["entries"]
    again = _rows(cs.simulate(make_hw(**{"system.chips": 2}), **kw))
    assert uncached == first == again
    assert filled > 0 and cache_info()["steps"]["hits"] >= filled  # the repeat simulated nothing new
    assert cache_info()["steps"]["entries"] == filled


def test_cache_key_is_the_whole_spec_not_its_name():
    # same name, other HBM bandwidth: the memoised step of the first must not answer the second
    slow = sim(make_hw(), context=4096)
    fast = sim(make_hw(**{"chip.hbm.bandwidth": "9.6 TB/s"}), context=4096)
    fresh = cs.simulate(make_hw(**{"chip.hbm.bandwidth": "9.6 TB/s"}), "qwen3-8b", chips=1, plan={"tp": 1},
                        precision=BF16, context=4096, cache=False)[0]
    assert fast.tpot_s["mean"] == fresh.tpot_s["mean"] < slow.tpot_s["mean"]


def test_cost_options_and_router_are_part_of_the_key():
    base = sim(make_hw(), context=4096)
    slower = sim(make_hw(), context=4096, cost={"launch_overhead_s": 50e-6})
    assert slower.tpot_s["mean"] > base.tpot_s["mean"]
    moe = dict(model="qwen3.5-35b-a3b", chips=8, plan={"tp": 8, "ep": 8}, context=4096)
    uni = cs.simulate(make_hw(), **moe)[0]
    zipf = cs.simulate(make_hw(), router="zipf:1.2", **moe)[0]
    zipf_fresh = cs.simulate(make_hw(), router="zipf:1.2", cache=False, **moe)[0]
    assert zipf.tpot_s == zipf_fresh.tpot_s != uni.tpot_s


def test_result_breakdown_is_a_copy_of_the_memoised_step():
    a = sim(make_hw(), context=4096)
    a.breakdown["block"]["attention"] = -1.0
    b = sim(make_hw(), context=4096)
    assert b.breakdown["block"]["attention"] > 0


def test_auto_plan_equals_best_single_plan_with_its_own_ttft():
    # the decode-mode search simulates TTFT for the winner only; it must pick and report exactly
    # what evaluating every plan in full does
    from codesign.mapping import candidate_plans

    hw = make_hw(**{"system.chips": 4})
    cfg = load_model("qwen3-8b")
    plans = candidate_plans(cfg, 4, max_tp=8)
    assert len(plans) > 1
    auto = cs.simulate(hw, cfg, chips=4, context=8192, cache=False)[0].to_dict()
    singles = [cs.simulate(hw, cfg, chips=4, plan=p, context=8192, cache=False)[0].to_dict() for p in plans]
    best = max(singles, key=lambda d: d["output_tokens_per_s"])  # max keeps the first of ties, as the search
    for d in (auto, best):
        d["sim_wall_s"] = 0.0
        d.pop("point_hash")  # "auto" and a fixed plan are different points
    assert auto == best
    assert auto["ttft_s"]["mean"] > 0


def test_bounded_cache_evicts_least_recently_used():
    from codesign.sim.simulate import BoundedCache

    c = BoundedCache("t", 2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)
    assert (c.get("b"), c.get("a"), c.get("c"), len(c)) == (None, 1, 3, 2)
    assert c.info() == {"entries": 2, "size": 2, "hits": 3, "misses": 1}


def test_progress_counts_evaluations_and_prints_nothing_off_terminal(capsys):
    from codesign import progress
    from codesign.commands.progress import progress_bar
    from codesign.mapping import candidate_plans

    with progress_bar("test", delay_s=0.0) as bar:
        rows = cs.simulate(make_hw(**{"system.chips": 2}), "qwen3-8b", chips=2, context=[2048, 4096])
        assert progress.current() is bar
        plans = len(candidate_plans(load_model("qwen3-8b"), 2, max_tp=8))
        assert (bar.total, bar.done) == (2 * plans, 2 * plans)
    assert progress.current() is None and len(rows) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_workload_max_batch_caps_the_running_batch():
    """A serving engine's configured maximum batch bounds the batch even when more would fit."""
    import codesign as cs

    free = cs.simulate("h100", "qwen3-8b", chips=1, plan={"tp": 1}, workload={"mode": "decode", "input_tokens": 4096})
    capped = cs.simulate("h100", "qwen3-8b", chips=1, plan={"tp": 1},
                         workload={"mode": "decode", "input_tokens": 4096, "max_batch": 7})
    assert free[0].concurrency > 7
    assert capped[0].concurrency == 7
    assert capped[0].output_tokens_per_s < free[0].output_tokens_per_s


def test_mapping_options_act():
    """Every mapping option reachable from simulate() changes what it models."""
    moe = dict(model="qwen3.5-35b-a3b", chips=8, plan={"tp": 8, "ep": 8}, context=4096, cache=False)
    base = cs.simulate(make_hw(), **moe)[0]
    no_tbo = cs.simulate(make_hw(), mapping_options={"two_batch_overlap": False}, **moe)[0]
    assert no_tbo.tpot_s["mean"] >= base.tpot_s["mean"]  # auto keeps overlap only where it is faster
    bf16 = cs.simulate(make_hw(), precision=BF16, **moe)[0]
    fp8 = cs.simulate(make_hw(), precision=BF16, mapping_options={"dispatch_fp8": True}, **moe)[0]
    assert fp8.tpot_s["mean"] < bf16.tpot_s["mean"]  # half the dispatch bytes
    ring = cs.simulate(make_hw(), mapping_options={"allreduce_algorithm": "ring"}, **moe)[0]
    assert ring.tpot_s["mean"] >= base.tpot_s["mean"]  # auto takes the fastest algorithm
    roomy = cs.simulate(make_hw(), mapping_options={"reserve_fraction": 0.0}, **moe)[0]
    assert roomy.concurrency > base.concurrency


def test_bad_mapping_option_is_one_line():
    with pytest.raises(cs.CodesignError, match=r"mapping\.allreduce_algorithm: expected one of .*\(found: .x.\)$"):
        cs.simulate(make_hw(), "qwen3-8b", chips=1, plan={"tp": 1}, mapping_options={"allreduce_algorithm": "x"})


def test_mixed_steps_read_weights_once_and_merge_like_one_batch():
    """A step mixing decodes and a prefill chunk costs less than the two apart (weights stream
    once) and more than either; two decode groups cost what one group of both at their mean KV
    length costs (every op is linear in the KV length)."""
    from codesign.graph.shape import Group, StepShape
    from codesign.mapping import ParallelPlan, Precision
    from codesign.sim.stepper import Stepper

    st = Stepper(make_hw(), load_model("qwen3.5-35b-a3b"), ParallelPlan(tp=8, ep=8), Precision(), cache=False)
    dec = StepShape.decode(32, 8192)
    pre = StepShape.prefill(1, 2048, cached=4096)
    both = StepShape(dec.groups + pre.groups)
    t_dec, t_pre, t_both = (st.step(s).time_s for s in (dec, pre, both))
    assert max(t_dec, t_pre) < t_both < t_dec + t_pre
    split = StepShape((Group(16, 1, 4000), Group(16, 1, 6000)))
    pooled = StepShape((Group(32, 1, 5000),))
    assert st.step(split).time_s == pytest.approx(st.step(pooled).time_s, rel=1e-12)


def test_qwen3_235b_runs_pp8_on_uneven_stages():
    # 94 layers on 8 stages: [11, 12 x 6, 11] (vLLM's rule); memory is the most loaded stage's.
    fp8 = {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}
    r = cs.simulate(make_hw(), "qwen3-235b-a22b", chips=8, plan={"pp": 8}, precision=fp8, context=4096)[0]
    assert r.feasible and r.plan["pp"] == 8 and r.output_tokens_per_s > 0
    from codesign.mapping import memory_per_chip

    config = load_model("qwen3-235b-a22b")
    m = memory_per_chip(config, None, make_hw(), ParallelPlan(pp=8), Precision(**fp8), 1, 4096)
    assert r.memory_per_chip_gib["weights"] * 2**30 == pytest.approx(m.weights, rel=0.01)
