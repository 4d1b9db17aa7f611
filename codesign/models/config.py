"""Model architecture configuration: the workload half of codesign's inputs.

One YAML file per architecture lives in `model_graphs/`; it is validated into `ModelConfig`. The
config says only what the model *is* (shapes, layer layout, routing rule); it knows nothing about
hardware or parallelism. Per-layer variation lives in lists (`layer_types`, `mlp_types`), as in
transformers, rather than in subclasses. Fields that can be derived are derived here, once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from codesign.limits import MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_TOKENS, MAX_VOCAB, MAX_WIDTH
from codesign.spec_files import Int, StrictModel

LayerType = Literal["full_attention", "sliding_attention", "linear_attention", "mla"]
MlpType = Literal["dense", "moe"]
Activation = Literal["silu", "gpt_oss_swiglu"]


# Unknown keys are errors (a typo in a spec must never pass silently); no NaN or infinity.
_Strict = StrictModel
# Bounded shape fields (codesign.limits): far beyond any published model, small enough that a
# trace stays finite and quick.
Width = Annotated[Int, Field(ge=1, le=MAX_WIDTH)]
Heads = Annotated[Int, Field(ge=1, le=MAX_HEADS)]
Experts = Annotated[Int, Field(ge=1, le=MAX_EXPERTS)]
Layers = Annotated[Int, Field(ge=1, le=MAX_LAYERS)]
Positive = Annotated[float, Field(gt=0)]


class AttentionConfig(_Strict):
    """Softmax attention (GQA/MQA/MHA), as used by `full_attention` and `sliding_attention` layers."""

    num_heads: Heads  # query heads
    num_kv_heads: Heads  # key/value heads (GQA groups)
    head_dim: Width
    rope_theta: Positive = 10_000.0
    partial_rotary_factor: float = Field(default=1.0, gt=0, le=1)  # fraction of head_dim rotated
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
    output_gate: bool = False  # q_proj also emits a sigmoid gate on the attention output (Qwen3.5/Next)
    sliding_window: Annotated[Int, Field(ge=1, le=MAX_TOKENS)] | None = None  # window of `sliding_attention` layers
    sinks: bool = False  # learned per-head attention sink logits (gpt-oss)
    bias: bool = False  # bias on q/k/v/o projections (gpt-oss)

    @model_validator(mode="after")
    def _groups_divide(self) -> "AttentionConfig":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ValueError(f"head_dim x partial_rotary_factor: expected an even number of rotary dims, at least 2 "
                             f"(RoPE rotates pairs), found {self.head_dim} x {self.partial_rotary_factor:g} = "
                             f"{self.rotary_dim}")
        return self

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


class MLAConfig(_Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): KV compressed to a latent plus a shared RoPE key."""

    num_heads: Heads
    q_lora_rank: Width | None = None  # None: q projected directly from hidden
    kv_lora_rank: Width
    qk_nope_head_dim: Width
    qk_rope_head_dim: Width
    v_head_dim: Width
    rope_theta: Positive = 10_000.0

    @field_validator("qk_rope_head_dim")
    @classmethod
    def _even_rope(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"expected an even number (RoPE rotates pairs of dimensions), found {v}")
        return v

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class LinearAttentionConfig(_Strict):
    """Gated DeltaNet (Qwen3-Next / Qwen3.5 `linear_attention` layers)."""

    num_key_heads: Heads
    num_value_heads: Heads
    key_head_dim: Width
    value_head_dim: Width
    conv_kernel: Annotated[Int, Field(ge=1, le=1024)] = 4  # causal depthwise conv over q, k, v
    chunk_size: Width = 64  # chunk length of the chunked (prefill) form

    @model_validator(mode="after")
    def _groups_divide(self) -> "LinearAttentionConfig":
        if self.num_value_heads % self.num_key_heads:
            raise ValueError("num_value_heads must be a multiple of num_key_heads")
        return self

    @property
    def state_elements(self) -> int:
        """Elements of the recurrent state per sequence per layer (value heads x dk x dv)."""
        return self.num_value_heads * self.key_head_dim * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv (q, k and v concatenated)."""
        return 2 * self.num_key_heads * self.key_head_dim + self.num_value_heads * self.value_head_dim


class MoEConfig(_Strict):
    """Sparse mixture of experts: router, routed experts (stacked weights) and an optional shared expert."""

    num_experts: Experts
    top_k: Experts
    intermediate_size: Width  # per routed expert
    shared_expert_intermediate_size: Annotated[Int, Field(ge=0, le=MAX_WIDTH)] = 0  # 0 = no shared expert
    shared_expert_gate: bool = False  # sigmoid gate on the shared expert's output (Qwen2/3.5-MoE)
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    # softmax over all experts then top-k ("softmax"), or top-k of the logits then softmax over the k
    # ("softmax_topk", gpt-oss and Mixtral -- for Mixtral the two are the same after renormalising).
    softmax_order: Literal["softmax_then_topk", "topk_then_softmax"] = "softmax_then_topk"
    norm_topk_prob: bool = True  # renormalise the top-k weights to sum to 1
    n_group: Experts = 1  # group-limited routing (DeepSeek-V3): experts in n_group groups
    topk_group: Experts = 1  # ... of which topk_group groups are eligible per token
    routed_scaling_factor: float = 1.0
    score_correction_bias: bool = False  # DeepSeek-V3 aux-loss-free balancing bias (selection only)
    bias: bool = False  # biases on router and expert projections (gpt-oss)

    @model_validator(mode="after")
    def _check(self) -> "MoEConfig":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.num_experts % self.n_group:
            raise ValueError("num_experts must be a multiple of n_group")
        if self.topk_group > self.n_group:
            raise ValueError("topk_group exceeds n_group")
        return self


class ModelConfig(_Strict):
    """A decoder-only language model, text part. Vision encoders are out of scope (reported apart)."""

    name: str
    sources: list[str] = Field(min_length=1)  # where every number comes from
    notes: list[str] = []  # assumptions, caveats (e.g. a proxy architecture)
    hidden_size: Width
    num_layers: Layers
    vocab_size: Annotated[Int, Field(ge=1, le=MAX_VOCAB)]
    max_position_embeddings: Annotated[Int, Field(ge=1, le=MAX_TOKENS)]
    tie_word_embeddings: bool = False
    rms_norm_eps: Positive = 1e-6
    # Qwen3-Next/3.5 use zero-centred RMSNorm weights (scale = 1 + w); numerics only, no cost effect.
    norm_offset: bool = False
    activation: Activation = "silu"
    intermediate_size: Width | None = None  # dense SwiGLU width (dense layers)
    mlp_bias: bool = False
    # Per-layer layout. Either give the full list, or a `layer_pattern` that repeats to num_layers.
    layer_types: list[LayerType] = []
    layer_pattern: list[LayerType] = []
    mlp_types: list[MlpType] = []
    first_dense_layers: Annotated[Int, Field(ge=0, le=MAX_LAYERS)] = 0  # DeepSeek-V3: first k layers dense, rest MoE
    attention: AttentionConfig | None = None
    mla: MLAConfig | None = None
    linear_attention: LinearAttentionConfig | None = None
    moe: MoEConfig | None = None
    mtp_layers: Annotated[Int, Field(ge=0, le=64)] = 0  # multi-token-prediction heads (reported apart from the decoder)
    total_params_reference: Positive | None = None  # published total (text decoder), for checks
    active_params_reference: Positive | None = None  # published active per token

    @model_validator(mode="before")
    @classmethod
    def _expand_layout(cls, data: dict) -> dict:
        if not isinstance(data, dict):
            return data
        n = data.get("num_layers")
        # expand only well-formed shorthands; anything else is left for the field validators to
        # refuse with the field's name (a bool, a float, a huge count, a pattern that is no list)
        if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_LAYERS:
            pat = data.get("layer_pattern")
            if not data.get("layer_types") and isinstance(pat, list) and pat:
                data = {**data, "layer_types": [pat[i % len(pat)] for i in range(n)]}
            if not data.get("layer_types"):
                kind = "mla" if data.get("mla") else "full_attention"
                data = {**data, "layer_types": [kind] * n}
            k = data.get("first_dense_layers", 0) or 0
            if not data.get("mlp_types") and isinstance(k, int) and not isinstance(k, bool):
                default = "moe" if data.get("moe") else "dense"
                data = {**data, "mlp_types": ["dense" if i < k else default for i in range(n)]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries, expected num_layers={self.num_layers}")
        if len(self.mlp_types) != self.num_layers:
            raise ValueError(f"mlp_types has {len(self.mlp_types)} entries, expected num_layers={self.num_layers}")
        kinds = set(self.layer_types)
        if kinds & {"full_attention", "sliding_attention"} and self.attention is None:
            raise ValueError("attention layers present but no `attention` section")
        if "sliding_attention" in kinds and (self.attention is None or self.attention.sliding_window is None):
            raise ValueError("sliding_attention layers need attention.sliding_window")
        if "mla" in kinds and self.mla is None:
            raise ValueError("mla layers present but no `mla` section")
        if "linear_attention" in kinds and self.linear_attention is None:
            raise ValueError("linear_attention layers present but no `linear_attention` section")
        if "moe" in self.mlp_types and self.moe is None:
            raise ValueError("moe layers present but no `moe` section")
        if "dense" in self.mlp_types and self.intermediate_size is None:
            raise ValueError("dense layers present but no `intermediate_size`")
        return self

    @field_validator("sources")
    @classmethod
    def _nonempty_sources(cls, v: list[str]) -> list[str]:
        if not all(s.strip() for s in v):
            raise ValueError("sources must be non-empty strings")
        return v

    # ---- derived -------------------------------------------------------------------------------
    def layer_kind(self, i: int) -> str:
        """The distinct kind of layer i, e.g. 'linear_attention+moe'. Layers of one kind trace alike."""
        return f"{self.layer_types[i]}+{self.mlp_types[i]}"

    @property
    def is_moe(self) -> bool:
        return "moe" in self.mlp_types

    @functools.cached_property
    def _hash(self) -> str:
        # layer_pattern is only a shorthand for layer_types: the same model written either way
        # hashes alike.
        payload = self.model_dump(exclude={"sources", "notes", "total_params_reference", "active_params_reference",
                                           "layer_pattern"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        """Stable hash of everything that changes the traced graph (sources and notes excluded)."""
        return self._hash

    def tiny(self) -> "ModelConfig":
        """A small config of the same family for native CPU runs and tests (same layer kinds)."""
        from codesign.models.tiny import tiny_config

        return tiny_config(self)
