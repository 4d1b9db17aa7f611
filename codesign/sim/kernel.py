"""One kernel on one chip: the shape of a GEMM, grouped GEMM, attention or collective, the `Op` the
tracer and mapping would build for it, and its predicted time through the simulator's own cost path
(`CostModel.cost` for compute kernels, `codesign.mapping.collective_time` for collectives).

Used by `codesign kernel` (predict one shape) and `codesign validate --kernels` (predict every row
of the kernel tables in `benchmarks/kernels/` and compare with the published measurement).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw.spec import BYTES_PER_ELEMENT, Dtype, HardwareSpec
from codesign.sim.cost import AttentionKernel, CostModel, CostOptions, GemmKernel, MlaKernel, MoeKernel
from codesign.sim.kernel_mla import MlaCall, MlaForm, mla_ops

# A segment traced for one kernel, hashable for the caches: (ops, edges between their indices, the
# indices of the ops reading its inputs), as `codesign.graph.tracer.record` returns them.
TracedSegment = tuple[tuple[Op, ...], tuple[tuple[int, int], ...], tuple[int, ...]]

KernelOp = Literal["gemm", "grouped_gemm", "fused_moe", "attention", "mla", "gdn_chunk", "gdn_recurrent",
                   "gdn_conv", "rmsnorm", "all_to_all", "all_reduce", "all_gather", "reduce_scatter"]
Positive = Field(default=None, gt=0)

# Fields each op needs (the rest must stay unset or keep their defaults).
REQUIRED: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("groups", "m", "n", "k"),
    # One MoE layer's routed experts as a serving engine runs them (vLLM's `fused_experts`: token
    # alignment, gate/up grouped GEMM, activation, down grouped GEMM, weighted sum): `tokens` tokens,
    # each routed to `top_k` of `groups` experts, hidden size `hidden`, per-rank expert intermediate
    # size `n` (moe_intermediate_size / TP, the N of vLLM's tuned-config file names).
    # With `ranks` (optional): expert parallelism over that many ranks, the op one rank's share --
    # its groups / ranks local experts over all `tokens` (the all-gather exchange: every rank's MoE
    # receives every token and computes the rows routed to its own experts).
    "fused_moe": ("groups", "top_k", "hidden", "n", "tokens"),
    "attention": ("batch", "heads", "head_dim", "seq_q", "seq_kv", "phase"),
    # One MLA attention call (codesign.sim.kernel_mla): `batch` sequences of `seq_q` new tokens
    # against `seq_kv` keys, `heads` query heads of one rank, the model's MLA dims; `mla_form`
    # (none: expanded in prefill, absorbed in decode) and `mla_call` (what the engine's call holds).
    "mla": ("batch", "heads", "seq_q", "seq_kv", "phase", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
            "v_head_dim"),
    # GatedDeltaNet chunked prefill: `batch` sequences of `seq_q` tokens, `heads` value heads
    # (`kv_heads` key heads, none: = heads), key/value head dims `head_dim` / `head_dim_v`.
    "gdn_chunk": ("batch", "heads", "head_dim", "seq_q"),
    # GatedDeltaNet decode: `batch` sequences of one new token each through the recurrent kernel
    # (the traced `gated_delta_rule_step`), heads and head dims as `gdn_chunk`.
    "gdn_recurrent": ("batch", "heads", "head_dim"),
    # GatedDeltaNet causal conv + SiLU over the packed q/k/v (conv dim 2 x kv_heads x head_dim + heads
    # x head_dim_v, kernel 4): prefill, `batch` fresh prompts of `seq_q` tokens; decode, one token each
    # after the conv state.
    "gdn_conv": ("batch", "heads", "head_dim", "seq_q", "phase"),
    # One RMSNorm over `tokens` rows of `hidden` (no residual add): the model's own `RMSNorm` as the
    # tracer records it (bf16 in, fp32 compute, bf16 out); `dtype` fp8: the output statically
    # quantised to FP8 (the eager `/ scale`, clamp and cast after it), as a fused norm + quant kernel writes.
    "rmsnorm": ("tokens", "hidden"),
    "all_to_all": ("ranks", "tokens", "hidden", "top_k"),
    "all_reduce": ("ranks", "bytes"),
    "all_gather": ("ranks", "bytes"),  # bytes: the gathered output per rank
    "reduce_scatter": ("ranks", "bytes"),  # bytes: the input per rank
}
COLLECTIVE_OPS = ("all_to_all", "all_reduce", "all_gather", "reduce_scatter")
# Output element size of matrix kernels: bf16 results for every input format (DeepGEMM, cuBLASLt FP8).
OUT_BYTES = 2.0
# Per-128-element FP32 scale of FP8 activations (DeepEP dispatch, DeepGEMM): 4 bytes per 128.
FP8_SCALE_OVERHEAD = 4.0 / 128.0


class KernelShape(BaseModel):
    """The shape of one kernel. Which fields apply depends on `op` (`REQUIRED`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: KernelOp
    hw: str  # spec name in hw_specs/ (or a path)
    dtype: Dtype = "bf16"
    # GEMM: C[M, N] = A[M, K] @ B[K, N]; grouped: `groups` GEMMs of M tokens each against their own B.
    m: int | None = Positive
    n: int | None = Positive
    k: int | None = Positive
    groups: int | None = Positive
    layout: Literal["contiguous", "masked"] | None = None  # grouped GEMM token layout (informational)
    # Attention: `batch` sequences, `seq_q` query rows each against `seq_kv` keys.
    batch: int | None = Positive
    heads: int | None = Positive
    kv_heads: int | None = Positive  # none: = heads (MHA)
    head_dim: int | None = Positive
    head_dim_v: int | None = Positive  # none: = head_dim
    seq_q: int | None = Positive
    seq_kv: int | None = Positive
    causal: bool = False
    phase: Literal["prefill", "decode"] | None = None
    latent: bool = False  # MLA absorbed: V is the first head_dim_v columns of the cached K latent
    # MLA call (op "mla"): the model's dims, the form and what the engine's timed call holds.
    kv_lora_rank: int | None = Positive
    qk_nope_head_dim: int | None = Positive
    qk_rope_head_dim: int | None = Positive
    v_head_dim: int | None = Positive
    mla_form: MlaForm | None = None
    mla_call: MlaCall = "attention"
    mla_kernel: MlaKernel | None = None  # which MLA kernel ran (`CostOptions.mla_kernel`); none: the default
    # Collectives.
    ranks: int | None = Field(default=None, ge=2)
    tokens: int | None = Positive  # all-to-all: tokens per rank
    hidden: int | None = Positive
    top_k: int | None = Positive  # all-to-all: copies of each token sent (experts per token)
    # all-to-all, normal kernels: the experts over the ranks (given: each token goes once per
    # distinct destination rank, and across scale-up domains once per distinct remote node over
    # the NIC, as the mapping sends it, `codesign.mapping.experts.nic_share`; none: top_k copies,
    # the low-latency kernels' per-expert messages) and group-limited routing over nodes.
    experts: int | None = Positive
    top_groups: int | None = Positive
    bytes: float | None = Positive  # all-reduce: message bytes per rank
    algorithm: str | None = None  # collective algorithm (codesign.mapping.collectives.ALGORITHMS)
    # fused_moe: which MoE kernel implementation ran (`CostOptions.moe_kernel`); none: the default.
    moe_kernel: MoeKernel | None = None
    # fused_moe: the experts' weight storage dtype where it is not `dtype` (weight-only quantised
    # experts: MXFP4 weights with 16-bit activations and compute), and fp4's values per scale byte
    # (`Precision.fp4_scale_block`: MXFP4 32); none: `dtype`, and the precision's default block.
    weight_dtype: Dtype | None = None
    fp4_scale_block: int | None = Field(default=None, ge=1, le=1024)
    # gemm: which dense GEMM kernel ran (`CostOptions.gemm_kernel`); none: the default.
    gemm_kernel: GemmKernel | None = None
    # attention (prefill): which kernel ran (`CostOptions.attention_kernel`); none: the default.
    attention_kernel: AttentionKernel | None = None

    @model_validator(mode="after")
    def _fields_of_op(self) -> "KernelShape":
        missing = [f for f in REQUIRED[self.op] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.op} needs {', '.join(missing)}")
        if self.op == "gdn_conv" and self.phase == "decode" and self.seq_q != 1:
            raise ValueError(f"gdn_conv decode: expected seq_q 1 (one token per sequence), found {self.seq_q}")
        if self.op in ("attention", "mla") and self.seq_q > self.seq_kv:
            raise ValueError(f"seq_q ({self.seq_q}) exceeds seq_kv ({self.seq_kv})")
        if self.op == "fused_moe" and self.top_k > self.groups:
            raise ValueError(f"top_k ({self.top_k}) exceeds groups ({self.groups}, the experts)")
        if (self.experts is not None or self.top_groups is not None) and self.op != "all_to_all":
            raise ValueError(f"experts / top_groups apply to all_to_all only, found op {self.op}")
        if self.top_groups is not None and self.experts is None:
            raise ValueError("top_groups needs experts (the routed experts over the ranks)")
        if self.experts is not None and (self.experts % self.ranks or self.top_k > self.experts):
            raise ValueError(f"experts ({self.experts}) must be a multiple of ranks ({self.ranks}) "
                             f"and at least top_k ({self.top_k})")
        if self.op == "fused_moe" and self.ranks is not None and self.groups % self.ranks:
            raise ValueError(f"groups ({self.groups}) must be a multiple of ranks ({self.ranks}, the EP degree)")
        if self.moe_kernel is not None and self.op != "fused_moe":
            raise ValueError(f"moe_kernel applies to fused_moe only, found op {self.op}")
        if (self.weight_dtype is not None or self.fp4_scale_block is not None) and self.op != "fused_moe":
            raise ValueError(f"weight_dtype / fp4_scale_block apply to fused_moe only, found op {self.op}")
        if (self.mla_form is not None or self.mla_call != "attention" or self.mla_kernel is not None) and self.op != "mla":
            raise ValueError(f"mla_form / mla_call / mla_kernel apply to mla only, found op {self.op}")
        if self.gemm_kernel is not None and self.op != "gemm":
            raise ValueError(f"gemm_kernel applies to gemm only, found op {self.op}")
        if self.attention_kernel is not None and (self.op != "attention" or self.phase != "prefill"):
            raise ValueError(f"attention_kernel applies to prefill attention only, found op {self.op} "
                             f"phase {self.phase}")
        if self.op in ("gdn_chunk", "gdn_recurrent", "gdn_conv") and self.heads % (self.kv_heads or self.heads):
            raise ValueError(f"heads ({self.heads}) is not a multiple of kv_heads ({self.kv_heads})")
        return self


@dataclass(frozen=True)
class KernelPrediction:
    seconds: float
    flops: float
    bytes: float  # HBM/link bytes the kernel moves (GEMM: A + B + C; collectives: bytes on the link)
    bound: str  # limiting resource: matrix | hbm | sram | link | overhead
    compute_s: float = 0.0
    memory_s: float = 0.0
    overhead_s: float = 0.0

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12 if self.seconds > 0 else 0.0

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "tflops": self.tflops, "gbps": self.gbps, "bound": self.bound,
                "flops": self.flops, "bytes": self.bytes, "compute_s": self.compute_s,
                "memory_s": self.memory_s, "overhead_s": self.overhead_s}


