"""Every parsed field acts or is refused: the fields that used to be read and dropped (workload.mtp,
TokenDist.dist, rate_per_s, slo.ttft_s, chip.host, power, cost) now either change a result or are
refused with "not yet supported". Rows carry reason codes set where the reason is made, and two
runs of one point give byte-identical deterministic rows."""

from __future__ import annotations

import json

import pytest
import yaml

import codesign as cs
from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.scenario import load_scenarios
from codesign.sim.simulate import simulate_scenario
from tests.sim.helpers import HW_DICT, make_hw

BF16 = {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}


@pytest.fixture(scope="module")
def base():
    return cs.design_point(make_hw(name="fields-chip", **{"system.chips": 1}), "qwen3-8b", chips=1, plan={"tp": 1},
                           precision=BF16, workload={"mode": "decode", "input_tokens": 4096})


@pytest.fixture(scope="module")
def row(base):
    return cs.evaluate(base)[0]


def scenario(tmp_path, workload: str, extra: str = "") -> str:
    p = tmp_path / "s.yaml"
    p.write_text(f"name: s\nhardware: h200\nchips: 1\nmodel: qwen3-8b\nparallel: {{tp: 1}}\nworkload: {workload}\n{extra}")
    return str(p)


@pytest.mark.parametrize("workload,pattern", [
    ("{mode: decode, mtp: {tokens: 2}}", r"workload\.mtp: not yet supported in steady-state mode 'decode'"),
    ("{mode: offline, input_tokens: {mean: 1000, dist: lognormal}}",
     r"workload\.input_tokens\.dist: not yet supported in steady-state mode 'offline': found 'lognormal'"),
    ("{mode: decode, output_tokens: {mean: 100, dist: exponential}}", r"workload\.output_tokens\.dist: not yet supported"),
    ("{mode: offline, output_tokens: {mean: 100, cv: 0.5}}",
     r"workload\.output_tokens\.cv: a fixed length has no spread; .* found cv 0\.5 with dist 'fixed'"),
    ("{mode: offline, output_tokens: {mean: 100, dist: exponential, cv: 0.5}}",
     r"workload\.output_tokens\.cv: an exponential distribution has cv 1 by definition, found 0\.5"),
    ("{mode: batch, concurrency: 4, rate_per_s: 3}", r"workload\.rate_per_s: not yet supported in steady-state mode 'batch'"),
    ("{mode: decode, concurrency: 4}", r"workload\.concurrency: not yet supported in steady-state mode 'decode'"),
])
def test_steady_state_modes_refuse_server_fields(tmp_path, workload, pattern):
    with pytest.raises(CodesignError, match=r"s\.yaml: " + pattern):
        load_scenarios(scenario(tmp_path, workload))


def test_server_mode_keeps_its_fields(tmp_path):
    (s,) = load_scenarios(scenario(tmp_path, "{mode: server, rate_per_s: 3, mtp: {tokens: 2}, "
                                             "input_tokens: {mean: 1000, dist: lognormal}}"))
    assert s.workload.rate_per_s == 3 and s.workload.mtp.tokens == 2


def test_prefill_refuses_a_tpot_slo(tmp_path):
    with pytest.raises(CodesignError, match=r"slo\.tpot_s: not yet supported in mode 'prefill'"):
        load_scenarios(scenario(tmp_path, "{mode: prefill}", "slo: {tpot_s: 0.01}\n"))


def test_the_same_refusals_through_overrides_and_simulate(base):
    with pytest.raises(CodesignError, match=r"workload\.mtp: not yet supported"):
        cs.override(base, {"workload.mtp.tokens": 2})
    with pytest.raises(CodesignError, match=r"workload\.input_tokens\.dist: not yet supported"):
        cs.override(base, {"workload.input_tokens.dist": "uniform"})
    with pytest.raises(CodesignError, match=r"workload\.rate_per_s: not yet supported"):
        cs.simulate(make_hw(), "qwen3-8b", chips=1, plan={"tp": 1}, workload={"mode": "decode", "rate_per_s": 2})


def test_chip_host_is_refused():
    d = json.loads(json.dumps(HW_DICT))
    d["chip"]["host"] = {"capacity": "1 TB", "bandwidth": "100 GB/s"}
    with pytest.raises(CodesignError, match=r"x\.yaml: chip\.host: not yet supported"):
        from codesign import spec_files
        from codesign.hw.spec import HardwareSpec

        spec_files.validate(HardwareSpec, d, "x.yaml")


def test_ttft_slo_acts(base, row):
    assert row.feasible and row.reason_code is None
    ttft = row.ttft_s["mean"]
    tight = cs.evaluate(cs.override(base, {"slo.ttft_s": ttft / 2}))[0]
    assert not tight.feasible and tight.reason_code == "slo" and "slo.ttft_s" in tight.reason
    loose = cs.evaluate(cs.override(base, {"slo.ttft_s": ttft * 2}))[0]
    assert loose.feasible and loose.output_tokens_per_s == row.output_tokens_per_s


def test_cost_and_power_act(base, row):
    # independent arithmetic: the fixture spec rents at 3.5 USD per chip-hour and draws 700 W
    rate = row.output_tokens_per_s
    assert row.usd_per_million_output_tokens == pytest.approx(3.5 / (rate * 3600) * 1e6, rel=1e-12)
    assert row.output_tokens_per_joule == pytest.approx(rate / 700.0, rel=1e-12)
    dear = cs.evaluate(cs.override(base, {"price.per_hour": 7.0}))[0]
    assert dear.usd_per_million_output_tokens == pytest.approx(2 * row.usd_per_million_output_tokens, rel=1e-12)
    half = cs.evaluate(cs.override(base, {"power.utilisation": 0.5}))[0]
    assert half.output_tokens_per_joule == pytest.approx(2 * row.output_tokens_per_joule, rel=1e-12)
    hot = cs.evaluate(cs.override(base, {"power.tdp": "1400 W"}))[0]
    assert hot.output_tokens_per_joule == pytest.approx(row.output_tokens_per_joule / 2, rel=1e-12)


