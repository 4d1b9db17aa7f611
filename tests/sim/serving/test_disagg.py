"""Prefill/decode disaggregation: pools, KV transfer time, xPyD search, pools with no chips left."""

from __future__ import annotations

import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.models import load_model

WL = {"mode": "server", "rate_per_s": 4.0, "requests": 40, "input_tokens": 2048, "output_tokens": 32}


def run(chips: int, dis: dict, slo: dict | None = None, **wl):
    return cs.simulate("h200", "qwen3-8b", chips=chips, plan={"tp": 1}, workload={**WL, **wl, "disaggregation": dis},
                       slo=slo)[0]


def test_one_prefill_one_decode_instance():
    r = run(2, {"prefill": {"chips": 1}, "decode": {"chips": 1}})
    assert r.feasible and r.serving["disaggregation"] == "1P1D"
    pools, tr = r.serving["pools"], r.serving["transfer_s"]
    assert set(pools) == {"prefill", "decode"} and all(0 < p["utilisation"] <= 1 for p in pools.values())
    # transfer: the whole sequence's KV (36 layers x 8 KV heads x 128 x K,V x bf16 per token) over one
    # H200's scale-out NIC at the collective efficiency, plus the NIC latency
    hw, cfg = load_hw("h200"), load_model("qwen3-8b")
    per_token = cfg.num_layers * cfg.attention.num_kv_heads * cfg.attention.head_dim * 2 * 2
    want = hw.system.scale_out.latency + 2048 * per_token / (hw.system.scale_out.nic_bandwidth * hw.efficiency.collective)
    assert tr["mean"] == pytest.approx(want, rel=1e-9)
    assert r.ttft_s["p50"] > want  # prefill, then the transfer
    assert r.serving["requests"] == 40 and r.output_tokens_per_s == pytest.approx(40 * 32 / r.serving["duration_s"])


def test_xpyd_search_covers_every_split():
    r = run(3, {"prefill": {"chips": 1}, "decode": {"chips": 1}, "search": True}, slo={"ttft_s": 1.0, "tpot_s": 0.05})
    assert [s["split"] for s in r.serving["splits"]] == ["1P2D", "2P1D"]
    best = max(r.serving["splits"], key=lambda s: s["goodput_output_tokens_per_s"])
    assert r.serving["disaggregation"] == best["split"]


def test_a_pool_with_no_chips_left():
    r = run(1, {"prefill": {"chips": 1}, "decode": {"chips": 1}})
    assert not r.feasible and r.reason.startswith("disaggregation: no chips left for a pool: 1 x 1 prefill + 1 x 1 decode")
    r = run(2, {"prefill": {"chips": 2}, "decode": {"chips": 1}, "search": True})
    assert not r.feasible and "no chips left" in r.reason


def test_bad_pools():
    with pytest.raises(CodesignError, match="workload.disaggregation.prefill: .*uses dp\\*pp\\*tp\\*attention_dp = 2 chips"):
        run(4, {"prefill": {"chips": 1, "parallel": {"tp": 2}}, "decode": {"chips": 1}})
    with pytest.raises(CodesignError, match="SLO search is not yet supported with disaggregation"):
        run(2, {"prefill": {"chips": 1}, "decode": {"chips": 1}}, slo={"ttft_s": 1.0}, rate_per_s=None)


def test_pool_fields_are_validated_at_parse_time():
    from codesign.scenario import parse_scenarios

    wl = {**WL, "disaggregation": {"prefill": {"chips": 1, "parallel": {"tq": 1}}, "decode": {"chips": 1}}}
    with pytest.raises(CodesignError, match="s.yaml: workload.disaggregation.prefill: "):
        parse_scenarios({"name": "x", "hardware": "h200", "model": "qwen3-8b", "workload": wl}, "s.yaml")
    wl = {**WL, "disaggregation": {"prefill": {"chips": 0}, "decode": {"chips": 1}}}
    with pytest.raises(CodesignError, match="workload.disaggregation: prefill.chips: Input should be greater than 0"):
        parse_scenarios({"name": "x", "hardware": "h200", "model": "qwen3-8b", "workload": wl}, "s.yaml")
