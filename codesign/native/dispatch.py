"""Counting what eager torch dispatches for one model step, on the meta device (nothing allocated).

The tracer records the ops that move data or compute; eager torch also dispatches the views,
reshapes, transposes and expands between them, and each costs a dispatch on a CPU. `counts` runs
the model's own forward on the meta device under a counting dispatch mode and returns the number
of aten dispatches outside the fused custom ops (whose insides `codesign.native.eager` charges by
their measured per-call cost) and how many of them are views (`OpOverload.is_view`: no kernel, no
allocation, a cheaper dispatch; `eager.view_s`). A structural count, like a FLOP count: no timing
involved.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from codesign.models.config import ModelConfig
from codesign.models.decoder import CausalLM


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.aten = 0
        self.views = 0
        self.fused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.namespace) == "codesign":
            self.fused += 1
        else:
            self.aten += 1
            self.views += bool(func.is_view)
        return func(*args, **(kwargs or {}))


def count_call(fn) -> tuple[int, int]:
    """(aten dispatches, of which views) of one call of `fn` (any device)."""
    with torch.no_grad(), _Count() as c:
        fn()
    return c.aten, c.views


def count_module(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Aten dispatches of one call of `module` on `inputs` (any device)."""
    with torch.no_grad(), _Count() as c:
        module(*inputs)
    return c.aten


def count(config: ModelConfig, phase: str, batch: int, tokens: int, context: int) -> int:
    """Aten dispatches of one native step (`counts`)."""
    return counts(config, phase, batch, tokens, context)[0]


def counts(config: ModelConfig, phase: str, batch: int, tokens: int, context: int) -> tuple[int, int]:
    """(aten dispatches, of which views) of one native step: prefill of `tokens` tokens after
    `context` cached (LM head on the last position), or decode of one token at position `context` - 1
    (as `codesign.trace`)."""
    model = CausalLM(config, dtype=torch.float32, device="meta")
    if phase == "prefill":
        ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
        caches = model.make_caches(batch, context + tokens, device="meta", dtype=torch.float32)
        fn = lambda: model.lm_head(model.norm(model.hidden_states(ids, context, caches)[:, -1:]))  # noqa: E731
    else:
        ids = torch.zeros(batch, 1, dtype=torch.long, device="meta")
        caches = model.make_caches(batch, context, device="meta", dtype=torch.float32)
        fn = lambda: model(ids, context - 1, caches)  # noqa: E731
    return count_call(fn)
