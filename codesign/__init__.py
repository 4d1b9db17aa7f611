"""codesign: hardware/model co-design of accelerators for sparse Mixture-of-Experts LLMs.

    import codesign as cs
    hw = cs.load_hw("h200"); model = cs.load_model("qwen3.5-397b-a17b")
    g = cs.trace(model, phase="decode", batch=64, context=32_768)
    r = cs.simulate(hw, model, context=[32_768, 262_144])
"""

from __future__ import annotations

from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.models import load_model

__version__ = "0.1.0"


def trace(*args, **kwargs):
    from codesign.graph import trace as _trace

    return _trace(*args, **kwargs)


def simulate(*args, **kwargs):
    from codesign.sim import simulate as _simulate

    return _simulate(*args, **kwargs)


__all__ = ["CodesignError", "load_hw", "load_model", "trace", "simulate", "__version__"]
