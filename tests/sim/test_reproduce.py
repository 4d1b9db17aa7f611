"""`codesign reproduce qwen3.5`: the ratios factor into capacity x speed, and the memory saving is the
weight-bytes ratio."""

import pytest

from codesign.commands.reproduce import (BARELY_FITS_BATCH, BASELINES, CONTEXTS, SIZING, _capacity_for_reserve, _ratio,
                                         reproduce)


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
    mem = {m["baseline"]: m for m in system["memory"]}
    # 396.35B vs the proxies' ~1.045T and ~1.030T parameters at the same precision
    assert mem["qwen3-max-proxy"]["simulated_saving"] == pytest.approx(1 - 396.35 / 1045.0, abs=0.02)
    assert mem["qwen3-max-public-proxy"]["simulated_saving"] == pytest.approx(1 - 396.35 / 1030.1, abs=0.02)
    for cmp in system["throughput"]:
        assert cmp["sizing"] == SIZING[cmp["baseline"]]
        if cmp["simulated"] is not None:
            assert (cmp["flag"] is not None) == (cmp["base"]["concurrency"] < BARELY_FITS_BATCH)


def _rates(concurrency: int) -> dict:
    side = {"output_tokens_per_s": 100.0, "concurrency": concurrency}
    return {"qwen3.5-397b-a17b": {32768: {"output_tokens_per_s": 900.0, "concurrency": 64}},
            "qwen3-max-proxy": {32768: side}}


def test_a_baseline_that_barely_fits_is_flagged_not_reported():
    ratio, flag = _ratio(_rates(1), "qwen3-max-proxy", 32768)
    assert ratio == pytest.approx(9.0) and "barely fits (1 sequences < 8): not a result" in flag
    ratio, flag = _ratio(_rates(BARELY_FITS_BATCH), "qwen3-max-proxy", 32768)
    assert ratio == pytest.approx(9.0) and flag is None


def test_every_proxy_says_how_it_was_sized():
    assert "FROM THE CLAIMS" in SIZING["qwen3-max-proxy"]
    assert "public facts only" in SIZING["qwen3-max-public-proxy"]
    assert set(SIZING) == set(BASELINES)


def test_reserve_sensitivity_scales_capacity_to_the_same_usable_bytes():
    # usable = (1 - 0.05) x C' must equal (1 - 0.10) x C
    from codesign.hw import load_hw

    c = load_hw("h200").chip.hbm.capacity
    c2 = _capacity_for_reserve("h200", 0.10).chip.hbm.capacity
    assert (1 - 0.05) * c2 == pytest.approx((1 - 0.10) * c)
