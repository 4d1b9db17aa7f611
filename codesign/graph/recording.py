"""Running a model's torch code on the meta device: the recordings the tracer caches.

Everything here needs torch; `codesign.graph.tracing` imports this module only when a recording,
a parameter count or a cache size is not in its memory or disk cache, so a simulation whose
recordings are cached never imports torch.
"""

from __future__ import annotations

import contextlib
import time

import torch

from codesign.graph.segment import Segment
from codesign.graph.tracer import record
from codesign.models import ModelConfig

_MODELS: dict[str, torch.nn.Module] = {}


@contextlib.contextmanager
def _no_init():
    """Skip weight initialisation: meta tensors have no values to fill, and some of torch's meta
    initialisers import its compiler stack (seconds) for nothing. As transformers' no_init_weights."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


class _Pieces(torch.nn.Module):
    """The parts of a CausalLM that a trace needs, on the meta device: the embedding, ONE decoder
    layer per distinct layer kind (the representative, at its own layer index), the final norm, the
    LM head and the MTP layers. Building all 60 layers of a 512-expert model would cost seconds."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from codesign.models.decoder import DecoderLayer, Embedding, LMHead
        from codesign.models.norms import BlockNorm

        self.representative: dict[str, int] = {}
        for i in range(config.num_layers):
            self.representative.setdefault(config.layer_kind(i), i)
        self.layer_count = {k: sum(1 for i in range(config.num_layers) if config.layer_kind(i) == k)
                            for k in self.representative}
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = torch.nn.ModuleDict({str(i): DecoderLayer(config, i) for i in self.representative.values()})
        self.norm = BlockNorm(config.hidden_size, config.rms_norm_eps, config.norm_offset)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.mtp = torch.nn.ModuleList()
        if config.mtp_layers:
            from codesign.models.mtp import MTPLayer

            self.mtp.extend(MTPLayer(config, j) for j in range(config.mtp_layers))


def _meta_model(config: ModelConfig) -> _Pieces:
    key = config.config_hash()
    model = _MODELS.get(key)
    if model is None:
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("meta"), _no_init():
                model = _Pieces(config)
        finally:
            torch.set_default_dtype(prev)
        model.eval()
        _MODELS[key] = model
    return model


def _tensors_of(obj) -> list[torch.Tensor]:
    """Tensors held by a cache object (a tensor, a dataclass, a tuple/list/dict, or plain attributes)."""
    if obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_of(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_of(o)]
    if hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        fields = vars(obj) if hasattr(obj, "__dict__") else {s: getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)}
        return [t for v in fields.values() for t in _tensors_of(v)]
    return []


def _layer_cache(model: _Pieces, config: ModelConfig, i: int, batch: int, max_len: int):
    layer = model.layers[str(model.representative[config.layer_kind(i)])]
    if hasattr(layer, "make_cache"):
        return layer.make_cache(batch, max_len, device="meta", dtype=torch.bfloat16)
    mixer = getattr(layer, "linear_attn", None) or getattr(layer, "self_attn")
    return mixer.make_cache(batch, max_len, device="meta", dtype=torch.bfloat16)


def _cache_class(config: ModelConfig, i: int) -> str:
    return "state" if config.layer_types[i] == "linear_attention" else "kv_cache"


def record_segment(config: ModelConfig, seg: str, phase: str, batch: int, tokens: int, context: int) -> Segment:
    """Record one segment. `context` is the number of tokens already cached before the step."""
    model = _meta_model(config)
    H = config.hidden_size
    t0 = time.perf_counter()
    classes: dict[int, str] = {}
    for p in model.parameters():
        classes[id(p)] = "weight"
    for b in model.buffers():
        classes[id(b)] = "weight"
    if seg == "embed":
        ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
        s = record(lambda: model.embed_tokens(ids), model.embed_tokens, [ids], classes, phase)
    elif seg == "head":
        rows = 1 if phase == "prefill" else tokens
        x = torch.empty(batch, rows, H, dtype=torch.bfloat16, device="meta")
        head = torch.nn.ModuleDict({"norm": model.norm, "lm_head": model.lm_head})
        s = record(lambda: model.lm_head(model.norm(x)), head, [x], classes, phase)
    elif seg.startswith("mtp"):
        j = int(seg[3:])
        mtp = model.mtp[j]
        x = torch.empty(batch, tokens, H, dtype=torch.bfloat16, device="meta")
        e = torch.empty(batch, tokens, H, dtype=torch.bfloat16, device="meta")
        cache = mtp.make_cache(batch, context + tokens, device="meta", dtype=torch.bfloat16) if hasattr(mtp, "make_cache") else None
        for t in _tensors_of(cache):
            classes[id(t)] = "kv_cache"
        s = record(lambda: mtp(x, e, context, cache), mtp, [x, e], classes, phase)
    else:
        i = int(seg)
        layer = model.layers[seg]
        x = torch.empty(batch, tokens, H, dtype=torch.bfloat16, device="meta")
        cache = _layer_cache(model, config, i, batch, context + tokens)
        for t in _tensors_of(cache):
            classes[id(t)] = _cache_class(config, i)
        s = record(lambda: layer(x, context, cache), layer, [x], classes, phase)
    s.wall_s = time.perf_counter() - t0
    return s


