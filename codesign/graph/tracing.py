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

import functools
from collections import OrderedDict
import hashlib
import os
import pickle
import time
from pathlib import Path

import networkx as nx

from codesign.errors import CodesignError
from codesign.graph.op import BYTE_CLASSES, Op
from codesign.graph.extrapolation import Bilinear, Linear, extrapolate, same_structure
from codesign.graph.mixed import merge_segments
from codesign.graph.router import RouterModel, make_router, routed_counts
from codesign.graph.shape import StepShape
from codesign.graph.segment import INPUT, Segment
from codesign.models import ModelConfig, load_model

TRACE_VERSION = 6  # bump when the recorded op format changes (invalidates the disk cache)
_MEMO: dict[str, Segment] = {}  # recordings (and parameter counts): few, kept


class _Recent(OrderedDict):
    """Segments derived for one step shape (extrapolated, merged groups' zero-sequence parts): one
    set per shape a run asks for, so the least recently used go first past `limit` (a long
    serving run asks for thousands of shapes; each entry is one layer kind's ops)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


_SHAPED = _Recent(256)


def _recording():
    """The torch half of the tracer (codesign.graph.recording), imported on first need."""
    from codesign.graph import recording

    return recording


@functools.lru_cache(maxsize=1)
def _torch_version() -> str:
    """The installed torch's version, without importing torch (a cache-key part)."""
    from importlib.metadata import version

    return version("torch")


