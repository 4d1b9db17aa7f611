"""Attention-DP lock step as step shapes: per-rank groups -> the deployment shapes to map.

Attention-DP ranks each run their own batch, and every MoE layer's all-to-all (or all-gather) waits
for all of them: a step lasts as long as its busiest rank's attention, dense and shared-expert part,
while the routed experts and the all-to-all carry every rank's tokens (docs/mapping.md,
"Attention-DP lock step"). `map_step` maps one chip of a shape whose tokens it shares evenly over
the ranks; so a rank's groups G on every one of R ranks (the shape R x G) give each attention chip
exactly G, and `StepShape.routed` = all ranks' new tokens gives the experts and the all-to-all the
step's real load. The step is the slowest of these candidates, one per distinct rank batch:

    shapes = lockstep_shapes([rank0_groups, rank1_groups, ...])
    time = max(stepper.step(s).time_s for s in shapes)

With every rank's groups equal there is one candidate, R x G with every token routed: the even
share's step, unchanged.
"""

from __future__ import annotations

from typing import Sequence

from codesign.errors import CodesignError
from codesign.graph.shape import Group, StepShape


def rank_shape(groups: Sequence[Group], ranks: int, routed: int | None = None) -> StepShape:
    """One rank's `groups` on every one of `ranks` ranks (each group's sequences x ranks), with
    `routed` new tokens routed (None: the shape's own)."""
    return StepShape(tuple(Group(g.seqs * ranks, g.new_tokens, g.cached_tokens, g.logits) for g in groups), routed)


def lockstep_shapes(ranks: Sequence[Sequence[Group] | StepShape | None]) -> list[StepShape]:
    """The candidate deployment shapes of one lock-stepped step of attention-DP ranks whose batches
    are `ranks` (a rank's groups, its StepShape, or None / empty for an idle rank): one per distinct
    batch, its groups on every rank and all ranks' new tokens routed, in first-appearance order."""
    R = len(ranks)
    if R < 1:
        raise CodesignError("lock step: expected the groups of at least one attention-DP rank, found none")
    batches = [tuple(r.groups) if isinstance(r, StepShape) else tuple(r or ()) for r in ranks]
    if not any(batches):
        raise CodesignError(f"lock step: all {R} attention-DP ranks are idle (no groups): no step to map")
    routed = sum(g.tokens for b in batches for g in b)
    out: list[StepShape] = []
    seen: set[tuple[Group, ...]] = set()
    for b in batches:
        if b and b not in seen:
            seen.add(b)
            out.append(rank_shape(b, R, routed))
    return out


__all__ = ["lockstep_shapes", "rank_shape"]
