"""Trace a model into an op graph: `trace(config, phase, batch, tokens, context)`.

The model (`codesign.models.build_model`) is built on the meta device: no weights are allocated, at
any size. Each distinct layer kind ("linear_attention+moe", "full_attention+moe", ...) is recorded
once (codesign.graph.tracer) and replicated over the layers of that kind; recorded segments are
cached in memory and on disk by the config hash and the phase's shape, so a second trace of the same
model and shape skips torch entirely. MoE expert ops are re-drawn per layer from the router model.

Phases:
* decode at context L: `batch` sequences each generate their L-th token; the step attends over L
  tokens (L-1 cached plus the new one), so decode at the model's maximum context is allowed.
* prefill: `batch` sequences each add `tokens` tokens after `context` cached tokens (context=0 is a
  fresh prompt). Only the last position goes through the LM head, as serving engines do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import pickle
import time
from pathlib import Path

import networkx as nx
import torch

from codesign.errors import CodesignError
from codesign.graph.op import BYTE_CLASSES, Op
from codesign.graph.router import RouterModel, make_router, routed_counts
from codesign.graph.tracer import INPUT, Segment, record
from codesign.models import ModelConfig, load_model

TRACE_VERSION = 6  # bump when the recorded op format changes (invalidates the disk cache)
_MEMO: dict[str, Segment] = {}
_MODELS: dict[str, torch.nn.Module] = {}


def cache_dir() -> Path:
    """Where recorded segments are kept: $CODESIGN_CACHE_DIR, else ~/.cache/codesign/traces."""
    env = os.environ.get("CODESIGN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "codesign" / "traces"


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


def _record_segment(config: ModelConfig, seg: str, phase: str, batch: int, tokens: int, context: int) -> Segment:
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


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the code a recording depends on (the models and the recorder): editing a model file
    invalidates its cached traces without anyone remembering to bump TRACE_VERSION."""
    here = Path(__file__).resolve().parent
    files = sorted((here.parent / "models").glob("*.py")) + [here / "tracer.py", here / "op.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cached(key_src: str, compute, use_disk: bool):
    """compute() memoised in this process and, if use_disk, in cache_dir() across processes."""
    key = hashlib.sha256(f"{TRACE_VERSION}|{torch.__version__}|{_code_hash()}|{key_src}".encode()).hexdigest()[:24]
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    path = cache_dir() / f"{key}.pkl"
    if use_disk and path.exists():
        try:
            with path.open("rb") as f:
                hit = pickle.load(f)
        except Exception:  # a corrupt or stale cache entry is recomputed, never fatal
            hit = None
    if hit is None:
        hit = compute()
        if use_disk:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with tmp.open("wb") as f:
                    pickle.dump(hit, f, protocol=pickle.HIGHEST_PROTOCOL)
                tmp.replace(path)
            except OSError:
                pass  # a read-only home is no reason to fail a trace
    _MEMO[key] = hit
    return hit


def _segment(config: ModelConfig, seg: str, phase: str, batch: int, tokens: int, context: int, use_disk: bool) -> Segment:
    """The recorded segment at this shape. Every op's FLOPs, bytes and shapes are affine in the batch
    (sequences are independent; weights do not grow), so only batches 1 and 2 are recorded under
    torch and any other batch is extrapolated from them exactly (tests compare against recordings)."""
    kind = seg if not seg.isdigit() else config.layer_kind(int(seg))

    def record_at(b: int) -> Segment:
        return _cached(f"{config.config_hash()}|{kind}|{phase}|{b}|{tokens}|{context}",
                       lambda: _record_segment(config, seg, phase, b, tokens, context), use_disk)

    if batch <= 2:
        return record_at(batch)
    key = f"{config.config_hash()}|{kind}|{phase}|{batch}|{tokens}|{context}|affine"
    hit = _MEMO.get(key)
    if hit is None:
        hit = _extrapolate(record_at(1), record_at(2), batch)
        if hit is None:  # the two recordings differ in structure: record this batch directly
            hit = record_at(batch)
        _MEMO[key] = hit
    return hit


def _lerp(a, b, t: int):
    """a + (b - a) * t over numbers, tuples and dicts of them (t = batch - 1)."""
    if isinstance(a, dict):
        return {k: a[k] + (b[k] - a[k]) * t for k in a}
    if isinstance(a, tuple):
        return tuple(_lerp(x, y, t) for x, y in zip(a, b, strict=True))
    return a + (b - a) * t


def _extrapolate(s1: Segment, s2: Segment, batch: int) -> Segment | None:
    if len(s1.ops) != len(s2.ops) or s1.edges != s2.edges or s1.entries != s2.entries or s1.exit != s2.exit:
        return None
    t = batch - 1
    ops = []
    for a, b in zip(s1.ops, s2.ops):
        if a.target != b.target or len(a.in_shapes) != len(b.in_shapes) or len(a.out_shapes) != len(b.out_shapes) \
                or (a.gemm is None) != (b.gemm is None) or a.repeat != b.repeat:
            return None
        op = a.clone()
        op.in_shapes = _lerp(a.in_shapes, b.in_shapes, t)
        op.out_shapes = _lerp(a.out_shapes, b.out_shapes, t)
        op.flops = _lerp(a.flops, b.flops, t)
        op.bytes_read = _lerp(a.bytes_read, b.bytes_read, t)
        op.bytes_written = _lerp(a.bytes_written, b.bytes_written, t)
        op.gemm = None if a.gemm is None else _lerp(a.gemm, b.gemm, t)
        if a.tokens_per_expert is not None:
            op.tokens_per_expert = _lerp(a.tokens_per_expert, b.tokens_per_expert, t)
        ops.append(op)
    return Segment(ops=ops, edges=s1.edges, entries=s1.entries, exit=s1.exit, params=s1.params, wall_s=0.0)


def count_params(config: ModelConfig, disk_cache: bool = True) -> dict[str, float]:
    """See `_count_params`; cached with the traces so a cached trace builds no module."""
    return _cached(f"{config.config_hash()}|params2", lambda: _count_params(config), disk_cache)


def cache_bytes(config: ModelConfig, disk_cache: bool = True) -> dict[str, float]:
    """See `_cache_bytes`; cached with the traces."""
    return _cached(f"{config.config_hash()}|cache_bytes", lambda: _cache_bytes(config), disk_cache)


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


def weight_bytes_by_layer(config: ModelConfig, disk_cache: bool = True) -> dict[int, dict[str, float]]:
    """Resident weight bytes (traced bf16) per layer and block: -1 embedding, 0..L-1 decoder layers,
    L final norm + LM head (a tied head holds nothing of its own), L+1+j MTP layer j. Routed experts
    are counted whole: every expert is resident even if a step touches few."""

    def compute() -> dict[int, dict[str, float]]:
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

    return _cached(f"{config.config_hash()}|weight_bytes", compute, disk_cache)


def _count_params(config: ModelConfig) -> dict[str, float]:
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


def _cache_bytes(config: ModelConfig) -> dict[str, float]:
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


def _rescale_experts(op: Op, counts) -> Op:
    """The grouped expert op with this layer's per-expert token counts (same routed total)."""
    counts = tuple(int(c) for c in counts)
    touched = sum(1 for c in counts if c)
    rd = dict(op.bytes_read)
    rd["weight"] = touched * op.expert_weight_bytes
    return dataclasses.replace(op, tokens_per_expert=counts, flops=sum(counts) * op.expert_flops_per_token, bytes_read=rd)


def trace(
    config: ModelConfig | str,
    phase: str = "decode",
    batch: int = 1,
    tokens: int | None = None,
    context: int = 0,
    router: RouterModel | str | None = None,
    seed: int = 0,
    include_mtp: bool = False,
    disk_cache: bool = True,
) -> nx.DiGraph:
    """The op graph of one forward step of `config` (see the module docstring for the phases)."""
    t0 = time.perf_counter()
    config = load_model(config)
    if phase not in ("decode", "prefill"):
        raise CodesignError(f"phase must be 'decode' or 'prefill', found {phase!r}")
    if tokens is None:
        tokens = 1 if phase == "decode" else max(context, 1)
        if phase == "prefill":
            context = 0
    if phase == "decode" and tokens != 1:
        raise CodesignError(f"decode adds one token per sequence, found tokens={tokens}")
    if batch < 1 or tokens < 1 or context < (1 if phase == "decode" else 0):
        raise CodesignError(f"batch, tokens and decode context must be positive, found batch={batch}, "
                            f"tokens={tokens}, context={context}")
    length = context if phase == "decode" else context + tokens  # tokens attended by the last position
    if length > config.max_position_embeddings:
        raise CodesignError(
            f"{config.name}: context {length} exceeds the model's maximum of "
            f"{config.max_position_embeddings} tokens")
    cached = context - 1 if phase == "decode" else context  # tokens in the cache before the step
    router_model = make_router(router, seed)

    segments: list[tuple[str, int, str]] = [("embed", -1, "embed")]
    representative: dict[str, int] = {}
    for i in range(config.num_layers):
        representative.setdefault(config.layer_kind(i), i)
        segments.append((str(representative[config.layer_kind(i)]), i, config.layer_kind(i)))
    segments.append(("head", config.num_layers, "head"))
    if include_mtp:
        for j in range(config.mtp_layers):
            segments.append((f"mtp{j}", config.num_layers + 1 + j, "mtp"))

    g = nx.DiGraph()
    prev_exit: int | None = None
    next_id = 0
    moe_index = 0
    routed_tokens = batch * tokens
    for seg, layer, layer_type in segments:
        s = _segment(config, seg, phase, batch, tokens, cached, disk_cache)
        prefix = f"layers.{layer}." if layer_type not in ("embed", "head", "mtp") else (
            f"mtp.{layer - config.num_layers - 1}." if layer_type == "mtp" else "")
        base = next_id
        counts = None
        for op in s.ops:
            if op.kind == "grouped_gemm" and config.moe is not None:
                if counts is None:
                    counts = routed_counts(router_model, moe_index if layer_type != "mtp" else 10_000 + layer,
                                           routed_tokens, config.moe.num_experts, config.moe.top_k)
                    moe_index += 1
                op = _rescale_experts(op, counts)
            op = op.clone()
            op.layer, op.layer_type, op.name = layer, layer_type, prefix + op.name
            g.add_node(next_id, op=op)
            next_id += 1
        g.add_edges_from((base + a, base + b) for a, b in s.edges)
        if prev_exit is not None:
            g.add_edges_from((prev_exit, base + e) for e in s.entries)
        if s.exit != INPUT:
            prev_exit = base + s.exit

    params = count_params(config, disk_cache)
    g.graph.update(
        model=config.name,
        config_hash=config.config_hash(),
        phase=phase,
        batch=batch,
        tokens=tokens,
        context=context,
        router=router_model.describe(),
        **params,
        weight_bytes=weight_bytes_by_layer(config, disk_cache),
        trace_s=time.perf_counter() - t0,
    )
    return g


def totals(g: nx.DiGraph, layer_types: set[str] | None = None) -> dict[str, float]:
    """FLOPs and bytes read/written by class over the graph (optionally only some layer types)."""
    out = {"flops": 0.0, **{f"read_{c}": 0.0 for c in BYTE_CLASSES}, **{f"written_{c}": 0.0 for c in BYTE_CLASSES}}
    for _, op in g.nodes(data="op"):
        if layer_types is not None and op.layer_type not in layer_types:
            continue
        out["flops"] += op.flops
        for c in BYTE_CLASSES:
            out[f"read_{c}"] += op.bytes_read[c]
            out[f"written_{c}"] += op.bytes_written[c]
    return out
