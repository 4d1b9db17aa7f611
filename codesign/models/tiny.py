"""Tiny configs: the same family and layer kinds at toy sizes, for native CPU runs and tests.

A tiny config keeps everything that changes the code path (layer kinds and their order, GQA vs MHA
vs MQA, q/k norm, output gate, partial rotary factor, sliding window, sinks, biases, MLA with or
without q LoRA, MoE scoring and grouping, shared expert, MTP) and shrinks every size: hidden 64,
4 query heads of 16 dims, 8 experts, vocab 256, and one period of the layer pattern (plus one
leading dense layer where the model has some), so a forward pass takes milliseconds on a CPU.
"""

from __future__ import annotations

from codesign.models.config import ModelConfig

HIDDEN = 64
HEADS = 4
HEAD_DIM = 16
VOCAB = 256
DENSE_WIDTH = 128
EXPERT_WIDTH = 32
EXPERTS = 8
MAX_LAYERS = 8  # a pattern with a longer period is cut to its first 8 layers
WINDOW = 8  # sliding window, small so that short test sequences exceed it


def _period(kinds: list[tuple[str, str]]) -> int:
    """Shortest p such that kinds repeats with period p."""
    n = len(kinds)
    for p in range(1, n + 1):
        if all(kinds[i] == kinds[i % p] for i in range(n)):
            return p
    return n


def _kv_heads(num_heads: int, num_kv_heads: int) -> int:
    # keep the sharing pattern: MHA stays MHA, MQA stays MQA, GQA becomes 2 groups of 2
    if num_kv_heads == num_heads:
        return HEADS
    if num_kv_heads == 1:
        return 1
    return 2


def tiny_layout(config: ModelConfig) -> tuple[list[str], list[str]]:
    """layer_types, mlp_types of the tiny model: <=1 leading dense layer, then one period of the rest."""
    k = config.first_dense_layers
    kinds = list(zip(config.layer_types, config.mlp_types))
    head, rest = kinds[:k], kinds[k:]
    picked = head[:1] + rest[: _period(rest)] if rest else head[:1]
    if len(picked) < 2 and len(kinds) >= 2:  # at least two layers, so layer-to-layer plumbing is exercised
        picked = picked + picked[-1:]
    picked = picked[:MAX_LAYERS]
    return [t for t, _ in picked], [m for _, m in picked]


def tiny_config(config: ModelConfig) -> ModelConfig:
    """A small ModelConfig of the same family (same layer kinds and options, toy sizes)."""
    layer_types, mlp_types = tiny_layout(config)
    data = config.model_dump()
    data.update(
        name=f"{config.name}-tiny",
        notes=[*config.notes, f"tiny proxy of {config.name} (codesign.models.tiny): toy sizes, same layer kinds"],
        hidden_size=HIDDEN,
        num_layers=len(layer_types),
        vocab_size=VOCAB,
        max_position_embeddings=min(config.max_position_embeddings, 4096),
        intermediate_size=DENSE_WIDTH if "dense" in mlp_types else None,
        layer_types=layer_types,
        layer_pattern=[],
        mlp_types=mlp_types,
        first_dense_layers=min(config.first_dense_layers, 1),
        mtp_layers=min(config.mtp_layers, 1),
        total_params_reference=None,
        active_params_reference=None,
    )
    if config.attention is not None:
        a = config.attention
        data["attention"] = {
            **a.model_dump(),
            "num_heads": HEADS,
            "num_kv_heads": _kv_heads(a.num_heads, a.num_kv_heads),
            "head_dim": HEAD_DIM,
            "sliding_window": None if a.sliding_window is None else min(a.sliding_window, WINDOW),
        }
    if config.mla is not None:
        m = config.mla
        data["mla"] = {
            **m.model_dump(),
            "num_heads": HEADS,
            "q_lora_rank": None if m.q_lora_rank is None else 32,
            "kv_lora_rank": 32,
            "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8,
            "v_head_dim": 16,
        }
    if config.linear_attention is not None:
        la = config.linear_attention
        ratio = min(la.num_value_heads // la.num_key_heads, 2)  # keep "more value than key heads"
        data["linear_attention"] = {
            **la.model_dump(),
            "num_key_heads": 2,
            "num_value_heads": 2 * ratio,
            "key_head_dim": HEAD_DIM,
            "value_head_dim": HEAD_DIM,
            "chunk_size": 8,  # small, so short prompts span several chunks
        }
    if config.moe is not None:
        mo = config.moe
        experts = min(mo.num_experts, EXPERTS)
        grouped = mo.n_group > 1
        data["moe"] = {
            **mo.model_dump(),
            "num_experts": experts,
            "top_k": min(mo.top_k, experts // 2) if experts > 2 else min(mo.top_k, experts),
            "intermediate_size": EXPERT_WIDTH,
            "shared_expert_intermediate_size": EXPERT_WIDTH if mo.shared_expert_intermediate_size else 0,
            # group-limited routing stays group-limited: 4 groups of 2, 2 eligible
            "n_group": 4 if grouped else 1,
            "topk_group": 2 if grouped else 1,
        }
    return ModelConfig.model_validate(data)
