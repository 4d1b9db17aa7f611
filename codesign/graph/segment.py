"""A recorded segment of a model (the embedding, one decoder layer, the head): ops and edges.

Kept apart from the recorder (which needs torch) so that cached recordings load without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codesign.graph.op import Op

INPUT = -1  # producer id of the segment's input tensors


@dataclass
class Segment:
    """One traced piece of a model (the embedding, one decoder layer, the head), ready to replicate."""

    ops: list[Op]
    edges: list[tuple[int, int]]
    entries: list[int]  # ops that read the segment's input
    exit: int  # op that produced the segment's output (INPUT if it returned its input)
    params: dict[str, float] = field(default_factory=dict)  # total, experts, ...
    wall_s: float = 0.0
