"""Memory fit per chip: weights, KV cache, recurrent state, activations and a runtime reserve.

`memory_per_chip` answers "does this plan fit, and with how much room?" for the most loaded chip:
every pipeline stage is computed (stages may be uneven, see `stage_layers`) and the one with the
largest total is reported.
`max_batch` searches the largest batch that fits. Parameter counts per block come from the traced
graph when one is given (the weight bytes its ops read), else from the config's shapes (the same
formula the tracer's tests check, here only so that memory can be asked without a trace).

Named assumptions (each overridable by keyword):

* ``reserve_fraction`` = 0.05 of HBM capacity for the runtime, CUDA-graph pools and allocator
  fragmentation (vLLM's default ``gpu_memory_utilization`` 0.9 leaves 10% including activations;
  we count activations separately).
* Redundant expert copies (``plan.redundant_experts``) are held in full: a rank stores
  ``(E + r) / ep`` experts.
* KV cache is stored for ``context`` tokens per sequence (sliding layers capped at their window);
  MLA stores the latent plus the shared RoPE key, replicated on every TP rank.
* MLA's down-projections (``q_a_proj``, ``kv_a_proj_with_mqa``: ``H x (q_lora_rank + kv_lora_rank
  + qk_rope_head_dim)`` parameters a layer) are held whole by every TP rank, as engines run them
  (codesign.mapping.step, "MLA's down-projections are replicated over tp"); the rest of the block
  (up-projections, ``o_proj``) is split.
* The GatedDeltaNet conv state is kept in the model dtype (bf16, as `GatedDeltaNetCache` allocates
  it), the recurrent state in ``precision.state`` (fp32).
* Activations: the peak working set of one step, ``tokens_on_chip x activation bytes x (2 H +
  widest per-chip intermediate)``, plus the MoE receive buffer of expert-parallel dispatch and the
  LM head's fp32 logits; ``tokens_per_seq`` = 1 for decode, the chunk length for prefill.
"""

from __future__ import annotations

import bisect

import math
from dataclasses import asdict, dataclass

import networkx as nx

from codesign.hw.spec import HardwareSpec
from codesign.mapping.plan import ParallelPlan, Precision, partition_layers
from codesign.models.config import ModelConfig
from codesign.units import GiB

RESERVE_FRACTION = 0.05  # see module docstring
MAX_BATCH_LIMIT = 1 << 22  # search bound for max_batch (4M sequences: far beyond any HBM)

# Blocks whose weights are split over tp (tensor parallel); the others are replicated per chip.
TP_BLOCKS = ("attention", "mla", "linear_attention", "mlp", "moe_shared", "embed", "lm_head")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per chip, by use. `total` = weights + kv_cache + state + activations + reserve."""

    weights: float
    kv_cache: float
    state: float
    activations: float
    reserve: float
    total: float
    capacity: float

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def short_by(self) -> float:
        """Bytes per chip missing (0 when it fits)."""
        return max(0.0, self.total - self.capacity)

    def gib(self) -> dict[str, float]:
        """The result JSON's `memory_per_chip_gib` (weights, kv_cache, state, activations, total, capacity)."""
        d = asdict(self)
        return {k: d[k] / GiB for k in ("weights", "kv_cache", "state", "activations", "total", "capacity")}


# ---- parameter counts per block -------------------------------------------------------------------

@dataclass(frozen=True)
class LayerParams:
    """Parameters of one decoder layer by block (routed experts counted whole)."""

    layer: int
    blocks: dict[str, float]


