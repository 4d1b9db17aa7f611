from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.mapping import collective_time
from codesign.mapping.collectives import NVLS_GAIN
from tests.mapping.helpers import make_hw


def test_ring_allreduce_closed_form(hw):
    n, nbytes = 8, 256 * 2**20
    bw = 18 * 25e9 * hw.efficiency.collective  # all links to the switch, per direction
    want = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * 3e-6
    got = collective_time({"type": "all_reduce", "group": tuple(range(8)), "bytes": nbytes, "algorithm": "ring"}, hw)
    assert got == pytest.approx(want)
    # reduce-scatter / all-gather are one half each
    rs = collective_time({"type": "reduce_scatter", "size": 8, "bytes": nbytes, "algorithm": "ring"}, hw)
    assert rs == pytest.approx(want / 2)


def test_nccl_busbw_anchor(hw):
    # NCCL 8xH100 ring busBw ~370 GB/s (accelerators.md anchor 44); large messages: latency negligible
    nbytes = 8e9
    t = collective_time({"type": "all_reduce", "size": 8, "bytes": nbytes, "algorithm": "ring"}, hw)
    busbw = nbytes / t * 2 * 7 / 8
    assert busbw == pytest.approx(370e9, rel=0.05)
    t_nvls = collective_time({"type": "all_reduce", "size": 8, "bytes": nbytes, "algorithm": "nvls"}, hw)
    assert t / t_nvls == pytest.approx(NVLS_GAIN, rel=0.01)


def test_auto_picks_fastest_and_small_messages_are_latency_bound(hw):
    c = {"type": "all_reduce", "size": 8, "bytes": 2**20}
    auto = collective_time(c, hw)
    assert auto == min(collective_time({**c, "algorithm": a}, hw) for a in ("ring", "two_shot", "one_shot"))
    assert auto < collective_time({**c, "algorithm": "ring"}, hw)


def test_deepep_anchors():
    h800 = make_hw(links=8)  # H800: 8 NVLink links x 25 GB/s per direction
    # normal mode EP8, 4096 tokens x 7168 x top-8 FP8: 153 GB/s measured (anchor 41)
    nbytes = 4096 * 8 * 7168
    t = collective_time({"type": "all_to_all", "size": 8, "bytes": nbytes}, h800)
    assert nbytes * 7 / 8 / t == pytest.approx(153e9, rel=0.1)
    # low-latency mode: its own bandwidth fraction and fixed time replace efficiency.collective and
    # the link latency (defaults: 0.43 and the scale-up latency, 3 us here)
    ll_bytes = 128 * 8 * 7168 * (1 + 4 / 128)
    ll = collective_time({"type": "all_to_all", "size": 8, "bytes": ll_bytes, "algorithm": "low_latency"}, h800)
    assert ll == pytest.approx(ll_bytes * 7 / 8 / (200e9 * 0.43) + 3e-6, rel=1e-9)
    tuned = h800.model_copy(update={"efficiency": h800.efficiency.model_copy(
        update={"low_latency_collective": 0.92, "low_latency_overhead": 39e-6})})
    ll = collective_time({"type": "all_to_all", "size": 8, "bytes": ll_bytes, "algorithm": "low_latency"}, tuned)
    assert ll == pytest.approx(ll_bytes * 7 / 8 / (200e9 * 0.92) + 39e-6, rel=1e-9)
    # across nodes (EP16 = 2 domains of 8): half the bytes leave the node over the 50 GB/s NIC
    ll16 = collective_time({"type": "all_to_all", "group": tuple(range(16)), "bytes": ll_bytes,
                            "algorithm": "low_latency"}, make_hw(links=8, chips=16).model_copy(
                                update={"efficiency": tuned.efficiency}))
    assert ll16 == pytest.approx(max(ll_bytes * 8 / 16 / (50e9 * 0.92), ll_bytes * 7 / 16 / (200e9 * 0.92)) + 39e-6)


def test_imbalance_scales_all_to_all(hw):
    base = {"type": "all_to_all", "size": 8, "bytes": 64e6}
    t1 = collective_time(base, hw) - 3e-6
    t2 = collective_time({**base, "imbalance": 1.5}, hw) - 3e-6
    assert t2 == pytest.approx(1.5 * t1)


def test_scale_out_uses_nics(hw):
    nbytes = 64e6
    t_out = collective_time({"type": "all_to_all", "group": tuple(range(16)), "bytes": nbytes}, hw)
    nic = 50e9 * hw.efficiency.collective  # 400 Gb/s
    assert t_out == pytest.approx(nbytes * 8 / 16 / nic + 10e-6 + 3e-6)
    t_in = collective_time({"type": "all_to_all", "group": tuple(range(8)), "bytes": nbytes}, hw)
    assert t_out > 5 * t_in