def test_every_shipped_spec_has_power_and_cost():
    from codesign import spec_files

    for name in spec_files.available("hw_specs"):
        hw = load_hw(name)
        assert hw.power.tdp > 0 and hw.cost.per_hour > 0 and hw.power.utilisation == 1.0, name


def test_mapping_section_acts(tmp_path):
    (s,) = load_scenarios(scenario(tmp_path, "{mode: decode, input_tokens: 4096}", "mapping: {reserve_fraction: 0.3}\n"))
    p = cs.Point.from_scenario(s)
    assert p.mapping.reserve_fraction == 0.3
    with pytest.raises(CodesignError, match=r"s\.yaml: mapping: reserve_fraction: Input should be less than 1"):
        load_scenarios(scenario(tmp_path, "{mode: decode}", "mapping: {reserve_fraction: 2}\n"))
    with pytest.raises(CodesignError, match=r"s\.yaml: mapping: two_batch: Extra inputs are not permitted"):
        load_scenarios(scenario(tmp_path, "{mode: decode}", "mapping: {two_batch: true}\n"))


def test_mapping_reserve_changes_the_batch(base, row):
    r = cs.evaluate(cs.override(base, {"mapping.reserve_fraction": 0.5}))[0]
    assert r.concurrency < row.concurrency


def test_reason_codes(base):
    big = cs.evaluate(cs.override(base, {"chip.hbm.capacity": "8 GB"}))[0]
    assert (big.feasible, big.reason_code, big.bottleneck) == (False, "capacity", "capacity")
    odd = cs.evaluate(cs.override(base, {"chips": 3, "parallel": {"tp": 3}}))[0]
    assert (odd.feasible, odd.reason_code) == (False, "divisibility")
    long = cs.evaluate(cs.override(base, {"workload.mode": "batch", "workload.concurrency": 2,
                                          "context": base.model.max_position_embeddings}))[0]
    assert (long.feasible, long.reason_code) == (False, "unsupported") and "exceeds" in long.reason


def test_rows_carry_hash_and_overrides(base, row):
    assert row.point_hash == cs.point_hash(base) and row.overrides == {}
    q = cs.override(base, {"chip.hbm.bandwidth": "6 TB/s"})
    r = cs.evaluate(q)[0]
    assert r.point_hash == cs.point_hash(q) != row.point_hash and r.overrides == {"chip.hbm.bandwidth": 6e12}
    assert r.output_tokens_per_s > row.output_tokens_per_s


def test_two_runs_give_identical_rows(base):
    a = cs.evaluate(base, cache=False)
    b = cs.evaluate(base, cache=False)
    assert a == b
    dump = lambda rows: json.dumps([r.deterministic_dict() for r in rows], allow_nan=False).encode()
    assert dump(a) == dump(b)


def test_simulate_and_evaluate_agree(base, row):
    (r,) = cs.simulate(base.hw, "qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16,
                       workload={"mode": "decode", "input_tokens": 4096})
    assert r == row


def test_chips_zero_is_refused():
    with pytest.raises(CodesignError, match=r"chips: Input should be greater than 0"):
        cs.design_point("h200", "qwen3-8b", chips=0)


def test_a_scenario_without_precision_gets_the_simulate_default(tmp_path):
    (s,) = load_scenarios(scenario(tmp_path, "{mode: decode, input_tokens: 4096}"))
    p = cs.Point.from_scenario(s)
    assert (p.precision.weights, p.precision.activations, p.precision.kv_cache) == ("fp8", "fp8", "bf16")
    assert cs.design_point("h200", "qwen3-8b").precision == p.precision
    (s,) = load_scenarios(scenario(tmp_path, "{mode: decode}", "precision: {weights: bf16}\n"))
    assert cs.Point.from_scenario(s).precision.activations == "bf16"  # a partial mapping: Precision's own defaults


def test_an_output_length_distribution_acts_in_offline_mode(tmp_path):
    # The token-weighted decode context (codesign.sim.workload.decode_context): same mean output,
    # a spread of lengths -> longer KV in the running batch -> a larger context and a lower rate.
    fixed = simulate_scenario(load_scenarios(scenario(
        tmp_path, "{mode: offline, input_tokens: 1000, output_tokens: 400, max_batch: 32}"))[0])[0]
    spread = simulate_scenario(load_scenarios(scenario(
        tmp_path, "{mode: offline, input_tokens: 1000, output_tokens: {mean: 400, dist: lognormal, cv: 0.8}, max_batch: 32}"))[0])[0]
    # same batch (the cap): the KV cache held scales with the mean decode context, 1200 -> 1000 + 328
    assert fixed.concurrency == spread.concurrency == 32
    ctx = 1000 + round((400 * (1 + 0.8 ** 2) - 1) / 2)
    assert spread.memory_per_chip_gib["kv_cache"] / fixed.memory_per_chip_gib["kv_cache"] == pytest.approx(ctx / 1200, rel=0.01)
    assert spread.output_tokens_per_s < fixed.output_tokens_per_s
