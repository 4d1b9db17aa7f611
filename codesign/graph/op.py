"""The op graph's node type.

A traced model is a `networkx.DiGraph` whose nodes are integer ids with one attribute, `op`, an `Op`.
Edges are data dependencies (producer -> consumer). Graph-level attributes (`graph.graph`) describe
what was traced: model, config_hash, phase, batch, tokens, context, router, trace_s.

Bytes are counted at the traced dtypes (weights, activations and KV cache in bf16, recurrent state in
fp32); the mapping rescales them to a deployment's precision. FLOPs and bytes of an op are totals
over its `repeat` (a loop body recorded once and run `repeat` times in sequence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

# Classes of bytes. Each maps to a distinct memory pool and scaling rule.
BYTE_CLASSES = ("weight", "activation", "kv_cache", "state")

# What engine an op uses and which cost rule applies.
OpKind = Literal[
    "gemm",  # matmul against weights or activations on the matrix unit
    "grouped_gemm",  # MoE expert FFNs: one op, per-expert token counts
    "attention",  # fused softmax attention (FlashAttention-like: scores never hit memory)
    "vector",  # element-wise, reductions, norms, softmax, scans on the vector unit
    "memory",  # pure data movement: copies, cache writes, gathers, embedding lookup
    "collective",  # inserted by the mapping: all-reduce, all-to-all, ...
]

# The part of a decoder layer an op belongs to: what the mapping shards and how.
Block = Literal[
    "embed",
    "norm",
    "attention",
    "linear_attention",
    "mla",
    "mlp",
    "moe_router",
    "moe_experts",
    "moe_shared",
    "lm_head",
    "mtp",
    "other",
]


def _zero() -> dict[str, float]:
    return {c: 0.0 for c in BYTE_CLASSES}


@dataclass(slots=True)
class Op:
    name: str  # module path and op, e.g. "layers.3.self_attn.q_proj/mm"
    target: str  # torch op, e.g. "aten.mm.default", "codesign.attention.default"
    kind: str  # OpKind
    block: str  # Block
    layer: int  # decoder layer index; -1 embedding; num_layers final norm + head; >num_layers MTP
    layer_type: str  # e.g. "linear_attention+moe", "embed", "head", "mtp"
    phase: str  # "prefill" | "decode"
    in_shapes: tuple[tuple[int, ...], ...]
    out_shapes: tuple[tuple[int, ...], ...]
    dtype: str  # dtype of the first output, e.g. "bfloat16"
    flops: float = 0.0
    bytes_read: dict[str, float] = field(default_factory=_zero)
    bytes_written: dict[str, float] = field(default_factory=_zero)
    repeat: int = 1
    # GEMM problem per instance (batch, M, N, K) for tile quantisation; None for non-GEMMs.
    gemm: tuple[int, int, int, int] | None = None
    # grouped_gemm only: tokens routed to each expert (global batch), weight bytes of one expert,
    # FLOPs per routed token.
    tokens_per_expert: tuple[int, ...] | None = None
    expert_weight_bytes: float = 0.0
    expert_flops_per_token: float = 0.0
    # collective only (inserted by codesign.mapping): {"type": "all_reduce" | "all_to_all" | ...,
    # "group": ranks, "bytes": payload per rank, "scope": "scale_up" | "scale_out", "algorithm": ...}
    collective: dict | None = None

    @property
    def bytes_total(self) -> float:
        return sum(self.bytes_read.values()) + sum(self.bytes_written.values())

    def to_dict(self) -> dict:
        return asdict(self)

    def clone(self) -> "Op":
        """A shallow copy (the byte dicts are shared until replaced), faster than copy.copy."""
        return Op(self.name, self.target, self.kind, self.block, self.layer, self.layer_type, self.phase,
                  self.in_shapes, self.out_shapes, self.dtype, self.flops, self.bytes_read, self.bytes_written,
                  self.repeat, self.gemm, self.tokens_per_expert, self.expert_weight_bytes,
                  self.expert_flops_per_token, self.collective)
