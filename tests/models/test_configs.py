"""The shipped model configs: they load, and their parameter, KV and state sizes match published figures.

Parameter counts here are written from first principles (module shapes of the HF checkpoints), not
taken from `codesign.graph`, so they check the YAML numbers independently of the tracer.

Convention for `active`: everything a token's forward pass uses -- all non-expert weights including
the input-embedding table and the LM head, the router, the shared expert and `top_k` routed
experts. MTP heads and vision encoders are excluded everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codesign.errors import CodesignError
from codesign.models import available_models, load_model
from codesign.models.config import ModelConfig
from codesign.models.hf import config_from_hf_json

KIB = 1024
MIB = 1024**2
BF16 = 2  # bytes per KV element
FP32 = 4  # bytes per recurrent-state element

SHIPPED = [
    "deepseek-v3",
    "glm-4.5-air",
    "gpt-oss-120b",
    "llama-2-70b",
    "llama-3.1-405b",
    "llama-3.1-70b",
    "mixtral-8x7b",
    "qwen3-14b",
    "qwen3-235b-a22b",
    "qwen3-32b",
    "qwen3-8b",
    "qwen3-max-proxy",
    "qwen3-max-public-proxy",
    "qwen3-next-80b-a3b",
    "qwen3.5-35b-a3b",
    "qwen3.5-397b-a17b",
    "qwen3.5-9b",
]

# Published figures printed coarser than 1% ("A3B"), or counted with another convention than ours.
# For these the count, in the publisher's convention, must round to the figure as printed:
# (model, which) -> (half a unit of the last printed digit, what the publisher counts).
#   "all": our convention; "no_input_embed": without the input-embedding table (a token reads one
#   row of it); "non_embedding": without the embedding table and without the LM head.
PUBLISHED_AS = {
    ("qwen3.5-397b-a17b", "active"): (0.5e9, "all"),  # "A17B": 17.35B (16.33B without the table)
    ("qwen3.5-35b-a3b", "active"): (0.5e9, "all"),  # "A3B": 3.46B
    ("qwen3-next-80b-a3b", "active"): (0.5e9, "non_embedding"),  # "A3B": 3.25B; 3.87B with both tables
    ("deepseek-v3", "active"): (0.5e9, "no_input_embed"),  # "37B": 36.63B; 37.55B with the table
    ("glm-4.5-air", "active"): (0.5e9, "non_embedding"),  # "12B": 12.18B; 13.42B with both tables
}


# ---- independent analytic counts -----------------------------------------------------------------
def attention_params(c: ModelConfig) -> int:
    """GQA attention: q (x2 with output gate), k, v, o projections, optional biases, q/k norms, sinks."""
    a = c.attention
    h, q, kv = c.hidden_size, a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    q_out = 2 * q if a.output_gate else q  # gate rides along in q_proj
    n = h * q_out + 2 * h * kv + q * h
    if a.bias:
        n += q_out + 2 * kv + h
    if a.qk_norm:
        n += 2 * a.head_dim
    if a.sinks:
        n += a.num_heads
    return n


def mla_params(c: ModelConfig) -> int:
    """DeepSeek MLA: q down/up with a norm, kv down (latent + rope key) with a norm, kv up, o."""
    m, h = c.mla, c.hidden_size
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:
        q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * m.num_heads * qk
    else:
        q = h * m.num_heads * qk
    kv_a = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
    kv_b = m.kv_lora_rank * m.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
    o = m.num_heads * m.v_head_dim * h
    return q + kv_a + kv_b + o


def gdn_params(c: ModelConfig) -> int:
    """Gated DeltaNet: in_proj q,k,v,z + b,a; depthwise conv over q,k,v; A_log, dt_bias; gated norm; out."""
    g, h = c.linear_attention, c.hidden_size
    kd, vd = g.num_key_heads * g.key_head_dim, g.num_value_heads * g.value_head_dim
    in_proj = h * (2 * kd + 2 * vd) + h * 2 * g.num_value_heads
    conv = (2 * kd + vd) * g.conv_kernel
    return in_proj + conv + 2 * g.num_value_heads + g.value_head_dim + vd * h


def swiglu_params(h: int, i: int, bias: bool) -> int:
    return 3 * h * i + ((2 * i + h) if bias else 0)


def moe_params(c: ModelConfig) -> tuple[int, int]:
    """(total, active) of one MoE block: router, routed experts, shared expert and its gate."""
    m, h = c.moe, c.hidden_size
    router = m.num_experts * h + (m.num_experts if m.bias else 0)
    router += m.num_experts if m.score_correction_bias else 0
    expert = swiglu_params(h, m.intermediate_size, m.bias)
    shared = swiglu_params(h, m.shared_expert_intermediate_size, False) if m.shared_expert_intermediate_size else 0
    shared += h if m.shared_expert_gate else 0
    return router + shared + m.num_experts * expert, router + shared + m.top_k * expert


def param_counts(c: ModelConfig) -> dict[str, int]:
    """Total and active parameters of the text decoder (MTP excluded), plus the embedding table size."""
    embed = c.vocab_size * c.hidden_size
    total = active = embed + (0 if c.tie_word_embeddings else embed) + c.hidden_size  # + final norm
    mixers = {"full_attention": attention_params, "sliding_attention": attention_params,
              "mla": mla_params, "linear_attention": gdn_params}
    for lt, mt in zip(c.layer_types, c.mlp_types):
        layer = 2 * c.hidden_size + mixers[lt](c)  # two RMSNorms + token mixer
        if mt == "dense":
            ffn_t = ffn_a = swiglu_params(c.hidden_size, c.intermediate_size, c.mlp_bias)
        else:
            ffn_t, ffn_a = moe_params(c)
        total += layer + ffn_t
        active += layer + ffn_a
    return {"total": total, "active": active, "embed": embed}


def kv_bytes_per_token(c: ModelConfig) -> int:
    """bf16 KV cache bytes per token of context, over the layers whose cache grows with context.

    Sliding-window layers hold at most `sliding_window` tokens, so they are left out here.
    """
    n = 0
    for lt in c.layer_types:
        if lt == "full_attention":
            n += 2 * c.attention.num_kv_heads * c.attention.head_dim * BF16
        elif lt == "mla":  # cached: the compressed latent and the shared RoPE key
            n += (c.mla.kv_lora_rank + c.mla.qk_rope_head_dim) * BF16
    return n


def state_bytes_per_sequence(c: ModelConfig) -> int:
    """fp32 Gated DeltaNet recurrent state per sequence (value heads x dk x dv per layer)."""
    if c.linear_attention is None:
        return 0
    g = c.linear_attention
    per_layer = g.num_value_heads * g.key_head_dim * g.value_head_dim * FP32
    return per_layer * c.layer_types.count("linear_attention")


# ---- the shipped configs -------------------------------------------------------------------------
def test_available_models_are_exactly_the_shipped_set() -> None:
    assert available_models() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_config_loads_with_matching_name_and_sources(name: str) -> None:
    c = load_model(name)
    assert c.name == name
    assert c.sources and all(s.strip() for s in c.sources)
    assert c.total_params_reference and c.active_params_reference


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("which", ["total", "active"])
def test_param_count_matches_published(name: str, which: str) -> None:
    c = load_model(name)
    ref = c.total_params_reference if which == "total" else c.active_params_reference
    counts = param_counts(c)
    half_unit, convention = PUBLISHED_AS.get((name, which), (0.01 * ref, "all"))
    got = counts[which]
    if convention in ("no_input_embed", "non_embedding"):
        got -= counts["embed"]
    if convention == "non_embedding" and not c.tie_word_embeddings:
        got -= counts["embed"]  # the LM head
    assert abs(got - ref) <= half_unit, f"{name} {which}: counted {got / 1e9:.3f}B, published {ref / 1e9:.3f}B"


@pytest.mark.parametrize(
    ("name", "total", "active"),
    [
        # Exact counts of the checkpoints' tensor shapes (independently known figures).
        ("llama-2-70b", 68_976_648_192, 68_976_648_192),
        ("llama-3.1-70b", 70_553_706_496, 70_553_706_496),
        ("llama-3.1-405b", 405_853_388_800, 405_853_388_800),
    ],
)
def test_dense_param_count_exact(name: str, total: int, active: int) -> None:
    counts = param_counts(load_model(name))
    assert (counts["total"], counts["active"]) == (total, active)


def test_qwen35_active_definitions() -> None:
    """The reference's 16.3B for Qwen3.5-397B is our active count without the input-embedding table."""
    counts = param_counts(load_model("qwen3.5-397b-a17b"))
    assert counts["active"] - counts["embed"] == pytest.approx(16.3e9, rel=0.01)
    assert counts["total"] == pytest.approx(396.35e9, rel=0.001)