def _bytes_dict(**kw: float) -> dict[str, float]:
    d = {"weight": 0.0, "activation": 0.0, "kv_cache": 0.0, "state": 0.0}
    d.update(kw)
    return d


def check_dtype(shape: KernelShape, hw: HardwareSpec) -> None:
    """A matrix kernel in a format the chip's matrix unit has no path for is refused (the simulator
    would run it at the next wider format; a microbenchmark of that format cannot exist)."""
    if shape.op in COLLECTIVE_OPS:
        return
    if getattr(hw.chip.matrix, shape.dtype, None) is None:
        have = [d for d in BYTES_PER_ELEMENT if getattr(hw.chip.matrix, d, None) is not None]
        raise CodesignError(f"dtype: {hw.name} has no {shape.dtype} matrix path; it runs {', '.join(have)}")


def _attention_pairs(s: KernelShape) -> float:
    """(query, key) pairs per head and sequence: all of them, or the causal triangle with the
    queries at the end of the keys (prefill of a chunk, or decode after a cache)."""
    tq, skv = s.seq_q, s.seq_kv
    if not s.causal:
        return float(tq * skv)
    start = skv - tq  # keys before the first query
    return float(tq * start + tq * (tq + 1) / 2)


def build_op(s: KernelShape) -> Op:
    """The op the tracer (plus the mapping's rescaling to the deployment's precision) builds for a
    compute kernel of this shape."""
    e = BYTES_PER_ELEMENT[s.dtype]
    common = dict(target=f"codesign.kernel.{s.op}", layer=0, layer_type="kernel", in_shapes=(),
                  out_shapes=(), dtype=s.dtype)
    if s.op == "gemm":
        m, n, k = s.m, s.n, s.k
        return Op(name="kernel/gemm", kind="gemm", block="mlp", phase="prefill", flops=2.0 * m * n * k,
                  bytes_read=_bytes_dict(weight=n * k * e, activation=m * k * e),
                  bytes_written=_bytes_dict(activation=m * n * OUT_BYTES), gemm=(1, m, n, k), **common)
    if s.op == "grouped_gemm":
        g, m, n, k = s.groups, s.m, s.n, s.k
        return Op(name="kernel/grouped_gemm", kind="grouped_gemm", block="moe_experts", phase="prefill",
                  flops=2.0 * g * m * n * k,
                  bytes_read=_bytes_dict(weight=g * n * k * e, activation=g * m * k * e),
                  bytes_written=_bytes_dict(activation=g * m * n * OUT_BYTES), gemm=(g, m, n, k),
                  tokens_per_expert=(m,) * g, expert_weight_bytes=n * k * e, expert_flops_per_token=2.0 * n * k,
                  **common)
    if s.op == "attention":
        d, dv = s.head_dim, s.head_dim_v or s.head_dim
        hkv = s.kv_heads or s.heads
        flops = 2.0 * s.batch * s.heads * _attention_pairs(s) * (d + dv)
        q = s.batch * s.heads * s.seq_q * d * e
        kv = s.batch * hkv * s.seq_kv * (d if s.latent else d + dv) * e
        out = s.batch * s.heads * s.seq_q * dv * OUT_BYTES
        # q, k, v shapes as the tracer records `codesign.attention` (the cost model reads the
        # sequence lengths from them); a non-causal row is marked in its target, since the model's
        # own attention is always causal (codesign.sim.cost.attention_keys_per_row).
        common.update(in_shapes=((s.batch, s.heads, s.seq_q, d), (s.batch, hkv, s.seq_kv, d), (s.batch, hkv, s.seq_kv, dv)),
                      target="codesign.kernel.attention" + ("" if s.causal else ".noncausal"))
        return Op(name="kernel/attention", kind="attention", block="attention", phase=s.phase, flops=flops,
                  bytes_read=_bytes_dict(activation=q, kv_cache=kv), bytes_written=_bytes_dict(activation=out),
                  **common)
    raise CodesignError(f"op: {s.op} is a collective, not a compute kernel")