def test_ring_topology_slower_than_switch_for_partial_groups():
    ring = make_hw(topology="ring", size=16, links=4, chips=16)
    t_ring = collective_time({"type": "all_to_all", "size": 16, "bytes": 16e6}, ring)
    t_sw = collective_time({"type": "all_to_all", "size": 16, "bytes": 16e6}, make_hw(size=16, links=4, chips=16))
    assert t_ring > t_sw  # bisection of a ring limits all-to-all


def test_collective_errors(hw):
    with pytest.raises(CodesignError, match=r"^collective.type: expected one of .*found 'broadcast'$"):
        collective_time({"type": "broadcast", "size": 8, "bytes": 1}, hw)
    with pytest.raises(CodesignError, match=r"^collective.algorithm: nvls needs a switched scale-up domain"):
        collective_time({"type": "all_reduce", "size": 4, "bytes": 1e6, "algorithm": "nvls"},
                        make_hw(topology="full_mesh", links=7))


# -- kernel-calibrated curves (efficiency.collective_curves) ---------------------------------------

CURVES = {"step": "1 us", "ring": {"overhead": "2 us", "efficiency": 0.8, "ramp_bytes": 4e6},
          "nvls": {"overhead": "5 us", "efficiency": 0.7, "ramp_bytes": 16e6},
          "one_shot": {"overhead": "4 us", "efficiency": 0.75}, "two_shot": {"overhead": "9 us", "efficiency": 0.6}}


def curved_hw(curves: dict | None = None, **kw):
    from codesign.hw.spec import CollectiveCurves

    base = make_hw(**kw)
    cc = CollectiveCurves.model_validate(CURVES if curves is None else curves)
    return base.model_copy(update={"efficiency": base.efficiency.model_copy(update={"collective_curves": cc})})


def test_curves_against_a_hand_calculation():
    hw = curved_hw()  # 18 links x 25 GB/s = 450 GB/s per direction to the switch
    bw, n, m = 450e9, 8, 2**20

    def ar(algo, nbytes=m, ranks=n):
        return collective_time({"type": "all_reduce", "size": ranks, "bytes": nbytes, "algorithm": algo}, hw)

    # ring: 2 us + 14 steps x 1 us + 2*7/8 m / (450 GB/s x 0.8 x sqrt(m / (m + 4e6)))
    ring = 2e-6 + 14e-6 + 1.75 * m / (bw * 0.8 * (m / (m + 4e6)) ** 0.5)
    assert ar("ring") == pytest.approx(ring, rel=1e-12)
    # nvls: 5 us + 2 steps + (n+1)/n m / (450 GB/s x 0.7 x ramp)
    nvls = 5e-6 + 2e-6 + 9 / 8 * m / (bw * 0.7 * (m / (m + 16e6)) ** 0.5)
    assert ar("nvls") == pytest.approx(nvls, rel=1e-12)
    # one-shot: 4 us + 1 step + (n-1) m / (450 GB/s x 0.75); two-shot: 9 us + 2 steps + 2(n-1)/n m / (bw x 0.6)
    one = 4e-6 + 1e-6 + 7 * m / (bw * 0.75)
    two = 9e-6 + 2e-6 + 1.75 * m / (bw * 0.6)
    assert ar("one_shot") == pytest.approx(one, rel=1e-12)
    assert ar("two_shot") == pytest.approx(two, rel=1e-12)
    assert ar("nccl") == pytest.approx(min(ring, nvls))
    assert ar("auto") == pytest.approx(min(ring, nvls, one, two))
    # at 1 GB the ramp has saturated: NVLS (wire 9/8 m at 0.7) beats the ring (7/4 m at 0.8)
    g = 1e9
    assert ar("nccl", g) == pytest.approx(7e-6 + 9 / 8 * g / (bw * 0.7 * (g / (g + 16e6)) ** 0.5))
    # two ranks: the ring moves m once (2 steps); NVLS would move 3/2 m, so NCCL's choice is the ring
    ring2 = 2e-6 + 2e-6 + m / (bw * 0.8 * (m / (m + 4e6)) ** 0.5)
    assert ar("nccl", ranks=2) == pytest.approx(ring2)
    # reduce-scatter / all-gather: one ring phase, (n-1)/n m in n-1 steps
    rs = collective_time({"type": "reduce_scatter", "size": n, "bytes": m, "algorithm": "ring"}, hw)
    assert rs == pytest.approx(2e-6 + 7e-6 + 7 / 8 * m / (bw * 0.8 * (m / (m + 4e6)) ** 0.5))