def test_gpt_oss_active_matches_model_card_convention() -> None:
    """OpenAI's 5.13B active counts the unembedding but not the embedding table."""
    counts = param_counts(load_model("gpt-oss-120b"))
    assert counts["active"] - counts["embed"] == pytest.approx(5.13e9, rel=0.005)


@pytest.mark.parametrize(
    ("name", "kv_per_token", "state_per_seq"),
    [
        ("qwen3.5-397b-a17b", 30 * KIB, 180 * MIB),  # 15 full layers x 2 KV heads x 256; 45 x 4 MiB
        ("qwen3-235b-a22b", 188 * KIB, 0),  # 94 layers x 4 KV heads x 128 x 2 (K, V) x 2 B
        ("deepseek-v3", int(68.625 * KIB), 0),  # 61 x (512 latent + 64 rope) x 2 B
        ("qwen3-max-proxy", 480 * KIB, 0),  # 120 x 8 x 128 x 2 x 2 B: 2.55x Qwen3-235B
        ("glm-4.5-air", 184 * KIB, 0),  # 46 layers x 8 KV heads x 128 x 2 x 2 B
        ("qwen3-14b", 160 * KIB, 0),  # 40 layers x 8 KV heads x 128 x 2 (K, V) x 2 B
        ("qwen3.5-9b", 32 * KIB, 48 * MIB),  # 8 full layers x 4 KV heads x 256 x 2 x 2 B; 24 GDN x 32 x 128 x 128 x 4 B
    ],
)
def test_kv_and_state_bytes(name: str, kv_per_token: int, state_per_seq: int) -> None:
    c = load_model(name)
    assert kv_bytes_per_token(c) == kv_per_token
    assert state_bytes_per_sequence(c) == state_per_seq