# Largest GatedDeltaNet kernel shape traced for a prediction (sequences x tokens x value heads): the
# trace runs on the meta device, but a bound keeps a mistyped shape from building huge graphs' shapes.
GDN_MAX_WORK = 1 << 34


def gdn_chunk_ops(s: KernelShape) -> tuple[Op, ...]:
    """The ops the tracer records for the GatedDeltaNet chunked prefill of this shape: the model's own
    `ChunkGatedDeltaRule` traced on the meta device (fresh prompts, no initial state), in the
    `linear_attention` block and the `chunk_rule` scope, as inside a model's trace."""
    return _gdn_chunk_ops(s.batch, s.seq_q, s.kv_heads or s.heads, s.heads, s.head_dim, s.head_dim_v or s.head_dim)


@functools.lru_cache(maxsize=256)
def _gdn_chunk_ops(B: int, T: int, Hk: int, Hv: int, dk: int, dv: int) -> tuple[Op, ...]:
    import torch

    from codesign.graph.tracer import record
    from codesign.models.gated_deltanet import CHUNK_RULE_SCOPE, ChunkGatedDeltaRule

    if B * T * Hv > GDN_MAX_WORK:
        raise CodesignError(f"gdn_chunk: batch x seq_q x heads = {B * T * Hv:,} exceeds {GDN_MAX_WORK:,}")
    rule = ChunkGatedDeltaRule()
    rule.block = "linear_attention"  # what it inherits from its GatedDeltaNet layer in a model's trace
    layer = torch.nn.Module()
    layer.add_module(CHUNK_RULE_SCOPE, rule)
    root = torch.nn.Module()
    root.linear_attn = layer
    meta = torch.device("meta")
    q = torch.empty(B, T, Hk, dk, device=meta)  # fp32 after the L2 norm, as in GatedDeltaNet.forward
    k = torch.empty(B, T, Hk, dk, device=meta)
    v = torch.empty(B, T, Hv, dv, device=meta, dtype=torch.bfloat16)
    g = torch.empty(B, T, Hv, device=meta)
    beta = torch.empty(B, T, Hv, device=meta, dtype=torch.bfloat16)
    seg = record(lambda: rule(q, k, v, g, beta), root, [q, k, v, g, beta], {}, "prefill")
    return tuple(seg.ops)


