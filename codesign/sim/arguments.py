"""Checking the arguments of `simulate()` before any work starts.

`codesign.simulate` is called from notebooks and scripts as much as from the CLI, so a wrong type
or an absurd value there must read like a bad spec field does: one `CodesignError` line naming the
argument, what was expected and what was found (never a TypeError from deep inside the mapping).
Values are checked by the modules that own them (`parse_tokens`, `ParallelPlan`, `Precision`,
`CostOptions`, the scenario schema, `make_router`); this module only dispatches on type.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from codesign.errors import CodesignError, format_validation_error
from codesign.limits import MAX_CHIPS, check_count, show


def _expect(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise CodesignError(f"simulate: {name}: expected {expected}, found {type(value).__name__} {show(value)}")


def check_arguments(hw: Any, model: Any, context: Any, chips: Any, plan: Any, precision: Any, workload: Any,
                    slo: Any, name: Any, cost: Any, router: Any, cache: Any) -> list[int] | None:
    """Raise `CodesignError` (one line) for the first argument of `simulate` that cannot be meant;
    return the contexts as a list of token counts (None: the default), read once (an iterator
    argument is consumed here)."""
    from codesign.graph.router import make_router
    from codesign.hw import HardwareSpec
    from codesign.mapping.plan import ParallelPlan, Precision
    from codesign.models import ModelConfig
    from codesign.scenario import SLO, Workload
    from codesign.sim.cost import CostOptions

    path = (str, os.PathLike)
    _expect("hw", hw, isinstance(hw, (HardwareSpec, *path)), "a HardwareSpec, a spec name or a YAML path")
    _expect("model", model, isinstance(model, (ModelConfig, *path)), "a ModelConfig, a model name or a path")
    contexts = _check_context(context)
    if chips is not None:
        try:
            check_count("chips", chips, MAX_CHIPS)
        except ValueError as e:
            raise CodesignError(f"simulate: {e}") from None
    _expect("plan", plan, plan == "auto" if isinstance(plan, str) else isinstance(plan, (dict, ParallelPlan)),
            "'auto', a mapping such as {'tp': 8} or a ParallelPlan")
    _expect("precision", precision, precision is None or isinstance(precision, (dict, Precision)),
            "a mapping such as {'weights': 'fp8'} or a Precision")
    _expect("workload", workload, workload is None or isinstance(workload, (dict, Workload)),
            "a scenario workload mapping or a Workload")
    _expect("slo", slo, slo is None or isinstance(slo, (dict, SLO)), "a mapping such as {'tpot_s': 0.05} or an SLO")
    if isinstance(slo, dict):
        try:
            SLO.model_validate(slo)
        except ValidationError as e:
            raise CodesignError(format_validation_error("simulate: slo", e)) from None
    _expect("name", name, name is None or isinstance(name, str), "a string")
    _expect("cost", cost, cost is None or isinstance(cost, (dict, CostOptions)),
            "a mapping of cost-model options or a CostOptions")
    _expect("cache", cache, isinstance(cache, bool), "true or false")
    make_router(router)  # raises CodesignError for an unknown router
    return contexts


def _check_context(context: Any) -> list[int] | None:
    from codesign.units import parse_tokens

    if context is None:
        return None
    items = [context] if isinstance(context, (int, str, float)) else context
    _expect("context", context, isinstance(items, Iterable) and not isinstance(items, (bytes, dict)),
            "a token count such as 32768 or '32k', or a list of them")
    items = list(items)
    if not items:
        raise CodesignError("simulate: context: expected at least one token count, found an empty list")
    try:
        return [parse_tokens(c) for c in items]
    except ValueError as e:
        raise CodesignError(f"simulate: context: {e}") from None


__all__ = ["check_arguments"]