def test_qwen35_gdn_state_is_4mib_per_layer() -> None:
    c = load_model("qwen3.5-397b-a17b")
    assert c.linear_attention.state_elements * FP32 == 4 * MIB
    assert c.layer_types.count("linear_attention") == 45


def test_qwen3_max_proxy_meets_public_constraints() -> None:
    """The proxy's sizes follow from the public claims (see its notes)."""
    proxy, q235, q35 = (load_model(n) for n in ("qwen3-max-proxy", "qwen3-235b-a22b", "qwen3.5-397b-a17b"))
    p, b, s = param_counts(proxy), param_counts(q235), param_counts(q35)
    assert p["total"] > 1e12  # "over 1 trillion"
    assert 2.4 <= kv_bytes_per_token(proxy) / kv_bytes_per_token(q235) <= 2.7  # 19/7.2 = 2.64 at 256K
    assert 2.4 <= p["active"] / b["active"] <= 2.7  # 8.6/3.5 = 2.46 at 32K
    assert 0.55 <= 1 - s["total"] / p["total"] <= 0.65  # "-60% deployment memory"
    assert any("PROXY" in n for n in proxy.notes)


def test_qwen3_max_public_proxy_uses_public_facts_only() -> None:
    """The second proxy: Qwen3-235B-A22B's per-layer shapes with experts grown past 1T (its notes);
    nothing in it comes from the Qwen3.5 claims."""
    proxy, q235 = load_model("qwen3-max-public-proxy"), load_model("qwen3-235b-a22b")
    p, b = param_counts(proxy), param_counts(q235)
    assert p["total"] > 1e12  # "over 1 trillion"
    assert proxy.max_position_embeddings == 262_144
    same = ("hidden_size", "num_layers", "vocab_size", "attention")
    assert all(getattr(proxy, f) == getattr(q235, f) for f in same)
    assert proxy.moe.top_k == q235.moe.top_k and proxy.moe.intermediate_size == q235.moe.intermediate_size
    # the smallest multiple of 64 experts that passes 1T: 8.0B shared + E x 94 x 3 x 4096 x 1536
    per_expert = 94 * 3 * 4096 * 1536
    shared = b["total"] - 128 * per_expert
    assert proxy.moe.num_experts == min(e for e in range(64, 2048, 64) if shared + e * per_expert > 1e12)
    assert kv_bytes_per_token(proxy) == kv_bytes_per_token(q235)
    assert any("PROXY" in n for n in proxy.notes)