def gdn_recurrent_op(s: KernelShape) -> Op:
    """The op the tracer records for one GatedDeltaNet decode step of this shape: the model's own
    `gated_delta_rule_step` (one fused kernel: the fp32 state read once and written once in place)
    traced on the meta device for `batch` sequences of one new token, in the `linear_attention`
    block. The q/k L2 norms and the gates, which the engine's packed decode kernel also computes,
    are separate element-wise ops of the trace (B x heads x head dim elements) and are not part of
    this op."""
    return _gdn_recurrent_op(s.batch, s.kv_heads or s.heads, s.heads, s.head_dim, s.head_dim_v or s.head_dim)


@functools.lru_cache(maxsize=256)
def _gdn_recurrent_op(B: int, Hk: int, Hv: int, dk: int, dv: int) -> Op:
    import torch

    from codesign.graph.tracer import record
    from codesign.models.gated_deltanet import gated_delta_rule_step

    if B * Hv * dk * dv > GDN_MAX_WORK:
        raise CodesignError(f"gdn_recurrent: batch x heads x head dims = {B * Hv * dk * dv:,} exceeds {GDN_MAX_WORK:,}")

    class LinearAttention(torch.nn.Module):
        block = "linear_attention"  # what the step inherits from its GatedDeltaNet layer in a model's trace

        def forward(self, q, k, v, g, beta, state):
            return gated_delta_rule_step(q, k, v, g, beta, state)

    root = torch.nn.Module()
    root.linear_attn = layer = LinearAttention()
    meta = torch.device("meta")
    q = torch.empty(B, 1, Hk, dk, device=meta)  # fp32 after the L2 norm, as in GatedDeltaNet.forward
    k = torch.empty(B, 1, Hk, dk, device=meta)
    v = torch.empty(B, 1, Hv, dv, device=meta, dtype=torch.bfloat16)
    g = torch.empty(B, 1, Hv, device=meta)
    beta = torch.empty(B, 1, Hv, device=meta, dtype=torch.bfloat16)
    state = torch.empty(B, Hv, dk, dv, device=meta)  # fp32, as GatedDeltaNetCache keeps it
    seg = record(lambda: layer(q, k, v, g, beta, state), root, [q, k, v, g, beta, state], {id(state): "state"},
                 "decode")
    (op,) = [o for o in seg.ops if o.target.startswith("codesign.gated_delta_rule_step")]
    return op