def _mixer_params(config: ModelConfig, layer_type: str) -> tuple[str, float, float]:
    """(block, parameters of the mixer, replicated norm parameters inside it)."""
    H = config.hidden_size
    if layer_type in ("full_attention", "sliding_attention"):
        a = config.attention
        q = a.num_heads * a.head_dim * (2 if a.output_gate else 1)
        kv = 2 * a.num_kv_heads * a.head_dim
        o = a.num_heads * a.head_dim
        n = H * (q + kv) + o * H
        if a.bias:
            n += q + kv + H
        if a.sinks:
            n += a.num_heads
        norms = 2 * a.head_dim if a.qk_norm else 0
        return "attention", n, norms
    if layer_type == "mla":
        m = config.mla
        qh = m.num_heads * m.qk_head_dim
        q = H * m.q_lora_rank + m.q_lora_rank * qh if m.q_lora_rank else H * qh
        kv = H * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * m.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
        o = m.num_heads * m.v_head_dim * H
        norms = m.kv_lora_rank + (m.q_lora_rank or 0)
        return "mla", q + kv + o, norms
    la = config.linear_attention
    vdim = la.num_value_heads * la.value_head_dim
    n = H * (la.conv_dim + vdim + 2 * la.num_value_heads)  # in_proj_qkv, _z, _b, _a
    n += la.conv_dim * la.conv_kernel + 2 * la.num_value_heads  # depthwise conv, dt_bias, A_log
    n += vdim * H  # out_proj
    return "linear_attention", n, la.value_head_dim  # gated RMSNorm over dv


