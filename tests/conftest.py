"""Shared fixtures: tiny model configs of each attention family, built here so the model tests do
not depend on model_graphs/, plus a helper that perturbs 1-D parameters (norm weights, biases,
sinks) so that tests exercise them instead of their identity initialisation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from codesign.models.config import ModelConfig

_BASE = dict(sources=["test fixture"], hidden_size=64, vocab_size=256, max_position_embeddings=4096, intermediate_size=128)


def make_config(name: str) -> ModelConfig:
    """A tiny fp32-friendly config of one family (all dense FFNs)."""
    attn = dict(num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10_000.0)
    if name == "llama":
        return ModelConfig(name=name, num_layers=2, attention=attn, **_BASE)
    if name == "qwen3":
        return ModelConfig(name=name, num_layers=2, attention={**attn, "qk_norm": True, "rope_theta": 1e6}, **_BASE)
    if name == "qwen3.5-gated":
        # Qwen3.5 full-attention layer: output gate, q/k norm, 25% partial rotary, zero-centred norms
        a = {**attn, "qk_norm": True, "output_gate": True, "partial_rotary_factor": 0.25}
        return ModelConfig(name=name, num_layers=2, norm_offset=True, attention=a, **_BASE)
    if name == "gpt-oss":
        a = {**attn, "sliding_window": 4, "sinks": True, "bias": True, "rope_theta": 150_000.0}
        return ModelConfig(name=name, num_layers=2, layer_pattern=["sliding_attention", "full_attention"],
                           activation="gpt_oss_swiglu", attention=a, **_BASE)
    if name in ("deepseek-mla", "mla-no-qlora"):
        m = dict(num_heads=4, q_lora_rank=32 if name == "deepseek-mla" else None, kv_lora_rank=32,
                 qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
        return ModelConfig(name=name, num_layers=2, mla=m, **_BASE)
    raise KeyError(name)


FAMILIES = ["llama", "qwen3", "qwen3.5-gated", "gpt-oss", "deepseek-mla", "mla-no-qlora"]


def jitter(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Add seeded noise to every 1-D parameter (norm weights, biases, sinks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)


@pytest.fixture
def config_of() -> Callable[[str], ModelConfig]:
    return make_config


@pytest.fixture
def jitter_params() -> Callable[..., None]:
    return jitter


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: the tensors here are tiny, and on a shared 2-core machine
    intra-op threads mostly wait on each other. Restores the previous count."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