# The causal conv's kernel width in every Qwen3.5 / Qwen3-Next checkpoint (`linear_conv_kernel_dim`).
GDN_CONV_KERNEL = 4


def gdn_conv_ops(s: KernelShape) -> tuple[Op, ...]:
    """The ops the tracer records for a GatedDeltaNet layer's causal conv + SiLU of this shape (the
    model's own `causal_conv`, traced on the meta device in the `linear_attention` block, as a
    serving step runs it: a fresh prompt's zero history, or a decode's cached conv state, and the
    state's refresh)."""
    return _gdn_conv_segment(s)[0]


def gdn_conv_region_ops(s: KernelShape) -> tuple[Op, ...]:
    """Those ops as `elementwise_model: regions` charges them: one region (the history, the
    concatenation, the state's refresh, the conv and the SiLU; no matrix op between them), each op
    with its bytes across the region's boundary only: the input read once, the output and the
    state written once."""
    from codesign.sim.elementwise_regions import segment_charged_ops

    return segment_charged_ops(*_gdn_conv_segment(s))


def _gdn_conv_segment(s: KernelShape) -> TracedSegment:
    dk, dv = s.head_dim, s.head_dim_v or s.head_dim
    channels = 2 * (s.kv_heads or s.heads) * dk + s.heads * dv
    return _gdn_conv_trace(s.batch, s.seq_q, channels, s.phase)


@functools.lru_cache(maxsize=256)
def _gdn_conv_trace(B: int, T: int, channels: int, phase: str) -> TracedSegment:
    import torch

    from codesign.graph.tracer import record
    from codesign.models.gated_deltanet import causal_conv

    if B * T * channels > GDN_MAX_WORK:
        raise CodesignError(f"gdn_conv: batch x seq_q x channels = {B * T * channels:,} exceeds {GDN_MAX_WORK:,}")
    K = GDN_CONV_KERNEL
    meta = torch.device("meta")

    class LinearAttention(torch.nn.Module):
        block = "linear_attention"  # what the conv inherits from its GatedDeltaNet layer in a model's trace

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(channels, 1, K, device=meta, dtype=torch.bfloat16))
            self.register_buffer("conv_state", torch.empty(B, channels, K - 1, device=meta, dtype=torch.bfloat16))

        def forward(self, qkv):
            if phase == "prefill":
                history = qkv.new_zeros(B, channels, K - 1)
            else:
                history = self.conv_state.to(qkv.dtype)
            return causal_conv(qkv, self.weight, history, self.conv_state)

    root = torch.nn.Module()
    root.linear_attn = layer = LinearAttention()
    qkv = torch.empty(B, channels, T, device=meta, dtype=torch.bfloat16)
    seg = record(lambda: layer(qkv), root, [qkv], {id(layer.weight): "weight", id(layer.conv_state): "state"}, phase)
    return tuple(seg.ops), tuple(seg.edges), tuple(seg.entries)


