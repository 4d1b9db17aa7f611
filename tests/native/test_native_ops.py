"""benchmarks/native_ops.py: every recorded op is predicted under a module the run's hooks time."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import codesign as cs
from codesign.native.check import without_mtp
from codesign.spec_files import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("native_ops", ROOT / "benchmarks" / "native_ops.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["native_ops"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["qwen3.5-397b-a17b", "llama-2-70b"])
def test_every_op_group_is_one_the_hooks_time(name):
    mod = _module()
    cfg = without_mtp(cs.load_model(name).tiny())
    model = cs.models.decoder.CausalLM(cfg, dtype=torch.float32)
    timers = mod.Timers(model)
    try:
        caches = model.make_caches(1, 8)
        with torch.no_grad():
            model.hidden_states(torch.zeros(1, 4, dtype=torch.long), 0, caches)
            model(torch.zeros(1, 1, dtype=torch.long), 4, caches)
        timed = set(timers.acc)
    finally:
        timers.close()
    for phase, kw in (("decode", dict(context=5)), ("prefill", dict(tokens=4, context=0))):
        groups = {mod.group_of(op.name) for _, op in cs.trace(cfg, phase=phase, batch=1, **kw).nodes(data="op")}
        assert groups - {"residual add"} <= timed, phase  # residual adds run between hooks
    # the wrappers are removed again: the fused kernel is the registered custom op
    from codesign.models import kernels
    assert kernels.moe_experts is torch.ops.codesign.moe_experts.default or hasattr(kernels.moe_experts, "_opoverload")
