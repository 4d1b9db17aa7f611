"""`codesign reproduce qwen3.5`: the ratios factor into capacity x speed, and the memory saving is the
weight-bytes ratio."""

import pytest

from codesign.commands.reproduce import BASELINES, CONTEXTS, reproduce


@pytest.mark.slow
def test_reproduce_on_h200_factors_and_memory():
    data = reproduce([("h200", 8)])
    (system,) = data["systems"]
    assert system["chips"] == 8
    assert len(system["throughput"]) == len(BASELINES) * len(CONTEXTS)
    for cmp in system["throughput"]:
        if cmp["simulated"] is None:
            assert cmp["base"]["reason"]  # an infeasible baseline says why
            continue
        s, b = cmp["subject"], cmp["base"]
        assert cmp["simulated"] == pytest.approx(s["output_tokens_per_s"] / b["output_tokens_per_s"])
        assert cmp["simulated"] == pytest.approx(cmp["capacity_factor"] * cmp["speed_factor"], rel=1e-9)
    # Qwen3.5-397B-A17B vs Qwen3-235B-A22B at 32K: the claim is 3.5x; the simulation stays within 25%
    r32 = next(c for c in system["throughput"] if c["baseline"] == "qwen3-235b-a22b" and c["context"] == 32768)
    assert 3.5 * 0.75 <= r32["simulated"] <= 3.5 * 1.25
    (mem,) = system["memory"]
    # 396.35B vs the proxy's ~1.045T parameters at the same precision
    assert mem["simulated_saving"] == pytest.approx(1 - 396.35 / 1045.0, abs=0.02)