# Largest RMSNorm traced for a prediction (tokens x hidden elements; meta tensors, a sanity bound).
NORM_MAX_WORK = 1 << 34
# Largest magnitude of FP8 e4m3 (the static quantisation's clamp).
FP8_E4M3_MAX = 448.0


def rmsnorm_ops(s: KernelShape) -> tuple[Op, ...]:
    """The ops the tracer records for an RMSNorm of this shape (`rmsnorm` in `REQUIRED`)."""
    return _rmsnorm_segment(s.tokens, s.hidden, s.dtype == "fp8")[0]


def rmsnorm_region_ops(s: KernelShape) -> tuple[Op, ...]:
    """Those ops as `elementwise_model: regions` charges them: one region (all of them element-wise,
    between no matrix ops), each op with its bytes across the region's boundary only
    (`codesign.sim.elementwise_regions.region_ops`)."""
    from codesign.sim.elementwise_regions import segment_charged_ops

    return segment_charged_ops(*_rmsnorm_segment(s.tokens, s.hidden, s.dtype == "fp8"))


@functools.lru_cache(maxsize=64)
def _rmsnorm_segment(T: int, H: int, quant: bool) -> TracedSegment:
    import torch

    from codesign.graph.tracer import record
    from codesign.models.norms import BlockNorm

    if T * H > NORM_MAX_WORK:
        raise CodesignError(f"rmsnorm: tokens x hidden = {T * H:,} exceeds {NORM_MAX_WORK:,}")
    meta = torch.device("meta")
    root = torch.nn.Module()
    root.norm = norm = BlockNorm(H).to(device=meta, dtype=torch.bfloat16)
    x = torch.empty(T, H, device=meta, dtype=torch.bfloat16)

    def run():
        y = norm(x)
        if quant:
            y = (y / 1.0).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        return y

    seg = record(run, root, [x], {id(norm.weight): "weight"}, "prefill")
    return tuple(seg.ops), tuple(seg.edges), tuple(seg.entries)


def rmsnorm_pass_bytes(s: KernelShape) -> float:
    """HBM bytes of an RMSNorm run as one fused kernel (what vLLM's `rms_norm` and FlashInfer's
    `rmsnorm` / `rmsnorm_quant` do): the input read once (bf16), the output written once (bf16, or
    FP8 with `dtype` fp8) and the weight read once (bf16); the fp32 intermediates stay in registers."""
    out = 1.0 if s.dtype == "fp8" else 2.0
    return float(s.tokens) * s.hidden * (2.0 + out) + 2.0 * s.hidden


def rmsnorm_pass_seconds(s: KernelShape, hw: HardwareSpec) -> float:
    """Seconds of that one kernel at the chip's HBM streaming rate (HBM x efficiency.memory) plus one
    kernel's fixed time (efficiency.kernel_overhead): the one-pass figure the traced decomposition
    (`rmsnorm_ops`, what `predict` charges) is compared with (docs/cost-model.md "Element-wise
    regions")."""
    return rmsnorm_pass_bytes(s) / (hw.chip.hbm.bandwidth * hw.efficiency.memory) + hw.efficiency.kernel_overhead


# Largest routed-expert kernel traced for a prediction (tokens x top_k routed slots; experts x hidden
# x intermediate weights): the shapes are meta tensors, but a bound keeps a mistyped shape sane.
MOE_MAX_SLOTS = 1 << 24
MOE_MAX_WEIGHTS = 1 << 40


def fused_moe_op(s: KernelShape) -> Op:
    """The routed-expert op the simulator costs for one MoE layer of `s.tokens` tokens: the tracer's
    `grouped_gemm` op of the model's `moe_experts` call, with the per-expert token counts of the
    default router model (`UniformRouter(seed=0)`, layer 0: the draw a traced layer gets) and its
    bytes rescaled to the kernel's dtype (weights and activations in `s.dtype`), as the mapping does.
    With `s.ranks` (EP): the first groups / ranks experts (rank 0's) with their counts of that draw,
    the token-proportional bytes scaled to their share of the routed rows."""
    return _fused_moe_op(s.groups, s.top_k, s.hidden, s.n, s.tokens, s.dtype, s.ranks or 1, s.weight_dtype,
                         s.fp4_scale_block)


