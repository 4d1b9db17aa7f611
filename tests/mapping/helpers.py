"""Helpers for the mapping tests: configs built here (independent of model_graphs/) and an
H100-like spec (NVIDIA H100 SXM datasheet: 989/1979 TFLOPS, 80 GB at 3.35 TB/s, 18 NVLink4 links of
25 GB/s per direction)."""

from __future__ import annotations

from codesign.hw.spec import HardwareSpec
from codesign.models.config import ModelConfig


def make_hw(hbm: str = "80 GB", links: int = 18, topology: str = "switch", size: int = 8, chips: int = 8,
            dims: tuple[int, ...] | None = None) -> HardwareSpec:
    su = {"topology": topology, "size": size, "links": links, "link_bandwidth": "25 GB/s", "latency": "3 us"}
    if dims:
        su["dims"] = list(dims)
    return HardwareSpec.model_validate({
        "name": "h100-like", "sources": ["NVIDIA H100 SXM datasheet"],
        "chip": {"matrix": {"bf16": "989 TFLOPS", "fp8": "1979 TFLOPS"}, "vector": {"fp32": "67 TFLOPS"},
                 "sram": {"capacity": "50 MB", "bandwidth": "12 TB/s"},
                 "hbm": {"capacity": hbm, "bandwidth": "3.35 TB/s"}},
        "system": {"chips": chips, "scale_up": su, "scale_out": {"nic_bandwidth": "400 Gb/s", "latency": "10 us"}},
        "power": {"tdp": "700 W"}, "cost": {"per_hour": 3.0, "source": "assumed: test"}})


def llama2_70b() -> ModelConfig:
    return ModelConfig(
        name="llama-2-70b-like", sources=["HF meta-llama/Llama-2-70b-hf config.json"],
        hidden_size=8192, num_layers=80, vocab_size=32000, max_position_embeddings=4096,
        intermediate_size=28672, attention={"num_heads": 64, "num_kv_heads": 8, "head_dim": 128})


def qwen35_397b() -> ModelConfig:
    return ModelConfig(
        name="qwen3.5-397b-a17b-like", sources=["Qwen3.5-397B-A17B config (reference/model-architectures.md)"],
        hidden_size=4096, num_layers=60, vocab_size=248320, max_position_embeddings=262144, norm_offset=True,
        layer_pattern=["linear_attention"] * 3 + ["full_attention"],
        attention={"num_heads": 32, "num_kv_heads": 2, "head_dim": 256, "partial_rotary_factor": 0.25,
                   "qk_norm": True, "output_gate": True},
        linear_attention={"num_key_heads": 16, "num_value_heads": 64, "key_head_dim": 128, "value_head_dim": 128},
        moe={"num_experts": 512, "top_k": 10, "intermediate_size": 1024, "shared_expert_intermediate_size": 1024,
             "shared_expert_gate": True})


def mixtral() -> ModelConfig:
    return ModelConfig(
        name="mixtral-8x7b-like", sources=["HF mistralai/Mixtral-8x7B-v0.1 config.json"],
        hidden_size=4096, num_layers=32, vocab_size=32000, max_position_embeddings=32768,
        attention={"num_heads": 32, "num_kv_heads": 8, "head_dim": 128},
        moe={"num_experts": 8, "top_k": 2, "intermediate_size": 14336, "softmax_order": "topk_then_softmax"})


def deepseek_v3() -> ModelConfig:
    """DeepSeek-V3's shapes (HF deepseek-ai/DeepSeek-V3 config.json): MLA, 3 dense + 58 MoE layers,
    256 routed experts top-8 + 1 shared."""
    return ModelConfig(
        name="deepseek-v3-like", sources=["HF deepseek-ai/DeepSeek-V3 config.json"],
        hidden_size=7168, num_layers=61, vocab_size=129280, max_position_embeddings=163840,
        intermediate_size=18432, first_dense_layers=3,
        mla={"num_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
             "qk_rope_head_dim": 64, "v_head_dim": 128},
        moe={"num_experts": 256, "top_k": 8, "intermediate_size": 2048, "shared_expert_intermediate_size": 2048,
             "scoring": "sigmoid", "n_group": 8, "topk_group": 4, "score_correction_bias": True})


def qwen3_235b() -> ModelConfig:
    """Qwen3-235B-A22B's shapes (HF Qwen/Qwen3-235B-A22B-Instruct-2507 config.json): 94 layers of GQA
    attention with q/k norm, 128 experts top-8, no shared expert."""
    return ModelConfig(
        name="qwen3-235b-a22b-like", sources=["HF Qwen/Qwen3-235B-A22B-Instruct-2507 config.json"],
        hidden_size=4096, num_layers=94, vocab_size=151936, max_position_embeddings=262144,
        attention={"num_heads": 64, "num_kv_heads": 4, "head_dim": 128, "qk_norm": True},
        moe={"num_experts": 128, "top_k": 8, "intermediate_size": 1536})