def mla_replicated_fraction(config: ModelConfig) -> float:
    """Share of an MLA block's parameters every TP rank holds whole: its down-projections
    (``q_a_proj`` and ``kv_a_proj_with_mqa``) over the block's total (module docstring). 0 without
    MLA."""
    m = config.mla
    if m is None:
        return 0.0
    H = config.hidden_size
    whole = H * ((m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_rope_head_dim)
    return whole / _mixer_params(config, "mla")[1]


def _ffn_params(config: ModelConfig, mlp_type: str) -> dict[str, float]:
    H = config.hidden_size
    if mlp_type == "dense":
        I = config.intermediate_size
        return {"mlp": 3 * H * I + (2 * I + H if config.mlp_bias else 0)}
    moe = config.moe
    E, I = moe.num_experts, moe.intermediate_size
    out = {
        "moe_router": E * H + (E if moe.bias else 0) + (E if moe.score_correction_bias else 0),
        "moe_experts": E * (3 * H * I + (2 * I + H if moe.bias else 0)),
    }
    if moe.shared_expert_intermediate_size:
        Is = moe.shared_expert_intermediate_size
        out["moe_shared"] = 3 * H * Is + (H if moe.shared_expert_gate else 0)
    return out


def layer_params(config: ModelConfig, i: int) -> LayerParams:
    """Parameters of decoder layer `i` by block, from the config's shapes."""
    block, mixer, mixer_norms = _mixer_params(config, config.layer_types[i])
    blocks = {block: mixer, "norm": 2 * config.hidden_size + mixer_norms}
    blocks.update(_ffn_params(config, config.mlp_types[i]))
    return LayerParams(i, blocks)


def model_params(config: ModelConfig, mtp: bool = True) -> dict[str, float]:
    """Whole-model parameters by block (embed, lm_head, norm, ..., mtp), from the config's shapes.

    An MTP head (DeepSeek-V3 layout) = two RMSNorms, a 2H -> H projection and one decoder layer of
    the last layer's kind; it shares the embedding and LM head.
    """
    H, V = config.hidden_size, config.vocab_size
    out: dict[str, float] = {"embed": V * H, "lm_head": 0 if config.tie_word_embeddings else V * H, "norm": H}
    for i in range(config.num_layers):
        for b, n in layer_params(config, i).blocks.items():
            out[b] = out.get(b, 0) + n
    if mtp and config.mtp_layers:
        last = layer_params(config, config.num_layers - 1)
        out["mtp"] = config.mtp_layers * (sum(last.blocks.values()) + 2 * H * H + 3 * H)
    return out


def _graph_layer_weights(graph: nx.DiGraph) -> dict[int, dict[str, float]]:
    """Traced weight bytes per layer and block (routed experts counted whole from the grouped op).

    A tied LM head re-reads the embedding table; it is counted once, under `embed`.
    """
    resident = graph.graph.get("weight_bytes")
    if resident is not None:  # the tracer's per-layer, per-block parameter bytes (from the modules)
        return {layer: dict(blocks) for layer, blocks in resident.items()}
    out: dict[int, dict[str, float]] = {}
    for _, data in graph.nodes(data=True):
        op = data["op"]
        if op.kind == "collective":
            continue
        if op.kind == "grouped_gemm" and op.tokens_per_expert is not None:
            w = op.expert_weight_bytes * len(op.tokens_per_expert)
        else:
            w = op.bytes_read.get("weight", 0.0) / max(op.repeat, 1)
        if w:
            d = out.setdefault(op.layer, {})
            d[op.block] = d.get(op.block, 0.0) + w
    return out


# ---- per-sequence KV and state ------------------------------------------------------------------

def kv_bytes_per_token(config: ModelConfig, layers: list[int] | None = None, dtype_bytes: float = 2.0) -> float:
    """KV cache bytes per token of one sequence at full (unsharded) size, over `layers` (default all);
    sliding layers counted as full here -- see `kv_bytes_per_sequence` for the window cap."""
    return kv_bytes_per_sequence(config, 1, layers, dtype_bytes)


def kv_bytes_per_sequence(config: ModelConfig, context: int, layers: list[int] | None = None,
                          dtype_bytes: float = 2.0, tp: int = 1) -> float:
    """KV bytes of one sequence of `context` tokens on one of `tp` tensor-parallel chips.

    GQA K and V split by kv head over tp, replicated when tp > num_kv_heads (each chip keeps one
    head); MLA's latent + RoPE key is shared by all heads and so replicated on every TP rank.
    """
    total = 0.0
    for i in range(config.num_layers) if layers is None else layers:
        t = config.layer_types[i]
        if t in ("full_attention", "sliding_attention"):
            a = config.attention
            n = min(context, a.sliding_window) if t == "sliding_attention" else context
            heads = a.num_kv_heads / min(tp, a.num_kv_heads)
            total += n * 2 * heads * a.head_dim * dtype_bytes
        elif t == "mla":
            m = config.mla
            total += context * (m.kv_lora_rank + m.qk_rope_head_dim) * dtype_bytes
    return total


def state_bytes_per_sequence(config: ModelConfig, layers: list[int] | None = None, state_bytes: float = 4.0,
                             conv_bytes: float = 2.0, tp: int = 1) -> float:
    """GatedDeltaNet state of one sequence on one of `tp` chips: recurrent (Hv, dk, dv) at
    `state_bytes` plus conv (conv_dim, kernel-1) at `conv_bytes`; value heads split over tp, key
    heads split or replicated."""
    if config.linear_attention is None:
        return 0.0
    la = config.linear_attention
    hv = la.num_value_heads / tp
    hk = la.num_key_heads / min(tp, la.num_key_heads)
    recurrent = hv * la.key_head_dim * la.value_head_dim * state_bytes
    conv = (2 * hk * la.key_head_dim + hv * la.value_head_dim) * (la.conv_kernel - 1) * conv_bytes
    n = sum(1 for i in (range(config.num_layers) if layers is None else layers)
            if config.layer_types[i] == "linear_attention")
    return n * (recurrent + conv)


# ---- stages ---------------------------------------------------------------------------------------

def stage_layers(config: ModelConfig, pp: int, partition: tuple[int, ...] | None = None) -> list[list[int]]:
    """Decoder layer indices of each pipeline stage: contiguous runs, as many layers per stage as
    `partition_layers` says (equal when pp divides the layers; else vLLM's rule, or `partition`,
    a plan's `layer_partition`)."""
    out, start = [], 0
    for n in partition_layers(config.num_layers, pp, partition):
        out.append(list(range(start, start + n)))
        start += n
    return out


def _weights_per_chip(config: ModelConfig, source: nx.DiGraph | dict | None, plan: ParallelPlan,
                      precision: Precision, layers: list[int], first: bool, last: bool, mtp: bool) -> float:
    """Weight bytes on one chip of the stage holding `layers`."""
    wscale = precision.scale("weight")
    expert_ratio = precision.for_experts().scale("weight") / wscale  # routed experts at their own dtype
    moe_div = plan.ep * plan.moe_tp if plan.moe_tp else plan.stage_chips
    if config.moe is not None:
        # redundant expert copies: each rank holds (E + r) / ep expert slots, not E / ep
        E = config.moe.num_experts
        moe_div /= (E + plan.redundant(E)) / E
    traced = _graph_layer_weights(source) if isinstance(source, nx.DiGraph) and source.number_of_nodes() else None

    mla_whole = mla_replicated_fraction(config)

    def shard(block: str, nbytes: float) -> float:
        if block == "moe_experts":
            return nbytes * expert_ratio / moe_div
        if block == "mla" and mla_whole:
            return nbytes * (mla_whole + (1.0 - mla_whole) / plan.tp)
        if block in TP_BLOCKS:
            return nbytes / plan.tp
        return nbytes  # norms, router, MTP projection: replicated

    total = 0.0
    if traced is not None:
        picked = set(layers)
        if first:
            picked.add(-1)
        for layer, blocks in traced.items():
            is_head = layer >= config.num_layers
            if layer in picked or (last and is_head):
                if is_head and layer > config.num_layers and not mtp:
                    continue
                for b, w in blocks.items():
                    if b == "lm_head" and config.tie_word_embeddings and first:
                        continue  # tied: the head reads the embedding table this stage already holds
                    total += shard(b, w * wscale)
        return total
    # From parameter counts (2 bytes each at the traced bf16, then scaled): a dict from the caller
    # is {block: params} for the whole model; layers are then assumed to share it evenly.
    if isinstance(source, dict):
        params = dict(source)
        frac = len(layers) / config.num_layers
        for b, n in params.items():
            if b in ("embed",):
                total += shard(b, n * 2 * wscale) if first else 0.0
            elif b in ("lm_head", "mtp"):
                total += shard(b, n * 2 * wscale) if last and (b != "mtp" or mtp) else 0.0
            else:
                total += shard(b, n * frac * 2 * wscale)
        return total
    for i in layers:
        for b, n in layer_params(config, i).blocks.items():
            total += shard(b, n * 2 * wscale)
    H, V = config.hidden_size, config.vocab_size
    if first:
        total += shard("embed", V * H * 2 * wscale)
    if last:
        total += shard("lm_head", V * H * 2 * wscale) if (not config.tie_word_embeddings or not first) else 0.0
        total += H * 2 * wscale  # final norm
        if mtp and config.mtp_layers:
            # each MTP head: one decoder layer of the last layer's kind, sharded like it, plus its
            # replicated 2H -> H projection and norms
            last_layer = layer_params(config, config.num_layers - 1)
            per_head = sum(shard(b, n * 2 * wscale) for b, n in last_layer.blocks.items())
            per_head += (2 * H * H + 3 * H) * 2 * wscale
            total += config.mtp_layers * per_head
    return total


def _activations_per_chip(config: ModelConfig, plan: ParallelPlan, precision: Precision, seqs_chip: int,
                          seqs_replica: int, tokens_per_seq: int, last: bool) -> float:
    H = config.hidden_size
    act = precision.bytes_per_element(precision.activations)
    T = seqs_chip * tokens_per_seq
    widths = []
    if config.attention is not None:
        a = config.attention
        widths.append((a.num_heads * (2 if a.output_gate else 1) + 2 * a.num_kv_heads) * a.head_dim / plan.tp)
    if config.mla is not None:
        m = config.mla
        widths.append(m.num_heads * (m.qk_head_dim + m.v_head_dim) / plan.tp + m.kv_lora_rank)
    if config.linear_attention is not None:
        la = config.linear_attention
        widths.append((la.conv_dim + la.num_value_heads * la.value_head_dim) / plan.tp)
    if config.intermediate_size:
        widths.append(2 * config.intermediate_size / plan.tp)
    peak = T * act * (2 * H + max(widths, default=0.0))
    if config.is_moe and plan.moe_tp:
        moe = config.moe
        # Routed token copies received by the busiest expert rank (uniform share), with their
        # gate/up intermediate: the dispatch receive buffer.
        recv = seqs_replica * tokens_per_seq * moe.top_k / plan.ep
        peak = max(peak, recv * act * (H + 2 * moe.intermediate_size / plan.moe_tp))
    if last:
        peak = max(peak, T * 4.0 * config.vocab_size / plan.tp)  # fp32 logits, vocab-parallel
    return peak


_STAGE_BYTES: dict[tuple, list[tuple[float, float, float]]] = {}


def _stage_bytes(config: ModelConfig, source: nx.DiGraph | dict | None, plan: ParallelPlan, precision: Precision,
                 context: int, mtp: bool) -> list[tuple[float, float, float]]:
    """Per pipeline stage: (weight bytes per chip, KV bytes and state bytes per sequence on a
    chip). They do not depend on the batch, so a batch search computes them once (memoised when
    the weights come from the config's shapes)."""
    key = None
    if source is None:
        key = (config.config_hash(), plan, precision, context, mtp)
        hit = _STAGE_BYTES.get(key)
        if hit is not None:
            return hit
    kv_b = precision.bytes_per_element(precision.kv_cache)
    st_b = precision.bytes_per_element(precision.state)
    out = []
    for s, layers in enumerate(stage_layers(config, plan.pp, plan.layer_partition)):
        w = _weights_per_chip(config, source, plan, precision, layers, s == 0, s == plan.pp - 1, mtp)
        out.append((w, kv_bytes_per_sequence(config, context, layers, kv_b, plan.tp),
                    state_bytes_per_sequence(config, layers, st_b, 2.0, plan.tp)))
    if key is not None:
        if len(_STAGE_BYTES) > 4096:
            _STAGE_BYTES.clear()
        _STAGE_BYTES[key] = out
    return out


def memory_per_chip(config: ModelConfig, graph_or_params: nx.DiGraph | dict | None, hw: HardwareSpec,
                    plan: ParallelPlan, precision: Precision, batch: int, context: int, *,
                    tokens_per_seq: int = 1, reserve_fraction: float = RESERVE_FRACTION,
                    mtp: bool = False) -> MemoryBreakdown:
    """Bytes per chip for `batch` concurrent sequences (whole deployment) of `context` tokens each.

    `graph_or_params`: a traced graph (weights from its ops), a {block: parameters} dict, or None
    (parameters from the config's shapes). The most loaded pipeline stage is reported. `mtp`: also
    hold the MTP heads' weights (a traced graph holds them when traced with include_mtp).
    """
    seqs_replica = math.ceil(batch / plan.dp)
    seqs_chip = math.ceil(batch / (plan.dp * plan.attention_dp))
    capacity = hw.chip.hbm.capacity
    reserve = reserve_fraction * capacity
    best: MemoryBreakdown | None = None
    for s, (w, kv_seq, st_seq) in enumerate(_stage_bytes(config, graph_or_params, plan, precision, context, mtp)):
        last = s == plan.pp - 1
        kv = seqs_chip * kv_seq
        st = seqs_chip * st_seq
        a = _activations_per_chip(config, plan, precision, seqs_chip, seqs_replica, tokens_per_seq, last)
        m = MemoryBreakdown(w, kv, st, a, reserve, w + kv + st + a + reserve, capacity)
        if best is None or m.total > best.total:
            best = m
    return best


def max_batch(config: ModelConfig, params: nx.DiGraph | dict | None, hw: HardwareSpec, plan: ParallelPlan,
              precision: Precision, context: int, **options) -> int:
    """Largest batch (whole deployment) whose memory fits; 0 when even batch 1 does not fit (then
    `memory_per_chip(..., batch=1, ...).short_by` says by how much). Memory grows monotonically
    with batch, so a bisection over [1, MAX_BATCH_LIMIT] is exact."""

    def fits(b: int) -> bool:
        return memory_per_chip(config, params, hw, plan, precision, b, context, **options).fits

    return bisect.bisect_left(range(1, MAX_BATCH_LIMIT + 1), True, key=lambda b: not fits(b))