@functools.lru_cache(maxsize=256)
def _fused_moe_op(E: int, k: int, H: int, N: int, B: int, dtype: str, ep: int = 1, weight_dtype: str | None = None,
                  fp4_scale_block: int | None = None) -> Op:
    import torch

    from codesign.graph.router import UniformRouter, routed_counts
    from codesign.graph.tracer import record
    from codesign.graph.tracing import _rescale_experts as rescale_experts  # the tracer's own per-layer fill
    from codesign.mapping.plan import Precision
    from codesign.mapping.scaling import Scaler
    from codesign.models import kernels

    if B * k > MOE_MAX_SLOTS or E * H * N > MOE_MAX_WEIGHTS:
        raise CodesignError(f"fused_moe: tokens x top_k = {B * k:,} (at most {MOE_MAX_SLOTS:,}) or groups x hidden x n "
                            f"= {E * H * N:,} (at most {MOE_MAX_WEIGHTS:,}) too large")
    meta = torch.device("meta")

    class RoutedExperts(torch.nn.Module):
        block = "moe_experts"

        def __init__(self) -> None:
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.empty(E // ep, 2 * N, H, device=meta, dtype=torch.bfloat16))
            self.down_proj = torch.nn.Parameter(torch.empty(E // ep, H, N, device=meta, dtype=torch.bfloat16))

        def forward(self, x, ids, w):
            return kernels.moe_experts(x, ids, w, self.gate_up_proj, self.down_proj, None, None, "silu")

    root = torch.nn.Module()
    root.experts = RoutedExperts()
    x = torch.empty(B, H, device=meta, dtype=torch.bfloat16)
    ids = torch.empty(B, k, device=meta, dtype=torch.int64)
    w = torch.empty(B, k, device=meta, dtype=torch.bfloat16)
    seg = record(lambda: root.experts(x, ids, w), root, [x, ids, w], {}, "prefill")
    (op,) = [o for o in seg.ops if o.kind == "grouped_gemm"]
    counts = routed_counts(UniformRouter(seed=0), 0, B, E, k)
    if ep == 1:
        op = rescale_experts(op, counts)
    else:
        local = tuple(int(c) for c in counts[:E // ep])
        op = rescale_experts(op, local, sum(local) / (B * k))
    block = {} if fp4_scale_block is None else {"fp4_scale_block": fp4_scale_block}
    scaler = Scaler(Precision(weights=weight_dtype or dtype, activations=dtype, kv_cache=dtype, compute=dtype, **block))
    ones = {c: 1.0 for c in op.bytes_read}
    return scaler.op(op, 1.0, ones, gemm=None)


def build_collective(s: KernelShape, hw: HardwareSpec) -> dict:
    """The collective dict the mapping puts in `Op.collective` for this shape."""
    from codesign.mapping import make_collective

    group = tuple(range(s.ranks))
    if s.op == "all_to_all":
        per_elem = BYTES_PER_ELEMENT[s.dtype] * ((1.0 + FP8_SCALE_OVERHEAD) if s.dtype == "fp8" else 1.0)
        su = hw.system.scale_up.size
        extra: dict = {}
        copies = float(s.top_k)
        if s.experts is not None and s.algorithm != "low_latency":
            from codesign.mapping.experts import nic_share, routed_spread

            nodes = -(-s.ranks // su)
            copies = routed_spread(s.experts, s.top_k, s.ranks, nodes, s.top_groups)[0]
            if nodes > 1:
                extra["nic_share"] = nic_share(s.experts, s.top_k, s.ranks, nodes, s.top_groups)
        nbytes = s.tokens * copies * s.hidden * per_elem
        return make_collective("all_to_all", group, nbytes, su, s.algorithm, **extra)
    return make_collective(s.op, group, float(s.bytes), hw.system.scale_up.size, s.algorithm)


def link_bytes(c: dict, hw: HardwareSpec) -> float:
    """Bytes one rank moves over its slowest tier: all-to-all, the share leaving the rank (scale-up)
    or the domain (scale-out); all-reduce, the bus bytes 2(n-1)/n x message (NCCL's busBw);
    all-gather / reduce-scatter, (n-1)/n x message (likewise)."""
    n = c["size"]
    if c["type"] == "all_reduce":
        return 2.0 * (n - 1) / n * c["bytes"]
    if c["type"] in ("all_gather", "reduce_scatter"):
        return (n - 1) / n * c["bytes"]
    d = min(n, hw.system.scale_up.size)
    if c["scope"] == "scale_out":
        share = c.get("nic_share", (n - d) / n)
    else:
        share = (n - 1) / n
    return c["bytes"] * share


def predict(s: KernelShape, hw: HardwareSpec, options: CostOptions | None = None) -> KernelPrediction:
    """Predicted time of one kernel on `hw` through the simulator's cost path."""
    check_dtype(s, hw)
    if s.op in COLLECTIVE_OPS:
        from codesign.mapping import collective_time

        c = build_collective(s, hw)
        t = collective_time(c, hw)
        return KernelPrediction(t, 0.0, link_bytes(c, hw), "link")
    dt = s.dtype
    # One kernel alone: no element-wise kernels of a serving engine around it.
    opts = options or CostOptions(elementwise_kernels_per_matrix_kernel=0.0, grouped_op_kernels=1.0)
    chosen = {f: getattr(s, f) for f in ("gemm_kernel", "mla_kernel", "attention_kernel") if getattr(s, f) is not None}
    if chosen:  # the kernel the row ran (`CostOptions`' field of the same name)
        opts = opts.model_copy(update=chosen)
    cm = CostModel(hw, dt, dt, opts)
    if s.op == "gdn_chunk":
        return _predict_ops(gdn_chunk_ops(s), cm)
    if s.op == "mla":
        return _predict_ops(mla_ops(s), cm, matrix_kinds=("gemm", "attention"))
    if s.op == "gdn_conv":
        # Alone, the conv is one kernel (vLLM's causal_conv1d_fn / _update) with one launch; its
        # traced element-wise ops carry none of their own (`elementwise_kernels_per_matrix_kernel`
        # charges them inside a step).
        ops = gdn_conv_region_ops(s) if cm.opts.elementwise_regions else gdn_conv_ops(s)
        return _with_launch(_predict_ops(ops, cm), cm.launch_s)
    if s.op == "rmsnorm":
        # The traced decomposition costed as a step costs it (its element-wise ops at the step's
        # rules: `elementwise_model`, `fuse_elementwise` / `fused_activations_on_chip`), plus one
        # launch: alone, the norm is a kernel of its own.
        ops = rmsnorm_region_ops(s) if cm.opts.elementwise_regions else rmsnorm_ops(s)
        return _with_launch(_predict_ops(ops, cm), cm.launch_s)
    if s.op == "gdn_recurrent":
        # Alone, the fused step is a kernel with its own launch (`kernel_overhead`); inside a step the
        # element-wise kind's launches are charged through `elementwise_kernels_per_matrix_kernel`.
        op = gdn_recurrent_op(s)
        cost = CostModel(hw, dt, dt, opts.model_copy(update={"fuse_elementwise": False})).cost(op)
        return KernelPrediction(cost.time_s, op.flops, op.bytes_total, cost.bottleneck, cost.compute_s,
                                cost.memory_s, cost.overhead_s)
    if s.op == "fused_moe":
        return _predict_fused_moe(s, hw, options)
    op = build_op(s)
    cost = cm.cost(op)
    return KernelPrediction(cost.time_s, op.flops, op.bytes_total, cost.bottleneck, cost.compute_s, cost.memory_s,
                            cost.overhead_s)


def _predict_fused_moe(s: KernelShape, hw: HardwareSpec, options: CostOptions | None) -> KernelPrediction:
    """One MoE layer's routed experts as the simulator charges them: the traced expert op costed with
    the cost model's default options (its `grouped_op_kernels` count the kernels of the engine's
    fused-MoE call, which the measured figure covers) and the row's `moe_kernel`."""
    opts = options or CostOptions()
    if s.moe_kernel is not None:
        opts = opts.model_copy(update={"moe_kernel": s.moe_kernel})
    op = fused_moe_op(s)
    cost = CostModel(hw, s.dtype, s.dtype, opts).cost(op)
    return KernelPrediction(cost.time_s, op.flops, op.bytes_total, cost.bottleneck, cost.compute_s, cost.memory_s,
                            cost.overhead_s)


def _with_launch(p: KernelPrediction, launch_s: float) -> KernelPrediction:
    """`p` run as a kernel of its own: one launch's fixed time added (inside a step the element-wise
    kind's launches are `elementwise_kernels_per_matrix_kernel`'s)."""
    return KernelPrediction(p.seconds + launch_s, p.flops, p.bytes, p.bound, p.compute_s, p.memory_s,
                            p.overhead_s + launch_s)


def _predict_ops(ops: tuple[Op, ...], cm: CostModel, matrix_kinds: tuple[str, ...] = ("gemm",)) -> KernelPrediction:
    """A kernel traced as several ops (the GatedDeltaNet chunked prefill, an MLA call): their summed
    cost; FLOPs are the ops' of `matrix_kinds` (what a kernel benchmark counts), bytes all ops'."""
    costs = [cm.cost(op) for op in ops]
    t = sum(c.time_s for c in costs)
    comp = sum(c.compute_s for c in costs)
    mem = sum(c.memory_s for c in costs)
    over = sum(c.overhead_s for c in costs)
    flops = sum(op.flops for op in ops if op.kind in matrix_kinds)
    nbytes = sum(op.bytes_total for op in ops)
    bound = "overhead" if over > max(comp, mem) else ("matrix" if comp >= mem else "hbm")
    return KernelPrediction(t, flops, nbytes, bound, comp, mem, over)
