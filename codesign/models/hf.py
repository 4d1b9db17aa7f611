"""Import a Hugging Face `config.json` as a `ModelConfig`.

Supported `model_type`s: llama, mistral, mixtral, qwen3, qwen3_moe, qwen3_next, qwen3_5_moe (its text
part sits in `text_config`), deepseek_v3 and gpt_oss. A file whose `model_type` is none of these is
resolved by its `architectures` list instead (the transformers model class the checkpoint runs
with): Kimi K2's `model_type: kimi_k2` with `architectures: ["DeepseekV3ForCausalLM"]` imports as
deepseek_v3, and the source line says so. The key names are those of the transformers
configuration classes. Shape keys (hidden size, layers, heads, expert counts, ...) are required: a
missing one is an error naming the file and the key, never a silently assumed default. Keys that
only tune numerics (eps, rope theta, max positions, tied embeddings) fall back to the transformers
defaults for that family, which are named below.

Not imported: rope scaling (YaRN, llama3), which changes numerics but not cost; it is recorded in
`notes`. Vision towers are out of scope.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import ConfigDict, Field, ValidationError, create_model

from codesign.errors import CodesignError, format_validation_error
from codesign.limits import MAX_LAYERS, MAX_TOKENS, MAX_WIDTH, show
from codesign.models.config import ModelConfig
from codesign.spec_files import Int

_MISSING = object()

# The types of the config.json keys this importer reads, checked before any is used (so that a
# string layer count or a zero head count is a one-line error naming the key, never a TypeError or
# ZeroDivisionError in the family readers below). Keys not listed are not read and not checked.
_Count = Annotated[Int, Field(ge=1, le=MAX_WIDTH)]  # sizes, heads, experts
_Count0 = Annotated[Int, Field(ge=0, le=MAX_WIDTH)]  # counts that may be zero
_INT_KEYS = ("hidden_size vocab_size num_attention_heads num_key_value_heads head_dim intermediate_size "
             "moe_intermediate_size num_experts num_local_experts num_experts_per_tok experts_per_token "
             "decoder_sparse_step full_attention_interval linear_conv_kernel_dim linear_key_head_dim "
             "linear_num_key_heads linear_num_value_heads linear_value_head_dim kv_lora_rank q_lora_rank "
             "qk_nope_head_dim qk_rope_head_dim v_head_dim moe_layer_freq n_routed_experts n_group "
             "topk_group").split()
_INT0_KEYS = "first_k_dense_replace n_shared_experts shared_expert_intermediate_size".split()
_KEYS: dict[str, Any] = {
    **{k: (_Count | None, None) for k in _INT_KEYS},
    **{k: (_Count0 | None, None) for k in _INT0_KEYS},
    "num_hidden_layers": (Annotated[Int, Field(ge=1, le=MAX_LAYERS)] | None, None),
    "max_position_embeddings": (Annotated[Int, Field(ge=1, le=MAX_TOKENS)] | None, None),
    "sliding_window": (Annotated[Int, Field(ge=1, le=MAX_TOKENS)] | None, None),
    "mtp_num_hidden_layers": (Annotated[Int, Field(ge=0, le=64)] | None, None),
    "num_nextn_predict_layers": (Annotated[Int, Field(ge=0, le=64)] | None, None),
    **{k: (float | None, None) for k in "rope_theta rms_norm_eps partial_rotary_factor routed_scaling_factor".split()},
    **{k: (bool | None, None) for k in ("attention_bias attn_output_gate mlp_bias norm_topk_prob tie_word_embeddings "
                                         "use_sliding_window").split()},
    **{k: (str | None, None) for k in "scoring_func topk_method".split()},
    "layer_types": (list[str] | None, None),
    "mlp_only_layers": (list[Annotated[Int, Field(ge=0, le=MAX_LAYERS)]] | None, None),
    "rope_parameters": (dict[str, Any] | None, None),
    "rope_scaling": (dict[str, Any] | None, None),
}
_HFKeys = create_model("HFConfigKeys", __config__=ConfigDict(extra="allow", allow_inf_nan=False, strict=True),
                       **_KEYS)
_ROPE_KEYS = create_model("HFRopeKeys", __config__=ConfigDict(extra="allow", allow_inf_nan=False, strict=True),
                          rope_theta=(float | None, None), partial_rotary_factor=(float | None, None),
                          rope_type=(str | None, None), type=(str | None, None))


def _check_keys(data: dict[str, Any], source: str, prefix: str) -> None:
    """Refuse (one line, naming the key) any read key of the wrong type or out of range."""
    where = f"{source}: {prefix.rstrip('.')}" if prefix else source
    try:
        _HFKeys.model_validate(data)
    except ValidationError as e:
        raise CodesignError(format_validation_error(where, e)) from None
    for nest in ("rope_parameters", "rope_scaling"):
        if isinstance(data.get(nest), dict):
            try:
                _ROPE_KEYS.model_validate(data[nest])
            except ValidationError as e:
                raise CodesignError(format_validation_error(f"{source}: {prefix}{nest}", e)) from None


class _Reader:
    """Key access on one config dict that turns a missing key into a one-line CodesignError."""

    def __init__(self, data: dict[str, Any], source: str, prefix: str = "") -> None:
        _check_keys(data, source, prefix)
        self.data, self.source, self.prefix = data, source, prefix
        self.model_type = data.get("model_type")

    def req(self, key: str) -> Any:
        v = self.data.get(key, _MISSING)
        if v is _MISSING or v is None:
            raise CodesignError(
                f"{self.source}: {self.prefix}{key}: missing (required for model_type {self.model_type!r})"
            )
        return v

    def opt(self, key: str, default: Any) -> Any:
        v = self.data.get(key, _MISSING)
        return default if v is _MISSING or v is None else v

    def rope(self, key: str, default: Any) -> Any:
        """A rope key, from `rope_parameters` (transformers 5), `rope_scaling` or the top level (older files)."""
        for nest in ("rope_parameters", "rope_scaling"):
            sub = self.data.get(nest)
            if isinstance(sub, dict) and sub.get(key) is not None:
                return sub[key]
        return self.opt(key, default)

    def rope_note(self) -> list[str]:
        for nest in ("rope_scaling", "rope_parameters"):
            sub = self.data.get(nest)
            kind = sub.get("rope_type", sub.get("type")) if isinstance(sub, dict) else None
            if kind and kind != "default":
                return [f"rope scaling {kind!r} in {nest} is not modelled (cost-neutral); only rope_theta is used"]
        return []


def _common(r: _Reader, eps_default: float, max_pos_default: int) -> dict[str, Any]:
    """Fields every family shares. Defaults are those of the transformers config class of the family."""
    return {
        "hidden_size": r.req("hidden_size"),
        "num_layers": r.req("num_hidden_layers"),
        "vocab_size": r.req("vocab_size"),
        "max_position_embeddings": r.opt("max_position_embeddings", max_pos_default),
        "tie_word_embeddings": r.opt("tie_word_embeddings", False),
        "rms_norm_eps": r.opt("rms_norm_eps", eps_default),
        "notes": r.rope_note(),
    }


def _attention(r: _Reader, rope_default: float, **extra: Any) -> dict[str, Any]:
    heads = r.req("num_attention_heads")
    hidden = r.req("hidden_size")
    # head_dim is explicit in Qwen3/gpt-oss files; older Llama files derive it (transformers does too).
    return {
        "num_heads": heads,
        "num_kv_heads": r.opt("num_key_value_heads", heads),
        "head_dim": r.opt("head_dim", hidden // heads),
        "rope_theta": float(r.rope("rope_theta", rope_default)),
        "bias": r.opt("attention_bias", False),
        **extra,
    }


def _sparse_layers(r: _Reader, n: int) -> list[str]:
    """Qwen2/3-MoE layout: MoE every `decoder_sparse_step` layers except `mlp_only_layers`."""
    step = r.opt("decoder_sparse_step", 1)
    dense = set(r.opt("mlp_only_layers", []))
    return ["moe" if (i not in dense and (i + 1) % step == 0) else "dense" for i in range(n)]


def _llama(r: _Reader) -> dict[str, Any]:
    # LlamaConfig / MistralConfig defaults: rope_theta 1e4, eps 1e-6, 2048 / 4096*32 positions.
    out = _common(r, 1e-6, 2048)
    out["intermediate_size"] = r.req("intermediate_size")
    out["mlp_bias"] = r.opt("mlp_bias", False)
    window = r.opt("sliding_window", None) if r.model_type == "mistral" else None
    out["attention"] = _attention(r, 10_000.0, sliding_window=window)
    if window:  # Mistral-7B v0.1: every layer attends within the window
        out["layer_types"] = ["sliding_attention"] * out["num_layers"]
    return out


def _mixtral(r: _Reader) -> dict[str, Any]:
    out = _common(r, 1e-5, 4096 * 32)
    window = r.opt("sliding_window", None)
    out["attention"] = _attention(r, 1e6, sliding_window=window)
    if window:
        out["layer_types"] = ["sliding_attention"] * out["num_layers"]
    # softmax over all experts, top-k, renormalise (identical to softmax over the top-k logits)
    out["moe"] = {
        "num_experts": r.req("num_local_experts"),
        "top_k": r.req("num_experts_per_tok"),
        "intermediate_size": r.req("intermediate_size"),
        "norm_topk_prob": True,
    }
    return out


def _qwen3(r: _Reader) -> dict[str, Any]:
    out = _common(r, 1e-6, 32768)
    if r.opt("use_sliding_window", False):
        raise CodesignError(f"{r.source}: {r.prefix}use_sliding_window: expected false (sliding layers not supported for qwen3)")
    out["attention"] = _attention(r, 10_000.0, qk_norm=True)
    if r.model_type == "qwen3_moe":
        out["mlp_types"] = _sparse_layers(r, out["num_layers"])
        out["moe"] = {
            "num_experts": r.req("num_experts"),
            "top_k": r.req("num_experts_per_tok"),
            "intermediate_size": r.req("moe_intermediate_size"),
            "norm_topk_prob": r.opt("norm_topk_prob", False),
        }
        if "dense" in out["mlp_types"]:
            out["intermediate_size"] = r.req("intermediate_size")
    else:
        out["intermediate_size"] = r.req("intermediate_size")
    return out


def _qwen3_hybrid(r: _Reader) -> dict[str, Any]:
    """Qwen3-Next and Qwen3.5-MoE text: Gated DeltaNet + gated full attention, MoE with a shared expert."""
    out = _common(r, 1e-6, 32768)
    out["norm_offset"] = True  # zero-centred RMSNorm weights (1 + w) in both families
    n = out["num_layers"]
    types = r.opt("layer_types", None)
    if types is None:  # transformers' rule: every `full_attention_interval`-th layer is full attention
        k = r.opt("full_attention_interval", 4)
        types = ["full_attention" if (i + 1) % k == 0 else "linear_attention" for i in range(n)]
    out["layer_types"] = types
    out["attention"] = _attention(
        r, 10_000.0, qk_norm=True, output_gate=r.opt("attn_output_gate", True),
        partial_rotary_factor=float(r.rope("partial_rotary_factor", 0.25)),
    )
    out["linear_attention"] = {
        "num_key_heads": r.req("linear_num_key_heads"),
        "num_value_heads": r.req("linear_num_value_heads"),
        "key_head_dim": r.req("linear_key_head_dim"),
        "value_head_dim": r.req("linear_value_head_dim"),
        "conv_kernel": r.opt("linear_conv_kernel_dim", 4),
    }
    out["mlp_types"] = _sparse_layers(r, n)
    if "dense" in out["mlp_types"]:
        out["intermediate_size"] = r.req("intermediate_size")
    shared = r.opt("shared_expert_intermediate_size", 0)
    out["moe"] = {
        "num_experts": r.req("num_experts"),
        "top_k": r.req("num_experts_per_tok"),
        "intermediate_size": r.req("moe_intermediate_size"),
        "shared_expert_intermediate_size": shared,
        "shared_expert_gate": bool(shared),
        "norm_topk_prob": r.opt("norm_topk_prob", True),  # Qwen3.5 has no key: always renormalises
    }
    out["mtp_layers"] = r.opt("mtp_num_hidden_layers", 0)
    return out


def _deepseek_v3(r: _Reader) -> dict[str, Any]:
    out = _common(r, 1e-6, 4096)
    out["mla"] = {
        "num_heads": r.req("num_attention_heads"),
        "q_lora_rank": r.opt("q_lora_rank", None),
        "kv_lora_rank": r.req("kv_lora_rank"),
        "qk_nope_head_dim": r.req("qk_nope_head_dim"),
        "qk_rope_head_dim": r.req("qk_rope_head_dim"),
        "v_head_dim": r.req("v_head_dim"),
        "rope_theta": float(r.rope("rope_theta", 10_000.0)),
    }
    n, k = out["num_layers"], r.opt("first_k_dense_replace", 0)
    freq = r.opt("moe_layer_freq", 1)
    out["first_dense_layers"] = k
    out["mlp_types"] = ["moe" if (i >= k and i % freq == 0) else "dense" for i in range(n)]
    if "dense" in out["mlp_types"]:
        out["intermediate_size"] = r.req("intermediate_size")
    moe_i = r.req("moe_intermediate_size")
    out["moe"] = {
        "num_experts": r.req("n_routed_experts"),
        "top_k": r.req("num_experts_per_tok"),
        "intermediate_size": moe_i,
        "shared_expert_intermediate_size": r.opt("n_shared_experts", 0) * moe_i,
        "scoring": r.opt("scoring_func", "sigmoid"),
        "norm_topk_prob": r.opt("norm_topk_prob", True),
        "n_group": r.opt("n_group", 1),
        "topk_group": r.opt("topk_group", 1),
        "routed_scaling_factor": float(r.opt("routed_scaling_factor", 1.0)),
        "score_correction_bias": r.opt("topk_method", "noaux_tc") == "noaux_tc",
    }
    out["mtp_layers"] = r.opt("num_nextn_predict_layers", 0)
    return out


def _gpt_oss(r: _Reader) -> dict[str, Any]:
    out = _common(r, 1e-5, 131072)
    out["activation"] = "gpt_oss_swiglu"
    n = out["num_layers"]
    # GptOssConfig's default layout alternates, starting with a sliding layer.
    out["layer_types"] = r.opt("layer_types", ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)])
    window = r.req("sliding_window") if "sliding_attention" in out["layer_types"] else None
    out["attention"] = _attention(r, 150_000.0, sliding_window=window, sinks=True)
    out["attention"]["bias"] = r.opt("attention_bias", True)
    out["moe"] = {
        "num_experts": r.req("num_local_experts"),
        # the released file says experts_per_token; transformers' class says num_experts_per_tok
        "top_k": r.opt("num_experts_per_tok", None) or r.req("experts_per_token"),
        "intermediate_size": r.req("intermediate_size"),
        "softmax_order": "topk_then_softmax",
        "bias": True,
    }
    return out


_FAMILIES: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "llama": _llama,
    "mistral": _llama,
    "mixtral": _mixtral,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3,
    "qwen3_next": _qwen3_hybrid,
    "qwen3_5_moe": _qwen3_hybrid,
    "qwen3_5_moe_text": _qwen3_hybrid,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
}


# transformers model classes (a config's `architectures`) and the family that reads their keys: the
# causal-LM classes of transformers' auto mapping for each supported model_type.
_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Qwen3NextForCausalLM": "qwen3_next",
    "Qwen3_5MoeForConditionalGeneration": "qwen3_5_moe",
    "Qwen3_5MoeForCausalLM": "qwen3_5_moe_text",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "GptOssForCausalLM": "gpt_oss",
}


def _family(data: dict[str, Any], source: str) -> tuple[str, str]:
    """(the family that reads this config, how it was found): `model_type` when it names a supported
    family, else the first supported class of `architectures`."""
    model_type = data.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise CodesignError(f"{source}: model_type: expected a string such as 'qwen3_moe', found {show(model_type)}")
    if model_type in _FAMILIES:
        return model_type, f"model_type {model_type}"
    archs = data.get("architectures")
    if isinstance(archs, list):
        for a in archs:
            if isinstance(a, str) and a in _ARCHITECTURES:
                return _ARCHITECTURES[a], f"model_type {model_type}, read as {_ARCHITECTURES[a]} by architectures {a}"
    expected = (f"expected a model_type of {', '.join(sorted(_FAMILIES))}; or architectures naming one of "
                f"{', '.join(sorted(_ARCHITECTURES))}")
    found = "missing" if model_type is None else f"unsupported {model_type!r}"
    if archs is None:
        raise CodesignError(f"{source}: model_type: {found} ({expected})")
    raise CodesignError(f"{source}: model_type: {found} and architectures {archs!r}: none supported ({expected})")


def _read_json(path: Path) -> dict[str, Any]:
    from codesign.spec_files import read_text

    text = read_text(path)  # UTF-8, bounded size
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CodesignError(f"{path}: line {e.lineno}: malformed JSON: {e.msg}") from None
    except RecursionError:
        raise CodesignError(f"{path}: malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise CodesignError(f"{path}: expected a JSON object of config keys, found {type(data).__name__}")
    return data


def config_from_hf_json(path: str | Path, name: str | None = None) -> ModelConfig:
    """A ModelConfig from an HF `config.json`; `name` defaults to the folder holding the file, lower-cased."""
    path = Path(path)
    data = _read_json(path)
    source = str(path)
    model_type, how = _family(data, source)
    data = {**data, "model_type": model_type}  # the family's branches read the resolved type
    reader = _Reader(data, source)
    if model_type == "qwen3_5_moe":  # multimodal wrapper: the language model's keys are nested
        text = data.get("text_config")
        if not isinstance(text, dict):
            raise CodesignError(f"{source}: text_config: missing (required for model_type 'qwen3_5_moe')")
        # tie_word_embeddings may sit on the outer config only
        merged = {"tie_word_embeddings": data.get("tie_word_embeddings"), **text, "model_type": model_type}
        reader = _Reader(merged, source, prefix="text_config.")
    fields = _FAMILIES[model_type](reader)
    fields["name"] = name or (path.parent.name.lower() if path.parent.name else path.stem)
    fields["sources"] = [f"HF config.json: {path.name} in {path.parent.name or '.'} ({how})"]
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as e:
        raise CodesignError(format_validation_error(source, e)) from None


__all__ = ["config_from_hf_json"]
