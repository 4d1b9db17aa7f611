"""The per-chip step graph: a traced model step split over a parallel plan, collectives inserted.

`map_step(graph, config, hw, plan, precision)` turns the traced graph of one step of the whole
deployment (batch = all concurrent sequences; bytes at the traced dtypes) into what one chip runs:

* **Tokens.** Sequences split over ``dp`` replicas and ``attention_dp`` groups; the busiest chip
  gets ``ceil(batch / (dp * attention_dp))`` of them.
* **Tensor parallel blocks** (attention, mla, linear_attention, mlp, moe_shared, embed, lm_head):
  FLOPs, activation and state bytes divided by ``tp``; weight bytes by ``tp`` (each attention-DP
  group reads its own full set, so weights are *not* divided by attention_dp); GQA KV bytes by
  ``min(tp, num_kv_heads)`` (KV heads replicate beyond that); MLA's latent cache is read whole by
  every TP rank. Other blocks (norms, router, glue) are replicated over tp.
* **One all-reduce per MoE layer at plain TP.** Where the routed experts are tensor-parallel
  (no ``ep``, no ``attention_dp``), the shared expert's partial output is added to the routed
  experts' before the layer's one all-reduce (``moe_allreduce``), as engines run it: vLLM builds the
  shared expert with ``reduce_results=False`` and reduces the sum once (``DeepseekV2MoE``,
  ``Qwen2MoeSparseMoeBlock``); SGLang likewise. The shared expert gets no all-reduce of its own.
* **MLA's down-projections are replicated over tp** (`MLA_REPLICATED`): ``q_a_proj``,
  ``kv_a_proj_with_mqa`` and their RMSNorms run whole on every TP rank, since each norm needs the
  whole latent (q_lora_rank, kv_lora_rank) and no engine all-gathers it: vLLM's
  ``DeepSeekV2FusedQkvAProjLinear`` (``disable_tp=True``; ``fused_qkv_a_proj`` a replicated linear
  in earlier versions), SGLang's ``fused_qkv_a_proj_with_mqa`` (``ReplicatedLinear``). Only the
  up-projections (``q_b_proj``, ``kv_b_proj``: heads) and ``o_proj`` split.
* **Routed experts** are placed on ``ep`` ranks (``contiguous`` by default: rank r holds experts
  [r E/ep, (r+1) E/ep); ``round_robin`` puts expert e on rank e mod ep; or an explicit list giving
  each expert's rank). Each rank's tokens are the sum of its experts' ``tokens_per_expert``; the
  slowest rank (largest roofline time of its tokens' FLOPs and its touched experts' weight bytes)
  is the one mapped; its FLOPs and weight bytes are recomputed from ``expert_flops_per_token`` and
  ``expert_weight_bytes`` and divided by the expert tensor-parallel width ``moe_tp``.
* **Redundant experts** (``plan.redundant_experts`` = r > 0; DeepSeek-V3 report section 3.4): each
  rank has (E + r) / ep slots. The originals keep the placement above (``contiguous`` spreads
  E over ep ranks as evenly as it can when ep does not divide E); the r copies go, one at a time,
  to the expert with the largest load per copy (a hot expert may get several, as DeepSeek's EPLB
  replicates), and are placed heaviest first on the least loaded rank that has a free slot and
  does not hold that expert yet. An expert's tokens split evenly over its copies. Loads come from
  ``expert_loads`` (EPLB's history statistics) or, by default, the step's own counts: a named,
  optimistic assumption (placement tuned to exactly this routing; EPLB re-balances on history).
* **Routed tokens.** A shape that routes other than its groups' tokens (`StepShape.routed`, graph
  attribute ``routed_tokens``: an attention-DP lock step, one rank's groups on every rank and all
  ranks' tokens routed) has its expert counts drawn for those tokens, and its EP dispatch/combine
  carry an attention chip's mean share of them (the attention-DP all-gather all of them); every
  other op follows the groups.
* **Precision.** Bytes of each class times ``Precision.scale``.
* **Collectives** (``Op(kind="collective")``), placed in the dependency graph:
  - TP all-reduce after the exit op of each TP block (attention output projection, MLP down
    projection, shared expert, GatedDeltaNet out_proj) when tp > 1;
  - EP: all-to-all dispatch before the grouped expert op (FP8 payload when activations are fp8 or
    ``dispatch_fp8``) and combine (BF16) after it; within an expert rank of moe_tp > 1 chips, an
    all-gather of the received tokens and a reduce-scatter of the partial outputs;
  - experts without EP but with attention_dp > 1: all-gather of the attention groups' tokens
    before the experts and a reduce-scatter after (the attention-DP boundary); pure TP experts:
    an all-reduce after;
  - EP with attention_dp > 1 and ``ep_exchange="all_gather"`` (TensorRT-LLM's attention-DP MoE
    without its one-sided all-to-all): in place of dispatch/combine, an all-gather of every
    attention group's tokens over the EP group (BF16 hidden states, or FP8 with scales when
    ``dispatch_fp8`` is True) and a reduce-scatter of the experts' outputs (``reduce_dtype``),
    each carrying all of the replica's tokens whatever the routing; the experts' own work is
    unchanged (each rank still computes only its experts' routed tokens);
  - PP: a send/recv on every edge that crosses a stage boundary;
  - LM head: a vocab-parallel all-gather of the logits when tp > 1.

Deviation noted for the simulator: the graph holds the per-chip ops of **every** pipeline stage
(each layer's ops as a chip of its stage runs them) so that the simulator can sum stage latencies;
``stage_layers`` lists each stage's decoder layers and ``stage`` names the most loaded one
(``stage_graph(s)`` extracts one stage). With pp = 1 the graph is exactly one chip's step.

Named assumptions: reductions (all-reduce, reduce-scatter, EP combine, logits gather) carry
``reduce_dtype`` = bf16; FP8 dispatch adds one fp32 scale per 128 values (DeepEP's layout, +3.1%);
dispatch sends each token once per distinct destination rank (``dispatch_dedup``; expected count
under uniform routing); chip ids are ((replica * pp + stage) * attention_dp + group) * tp + rank.

Speed (the numbers are unchanged by it): scale factors are built once per call and per block, not
per op; ops that share their traced byte dicts (every layer of one kind) share their scaled ones;
what expert mapping needs beyond a layer's routing is computed once per call; the topological
order is computed only when a block has several candidate exits, and stage loads only when pp > 1;
the cyclic garbage collector is paused while the graph is built (`gc_paused`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import networkx as nx

from codesign.errors import CodesignError
from codesign.gc_pause import gc_paused
from codesign.graph.op import Op
from codesign.hw.spec import BYTES_PER_ELEMENT, HardwareSpec
from codesign.mapping.collectives import collective_time, make_collective
from codesign.mapping.experts import ExpertMapper, dispatch_fanout, nic_share
from codesign.mapping.memory import TP_BLOCKS, stage_layers as _stage_layers
from codesign.mapping.plan import ParallelPlan, Precision, check_plan
from codesign.mapping.scaling import OP_FIELDS_KNOWN, Scaler
from codesign.models.config import ModelConfig

FP8_SCALE_OVERHEAD = 4.0 / 128  # one fp32 scale per 128 fp8 values (DeepEP dispatch layout)
_ROW_PARALLEL = ("o_proj", "down_proj", "out_proj")  # weight split along K (input) under TP
# MLA modules every TP rank runs whole (module docstring); their weights: memory.MLA_REPLICATED too.
MLA_REPLICATED = ("q_a_proj", "kv_a_proj_with_mqa", "q_a_layernorm", "kv_a_layernorm")


@dataclass
class MappedStep:
    """One step as the chips of a plan run it (see module docstring)."""

    graph: nx.DiGraph
    plan: ParallelPlan
    precision: Precision
    chips: int
    stage_layers: list[list[int]]
    stage: int = 0  # the most loaded pipeline stage
    expert_ranks: dict[int, int] = field(default_factory=dict)  # MoE layer -> slowest EP rank mapped
    experts: ExpertMapper | None = None  # what mapped the expert ops (maps other layers' routing alike)
    sites: list["Site"] = field(default_factory=list)  # the collectives inserted, in node order (`remap`)

    def stage_graph(self, s: int) -> nx.DiGraph:
        """The subgraph of pipeline stage `s` (embedding with the first, head and MTP with the last)."""
        layers = set(self.stage_layers[s])
        first, last = min(self.stage_layers[0]), max(self.stage_layers[-1])
        keep = [n for n, op in self.graph.nodes(data="op")
                if op.layer in layers or (s == 0 and op.layer < first)
                or (s == len(self.stage_layers) - 1 and op.layer > last)]
        return self.graph.subgraph(keep).copy()


def _gemm_shape(op: Op, tok: float, tp: int) -> tuple[int, int, int, int] | None:
    if op.gemm is None:
        return None
    b, m, n, k = op.gemm
    if b > 1:  # batched GEMM over heads x sequences: both split
        return (max(1, math.ceil(b * tok / tp)), m, n, k)
    m = max(1, math.ceil(m * tok))
    if tp > 1:
        if _row_parallel(op.name):
            k = max(1, k // tp)
        else:
            n = max(1, n // tp)
    return (b, m, n, k)


def _rank_attention_shapes(op: Op, tok: float, tp: int, kv_div: float) -> tuple:
    """`op.in_shapes` of a GQA / MHA attention op (Q, K, V as (B, heads, S, D)) as one attention chip
    holds them: its share `tok` of the sequences, its `tp`-th of the query heads and its share of the
    KV heads (`kv_div`: `_kv_split`). What shape-dependent kernel terms read (the decode occupancy
    term's batch x KV heads); FLOPs and bytes are scaled separately. Other ops, MLA's (its latent
    K / V is one head, never split) and unknown shapes: unchanged."""
    shapes = op.in_shapes
    if (op.kind != "attention" or op.block == "mla" or (tok == 1.0 and tp == 1) or len(shapes) < 3
            or any(len(x) != 4 for x in shapes[:3])):
        return shapes
    (b, h, sq, d), (_, hkv, skv, dk), (_, _, sv, dv) = shapes[0], shapes[1], shapes[2]
    rb = max(1, math.ceil(b * tok - 1e-9))
    rkv = max(1, int(hkv // kv_div))
    return ((rb, max(1, h // tp), sq, d), (rb, rkv, skv, dk), (rb, rkv, sv, dv)) + tuple(shapes[3:])


_ROW: dict[str, bool] = {}


def _row_parallel(name: str) -> bool:
    """Whether the op's module is a row-parallel projection (its weight split along K), by name."""
    hit = _ROW.get(name)
    if hit is None:
        if len(_ROW) >= 65536:
            _ROW.clear()
        hit = _ROW[name] = any(name.split("/")[0].endswith(s) for s in _ROW_PARALLEL)
    return hit


_REP: dict[str, bool] = {}


def _tp_replicated(op: Op) -> bool:
    """Whether an op of a TP block runs whole on every TP rank (MLA's down-projections), by name."""
    if op.block != "mla":
        return False
    hit = _REP.get(op.name)
    if hit is None:
        if len(_REP) >= 65536:
            _REP.clear()
        hit = _REP[op.name] = any(op.name.split("/")[0].endswith(s) for s in MLA_REPLICATED)
    return hit


def _kv_split(config: ModelConfig, op: Op, tp: int) -> float:
    if op.block == "mla":
        return 1.0
    if config.attention is not None and op.block == "attention":
        return float(min(tp, config.attention.num_kv_heads))
    return float(tp)


def _spec_rates(hw: HardwareSpec, precision: Precision) -> tuple[float, float]:
    """Ranking rates from the spec alone (peak x the grouped GEMM fraction, `Efficiency.grouped_gemm_for`,
    and HBM x efficiency.memory): the default where the caller passes no cost model's `rank_rates()`."""
    eff = hw.efficiency
    return (hw.chip.matrix.peak(precision.matrix_dtype) * eff.grouped_gemm_for(precision.matrix_dtype),
            hw.chip.hbm.bandwidth * eff.memory)


def map_step(graph: nx.DiGraph, config: ModelConfig, hw: HardwareSpec, plan: ParallelPlan,
             precision: Precision, *, placement: str | Sequence[int] = "contiguous",
             dispatch_fp8: bool | None = None, dispatch_dedup: bool = True, all_to_all_mode: str = "normal",
             allreduce_algorithm: str | None = None, reduce_dtype: str = "bf16",
             expert_loads: Sequence[float] | None = None,
             rates: tuple[float, float] | None = None, ep_exchange: str = "all_to_all") -> MappedStep:
    """The per-chip step of `graph` under `plan` and `precision` (see module docstring).
    `expert_loads`: per-expert load statistics that choose and place redundant copies (default:
    each layer's own routed counts). `rates`: (matrix FLOP/s, HBM bytes/s) at which the cost model
    charges grouped expert GEMMs and memory, used to rank EP ranks and pipeline stages (the caller
    asks the cost model, `CostModel.rank_rates()`; default: the same rule from the spec, peak x
    efficiency.grouped_gemm or gemm, HBM x efficiency.memory)."""
    rates = rates if rates is not None else _spec_rates(hw, precision)
    with gc_paused():
        return _map_step(graph, config, hw, plan, precision, placement, dispatch_fp8, dispatch_dedup,
                         allreduce_algorithm, reduce_dtype, expert_loads, rates, all_to_all_mode, ep_exchange)


def remap(template: MappedStep, ops: Sequence[Op], attrs: dict, config: ModelConfig, hw: HardwareSpec, *,
          placement: str | Sequence[int] = "contiguous", dispatch_fp8: bool | None = None,
          dispatch_dedup: bool = True, allreduce_algorithm: str | None = None, reduce_dtype: str = "bf16",
          expert_loads: Sequence[float] | None = None, rates: tuple[float, float] | None = None,
          all_to_all_mode: str = "normal", ep_exchange: str = "all_to_all"
          ) -> tuple[dict[int, Op], dict[int, int], ExpertMapper]:
    """What `map_step` maps a graph to when the graph has the structure of the one `template` was
    mapped from (nodes 0..n-1, the same edges, op kinds, blocks and exit shapes: the same
    collective sites) but other numbers: its traced ops `ops` (node i holds ops[i]) and graph
    attributes `attrs` (batch, step tokens). Returns (node -> mapped op for every node of
    `template.graph`, MoE layer -> slowest EP rank, the expert mapper), computed by the same
    per-op sharding and per-site collectives as `map_step`, without building a graph: the step
    at a new shape on a known structure (`codesign.sim.stepmodel`). Single-stage plans only (a
    pipelined plan's stage hand-offs and loads depend on the whole graph)."""
    plan, precision = template.plan, template.precision
    if plan.pp > 1:
        raise CodesignError("remap: a pipelined plan places its stage hand-offs from the graph; map the step again")
    rates = rates if rates is not None else _spec_rates(hw, precision)
    ctx = _Context(attrs, config, hw, plan, precision, placement, dispatch_fp8, dispatch_dedup, allreduce_algorithm,
                   reduce_dtype, expert_loads, rates, share_bytes=False, all_to_all_mode=all_to_all_mode,
                   ep_exchange=ep_exchange)
    ranks: dict[int, int] = {}
    imbalance: dict[int, float] = {}
    with gc_paused():
        out = ctx.shard_all(ops, ranks, imbalance)
        for site in template.sites:
            anchor = ops[site.anchor]
            out[site.node] = _site_op(ctx, site.role, site.block, anchor, imbalance.get(anchor.layer, 1.0))
    return out, ranks, ctx.experts


def remap_experts(mapped: MappedStep, traced: Iterable[tuple[int, Op]], config: ModelConfig,
                  rates: tuple[float, float]) -> tuple[dict[int, Op], dict[int, int], ExpertMapper] | None:
    """`mapped` (`map_step` of a graph) as `map_step` maps it at other ranking rates, without copying
    the graph: in a single-stage plan the rates only choose each MoE layer's slowest EP rank, so only
    the expert ops are mapped again (the all-to-alls' imbalance follows tokens, not rates). Returns
    (node -> the expert op mapped at `rates`, MoE layer -> slowest EP rank, the mapper) from the
    traced (node, op) pairs `mapped` was mapped from, or None where the rates are those `mapped` was
    mapped at (nothing changes). For hardware variants of one design point."""
    if mapped.plan.pp > 1:
        raise CodesignError("remap_experts: a pipelined plan ranks its stages by the rates; map the step again")
    old = mapped.experts
    if old is None or (old.flop_rate, old.byte_rate) == tuple(rates):
        return None
    mapper = ExpertMapper(config, mapped.plan, mapped.precision.for_experts(), old.placement, old.dp, rates[0], rates[1],
                          old.expert_loads)
    ops: dict[int, Op] = {}
    ranks = dict(mapped.expert_ranks)
    if config.moe is not None:
        for n, op in traced:
            if op.kind == "grouped_gemm" and op.block == "moe_experts":
                new, rank, _ = mapper.map(op)
                ops[n] = new
                ranks[op.layer] = rank
    return ops, ranks, mapper


@dataclass(frozen=True)
class Site:
    """One collective the mapping inserts: its node id, the traced op it is placed at (`anchor`),
    its role (what it moves, see `_site_op`), block and the MoE layer's pipeline stage. The
    structure of a mapped step (which node, where) depends on the graph's structure only; its
    numbers are recomputed per shape by `remap`."""

    node: int
    anchor: int
    role: str
    block: str


class _Context:
    """What `_map_step` derives once per call from the step's attributes, the plan, precision and
    options: token shares, scale factors, groups and the expert mapper."""

    def __init__(self, attrs: dict, config: ModelConfig, hw: HardwareSpec, plan: ParallelPlan, precision: Precision,
                 placement: str | Sequence[int], dispatch_fp8: bool | None, dispatch_dedup: bool,
                 allreduce_algorithm: str | None, reduce_dtype: str, expert_loads: Sequence[float] | None,
                 rates: tuple[float, float], share_bytes: bool = True, all_to_all_mode: str = "normal",
                 ep_exchange: str = "all_to_all") -> None:
        self.config, self.hw, self.plan, self.precision = config, hw, plan, precision
        if ep_exchange not in ("all_to_all", "all_gather"):
            raise CodesignError(f"mapping.ep_exchange: expected all_to_all or all_gather, found {ep_exchange!r}")
        self.ep_exchange, self.dispatch_fp8 = ep_exchange, dispatch_fp8
        self.tp, self.adp, self.dp, self.ep, self.moe_tp = plan.tp, plan.attention_dp, plan.dp, plan.ep, plan.moe_tp
        B = self.B = int(attrs.get("batch", 1) or 1)
        # new tokens of the whole step (a mixed step's groups have different tokens per sequence)
        self.step_tokens = int(attrs.get("step_tokens") or B * int(attrs.get("tokens", 1) or 1))
        seq_att = math.ceil(B / (self.dp * self.adp))
        self.tok_att = seq_att / B  # share of the step's sequences (and of each group's tokens) on one attention chip
        self.T_att = -(-self.step_tokens * seq_att // B)  # tokens on that chip (ceil)
        # routed tokens of the whole step: fewer than its tokens in an attention-DP lock step (the
        # busiest rank's groups on every rank, all ranks' real tokens routed; StepShape.routed)
        self.routed_tokens = int(attrs.get("routed_tokens") or self.step_tokens)
        # an attention chip's mean share of them (what it dispatches and gets back)
        self.T_routed = self.T_att if self.routed_tokens == self.step_tokens else \
            -(-self.routed_tokens * seq_att // B)
        self.H = config.hidden_size
        self.act_b = precision.bytes_per_element(precision.activations)
        self.reduce_dtype = reduce_dtype
        self.red_b = BYTES_PER_ELEMENT[reduce_dtype]
        self.matrix_rate, self.hbm_rate = rates
        self.su_size = hw.system.scale_up.size
        self.ar_algo = allreduce_algorithm
        self.stages = _stage_layers(config, plan.pp, plan.layer_partition)
        self.layer_stage = {i: s for s, ls in enumerate(self.stages) for i in ls}
        # ops sharing their traced byte dicts (a whole graph's layers of one kind) share the scaled
        # ones; `remap`'s skeleton ops share none, so it skips the memo (`share_bytes`)
        self.scaler = Scaler(precision, memo=share_bytes)
        # Factors per byte class: one dict per TP block (the KV split depends on the block) and one
        # for replicated ops, built once per call (they were rebuilt per op).
        self.f_rep = {"weight": 1.0, "activation": self.tok_att, "state": self.tok_att, "kv_cache": self.tok_att}
        self.f_tp: dict[str, dict[str, float]] = {}
        self.flops_tp = self.tok_att / self.tp
        self.experts = ExpertMapper(config, plan, precision.for_experts(), placement, self.dp, self.matrix_rate,
                                    self.hbm_rate, expert_loads)
        if config.moe is not None:
            moe = config.moe
            self.disp_fp8 = dispatch_fp8 if dispatch_fp8 is not None else precision.activations in ("fp8", "fp4")
            self.disp_b = (1.0 + FP8_SCALE_OVERHEAD) if self.disp_fp8 else self.act_b
            slots_total = moe.num_experts + plan.redundant(moe.num_experts)
            # low-latency kernels send one message per (token, expert); "auto" picks them for a step
            # that only decodes (one new token per sequence), as SGLang's deepep-mode auto does
            self.a2a_low_latency = all_to_all_mode == "low_latency" or (all_to_all_mode == "auto"
                                                                        and self.step_tokens == B)
            dedup = dispatch_dedup and not self.a2a_low_latency
            self.fanout = dispatch_fanout(slots_total, moe.top_k, self.ep) if dedup else float(moe.top_k)
            # normal kernels across scale-up domains: once per destination node over the NIC
            nodes = len({chip // self.su_size for chip in self.group("ep", 0)})
            self.nic_share = nic_share(slots_total, moe.top_k, self.ep, nodes) if dedup and nodes > 1 else None
            self.T_disp = math.ceil(self.T_routed / self.tp)  # a TP group's ranks each dispatch a slice of its tokens
            if ep_exchange == "all_gather" and self.ep > 1 and (self.adp == 1 or self.moe_tp > 1):
                raise CodesignError(f"mapping.ep_exchange: all_gather needs attention_dp > 1 and moe_tp 1 at "
                                    f"expert parallelism (found attention_dp {self.adp}, moe_tp {self.moe_tp}); "
                                    "other plans are not yet supported")

    def stage_of(self, layer: int) -> int:
        if layer < 0:
            return 0
        return self.layer_stage.get(layer, self.plan.pp - 1)

    def base(self, stage: int) -> int:
        return stage * self.plan.stage_chips  # replica 0, attention group 0

    def group(self, name: str, stage: int) -> tuple[int, ...]:
        """Chip ids of one collective group of `stage`: tp, stage (all its chips), ep, moe_tp, adp."""
        b = self.base(stage)
        if name == "tp":
            return tuple(range(b, b + self.tp))
        if name == "stage":
            return tuple(range(b, b + self.plan.stage_chips))
        if name == "ep":
            return tuple(b + r * self.moe_tp for r in range(self.ep))
        if name == "moe_tp":
            return tuple(range(b, b + self.moe_tp))
        return tuple(b + a * self.tp for a in range(self.adp))  # adp

    def shard(self, op: Op) -> tuple[Op, int | None, float | None]:
        """(the op as one chip runs it, its slowest EP rank and imbalance for a routed-expert op)."""
        if op.kind == "grouped_gemm" and op.block == "moe_experts" and self.config.moe is not None:
            return self.experts.map(op)
        if op.block in TP_BLOCKS and not _tp_replicated(op):
            new = self.scaler.op(op, self.flops_tp, self._tp_factors(op), _gemm_shape(op, self.tok_att, self.tp))
            new.in_shapes = _rank_attention_shapes(op, self.tok_att, self.tp, _kv_split(self.config, op, self.tp))
            return new, None, None
        # replicated over tp: norms, router, residual glue
        return self.scaler.op(op, self.tok_att, self.f_rep, _gemm_shape(op, self.tok_att, 1)), None, None

    def _tp_factors(self, op: Op) -> dict[str, float]:
        """Per-class factors of a TP block's op (one dict per block: the KV split depends on it)."""
        f = self.f_tp.get(op.block)
        if f is None:
            tp = self.tp
            f = self.f_tp[op.block] = {"weight": 1.0 / tp, "activation": self.tok_att / tp, "state": self.tok_att / tp,
                                       "kv_cache": self.tok_att / _kv_split(self.config, op, tp)}
        return f

    def shard_all(self, ops: Sequence[Op], ranks: dict[int, int], imbalance: dict[int, float]) -> dict[int, Op]:
        """`shard` of every op (node i holds ops[i]) -> node -> op; each routed-expert op's slowest
        rank and imbalance go to `ranks` and `imbalance` by layer. The same values as `shard` op by
        op, in one loop (a new shape's skeleton: ~200 ops)."""
        if not OP_FIELDS_KNOWN:  # Op changed: the generic path (tests/sim/test_engine.py says so)
            return self._shard_each(ops, ranks, imbalance)
        out: dict[int, Op] = {}
        moe = self.config.moe is not None
        tok, tp, ftp = self.tok_att, self.tp, self.flops_tp
        scaler = self.scaler
        sw, sa, sk, ss = scaler._scales
        rep = scaler.factors(self.f_rep)
        by_block: dict[str, tuple[float, float, float, float]] = {}
        for n, op in enumerate(ops):
            block = op.block
            if moe and block == "moe_experts" and op.kind == "grouped_gemm":
                new, rank, imb = self.experts.map(op)
                ranks[op.layer] = rank
                imbalance[op.layer] = imb
                out[n] = new
                continue
            if block in TP_BLOCKS and not (block == "mla" and _tp_replicated(op)):
                f = by_block.get(block)
                if f is None:
                    f = by_block[block] = scaler.factors(self._tp_factors(op))
                ff, w = ftp, tp
            else:  # replicated over tp: norms, router, residual glue, MLA's down-projections
                f, ff, w = rep, tok, 1
            fw, fa, fk, fs = f
            r, x = op.bytes_read.get, op.bytes_written.get
            # `op_with(op, ..., Scaler.scaled(...) x 2, gemm)` written out: bytes * f[c] * scale(c)
            shapes = _rank_attention_shapes(op, tok, w, _kv_split(self.config, op, w)) if op.kind == "attention" \
                else op.in_shapes
            out[n] = Op(op.name, op.target, op.kind, block, op.layer, op.layer_type, op.phase, shapes,
                        op.out_shapes, op.dtype, op.flops * ff,
                        {"weight": r("weight", 0.0) * fw * sw, "activation": r("activation", 0.0) * fa * sa,
                         "kv_cache": r("kv_cache", 0.0) * fk * sk, "state": r("state", 0.0) * fs * ss},
                        {"weight": x("weight", 0.0) * fw * sw, "activation": x("activation", 0.0) * fa * sa,
                         "kv_cache": x("kv_cache", 0.0) * fk * sk, "state": x("state", 0.0) * fs * ss},
                        op.repeat, None if op.gemm is None else _gemm_shape(op, tok, w), op.tokens_per_expert,
                        op.expert_weight_bytes, op.expert_flops_per_token, op.collective)
        return out

    def _shard_each(self, ops: Sequence[Op], ranks: dict[int, int], imbalance: dict[int, float]) -> dict[int, Op]:
        out: dict[int, Op] = {}
        for n, op in enumerate(ops):
            new, rank, imb = self.shard(op)
            if rank is not None:
                ranks[op.layer] = rank
                imbalance[op.layer] = imb  # type: ignore[assignment]
            out[n] = new
        return out


def _site_op(ctx: _Context, role: str, block: str, anchor: Op, imbalance: float) -> Op:
    """The collective op of a site's role, placed at traced op `anchor` (`imbalance`: its MoE
    layer's all-to-all load imbalance)."""
    st = ctx.stage_of(anchor.layer)
    H, red_b, rdt = ctx.H, ctx.red_b, ctx.reduce_dtype
    prec = ctx.precision
    extra: dict = {}
    algorithm = None
    if role == "tp":
        kind, group, nbytes, dtype, algorithm = "all_reduce", ctx.group("tp", st), ctx.T_att * H * red_b, rdt, ctx.ar_algo
    elif role == "logits":
        kind, group, nbytes, dtype = "all_gather", ctx.group("tp", st), ctx.T_att * ctx.config.vocab_size * red_b, rdt
    elif role in ("dispatch", "combine"):
        kind, group = "all_to_all", ctx.group("ep", st)
        if role == "dispatch":
            nbytes, dtype = ctx.T_disp * ctx.fanout * H * ctx.disp_b, "fp8" if ctx.disp_fp8 else prec.activations
        else:
            nbytes, dtype = ctx.T_disp * ctx.fanout * H * red_b, rdt
        extra = {"imbalance": imbalance, "role": role}
        if ctx.a2a_low_latency:
            algorithm = "low_latency"
        elif ctx.nic_share is not None:
            extra["nic_share"] = ctx.nic_share
    elif role in ("moe_tp_gather", "moe_tp_scatter"):
        recv = ctx.T_disp * ctx.fanout * H  # received token copies (mean rank)
        group = ctx.group("moe_tp", st)
        if role == "moe_tp_gather":
            kind, nbytes, dtype = "all_gather", recv * ctx.moe_tp * ctx.disp_b, "fp8" if ctx.disp_fp8 else prec.activations
        else:
            kind, nbytes, dtype = "reduce_scatter", recv * ctx.moe_tp * red_b, rdt
    elif role in ("ep_gather", "ep_scatter"):
        T_rep = -(-ctx.routed_tokens * math.ceil(ctx.B / ctx.dp) // ctx.B)  # every attention group's tokens
        group = ctx.group("ep", st)
        if role == "ep_gather":
            gather_dt = "fp8" if ctx.dispatch_fp8 is True else _hidden_dtype(prec)
            gather_b = (1.0 + FP8_SCALE_OVERHEAD) if gather_dt == "fp8" else BYTES_PER_ELEMENT[gather_dt]
            kind, nbytes, dtype = "all_gather", T_rep * H * gather_b, gather_dt
        else:
            kind, nbytes, dtype = "reduce_scatter", T_rep * H * red_b, rdt
    elif role in ("adp_gather", "adp_scatter"):
        T_rep = -(-ctx.routed_tokens * math.ceil(ctx.B / ctx.dp) // ctx.B)
        if role == "adp_gather":
            kind, group, nbytes, dtype = "all_gather", ctx.group("adp", st), T_rep * H * ctx.act_b, prec.activations
        else:
            kind, group, nbytes, dtype = "reduce_scatter", ctx.group("stage", st), T_rep * H * red_b, rdt
    elif role == "moe_allreduce":
        kind, group, nbytes, dtype, algorithm = "all_reduce", ctx.group("tp", st), ctx.T_att * H * red_b, rdt, ctx.ar_algo
    else:
        raise ValueError(f"unknown collective site role {role!r}")
    c = make_collective(kind, group, nbytes, ctx.su_size, algorithm, **extra)
    return Op(name=f"{anchor.name.split('/')[0]}/{kind}", target=f"codesign.collective.{kind}", kind="collective",
              block=block, layer=anchor.layer, layer_type=anchor.layer_type, phase=anchor.phase, in_shapes=(),
              out_shapes=(), dtype=dtype, collective=c)


def _hidden_dtype(precision: Precision) -> str:
    """Dtype of the hidden states between layers: the activation dtype when it is a 16/32-bit one,
    else BF16 (FP8/FP4 activations are quantised inside each GEMM's kernel, not in the residual
    stream)."""
    return precision.activations if precision.activations in ("bf16", "fp16", "fp32") else "bf16"


def _tp_sites(graph: nx.DiGraph, ctx: _Context) -> list[tuple[int, str, str]]:
    """(exit node, role, block) of every TP block's all-reduce (and the logits gather), in order."""
    if ctx.tp == 1:
        return []
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for n, op in graph.nodes(data="op"):
        groups[(op.layer, op.block)].append(n)
    out = []
    topo_index: dict[int, int] = {}  # built only when a block has several candidate exits
    one_moe_reduce = _moe_sites(ctx) == ["moe_allreduce"]
    for (layer, block), nodes in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if block not in TP_BLOCKS or block == "embed":
            continue
        if block == "moe_shared" and one_moe_reduce and (layer, "moe_experts") in groups:
            continue  # reduced with the routed experts' output (module docstring)
        members = set(nodes)
        exits = [n for n in nodes if not any(s in members for s in graph.successors(n))]
        if not exits:
            continue
        wide = [n for n in exits if graph.nodes[n]["op"].out_shapes and
                graph.nodes[n]["op"].out_shapes[0][-1:] == ((ctx.config.vocab_size,) if block == "lm_head" else (ctx.H,))]
        candidates = wide or exits
        if len(candidates) > 1 and not topo_index:
            topo_index = {n: i for i, n in enumerate(nx.topological_sort(graph))}
        exit_ = candidates[0] if len(candidates) == 1 else max(candidates, key=lambda n: topo_index[n])
        out.append((exit_, "logits" if block == "lm_head" else "tp", block))
    return out


def _moe_sites(ctx: _Context) -> list[str]:
    """Roles of the collectives around each routed-expert op, in the order their nodes are made."""
    if ctx.config.moe is None:
        return []
    if ctx.ep > 1:
        if ctx.ep_exchange == "all_gather":
            return ["ep_gather", "ep_scatter"]
        return ["dispatch", "combine"] + (["moe_tp_gather", "moe_tp_scatter"] if ctx.moe_tp > 1 else [])
    if ctx.adp > 1:
        return ["adp_gather", "adp_scatter"]
    if ctx.tp > 1:
        return ["moe_allreduce"]
    return []


def _map_step(graph: nx.DiGraph, config: ModelConfig, hw: HardwareSpec, plan: ParallelPlan,
              precision: Precision, placement: str | Sequence[int], dispatch_fp8: bool | None,
              dispatch_dedup: bool, allreduce_algorithm: str | None, reduce_dtype: str,
              expert_loads: Sequence[float] | None, rates: tuple[float, float],
              all_to_all_mode: str = "normal", ep_exchange: str = "all_to_all") -> MappedStep:
    reason = check_plan(config, plan, plan.chips)
    if reason:
        raise CodesignError(f"parallel: {reason}")
    ctx = _Context(graph.graph, config, hw, plan, precision, placement, dispatch_fp8, dispatch_dedup,
                   allreduce_algorithm, reduce_dtype, expert_loads, rates, all_to_all_mode=all_to_all_mode,
                   ep_exchange=ep_exchange)
    stage_of = ctx.stage_of

    # -- 1. shard every op ------------------------------------------------------------------------
    out = nx.DiGraph()
    out.graph.update(graph.graph)
    out.graph.update(plan=plan.to_dict(), precision=precision.to_dict(), chips=plan.chips, mapped=True)
    expert_ranks: dict[int, int] = {}
    moe_imbalance: dict[int, float] = {}
    nodes = []
    for n, op in graph.nodes(data="op"):
        new, rank, imb = ctx.shard(op)
        if rank is not None:
            expert_ranks[op.layer] = rank
            moe_imbalance[op.layer] = imb
        nodes.append((n, {"op": new}))
    out.add_nodes_from(nodes)
    out.add_edges_from(graph.edges)

    next_id = [max(graph.nodes, default=-1) + 1]
    sites: list[Site] = []

    def coll_node(anchor_node: int, role: str, block: str) -> int:
        anchor = graph.nodes[anchor_node]["op"]
        node = next_id[0]
        next_id[0] += 1
        out.add_node(node, op=_site_op(ctx, role, block, anchor, moe_imbalance.get(anchor.layer, 1.0)))
        sites.append(Site(node, anchor_node, role, block))
        return node

    def insert_after(u: int, c: int) -> None:
        succ = list(out.successors(u))
        for s in succ:
            out.remove_edge(u, s)
            out.add_edge(c, s)
        out.add_edge(u, c)

    def insert_before(v: int, c: int) -> None:
        pred = list(out.predecessors(v))
        for p in pred:
            out.remove_edge(p, v)
            out.add_edge(p, c)
        out.add_edge(c, v)

    # -- 2. TP all-reduces after each TP block's exit op, and the logits gather ----------------------
    for exit_, role, block in _tp_sites(graph, ctx):
        insert_after(exit_, coll_node(exit_, role, block))

    # -- 3. MoE: dispatch/combine or attention-DP boundary --------------------------------------------
    roles = _moe_sites(ctx)
    if roles:
        for n, op in list(graph.nodes(data="op")):
            if not (op.kind == "grouped_gemm" and op.block == "moe_experts"):
                continue
            made = {role: coll_node(n, role, "moe_experts") for role in roles}
            if "dispatch" in made:
                insert_before(n, made["dispatch"])
                if "moe_tp_gather" in made:
                    insert_before(n, made["moe_tp_gather"])
                    insert_after(n, made["moe_tp_scatter"])
                    insert_after(made["moe_tp_scatter"], made["combine"])
                else:
                    insert_after(n, made["combine"])
            elif "adp_gather" in made:
                insert_before(n, made["adp_gather"])
                insert_after(n, made["adp_scatter"])
            elif "ep_gather" in made:
                insert_before(n, made["ep_gather"])
                insert_after(n, made["ep_scatter"])
            else:
                insert_after(n, made["moe_allreduce"])

    # -- 4. pipeline boundaries ---------------------------------------------------------------------
    if plan.pp > 1:
        crossing: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for u, v in list(out.edges):
            su_, sv = stage_of(out.nodes[u]["op"].layer), stage_of(out.nodes[v]["op"].layer)
            if sv > su_:
                crossing[su_].append((u, v))
        for s, edges in sorted(crossing.items()):
            last = max(edges, key=lambda e: out.nodes[e[0]]["op"].layer)[0]
            anchor = out.nodes[last]["op"]
            c = make_collective("send_recv", (ctx.base(s), ctx.base(s + 1)), ctx.T_att * ctx.H * ctx.act_b, ctx.su_size)
            node = next_id[0]
            next_id[0] += 1
            out.add_node(node, op=Op(
                name=f"{anchor.name.split('/')[0]}/send_recv", target="codesign.collective.send_recv",
                kind="collective", block="other", layer=anchor.layer, layer_type=anchor.layer_type,
                phase=anchor.phase, in_shapes=(), out_shapes=(), dtype=precision.activations, collective=c))
            for u, v in edges:
                out.remove_edge(u, v)
                out.add_edge(u, node)
                out.add_edge(node, v)

    # -- 5. the most loaded stage (with one stage there is nothing to compare) ----------------------
    stage = 0
    if plan.pp > 1:
        load = [0.0] * plan.pp
        for _, op in out.nodes(data="op"):
            s = stage_of(op.layer)
            if op.kind == "collective":
                load[s] += collective_time(op.collective, hw)
            else:
                load[s] += max(op.flops / ctx.matrix_rate, op.bytes_total / ctx.hbm_rate)
        stage = max(range(plan.pp), key=lambda s: (load[s], -s))
    out.graph["stage"] = stage
    return MappedStep(out, plan, precision, plan.chips, ctx.stages, stage, expert_ranks, ctx.experts, sites)
