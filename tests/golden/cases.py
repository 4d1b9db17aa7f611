"""Golden design points: small models on a fixed test chip (tests/sim/helpers.HW_DICT) so that
tuning the shipped hw_specs does not move them; changes in the tracer, mapping or simulator do,
and `python -m tests.golden.update` shows them as a diff of results.json."""

from __future__ import annotations

from codesign.hw.spec import HardwareSpec
from tests.sim.helpers import make_hw

FP8 = {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}
BF16 = {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}

# name -> keyword arguments of codesign.simulate (hw given apart)
CASES: dict[str, dict] = {
    "qwen3-8b-decode-4k-tp1": dict(model="qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16, context=4096),
    "qwen3-8b-batch4": dict(model="qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16,
                            workload={"mode": "batch", "concurrency": 4, "input_tokens": 220, "output_tokens": 200}),
    "qwen3-8b-prefill-2k": dict(model="qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16,
                                workload={"mode": "prefill", "input_tokens": 2048}),
    "qwen3-8b-decode-tpot-slo": dict(model="qwen3-8b", chips=1, plan={"tp": 1}, precision=BF16,
                                     workload={"mode": "decode", "input_tokens": 8192}, slo={"tpot_s": 0.012}),
    "llama2-70b-offline-tp8": dict(model="llama-2-70b", chips=8, plan={"tp": 8}, precision=FP8,
                                   workload={"mode": "offline", "input_tokens": 294, "output_tokens": 291}),
    "llama2-70b-tp1-does-not-fit": dict(model="llama-2-70b", chips=1, plan={"tp": 1}, precision=BF16, context=4096),
    "llama2-70b-plan-does-not-divide": dict(model="llama-2-70b", chips=8, plan={"tp": 4}, precision=FP8, context=4096),
    "mixtral-offline-tp8": dict(model="mixtral-8x7b", chips=8, plan={"tp": 8}, precision=FP8,
                                workload={"mode": "offline", "input_tokens": 200, "output_tokens": 146}),
    "qwen3.5-35b-decode-ep8-32k": dict(model="qwen3.5-35b-a3b", chips=8, plan={"tp": 8, "ep": 8}, context=32768),
    "qwen3.5-35b-decode-ep8-256k": dict(model="qwen3.5-35b-a3b", chips=8, plan={"tp": 8, "ep": 8}, context=262144),
    "qwen3-8b-server": dict(model="qwen3-8b", chips=1, plan={"tp": 1},
                            workload={"mode": "server", "input_tokens": 220, "output_tokens": 200, "rate_per_s": 5,
                                      "requests": 200}),
}


def hardware() -> HardwareSpec:
    return make_hw(name="golden-chip")


def run_case(name: str) -> dict:
    """The case's first result as a dict, wall-clock time zeroed (it is not deterministic) and the
    point hash blanked (it includes the code version, so any edit moves it; tests/test_point.py
    checks it)."""
    import codesign as cs

    (r, *_) = cs.simulate(hardware(), name=name, **CASES[name])
    d = r.to_dict()
    d["sim_wall_s"] = 0.0
    d["point_hash"] = None
    return d
