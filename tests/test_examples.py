"""The example inputs shipped with the project stay valid."""

from pathlib import Path

from codesign.scenario import load_scenarios

ROOT = Path(__file__).resolve().parent.parent


def test_example_scenarios_load():
    scenarios = load_scenarios(ROOT / "examples" / "scenario.yaml")
    assert [s.name for s in scenarios] == ["8xh200-qwen3.5-397b-decode-32k", "8xh200-llama2-70b-offline"]
    assert scenarios[0].workload.input_tokens == 32768


def test_example_sweep_loads():
    from codesign.point import Point
    from codesign.scenario import parse_scenarios
    from codesign.sweeps import load_sweep
    from codesign.sweeps.spec import variations

    f = load_sweep(ROOT / "examples" / "sweep.yaml")
    base = Point.from_scenario(parse_scenarios({"name": f.name, **f.base}, "base")[0])
    assert len(variations(base, dict(f.grid), f.samples, f.seed)) == 8


def test_example_server_scenarios_load():
    scenarios = load_scenarios(ROOT / "examples" / "server.yaml")
    assert [s.workload.mode for s in scenarios] == ["server", "server"]
    assert scenarios[0].slo.ttft_s == 10.0 and scenarios[1].workload.mtp.acceptance == [0.85, 0.7]
