"""codesign: hardware/model co-design of accelerators for sparse Mixture-of-Experts LLMs.

    import codesign as cs
    hw = cs.load_hw("h200"); model = cs.load_model("qwen3.5-397b-a17b")
    g = cs.trace(model, phase="decode", batch=64, context=32_768)
    r = cs.simulate(hw, model, context=[32_768, 262_144])
    p = cs.override(cs.design_point("h200"), {"chip.hbm.bandwidth": "8 TB/s", "parallel": {"tp": 8, "ep": 8}})
    rows = cs.evaluate(p); key = cs.point_hash(p)
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


def design_point(*args, **kwargs):
    """A design point (`codesign.point.Point`) from names or objects and simulate()'s keyword
    arguments. (The module `codesign.point` holds the tree; this function is named apart from it so
    that importing the module never hides the function.)"""
    from codesign.point import design_point as _design_point

    return _design_point(*args, **kwargs)


def sweep(*args, **kwargs):
    """A design-space sweep -> pandas DataFrame (`codesign.sweeps.run.sweep`, docs/sweep.md).
    `codesign.sweep.pareto(df, maximize=[...], minimize=[...])` marks a Pareto front."""
    from codesign.sweeps import sweep as _sweep

    return _sweep(*args, **kwargs)


def _pareto(*args, **kwargs):
    from codesign.sweeps import pareto as _p

    return _p(*args, **kwargs)


def _pareto_mask(*args, **kwargs):
    from codesign.sweeps import pareto_mask as _m

    return _m(*args, **kwargs)


_pareto.__doc__ = "A copy of a result table with a boolean `pareto` column (`codesign.sweeps.pareto.pareto`)."
sweep.pareto = _pareto  # type: ignore[attr-defined]
sweep.pareto_mask = _pareto_mask  # type: ignore[attr-defined]


def __getattr__(name: str):
    if name == "Point":
        from codesign.point import Point

        return Point
    raise AttributeError(f"module 'codesign' has no attribute {name!r}")


def override(p, changes):
    """A new validated point with dotted-path overrides applied (`codesign.point.override`)."""
    from codesign.point import override as _override

    return _override(p, changes)


def evaluate(p, **kwargs):
    """A point's result rows, one per context (`codesign.point.evaluate`)."""
    from codesign.point import evaluate as _evaluate

    return _evaluate(p, **kwargs)


def point_hash(p):
    """The point's stable identity (`codesign.point.point_hash`)."""
    from codesign.point import point_hash as _point_hash

    return _point_hash(p)


__all__ = ["CodesignError", "load_hw", "load_model", "trace", "simulate", "design_point", "Point", "override", "evaluate",
           "point_hash", "sweep", "__version__"]
