"""Step evaluation at one design point: `Stepper(point parts).step(shape) -> StepResult`.

A `Stepper` holds everything a step depends on except its shape: hardware spec, model config,
plan, precision, cost options, mapping options and router. `step(shape)` evaluates the shape with
the step-time model (`codesign.sim.stepmodel.StepModel`: layer segments, a skeleton graph mapped
by `codesign.mapping.map_step`, the engine over it and the other layers' expert ops);
`full_step(shape)` is the reference evaluation over the whole traced graph, equal to it. Results
are memoised per stepper and in `STEP_CACHE` across steppers, keyed by the full inputs, so plan
searches, batch bisections and repeated calls reuse them. `memory(batch, kv_len)` and `max_batch(kv_len)` answer capacity questions for the same point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from codesign import mapping
from codesign.gc_pause import gc_paused
from codesign.graph.shape import Group, StepShape
from codesign.hw import HardwareSpec
from codesign.mapping.options import MappingOptions
from codesign.models import ModelConfig
from codesign.sim.cost import CostOptions
from codesign.sim.engine import StepResult, simulate_step
from codesign.sim.cache import BoundedCache, hw_key, router_key
from codesign.sim.stepmodel import StepModel


# Step results, keyed by everything a step depends on: hardware (its full spec), model (config
# hash), plan, precision, cost and mapping options, router and the step shape. A StepResult is a
# few small dicts, so thousands are cheap.
STEP_CACHE = BoundedCache("steps", 8192)
# Traced graphs by (config hash, router, shape): a trace does not depend on the plan or the
# hardware, so every candidate plan of a search maps the same one. Graphs are several MB each.
TRACE_CACHE = BoundedCache("traces", 32)


def clear_caches() -> None:
    """Forget memoised steps and traces (e.g. after editing a cost model or tracer in place)."""
    from codesign.sim.engine import _REGIONS
    from codesign.sim.layerplan import PLANS
    from codesign.sim.stepmodel import MAPPED, SKELETONS, TEMPLATES

    for c in (STEP_CACHE, TRACE_CACHE, SKELETONS, MAPPED, TEMPLATES, PLANS, _REGIONS):
        c.clear()


def cache_info() -> dict[str, dict[str, int]]:
    """Entries, bound, hits and misses of the step and trace caches."""
    from codesign.sim.layerplan import PLANS
    from codesign.sim.stepmodel import MAPPED, SKELETONS, TEMPLATES

    return {c.name: c.info() for c in (STEP_CACHE, TRACE_CACHE, SKELETONS, MAPPED, TEMPLATES, PLANS)}


# Stands in for a prefill step a decode-mode plan search does not need (see codesign.sim.search).
DEFERRED = StepResult(time_s=math.nan, bottleneck="deferred", breakdown={})


@dataclass
class Stepper:
    """One (hardware, model, plan, precision, cost, mapping, router) point's steps and memory."""

    hw: HardwareSpec
    config: ModelConfig
    plan: mapping.ParallelPlan
    precision: mapping.Precision
    cost: CostOptions = field(default_factory=CostOptions)
    options: MappingOptions = field(default_factory=MappingOptions)
    router: Any = None
    cache: bool = True
    hw_digest: str | None = None
    # During a plan search in decode mode: prefill steps (TTFT only) answer `DEFERRED` unsimulated.
    defer_prefill: bool = False

    def __post_init__(self) -> None:
        self._steps: dict[StepShape, StepResult] = {}
        self._model: StepModel | None = None
        self._fits: dict[tuple[int, int], int] = {}
        rk = router_key(self.router)
        self._key: tuple | None = None
        if self.cache and rk is not None:
            self._key = (self.hw_digest or hw_key(self.hw), self.config.config_hash(), self.plan, self.precision,
                         self.cost, self.options, rk)
            self._trace_key = (self.config.config_hash(), rk)

    # -- steps -----------------------------------------------------------------------------------
    def step(self, shape: StepShape) -> StepResult:
        """One step of `shape` for the whole deployment (the mapping gives the busiest chip its
        share; replicas run at the same time, so the step time is one chip's)."""
        if self.defer_prefill and all(g.phase == "prefill" for g in shape.groups):
            return DEFERRED
        shape = shape.canonical()
        hit = self._steps.get(shape)
        if hit is None:
            gkey = None if self._key is None else self._key + (shape,)
            hit = STEP_CACHE.get(gkey) if gkey is not None else None
            if hit is None:
                hit = self._simulate(shape)
                if gkey is not None:
                    STEP_CACHE.put(gkey, hit)
            self._steps[shape] = hit
        return hit

    def _trace(self, shape: StepShape):
        from codesign.graph import trace  # imports torch: on first use only

        tkey = None if self._key is None else self._trace_key + (shape,)
        g = TRACE_CACHE.get(tkey) if tkey is not None else None
        if g is None:
            g = trace(self.config, shape=shape, router=self.router)
            if tkey is not None:
                TRACE_CACHE.put(tkey, g)
        return g

    def _simulate(self, shape: StepShape) -> StepResult:
        if self._model is None:
            self._model = StepModel(self.hw, self.config, self.plan, self.precision, self.cost, self.options,
                                    self.router, cache=self.cache)
        return self._model.step(shape)

    def full_step(self, shape: StepShape) -> StepResult:
        """The reference evaluation: the whole step traced into one graph, every op mapped, the
        engine over all of it (what `step` equals; see codesign/sim/stepmodel.py). Not memoised."""
        with gc_paused():
            g = self._trace(shape)
            mapped = mapping.map_step(g, self.config, self.hw, self.plan, self.precision, **self.options.map_kwargs(),
                                      rates=self._rates())
            return simulate_step(mapped, self.hw, self.cost, two_batch_overlap=self.options.two_batch_overlap)

    def _rates(self) -> tuple[float, float]:
        from codesign.sim.cost import CostModel
        from codesign.sim.engine import precision_dtypes

        matrix, attn = precision_dtypes(self.precision, self.cost.attention_dtype)
        return CostModel(self.hw, matrix, attn, self.cost).rank_rates()

    # -- capacity --------------------------------------------------------------------------------
    def memory(self, batch: int, kv_len: int, tokens_per_seq: int = 1) -> mapping.MemoryBreakdown:
        return mapping.memory_per_chip(self.config, None, self.hw, self.plan, self.precision, batch, kv_len,
                                       tokens_per_seq=tokens_per_seq, reserve_fraction=self.options.reserve_fraction)

    def max_batch(self, kv_len: int) -> int:
        hit = self._fits.get((kv_len, 1))
        if hit is None:
            hit = self._fits[(kv_len, 1)] = mapping.max_batch(
                self.config, None, self.hw, self.plan, self.precision, kv_len,
                reserve_fraction=self.options.reserve_fraction)
        return hit


__all__ = ["Stepper", "StepShape", "Group", "STEP_CACHE", "TRACE_CACHE", "BoundedCache", "clear_caches", "cache_info",
           "DEFERRED", "hw_key", "router_key"]