def test_curve_step_defaults_to_the_link_latency_and_missing_curves_are_unavailable():
    hw = curved_hw({"ring": {"overhead": "0 us", "efficiency": 0.8}})
    m = 8e6
    t = collective_time({"type": "all_reduce", "size": 4, "bytes": m, "algorithm": "ring"}, hw)
    assert t == pytest.approx(6 * 3e-6 + 1.5 * m / (450e9 * 0.8))  # make_hw's scale-up latency: 3 us
    assert collective_time({"type": "all_reduce", "size": 4, "bytes": m}, hw) == pytest.approx(t)  # auto = ring only
    with pytest.raises(CodesignError, match=r"^collective.algorithm: one_shot has no curve in "
                                            r"efficiency.collective_curves for a all_reduce; expected one of "):
        collective_time({"type": "all_reduce", "size": 4, "bytes": m, "algorithm": "one_shot"}, hw)
    with pytest.raises(CodesignError, match=r"^collective.algorithm: nvls needs a switched scale-up domain"):
        collective_time({"type": "all_reduce", "size": 4, "bytes": m, "algorithm": "nvls"},
                        curved_hw(topology="full_mesh", links=7))


def test_all_to_all_ignores_the_curves():
    c = {"type": "all_to_all", "size": 8, "bytes": 64e6}
    assert collective_time(c, curved_hw()) == collective_time(c, make_hw())


def test_hopper_specs_carry_the_fitted_curves():
    from codesign.hw import load_hw

    for name in ("h100", "h200"):
        cc = load_hw(name).efficiency.collective_curves
        assert cc is not None and cc.nvls is not None and cc.one_shot is not None and cc.two_shot is not None
    # the fitted ring reaches NCCL's ~370 GB/s ring plateau within 10% at 4 GiB on 8 ranks
    h100 = load_hw("h100")
    m = 2**32
    t = collective_time({"type": "all_reduce", "size": 8, "bytes": m, "algorithm": "ring"}, h100)
    assert 1.75 * m / t == pytest.approx(370e9, rel=0.1)


def test_curve_overrides_act():
    import codesign as cs

    p = cs.design_point("h100", "qwen3-8b", chips=2, plan={"tp": 2})
    c = {"type": "all_reduce", "size": 2, "bytes": 2**20, "algorithm": "ring"}
    base = collective_time(c, p.hw)
    q = cs.override(p, {"efficiency.collective_curves.ring.overhead": "7 us"})
    assert collective_time(c, q.hw) == pytest.approx(base - p.hw.efficiency.collective_curves.ring.overhead + 7e-6)
    q = cs.override(p, {"efficiency.collective_curves.step": "0 us"})
    assert collective_time(c, q.hw) == pytest.approx(base - 2 * p.hw.efficiency.collective_curves.step)
    q = cs.override(p, {"efficiency.collective_curves": None})  # back to the flat rule
    assert collective_time(c, q.hw) == pytest.approx(2**20 / (450e9 * 0.82) + 2 * 2e-6)


@pytest.mark.parametrize("path,value,pattern", [
    ("efficiency.collective_curves.ring.efficiency", 1.5, r"efficiency\.collective_curves\.ring\.efficiency"),
    ("efficiency.collective_curves.nvls.ramp_bytes", -1, r"efficiency\.collective_curves\.nvls\.ramp_bytes"),
    ("efficiency.collective_curves.ramp_exponent", 0, r"efficiency\.collective_curves\.ramp_exponent"),
    ("efficiency.collective_curves.step", "-2 us", r"efficiency\.collective_curves\.step"),
])
def test_bad_curve_values_are_refused_in_one_line(path, value, pattern):
    import codesign as cs

    p = cs.design_point("h100", "qwen3-8b", chips=2, plan={"tp": 2})
    with pytest.raises(CodesignError, match=pattern) as e:
        cs.override(p, {path: value})
    assert "\n" not in str(e.value)


def test_bad_curve_in_a_spec_file_is_refused(tmp_path):
    import yaml

    from codesign.hw import load_hw

    spec = yaml.safe_load(open("hw_specs/h100.yaml"))
    spec["efficiency"]["collective_curves"]["ring"] = {"overhead": "1 us", "efficency": 0.8}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(spec))
    with pytest.raises(CodesignError, match=r"bad\.yaml.*efficiency\.collective_curves\.ring") as e:
        load_hw(str(f))
    assert "\n" not in str(e.value)