def test_layouts() -> None:
    q = load_model("qwen3.5-397b-a17b")
    assert [q.layer_kind(i) for i in range(4)] == ["linear_attention+moe"] * 3 + ["full_attention+moe"]
    d = load_model("deepseek-v3")
    assert d.mlp_types[:3] == ["dense"] * 3 and d.mlp_types.count("moe") == 58
    g = load_model("gpt-oss-120b")
    assert g.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert g.layer_types.count("sliding_attention") == 18
    n = load_model("qwen3.5-9b")  # transformers' full_attention_interval 4: every fourth layer full
    assert n.layer_types == ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(32)]
    assert set(n.mlp_types) == {"dense"} and not n.is_moe


# ---- bad input -----------------------------------------------------------------------------------
MINIMAL = """\
name: tiny
sources: ["test"]
hidden_size: 64
num_layers: 2
vocab_size: 100
max_position_embeddings: 128
intermediate_size: 128
attention: {num_heads: 4, num_kv_heads: 2, head_dim: 16}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def test_minimal_file_loads(tmp_path: Path) -> None:
    c = load_model(_write(tmp_path, MINIMAL))
    assert c.layer_types == ["full_attention"] * 2 and c.mlp_types == ["dense"] * 2


def test_unknown_name_lists_available() -> None:
    with pytest.raises(CodesignError) as e:
        load_model("nope")
    msg = str(e.value)
    assert msg.startswith("unknown model 'nope'; available: ")
    assert all(n in msg for n in SHIPPED)


def _one_line_error(path: Path) -> str:
    with pytest.raises(CodesignError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    return msg


def test_malformed_yaml(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL + "attention: {num_heads: 4\n")
    assert "malformed YAML" in _one_line_error(p)


def test_missing_field(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL.replace("vocab_size: 100\n", ""))
    assert _one_line_error(p) == f"{p}: vocab_size: Field required"


def test_wrong_type(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL.replace("hidden_size: 64", "hidden_size: wide"))
    msg = _one_line_error(p)
    assert msg.startswith(f"{p}: hidden_size: ") and "(found: 'wide')" in msg


def test_unknown_key(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL.replace("attention: {", "attention: {num_kv_head: 2, "))
    msg = _one_line_error(p)
    assert msg.startswith(f"{p}: attention.num_kv_head: Extra inputs are not permitted")


def test_inconsistent_layout(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL + "layer_types: [full_attention]\n")
    assert "layer_types has 1 entries, expected num_layers=2" in _one_line_error(p)


# ---- HF config.json import -------------------------------------------------------------------------
# Key subsets of the public config.json files, as shipped (older files keep rope_theta at the top
# level, transformers-5 files nest it in rope_parameters; Qwen3.5 nests the language model in
# text_config). Each must import to exactly the shapes of the matching model_graphs/ file.
HF_FILES: dict[str, dict] = {
    "qwen3.5-397b-a17b": {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_5_moe_text", "hidden_size": 4096, "num_hidden_layers": 60,
            "vocab_size": 248320, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
            "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 256, "attn_output_gate": True,
            "full_attention_interval": 4, "linear_num_key_heads": 16, "linear_num_value_heads": 64,
            "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
            "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 1024,
            "shared_expert_intermediate_size": 1024, "mtp_num_hidden_layers": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                                "mrope_interleaved": True, "mrope_section": [11, 11, 10]},
        },
        "vision_config": {"depth": 27, "hidden_size": 1152},
    },
    "qwen3-next-80b-a3b": {
        "model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 48, "vocab_size": 151936,
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "rope_theta": 10000000,
        "partial_rotary_factor": 0.25, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
        "full_attention_interval": 4, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "intermediate_size": 5120, "num_experts": 512,
        "num_experts_per_tok": 10, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
        "norm_topk_prob": True, "tie_word_embeddings": False, "mtp_num_hidden_layers": 1,
    },
    "qwen3-235b-a22b": {
        "model_type": "qwen3_moe", "hidden_size": 4096, "num_hidden_layers": 94, "vocab_size": 151936,
        "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "rope_theta": 5000000,
        "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 12288,
        "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 1536, "norm_topk_prob": True,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False, "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "qwen3-8b": {
        "model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "vocab_size": 151936,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
        "tie_word_embeddings": False,
    },
    "deepseek-v3": {
        "model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61, "vocab_size": 129280,
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096},
        "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
        "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
        "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
        "routed_scaling_factor": 2.5, "first_k_dense_replace": 3, "moe_layer_freq": 1,
        "num_nextn_predict_layers": 1, "tie_word_embeddings": False,
    },
    "gpt-oss-120b": {
        "model_type": "gpt_oss", "hidden_size": 2880, "num_hidden_layers": 36, "vocab_size": 201088,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096},
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "attention_bias": True,
        "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 18,
        "num_local_experts": 128, "experts_per_token": 4, "intermediate_size": 2880, "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
    },
    "mixtral-8x7b": {
        "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None, "tie_word_embeddings": False,
    },
    "llama-3.1-70b": {
        "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    },
}
# layer_pattern is only a shorthand that expands into layer_types, which is compared.
SHAPE_ONLY = {"name", "sources", "notes", "total_params_reference", "active_params_reference", "layer_pattern"}


def _write_json(tmp_path: Path, data: dict, folder: str = "model") -> Path:
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    p = d / "config.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("name", sorted(HF_FILES))
def test_hf_import_matches_shipped_yaml(tmp_path: Path, name: str) -> None:
    imported = load_model(_write_json(tmp_path, HF_FILES[name], folder=name))  # load_model routes .json
    shipped = load_model(name)
    assert imported.model_dump(exclude=SHAPE_ONLY) == shipped.model_dump(exclude=SHAPE_ONLY)
    assert imported.name == name


def test_hf_import_records_unmodelled_rope_scaling(tmp_path: Path) -> None:
    c = config_from_hf_json(_write_json(tmp_path, HF_FILES["llama-3.1-70b"]))
    assert c.notes == ["rope scaling 'llama3' in rope_scaling is not modelled (cost-neutral); only rope_theta is used"]


def test_hf_import_small_qwen35_nested(tmp_path: Path) -> None:
    """A small Qwen3.5-style file: layout from full_attention_interval, rope keys in rope_parameters."""
    data = {"model_type": "qwen3_5_moe", "text_config": {
        "hidden_size": 64, "num_hidden_layers": 6, "vocab_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "full_attention_interval": 3,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
        "linear_value_head_dim": 8, "num_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
        "rope_parameters": {"rope_theta": 1000.0, "partial_rotary_factor": 0.5}}}
    c = config_from_hf_json(_write_json(tmp_path, data, folder="Tiny-Qwen3.5"))
    assert c.name == "tiny-qwen3.5"
    assert c.layer_types == ["linear_attention", "linear_attention", "full_attention"] * 2
    assert (c.attention.rope_theta, c.attention.rotary_dim, c.attention.output_gate) == (1000.0, 8, True)
    assert c.moe.shared_expert_gate and c.norm_offset and c.mtp_layers == 0
    assert c.linear_attention.state_elements == 4 * 8 * 8


def test_hf_unknown_model_type(tmp_path: Path) -> None:
    p = _write_json(tmp_path, {"model_type": "bert", "hidden_size": 8})
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    assert str(e.value).startswith(f"{p}: model_type: unsupported 'bert' (expected a model_type of deepseek_v3, "
                                   "gpt_oss, llama,")
    assert "; or architectures naming one of DeepseekV3ForCausalLM, GptOssForCausalLM," in str(e.value)
    p = _write_json(tmp_path, {"model_type": "bert", "architectures": ["BertModel"]})
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    assert str(e.value).startswith(
        f"{p}: model_type: unsupported 'bert' and architectures ['BertModel']: none supported (expected ")


# A small Kimi-K2-style file (the published moonshotai/Kimi-K2-Instruct config.json has model_type
# kimi_k2 and architectures ["DeepseekV3ForCausalLM"]; shapes here are shrunk, keys are its keys).
KIMI_LIKE = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2",
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
    "hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 512, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 12,
    "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_shared_experts": 1, "first_k_dense_replace": 1,
    "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.827, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "max_position_embeddings": 4096, "rope_theta": 50000.0,
}


def test_hf_derivative_model_type_resolved_by_architectures(tmp_path: Path) -> None:
    c = config_from_hf_json(_write_json(tmp_path, KIMI_LIKE, folder="Kimi-Like"))
    assert c.name == "kimi-like"
    assert c.sources == ["HF config.json: config.json in Kimi-Like "
                         "(model_type kimi_k2, read as deepseek_v3 by architectures DeepseekV3ForCausalLM)"]
    assert c.layer_types == ["mla"] * 3 and c.mlp_types == ["dense", "moe", "moe"]
    assert (c.mla.kv_lora_rank, c.mla.q_lora_rank, c.mla.rope_theta) == (16, 32, 50000.0)
    assert (c.moe.num_experts, c.moe.top_k, c.moe.shared_expert_intermediate_size) == (12, 2, 16)
    assert c.moe.routed_scaling_factor == 2.827 and c.moe.score_correction_bias
    # the same keys under the family's own model_type give the same model
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    same = config_from_hf_json(_write_json(tmp_path / "b", {**KIMI_LIKE, "model_type": "deepseek_v3"},
                                           folder="Kimi-Like"))
    assert same.model_dump(exclude={"sources"}) == c.model_dump(exclude={"sources"})
    # a missing key names the family it was read as
    data = {k: v for k, v in KIMI_LIKE.items() if k != "kv_lora_rank"}
    p = _write_json(tmp_path / "c", data)
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    assert str(e.value) == f"{p}: kv_lora_rank: missing (required for model_type 'deepseek_v3')"


def test_hf_missing_key(tmp_path: Path) -> None:
    data = {k: v for k, v in HF_FILES["deepseek-v3"].items() if k != "kv_lora_rank"}
    p = _write_json(tmp_path, data)
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    assert str(e.value) == f"{p}: kv_lora_rank: missing (required for model_type 'deepseek_v3')"


def test_hf_missing_nested_key(tmp_path: Path) -> None:
    data = json.loads(json.dumps(HF_FILES["qwen3.5-397b-a17b"]))
    del data["text_config"]["linear_num_value_heads"]
    p = _write_json(tmp_path, data)
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    assert str(e.value) == f"{p}: text_config.linear_num_value_heads: missing (required for model_type 'qwen3_5_moe')"


def test_hf_missing_text_config_and_bad_json(tmp_path: Path) -> None:
    p = _write_json(tmp_path, {"model_type": "qwen3_5_moe"})
    with pytest.raises(CodesignError, match=r"text_config: missing"):
        config_from_hf_json(p)
    p.write_text('{"model_type": "llama",')
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    assert str(e.value).startswith(f"{p}: line 1: malformed JSON: ")


def test_hf_wrong_value_names_field(tmp_path: Path) -> None:
    data = {**HF_FILES["qwen3-8b"], "num_key_value_heads": 5}  # 32 heads not a multiple of 5
    p = _write_json(tmp_path, data)
    with pytest.raises(CodesignError) as e:
        config_from_hf_json(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: attention: ") and "num_heads (32) must be a multiple of num_kv_heads (5)" in msg


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_torch_module_has_the_analytic_parameter_count(name: str) -> None:
    """The real nn.Module, built on the meta device, holds exactly the counted parameters (MTP apart).

    DeepSeek's selection bias is a checkpoint tensor but a buffer in the module (it is not trained
    by gradient), so buffers of that name are counted too.
    """
    import torch

    from codesign.models import build_model

    model = build_model(load_model(name), device=torch.device("meta"))
    n = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("mtp"))
    n += sum(b.numel() for k, b in model.named_buffers() if k.endswith("e_score_correction_bias") and not k.startswith("mtp"))
    assert n == param_counts(load_model(name))["total"]
