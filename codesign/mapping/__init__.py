"""Mapping: parallel plans, precision, memory fit, collectives and the per-chip step graph.

The third independent input of a simulation (after the model config and the hardware spec): a
`ParallelPlan` and a `Precision` join the two by name. See docs/mapping.md.
"""

from codesign.mapping.collectives import collective_time, make_collective
from codesign.mapping.memory import (
    MemoryBreakdown,
    kv_bytes_per_sequence,
    max_batch,
    memory_per_chip,
    model_params,
    stage_layers,
    state_bytes_per_sequence,
)
from codesign.mapping.experts import ExpertMapper, expert_placement, rank_loads, replicate_experts, slowest_rank
from codesign.mapping.lockstep import lockstep_shapes, rank_shape
from codesign.mapping.options import MappingOptions
from codesign.mapping.plan import STAGE_SPLIT_RULE, ParallelPlan, Precision, candidate_plans, check_plan, partition_layers
from codesign.mapping.step import MappedStep, map_step, remap, remap_experts

__all__ = [
    "remap_experts", "remap", "lockstep_shapes", "rank_shape",
    "ParallelPlan", "Precision", "check_plan", "candidate_plans", "partition_layers", "STAGE_SPLIT_RULE",
    "stage_layers",
    "MemoryBreakdown", "memory_per_chip", "max_batch", "model_params", "kv_bytes_per_sequence",
    "state_bytes_per_sequence",
    "collective_time", "make_collective",
    "MappedStep", "map_step", "MappingOptions", "ExpertMapper", "expert_placement", "replicate_experts", "rank_loads", "slowest_rank",
]