def cache_dir() -> Path:
    """Where recorded segments are kept: $CODESIGN_CACHE_DIR, else ~/.cache/codesign/traces."""
    env = os.environ.get("CODESIGN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "codesign" / "traces"


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the code a recording depends on (the models and the recorder): editing a model file
    invalidates its cached traces without anyone remembering to bump TRACE_VERSION."""
    here = Path(__file__).resolve().parent
    files = sorted((here.parent / "models").glob("*.py")) + [here / n for n in ("tracer.py", "op.py", "segment.py",
                                                                               "recording.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


_KEYS: dict[str, str] = {}  # key_src -> its cache key (hashing it is most of a cached lookup's time)


def _cached(key_src: str, compute, use_disk: bool):
    """compute() memoised in this process and, if use_disk, in cache_dir() across processes."""
    key = _KEYS.get(key_src)
    if key is None:
        key = hashlib.sha256(f"{TRACE_VERSION}|{_torch_version()}|{_code_hash()}|{key_src}".encode()).hexdigest()[:24]
        if len(_KEYS) < (1 << 16):
            _KEYS[key_src] = key
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


# Context extrapolation anchors: segments are recorded at CONTEXT_ANCHOR and CONTEXT_ANCHOR + 1
# cached tokens and extrapolated to any larger cached length (integer steps, so exactly).
CONTEXT_ANCHOR = 1


def _recorded(config: ModelConfig, seg: str, kind: str, phase: str, batch: int, tokens: int, context: int,
              use_disk: bool) -> Segment:
    """One recording under torch, memoised in this process and on disk."""
    return _cached(f"{config.config_hash()}|{kind}|{phase}|{batch}|{tokens}|{context}",
                   lambda: _recording().record_segment(config, seg, phase, batch, tokens, context), use_disk)


def _context_affine(config: ModelConfig, seg: str) -> bool:
    """Whether the segment's ops are affine in the cached length: the embedding and head do not
    read the cache; full attention, MLA and GatedDeltaNet layers read it in proportion (or not at
    all); a sliding window makes (query, key) pairs piecewise in it, so those layers are recorded."""
    if not seg.isdigit():
        return not seg.startswith("mtp") or config.layer_types[-1] != "sliding_attention"
    return config.layer_types[int(seg)] != "sliding_attention"


def _at_context(config: ModelConfig, seg: str, kind: str, phase: str, batch: int, tokens: int, context: int,
                use_disk: bool) -> Segment:
    """The segment at `context` cached tokens: recorded at the two anchors and extrapolated (ops are
    affine in the cached length: KV shapes, reads and attention pairs grow by one token's worth per
    token), or recorded directly where that does not hold (small contexts, sliding windows)."""
    if context <= CONTEXT_ANCHOR + 1 or not _context_affine(config, seg):
        return _recorded(config, seg, kind, phase, batch, tokens, context, use_disk)
    key = f"{config.config_hash()}|{kind}|{phase}|{batch}|{tokens}|{context}|ctx-affine"
    hit = _SHAPED.get(key)
    if hit is None:
        a = _recorded(config, seg, kind, phase, batch, tokens, CONTEXT_ANCHOR, use_disk)
        b = _recorded(config, seg, kind, phase, batch, tokens, CONTEXT_ANCHOR + 1, use_disk)
        hit = extrapolate(a, b, context - CONTEXT_ANCHOR)
        if hit is None:  # the two recordings differ in structure: record this context directly
            hit = _recorded(config, seg, kind, phase, batch, tokens, context, use_disk)
        _SHAPED[key] = hit
    return hit


def _segment(config: ModelConfig, seg: str, phase: str, batch: int, tokens: int, context: int, use_disk: bool) -> Segment:
    """The recorded segment at this shape (`context` = cached tokens before the step). Every op's
    FLOPs, bytes and shapes are affine in the batch (sequences are independent; weights do not
    grow) and, where `_context_affine`, in the cached length: only batches 1 and 2 at two anchor
    contexts are recorded under torch, any other (batch, context) is extrapolated from them exactly
    (tests compare against direct recordings op by op)."""
    kind = seg if not seg.isdigit() else config.layer_kind(int(seg))
    if seg in ("embed", "head"):
        context = 0  # they never read the cache
    if batch <= 2:
        return _at_context(config, seg, kind, phase, batch, tokens, context, use_disk)
    key = f"{config.config_hash()}|{kind}|{phase}|{batch}|{tokens}|{context}|affine"
    hit = _SHAPED.get(key)
    if hit is None:
        form = _form_at(config, seg, kind, phase, batch, tokens, context, use_disk)
        if form is not None:
            hit = _SHAPED[key] = form.at(batch - 1, context - CONTEXT_ANCHOR)
    if hit is None and (context <= CONTEXT_ANCHOR + 1 or not _context_affine(config, seg)):
        # batches 1 and 2 are recordings themselves (`_at_context`): their compiled extrapolation
        line = _linear(config, seg, kind, phase, tokens, context, use_disk)
        if line is not None:
            hit = line.at(batch - 1)
    if hit is None:
        hit = extrapolate(_at_context(config, seg, kind, phase, 1, tokens, context, use_disk),
                           _at_context(config, seg, kind, phase, 2, tokens, context, use_disk), batch - 1)
        if hit is None:  # the two recordings differ in structure: record this batch directly
            hit = _at_context(config, seg, kind, phase, batch, tokens, context, use_disk)
        _SHAPED[key] = hit
    return hit


def _form_at(config: ModelConfig, seg: str, kind: str, phase: str, batch: int, tokens: int, context: int,
             use_disk: bool) -> Bilinear | None:
    """The bilinear form `_segment` evaluates at (batch - 1, context - CONTEXT_ANCHOR) for this
    decoder-layer segment at this shape, or None where it takes another path."""
    if batch <= 2 or seg in ("embed", "head") or context <= CONTEXT_ANCHOR + 1 or not _context_affine(config, seg):
        return None
    return _bilinear(config, seg, kind, phase, tokens, use_disk)


_BILINEAR: dict[str, Bilinear | None] = {}
_LINEAR: dict[str, Linear | None] = {}


def _linear(config: ModelConfig, seg: str, kind: str, phase: str, tokens: int, context: int,
            use_disk: bool) -> Linear | None:
    """The batch extrapolation (`Linear`) of a segment recorded at batches 1 and 2 at `context`,
    memoised (a few per model: the embedding, the head, short or windowed contexts)."""
    key = f"{config.config_hash()}|{kind}|{phase}|{tokens}|{context}"
    if key not in _LINEAR:
        if len(_LINEAR) >= 1024:
            _LINEAR.clear()
        _LINEAR[key] = Linear.build(_recorded(config, seg, kind, phase, 1, tokens, context, use_disk),
                                    _recorded(config, seg, kind, phase, 2, tokens, context, use_disk))
    return _LINEAR[key]


def _batches_differ(config: ModelConfig, seg: str, kind: str, phase: str, tokens: int, use_disk: bool) -> bool:
    """Whether batches 1 and 2 record differently while each extrapolates in cached length (so at
    every cached length beyond the anchors their segments differ in structure, as for
    GatedDeltaNet's prefill, whose chunked kernel path depends on the batch)."""
    key = f"{config.config_hash()}|{kind}|{phase}|{tokens}"
    if key not in _DIFFER:
        rec = functools.partial(_recorded, config, seg, kind, phase)
        A = CONTEXT_ANCHOR
        one, two = rec(1, tokens, A, use_disk), rec(2, tokens, A, use_disk)
        _DIFFER[key] = (same_structure(one, rec(1, tokens, A + 1, use_disk))
                        and same_structure(two, rec(2, tokens, A + 1, use_disk)) and not same_structure(one, two))
    return _DIFFER[key]


_DIFFER: dict[str, bool] = {}


def _bilinear(config: ModelConfig, seg: str, kind: str, phase: str, tokens: int, use_disk: bool) -> Bilinear | None:
    """The bilinear form of a segment (`Bilinear`) from its four anchor recordings, memoised."""
    key = f"{config.config_hash()}|{kind}|{phase}|{tokens}"
    if key not in _BILINEAR:
        rec = functools.partial(_recorded, config, seg, kind, phase)
        A = CONTEXT_ANCHOR
        _BILINEAR[key] = Bilinear.build(rec(1, tokens, A, use_disk), rec(2, tokens, A, use_disk),
                                         rec(1, tokens, A + 1, use_disk), rec(2, tokens, A + 1, use_disk))
    return _BILINEAR[key]


def count_params(config: ModelConfig, disk_cache: bool = True) -> dict[str, float]:
    """See `_count_params`; cached with the traces so a cached trace builds no module."""
    return _cached(f"{config.config_hash()}|params2", lambda: _recording().count_params(config), disk_cache)


def cache_bytes(config: ModelConfig, disk_cache: bool = True) -> dict[str, float]:
    """See `_cache_bytes`; cached with the traces."""
    return _cached(f"{config.config_hash()}|cache_bytes", lambda: _recording().cache_bytes(config), disk_cache)


def weight_bytes_by_layer(config: ModelConfig, disk_cache: bool = True) -> dict[int, dict[str, float]]:
    """Resident weight bytes (traced bf16) per layer and block: -1 embedding, 0..L-1 decoder layers,
    L final norm + LM head (a tied head holds nothing of its own), L+1+j MTP layer j. Routed experts
    are counted whole: every expert is resident even if a step touches few."""
    return _cached(f"{config.config_hash()}|weight_bytes", lambda: _recording().weight_bytes(config), disk_cache)


def _rescale_experts(op: Op, counts, routed_share: float = 1.0) -> Op:
    """The grouped expert op with this layer's per-expert token counts (same routed total, or
    `routed_share` of the traced tokens: `StepShape.routed`, which scales its activation bytes)."""
    if not isinstance(counts, tuple):
        counts = tuple(int(c) for c in counts)
    touched = len(counts) - counts.count(0)
    rd = dict(op.bytes_read)
    rd["weight"] = touched * op.expert_weight_bytes
    new = op.clone()
    new.tokens_per_expert, new.flops, new.bytes_read = counts, sum(counts) * op.expert_flops_per_token, rd
    if routed_share != 1.0:
        _routed_bytes(new, routed_share)
    return new


def _routed_share(shape: StepShape) -> float:
    """Routed tokens / new tokens of the step (1.0 unless `StepShape.routed` says fewer)."""
    return 1.0 if shape.routed is None else shape.routed / shape.tokens


def _routed_bytes(op: Op, share: float) -> None:
    """Scale the token-proportional bytes (all but the weights) of expert op `op` in place by `share`."""
    op.bytes_read = {c: (v if c == "weight" else v * share) for c, v in op.bytes_read.items()}
    op.bytes_written = {c: (v if c == "weight" else v * share) for c, v in op.bytes_written.items()}


def _legacy_shape(config: ModelConfig, phase: str, batch: int, tokens: int | None, context: int) -> StepShape:
    """`trace`'s (phase, batch, tokens, context) arguments as a step shape (decode at KV length
    `context`; prefill of `tokens` after `context` cached tokens)."""
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
    if phase == "decode":
        return StepShape.decode(batch, context)
    return StepShape.prefill(batch, tokens, context)


def check_shape(config: ModelConfig, shape: StepShape) -> None:
    """Every group must fit the model's maximum context."""
    longest = max(g.kv_len for g in shape.groups)
    if longest > config.max_position_embeddings:
        raise CodesignError(f"{config.name}: context {longest} exceeds the model's maximum of "
                            f"{config.max_position_embeddings} tokens")


def _group_segment(config: ModelConfig, seg: str, shape: StepShape, use_disk: bool) -> Segment:
    """Segment `seg` for the whole step: per group, merged when the step mixes groups. The
    embedding and head are token-parallel: a mixed step records them over all its tokens (rows
    needing logits, for the head) as one batch."""
    groups = shape.groups
    if seg in ("embed", "head"):
        if len(groups) == 1 and groups[0].logits == 1:
            g = groups[0]
            return _segment(config, seg, g.phase, g.seqs, g.new_tokens, 0, use_disk)
        rows = shape.tokens if seg == "embed" else sum(g.seqs * g.logits for g in groups)
        return _segment(config, seg, "decode", rows, 1, 0, use_disk)
    if len(groups) == 1:
        g = groups[0]
        return _segment(config, seg, g.phase, g.seqs, g.new_tokens, g.cached_tokens, use_disk)
    parts, consts = [], []
    for g in groups:
        parts.append(_segment(config, seg, g.phase, g.seqs, g.new_tokens, g.cached_tokens, use_disk))
        const = _zero_sequences(config, seg, g.phase, g.new_tokens, g.cached_tokens, use_disk)
        consts.append(const if const is not None and len(const.ops) == len(parts[-1].ops) else _weights_only(parts[-1]))
    return merge_segments(parts, consts)


def _zero_sequences(config: ModelConfig, seg: str, phase: str, tokens: int, context: int, use_disk: bool) -> Segment | None:
    """The segment at zero sequences: its batch-independent part (the weights, and whatever else does
    not grow with sequences), extrapolated from batches 1 and 2 at this cached length; None where
    they record differently. From the segment's bilinear form where it has one (one pass, the same
    integers), memoised."""
    kind = seg if not seg.isdigit() else config.layer_kind(int(seg))
    key = f"{config.config_hash()}|{kind}|{phase}|0|{tokens}|{context}|affine"
    if key in _SHAPED:
        return _SHAPED.get(key)
    const = None
    if context > CONTEXT_ANCHOR + 1 and _context_affine(config, seg):
        form = _bilinear(config, seg, kind, phase, tokens, use_disk)
        if form is not None:
            const = form.at(-1, context - CONTEXT_ANCHOR)
        elif _batches_differ(config, seg, kind, phase, tokens, use_disk):
            _SHAPED[key] = None  # batches 1 and 2 at this length record differently: no extrapolation
            return None
    if const is None:
        one = _segment(config, seg, phase, 1, tokens, context, use_disk)
        two = _segment(config, seg, phase, 2, tokens, context, use_disk)
        const = extrapolate(one, two, -1)
    _SHAPED[key] = const
    return const


def _weights_only(s: Segment) -> Segment:
    """`s` with every op's work but its weight bytes set to zero."""
    ops = []
    for op in s.ops:
        k = op.clone()
        k.flops = 0.0
        k.bytes_read = {c: (v if c == "weight" else 0.0) for c, v in op.bytes_read.items()}
        k.bytes_written = {c: 0.0 for c in op.bytes_written}
        ops.append(k)
    return Segment(ops=ops, edges=s.edges, entries=s.entries, exit=s.exit, params=s.params)


def step_segments(config: ModelConfig, shape: StepShape, include_mtp: bool = False,
                  use_disk: bool = True) -> list[tuple[int, str, Segment]]:
    """(layer, layer type, segment) of one step in order: embedding (layer -1), decoder layers
    (layers of one kind share one segment object), head (num_layers), MTP heads (num_layers + 1 + j)."""
    out: list[tuple[int, str, Segment]] = [(-1, "embed", _group_segment(config, "embed", shape, use_disk))]
    by_kind: dict[str, Segment] = {}
    for i in range(config.num_layers):
        kind = config.layer_kind(i)
        if kind not in by_kind:
            by_kind[kind] = _group_segment(config, str(i), shape, use_disk)
        out.append((i, kind, by_kind[kind]))
    out.append((config.num_layers, "head", _group_segment(config, "head", shape, use_disk)))
    if include_mtp:
        for j in range(config.mtp_layers):
            out.append((config.num_layers + 1 + j, "mtp", _group_segment(config, f"mtp{j}", shape, use_disk)))
    return out


def router_layers(config: ModelConfig, include_mtp: bool = False) -> dict[int, int]:
    """Router draw index of each MoE layer: the n-th MoE decoder layer draws with index n; MTP head
    layer L draws with 10_000 + L. Memoised per config (a new copy each call)."""
    key = (config.config_hash(), include_mtp)
    hit = _ROUTER_LAYERS.get(key)
    if hit is None:
        if len(_ROUTER_LAYERS) >= 256:
            _ROUTER_LAYERS.clear()
        hit = _ROUTER_LAYERS[key] = _router_layers(config, include_mtp)
    return dict(hit)


_ROUTER_LAYERS: dict[tuple[str, bool], dict[int, int]] = {}


def _router_layers(config: ModelConfig, include_mtp: bool) -> dict[int, int]:
    out: dict[int, int] = {}
    if config.moe is None:
        return out
    n = 0
    for i in range(config.num_layers):
        if config.mlp_types[i] == "moe":
            out[i] = n
            n += 1
    if include_mtp and config.mlp_types[-1] == "moe":
        for j in range(config.mtp_layers):
            out[config.num_layers + 1 + j] = 10_000 + config.num_layers + 1 + j
    return out


def expert_counts(config: ModelConfig, shape: StepShape, router: RouterModel, layer: int,
                  draw_index: int) -> tuple[int, ...]:
    """Tokens per expert of one MoE layer for the whole step (its routed tokens: all its new tokens
    unless the shape says fewer, `StepShape.routed`)."""
    return routed_counts(router, draw_index, shape.routed_tokens, config.moe.num_experts, config.moe.top_k)


def assemble(config: ModelConfig, pieces: list[tuple[int, str, Segment]], shape: StepShape, router: RouterModel,
             include_mtp: bool = False) -> nx.DiGraph:
    """The op graph of `pieces` chained in order, routed experts drawn per layer."""
    ops, edges = assemble_ops(config, pieces, shape, router, include_mtp)
    g = nx.DiGraph()
    g.add_nodes_from((i, {"op": op}) for i, op in enumerate(ops))
    g.add_edges_from(edges)
    return g


def assemble_ops(config: ModelConfig, pieces: list[tuple[int, str, Segment]], shape: StepShape, router: RouterModel,
                 include_mtp: bool = False) -> tuple[list[Op], list[tuple[int, int]]]:
    """(ops, edges) of `assemble`'s graph without the graph: node i holds ops[i]; edges in the
    order the graph adds them (each piece's own, then the hand-off from the previous piece)."""
    return _assemble(config, [(layer, layer_type, s, None) for layer, layer_type, s in pieces], shape, router,
                     include_mtp)


def _prefix(config: ModelConfig, layer: int, layer_type: str) -> str:
    """What a piece's op names are prefixed with in the step: its module path."""
    if layer_type not in ("embed", "head", "mtp"):
        return f"layers.{layer}."
    return f"mtp.{layer - config.num_layers - 1}." if layer_type == "mtp" else ""


def skeleton_ops(config: ModelConfig, shape: StepShape, layers: set[int], router: RouterModel, use_disk: bool = True
                 ) -> tuple[list[Op], list[tuple[int, int]], dict[int, Op]]:
    """`assemble_ops` of the pieces of `step_segments(config, shape)` whose layer is in `layers`
    (-1 the embedding, num_layers the head), and each kept MoE decoder layer's routed-expert op as
    its segment at this shape holds it (before routing). The same ops, edges and values; a decoder
    layer whose segment is a bilinear form at this shape is made placed at once
    (`Bilinear.placed_at`), without its segment at the shape (not kept: a new shape's skeleton
    leaves nothing behind for the cyclic collector to walk)."""
    pieces: list[tuple[int, str, Segment, list[Op] | None]] = []
    traced: dict[int, Op] = {}
    single = len(shape.groups) == 1
    g = shape.groups[0]
    for i in sorted(layers):
        if i < 0 or i >= config.num_layers:
            seg, layer_type = ("embed", "embed") if i < 0 else ("head", "head")
            pieces.append((i, layer_type, _group_segment(config, seg, shape, use_disk), None))
            continue
        kind = config.layer_kind(i)
        form = _form_at(config, str(i), kind, g.phase, g.seqs, g.new_tokens, g.cached_tokens, use_disk) if single \
            else None
        if form is None:
            s = _group_segment(config, str(i), shape, use_disk)
            pieces.append((i, kind, s, None))
            first = next((op for op in s.ops if op.kind == "grouped_gemm"), None)
            if first is not None:
                traced[i] = first
                if shape.routed is not None:  # as routed: its activations of the routed tokens
                    traced[i] = first.clone()
                    _routed_bytes(traced[i], _routed_share(shape))
            continue
        ops = form.placed_at(g.seqs - 1, g.cached_tokens - CONTEXT_ANCHOR, _prefix(config, i, kind), i, kind)
        pieces.append((i, kind, form.segment, ops))
        for a, op in zip(form.segment.ops, ops):
            if op.kind == "grouped_gemm":  # as the segment at the shape holds it: the recording's name and layer
                t = op.clone()
                t.name, t.layer, t.layer_type = a.name, a.layer, a.layer_type
                if shape.routed is not None:  # as routed: its activations of the routed tokens
                    _routed_bytes(t, _routed_share(shape))
                traced[i] = t
                break
    ops, edges = _assemble(config, pieces, shape, router, False)
    return ops, edges, traced


def _assemble(config: ModelConfig, pieces: list[tuple[int, str, Segment, list[Op] | None]], shape: StepShape,
              router: RouterModel, include_mtp: bool) -> tuple[list[Op], list[tuple[int, int]]]:
    """`assemble_ops` of pieces (layer, layer type, segment, its ops already placed or None)."""
    ops: list[Op] = []
    edges: list[tuple[int, int]] = []
    prev_exit: int | None = None
    draws = router_layers(config, include_mtp)
    moe = config.moe is not None
    share = _routed_share(shape)
    for layer, layer_type, s, placed in pieces:
        base = len(ops)
        counts = None
        if placed is not None:
            for op in placed:
                if moe and op.kind == "grouped_gemm":
                    if counts is None:
                        counts = expert_counts(config, shape, router, layer, draws[layer])
                    op = _rescale_experts(op, counts, share)
                ops.append(op)
        else:
            prefix = _prefix(config, layer, layer_type)
            for op in s.ops:
                if moe and op.kind == "grouped_gemm":
                    if counts is None:
                        counts = expert_counts(config, shape, router, layer, draws[layer])
                    op = _rescale_experts(op, counts, share)
                ops.append(Op(prefix + op.name, op.target, op.kind, op.block, layer, layer_type, op.phase,
                              op.in_shapes, op.out_shapes, op.dtype, op.flops, op.bytes_read, op.bytes_written,
                              op.repeat, op.gemm, op.tokens_per_expert, op.expert_weight_bytes,
                              op.expert_flops_per_token, op.collective))
        edges.extend([(base + a, base + b) for a, b in s.edges])
        if prev_exit is not None:
            edges.extend([(prev_exit, base + e) for e in s.entries])
        if s.exit != INPUT:
            prev_exit = base + s.exit
    return ops, edges


def describe_shape(shape: StepShape) -> dict:
    """Graph attributes naming the step: phase, batch, tokens, context in the tracer's convention
    for one group (decode: context = KV length; prefill: context = cached prefix); a mixed step has
    phase "mixed" and no single tokens/context. `step_tokens` = new tokens of the whole step."""
    routed = {} if shape.routed is None else {"routed_tokens": shape.routed}  # absent: every new token routed
    if shape.is_mixed:
        return {"phase": "mixed", "batch": shape.seqs, "tokens": None, "context": None,
                "step_tokens": shape.tokens, "shape": shape, **routed}
    g = shape.groups[0]
    context = g.kv_len if g.phase == "decode" else g.cached_tokens
    return {"phase": g.phase, "batch": g.seqs, "tokens": g.new_tokens, "context": context,
            "step_tokens": shape.tokens, "shape": shape, **routed}


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
    shape: StepShape | None = None,
) -> nx.DiGraph:
    """The op graph of one forward step of `config`: of `shape` (a `StepShape`, possibly mixing
    decodes and prefill chunks), else of (phase, batch, tokens, context) as the module docstring says."""
    t0 = time.perf_counter()
    config = load_model(config)
    if shape is None:
        shape = _legacy_shape(config, phase, batch, tokens, context)
    check_shape(config, shape)
    router_model = make_router(router, seed)
    g = assemble(config, step_segments(config, shape, include_mtp, disk_cache), shape, router_model, include_mtp)
    params = count_params(config, disk_cache)
    g.graph.update(
        model=config.name,
        config_hash=config.config_hash(),
        **describe_shape(shape),
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