def _block_bytes(module: torch.nn.Module, skip: set[int] = frozenset()) -> dict[str, float]:
    """Parameter bytes of `module` by block tag (each parameter under its innermost tagged module)."""
    out: dict[str, float] = {}

    def walk(m: torch.nn.Module, block: str) -> None:
        block = getattr(m, "block", None) or block
        for p in m.parameters(recurse=False):
            if id(p) not in skip:
                out[block] = out.get(block, 0.0) + p.numel() * p.element_size()
        for child in m.children():
            walk(child, block)

    walk(module, "other")
    return out


def weight_bytes(config: ModelConfig) -> dict[int, dict[str, float]]:
    """See `codesign.graph.tracing.weight_bytes_by_layer`."""
    model = _meta_model(config)
    per_kind = {kind: _block_bytes(model.layers[str(i)]) for kind, i in model.representative.items()}
    out: dict[int, dict[str, float]] = {-1: _block_bytes(model.embed_tokens)}
    for i in range(config.num_layers):
        out[i] = dict(per_kind[config.layer_kind(i)])
    tied = {id(model.embed_tokens.weight)}
    out[config.num_layers] = _block_bytes(torch.nn.ModuleList([model.norm, model.lm_head]), skip=tied)
    for j, m in enumerate(model.mtp):
        out[config.num_layers + 1 + j] = _block_bytes(m, skip=tied | {id(model.lm_head.weight)})
    return out


def count_params(config: ModelConfig) -> dict[str, float]:
    """Parameters from the modules themselves (each representative layer times its layer count).

    params_total: the text decoder with embeddings and LM head (MTP apart, in params_mtp).
    params_active: per token: everything but the embedding table (a lookup reads one row) and the
    routed experts not chosen (top_k of num_experts are), as model cards count "active".
    """
    model = _meta_model(config)

    def numel(m: torch.nn.Module, skip: set[int] = frozenset()) -> tuple[float, float]:
        experts = {id(p) for sub in m.modules() if getattr(sub, "block", None) == "moe_experts" for p in sub.parameters()}
        total = ex = 0.0
        for p in m.parameters():
            if id(p) in skip:
                continue
            total += p.numel()
            ex += p.numel() if id(p) in experts else 0.0
        return total, ex

    total = experts = 0.0
    for kind, i in model.representative.items():
        t, e = numel(model.layers[str(i)])
        total += t * model.layer_count[kind]
        experts += e * model.layer_count[kind]
    embed = float(model.embed_tokens.weight.numel())
    head_norm, _ = numel(torch.nn.ModuleList([model.norm, model.lm_head]), skip={id(model.embed_tokens.weight)})
    total += embed + head_norm
    mtp, _ = numel(model.mtp, skip={id(model.embed_tokens.weight), id(model.lm_head.weight)})
    active = total - embed
    if config.tie_word_embeddings:
        active += embed  # the tied table is read whole as the LM head
    if config.moe is not None and experts:
        active -= experts * (1.0 - config.moe.top_k / config.moe.num_experts)
    # The convention of most model cards (and model_graphs/*.yaml's active_params_reference):
    # the embedding table counted too.
    with_embedding = active if config.tie_word_embeddings else active + embed
    return {"params_total": total, "params_active": active, "params_active_with_embedding": with_embedding,
            "params_experts": experts, "params_mtp": mtp}


def cache_bytes(config: ModelConfig) -> dict[str, float]:
    """KV bytes per token (bf16) and recurrent-state bytes per sequence, from the models' cache buffers."""
    model = _meta_model(config)
    kv_per_token = 0.0
    state_per_seq = 0.0
    probe_len = 16
    for i in range(config.num_layers):
        cache = _layer_cache(model, config, i, 1, probe_len)
        size = sum(t.numel() * t.element_size() for t in _tensors_of(cache))
        if _cache_class(config, i) == "state":
            state_per_seq += size
        elif config.layer_types[i] == "sliding_attention":
            kv_per_token += 0.0  # bounded by the window: counted apart
        else:
            kv_per_token += size / probe_len
    window_bytes = 0.0
    for i in range(config.num_layers):
        if config.layer_types[i] == "sliding_attention":
            cache = _layer_cache(model, config, i, 1, probe_len)
            window_bytes += sum(t.numel() * t.element_size() for t in _tensors_of(cache)) / probe_len * (
                config.attention.sliding_window)
    return {"kv_cache_bytes_per_token": kv_per_token, "state_bytes_per_sequence": state_per_seq,
            "sliding_kv_bytes_per_sequence": window_bytes}
