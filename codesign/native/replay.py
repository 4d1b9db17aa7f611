"""Replay a traced op graph natively: every op run with real tensors of its recorded shapes, timed.

`codesign.trace(...)` records ops on the meta device with their tensor shapes but not their
non-tensor arguments (dims, scalars, flags). Replay rebuilds each op from what the graph holds and
runs an equivalent native computation on the host device:

| kind | native path |
| --- | --- |
| `gemm` | `torch.matmul` on the recorded `(batch, M, N, K)` (`addmm` adds its bias; the triangular solve runs `torch.linalg.solve_triangular` on a unit lower-triangular matrix) |
| `grouped_gemm` | the project's own `codesign::moe_experts` kernel with expert ids that realise `tokens_per_expert` exactly (`moe_impl="grouped"`: two `torch._grouped_mm` grouped GEMMs over the tokens sorted by expert) |
| `attention` | `torch.nn.functional.scaled_dot_product_attention` at the recorded (B, H, T, S, D), causal with the recorded offset (`attention_impl="model"`: the project's own `codesign::attention`) |
| `vector` | the same aten op where the tensors determine it (unary, binary with broadcasting, softmax over the last dim, reductions to the recorded output shape, top-k of the recorded k, depthwise convolution with the padding that gives the recorded length) |
| `memory` | a copy, cast, concatenation, padding, gather, embedding lookup or fill of the recorded shapes |
| GatedDeltaNet decode | the project's own `codesign::gated_delta_rule_step` on tensors of the recorded shapes |

Arguments the graph does not keep are chosen as the models use them and named here: reductions and
softmax run over the dims that give the recorded output shape (softmax, cumsum and top-k over the
last dim); scalar operands are 2.0; the attention window and sinks are not reproduced (a windowed
decode already records only its window's keys); `moe_experts` runs the SiLU-gated activation.

Timing (`time_fn`): fixed seeds for every tensor, `warmup` discarded calls, then `repeats` timed
calls, each bracketed by `torch.cuda.synchronize` on CUDA, the garbage collector off (`no_gc`); the
median is reported. The clock
(`clock`) is wall time, except on a CPU with one torch thread, where it is the calling thread's CPU
time (`time.thread_time`): all of the work then runs on that thread, and on a shared machine wall
time would also count the slices the scheduler gives other processes. Ops recorded
once for a loop of `repeat` trips (the GatedDeltaNet chunk recurrence) are timed once and
multiplied by `repeat`. CPU threads are torch's setting at the time of the call
(`torch.set_num_threads`); the commands that replay set it explicitly and report it.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import networkx as nx
import torch
import torch.nn.functional as F

from codesign.errors import CodesignError
from codesign.graph.op import Op

Thunk = Callable[[], object]
Builder = Callable[[Op, "_Maker"], Thunk]


class _Maker:
    """Seeded tensors on one device; recorded bf16/fp16 floats are made in `float_dtype`."""

    def __init__(self, device: torch.device, float_dtype: torch.dtype, seed: int) -> None:
        self.device = device
        self.float_dtype = float_dtype
        # drawn where they live: full-width expert weights are gigabytes
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def dtype(self, recorded: str) -> torch.dtype:
        if recorded == "float32":
            return torch.float32
        return self.float_dtype

    def rand(self, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32, device=self.device)
        return t.to(dtype or self.float_dtype)

    def uniform(self, shape) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=self.gen, device=self.device)

    def ints(self, shape, high: int) -> torch.Tensor:
        return torch.randint(0, max(1, high), tuple(shape), generator=self.gen, device=self.device)

    def mask(self, shape) -> torch.Tensor:
        return self.uniform(shape) < 0.5


# -- matrix ops -------------------------------------------------------------------------------------


def _gemm(op: Op, mk: _Maker) -> Thunk:
    if op.gemm is None:
        raise CodesignError(f"replay: {op.name}: a gemm without a recorded (batch, M, N, K)")
    b, m, n, k = op.gemm
    shape_a, shape_b = ((m, k), (k, n)) if b == 1 else ((b, m, k), (b, k, n))
    a, w = mk.rand(shape_a), mk.rand(shape_b)
    if op.target.startswith("aten.addmm"):
        bias = mk.rand((n,))
        return lambda: torch.addmm(bias, a, w)
    return lambda: torch.matmul(a, w)


def _solve_triangular(op: Op, mk: _Maker) -> Thunk:
    sa, sb = op.in_shapes[0], op.in_shapes[1]
    a = torch.tril(mk.rand(sa, torch.float32) * 0.1, -1) + torch.eye(sa[-1], device=mk.device)
    a = a.to(mk.dtype(op.dtype))
    rhs = mk.rand(sb, a.dtype)
    return lambda: torch.linalg.solve_triangular(a, rhs, upper=False)


def expert_ids(tokens_per_expert: tuple[int, ...], tokens: int, top_k: int) -> torch.Tensor:
    """(tokens, top_k) expert ids in which expert e appears tokens_per_expert[e] times and no token
    picks an expert twice: the experts' slots, sorted by expert, are dealt out column by column (an
    expert with at most `tokens` slots then lands on distinct tokens). Counts that do not sum to
    tokens x top_k are first rescaled by largest remainder."""
    slots = tokens * top_k
    counts = [max(0, int(c)) for c in tokens_per_expert]
    total = sum(counts)
    if total != slots and total > 0:
        exact = [c * slots / total for c in counts]
        counts = [int(x) for x in exact]
        order = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
        for i in order[: slots - sum(counts)]:
            counts[i] += 1
    counts = [min(c, tokens) for c in counts]
    flat = [e for e, c in enumerate(counts) for _ in range(c)]
    e = 0
    while len(flat) < slots:  # capped counts: fill with the least-used experts
        if flat.count(e) < tokens:
            flat.append(e)
        e = (e + 1) % len(counts)
    ids = torch.tensor(sorted(flat[:slots]), dtype=torch.int64)
    return ids.reshape(top_k, tokens).t().contiguous()


def _moe_experts(op: Op, mk: _Maker) -> Thunk:
    from codesign.models import kernels

    x_s, ids_s, _, wgu_s, wd_s = op.in_shapes[:5]
    tokens, top_k = ids_s
    tpe = op.tokens_per_expert or tuple([tokens * top_k // wgu_s[0]] * wgu_s[0])
    x = mk.rand(x_s)
    ids = expert_ids(tpe, tokens, top_k).to(mk.device)
    weights = torch.softmax(mk.rand(ids_s, torch.float32), -1).to(mk.float_dtype)
    wgu, wd = mk.rand(wgu_s) * 0.05, mk.rand(wd_s) * 0.05
    biases = [mk.rand(s) for s in op.in_shapes[5:7]]
    bgu = biases[0] if len(biases) > 0 else None
    bd = biases[1] if len(biases) > 1 else None
    return lambda: kernels.moe_experts(x, ids, weights, wgu, wd, bgu, bd, "silu")


def _moe_grouped(op: Op, mk: _Maker) -> Thunk:
    """The routed experts as two grouped GEMMs (`torch._grouped_mm`: CUTLASS on Hopper) over the
    tokens sorted by expert, with the SiLU gate between them: what a serving engine's MoE kernel
    computes (the permute/unpermute around it is not included)."""
    x_s, ids_s, _, wgu_s, wd_s = op.in_shapes[:5]
    tokens, top_k = ids_s
    experts, two_i, hidden = wgu_s
    width = wd_s[2]
    tpe = op.tokens_per_expert or tuple([tokens * top_k // experts] * experts)
    counts = torch.bincount(expert_ids(tpe, tokens, top_k).reshape(-1), minlength=experts)
    offs = torch.cumsum(counts, 0).to(device=mk.device, dtype=torch.int32)
    xs = mk.rand((int(counts.sum()), hidden))
    wgu = mk.rand((experts, hidden, two_i)) * 0.05
    wd = mk.rand((experts, width, hidden)) * 0.05

    def run() -> torch.Tensor:
        gate, up = torch._grouped_mm(xs, wgu, offs=offs).chunk(2, dim=-1)
        return torch._grouped_mm(F.silu(gate) * up, wd, offs=offs)

    try:
        run()
    except RuntimeError:  # kernels that want the weights' K dimension contiguous (column-major B)
        wgu = wgu.transpose(1, 2).contiguous().transpose(1, 2)
        wd = wd.transpose(1, 2).contiguous().transpose(1, 2)
        try:
            run()
        except RuntimeError as e:
            raise CodesignError(f"replay: {op.name}: torch._grouped_mm refused the expert GEMMs: "
                                f"{str(e).splitlines()[0]}") from None
    return run


def _attention_inputs(op: Op, mk: _Maker):
    q_s, k_s, v_s = op.in_shapes[:3]
    return mk.rand(q_s), mk.rand(k_s), mk.rand(v_s)


def _attention_sdpa(op: Op, mk: _Maker) -> Thunk:
    q, k, v = _attention_inputs(op, mk)
    T, S = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if T == 1:  # decode: every key visible; GQA packed as the decode kernels do (a group's heads as rows)
        B, Hq, _, D = q.shape
        Hkv = k.shape[1]
        qp = q.reshape(B, Hkv, Hq // Hkv, D)
        return lambda: F.scaled_dot_product_attention(qp, k, v).reshape(B, Hq, 1, v.shape[-1])
    if T == S:  # a fresh prompt: plain causal (the flash kernels take no explicit mask)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    qpos = torch.arange(S - T, S, device=mk.device)[:, None]
    mask = torch.arange(S, device=mk.device)[None, :] <= qpos  # causal after S - T cached keys
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _attention_model(op: Op, mk: _Maker) -> Thunk:
    from codesign.models import kernels

    q, k, v = _attention_inputs(op, mk)
    offset = k.shape[2] - q.shape[2]
    scale = kernels.default_scale(q.shape[-1])
    return lambda: kernels.attention(q, k, v, offset, 0, scale, None)


def _gdn_step(op: Op, mk: _Maker) -> Thunk:
    from codesign.models import gated_deltanet  # noqa: F401  (registers the op)

    q_s, k_s, v_s, g_s, b_s, st_s = op.in_shapes[:6]
    q, k, v = mk.rand(q_s), mk.rand(k_s), mk.rand(v_s)
    g = -mk.uniform(g_s).to(mk.float_dtype)
    beta = mk.uniform(b_s).to(mk.float_dtype)
    state = mk.rand(st_s, torch.float32) * 0.01
    return lambda: torch.ops.codesign.gated_delta_rule_step(q, k, v, g, beta, state)


# -- vector ops -----------------------------------------------------------------------------------


def _unary(fn: Callable[[torch.Tensor], torch.Tensor], dtype: str | None = None) -> Builder:
    def build(op: Op, mk: _Maker) -> Thunk:
        x = mk.mask(op.in_shapes[0]) if dtype == "bool" else mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
        return lambda: fn(x)

    return build


def _binary(fn: Callable[[torch.Tensor, object], torch.Tensor]) -> Builder:
    def build(op: Op, mk: _Maker) -> Thunk:
        xs = [mk.rand(s, mk.dtype(op.dtype)) for s in op.in_shapes[:2]]
        if len(xs) == 1:
            return lambda: fn(xs[0], 2.0)
        a, b = xs
        return lambda: fn(a, b)

    return build


def _pow_scalar(op: Op, mk: _Maker) -> Thunk:
    x = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
    return lambda: torch.pow(2.0, x)


def _masked_fill(op: Op, mk: _Maker) -> Thunk:
    x = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
    mask = mk.mask(op.in_shapes[1])
    return lambda: x.masked_fill(mask, 0.0)


def reduced_dims(shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> tuple[list[int], bool]:
    """(dims, keepdim) of a reduction from shape_in to shape_out."""
    if len(shape_out) == len(shape_in):
        dims = [i for i, (a, b) in enumerate(zip(shape_in, shape_out)) if a != b]
        return (dims or [len(shape_in) - 1]), True
    dims, j = [], 0
    for i, a in enumerate(shape_in):
        if j < len(shape_out) and shape_out[j] == a:
            j += 1  # kept
        else:
            dims.append(i)
    if j != len(shape_out):  # no left-to-right match: drop the trailing dims
        dims = list(range(len(shape_out), len(shape_in)))
    return dims, False


def _reduction(fn: Callable[..., torch.Tensor]) -> Builder:
    def build(op: Op, mk: _Maker) -> Thunk:
        x = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
        dims, keep = reduced_dims(op.in_shapes[0], op.out_shapes[0])
        return lambda: fn(x, dim=dims, keepdim=keep)

    return build


def _topk(op: Op, mk: _Maker) -> Thunk:
    x = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
    k = op.out_shapes[0][-1]
    return lambda: torch.topk(x, k, dim=-1)


def _convolution(op: Op, mk: _Maker) -> Thunk:
    x_s, w_s = op.in_shapes[0], op.in_shapes[1]
    x, w = mk.rand(x_s), mk.rand(w_s)
    bias = mk.rand(op.in_shapes[2]) if len(op.in_shapes) > 2 else None
    groups = x_s[1] // w_s[1]
    pad = (op.out_shapes[0][-1] - x_s[-1] + w_s[-1] - 1) // 2
    return lambda: F.conv1d(x, w, bias, padding=pad, groups=groups)


# -- memory ops -----------------------------------------------------------------------------------


def _to_copy(op: Op, mk: _Maker) -> Thunk:
    out = mk.dtype(op.dtype)
    x = mk.rand(op.in_shapes[0], torch.float32 if out != torch.float32 else mk.float_dtype)
    if x.dtype == out:
        return lambda: x.clone()
    return lambda: x.to(out)


def _clone(op: Op, mk: _Maker) -> Thunk:
    x = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
    return lambda: x.clone()


def _copy_(op: Op, mk: _Maker) -> Thunk:
    dst = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
    src = mk.rand(op.in_shapes[1], mk.dtype(op.dtype))
    return lambda: dst.copy_(src)


def _cat(op: Op, mk: _Maker) -> Thunk:
    xs = [mk.rand(s, mk.dtype(op.dtype)) for s in op.in_shapes]
    out = op.out_shapes[0]
    dim = next((d for d in range(len(out)) if sum(s[d] for s in op.in_shapes) == out[d]), len(out) - 1)
    return lambda: torch.cat(xs, dim=dim)


def _pad(op: Op, mk: _Maker) -> Thunk:
    x_s, out = op.in_shapes[0], op.out_shapes[0]
    x = mk.rand(x_s, mk.dtype(op.dtype))
    pad: list[int] = []
    for a, b in zip(reversed(x_s), reversed(out)):  # F.pad lists the last dim first; pad at the end
        pad += [0, b - a]
    return lambda: F.pad(x, pad)


def _embedding(op: Op, mk: _Maker) -> Thunk:
    w_s, i_s = op.in_shapes[0], op.in_shapes[1]
    w, idx = mk.rand(w_s), mk.ints(i_s, w_s[0])
    return lambda: F.embedding(idx, w)


def _gather(op: Op, mk: _Maker) -> Thunk:
    x_s, i_s = op.in_shapes[0], op.in_shapes[1]
    dim = next((d for d in range(len(x_s)) if x_s[d] != i_s[d]), len(x_s) - 1)
    x, idx = mk.rand(x_s, mk.dtype(op.dtype)), mk.ints(i_s, x_s[dim])
    return lambda: torch.gather(x, dim, idx)


def _scatter_value(op: Op, mk: _Maker) -> Thunk:
    x_s, i_s = op.in_shapes[0], op.in_shapes[1]
    dim = next((d for d in range(len(x_s)) if x_s[d] != i_s[d]), len(x_s) - 1)
    x, idx = mk.rand(x_s, mk.dtype(op.dtype)), mk.ints(i_s, x_s[dim])
    return lambda: x.scatter_(dim, idx, 1.0)


def _factory(fn: Callable[..., torch.Tensor]) -> Builder:
    def build(op: Op, mk: _Maker) -> Thunk:
        shape, dev, dt = tuple(op.out_shapes[0]), mk.device, mk.dtype(op.dtype)
        return lambda: fn(shape, device=dev, dtype=dt)

    return build


def _arange(op: Op, mk: _Maker) -> Thunk:
    n, dev = op.out_shapes[0][0] if op.out_shapes[0] else 1, mk.device
    return lambda: torch.arange(n, device=dev)


def _triu(op: Op, mk: _Maker) -> Thunk:
    x = mk.rand(op.in_shapes[0], mk.dtype(op.dtype))
    return lambda: torch.triu(x)


# target (without overload where every overload replays alike) -> builder
NATIVE_PATHS: dict[str, Builder] = {
    "aten.mm": _gemm,
    "aten.addmm": _gemm,
    "aten.bmm": _gemm,
    "aten.baddbmm": _gemm,
    "aten.linalg_solve_triangular": _solve_triangular,
    "codesign.moe_experts": _moe_experts,
    "codesign.attention": _attention_sdpa,
    "codesign.gated_delta_rule_step": _gdn_step,
    "aten.cos": _unary(torch.cos),
    "aten.sin": _unary(torch.sin),
    "aten.exp": _unary(torch.exp),
    "aten.neg": _unary(torch.neg),
    "aten.rsqrt": _unary(torch.rsqrt),
    "aten.reciprocal": _unary(torch.reciprocal),
    "aten.sigmoid": _unary(torch.sigmoid),
    "aten.silu": _unary(F.silu),
    "aten.softplus": _unary(F.softplus),
    "aten.bitwise_not": _unary(torch.bitwise_not, "bool"),
    "aten._softmax": _unary(lambda x: torch.softmax(x, -1)),
    "aten.cumsum": _unary(lambda x: torch.cumsum(x, -1)),
    "aten.pow.Tensor_Scalar": _unary(lambda x: x.pow(2)),
    "aten.pow.Scalar": _pow_scalar,
    "aten.add": _binary(torch.add),
    "aten.sub": _binary(torch.sub),
    "aten.mul": _binary(torch.mul),
    "aten.div": _binary(torch.div),
    "aten.masked_fill": _masked_fill,
    "aten.mean": _reduction(torch.mean),
    "aten.sum": _reduction(torch.sum),
    "aten.topk": _topk,
    "aten.convolution": _convolution,
    "aten._to_copy": _to_copy,
    "aten.clone": _clone,
    "aten.copy_": _copy_,
    "aten.cat": _cat,
    "aten.constant_pad_nd": _pad,
    "aten.embedding": _embedding,
    "aten.gather": _gather,
    "aten.scatter_.value": _scatter_value,
    "aten.arange": _arange,
    "aten.zeros": _factory(torch.zeros),
    "aten.new_zeros": _factory(torch.zeros),
    "aten.ones": _factory(torch.ones),
    "aten.empty": _factory(torch.empty),
    "aten.triu": _triu,
}


# Binary element-wise targets whose recorded op may hold one tensor operand, the other a Python
# scalar (an RMSNorm's `+ eps`): each call wraps the scalar into a 0-dim tensor and promotes types, a
# dispatch path of its own (cold on a 2-vCPU AMD EPYC host: 21 us against 10 us for two tensors),
# so its per-call cost is measured and charged apart (`cost_key`).
SCALAR_OPERAND_TARGETS = ("aten.add", "aten.sub", "aten.mul", "aten.div")


def cost_key(op: Op) -> str:
    """The key of an op's per-call cost in a calibration overlay (`eager.ops`): its target, and
    for a binary element-wise op with one tensor operand the target with "[scalar]" appended."""
    if len(op.in_shapes) == 1 and op.target.rsplit(".", 1)[0] in SCALAR_OPERAND_TARGETS:
        return op.target + "[scalar]"
    return op.target


def native_path(target: str) -> Builder | None:
    """The builder for a traced target ('aten.pow.Scalar', 'codesign.attention.default'), or None:
    the exact target first, then without its overload name."""
    parts = target.split(".")
    for n in range(len(parts), 1, -1):
        b = NATIVE_PATHS.get(".".join(parts[:n]))
        if b is not None:
            return b
    return None


def build(op: Op, device: torch.device, float_dtype: torch.dtype = torch.float32, seed: int = 0,
          attention_impl: str = "sdpa", moe_impl: str = "model") -> Thunk:
    """A zero-argument callable that runs `op` natively with seeded tensors of its recorded shapes.

    `attention_impl`: "sdpa" (torch's fused kernels) or "model" (the project's own kernel);
    `moe_impl`: "model" (the project's `moe_experts`, a loop over experts) or "grouped"
    (`torch._grouped_mm`)."""
    if op.kind == "collective":
        raise CodesignError(f"replay: {op.name}: collectives are inserted by the mapping; replay the traced graph")
    if attention_impl not in ("sdpa", "model") or moe_impl not in ("model", "grouped"):
        raise CodesignError(f"replay: unknown implementation {attention_impl!r} / {moe_impl!r}; "
                            "expected attention sdpa|model and moe model|grouped")
    builder = native_path(op.target)
    if attention_impl == "model" and op.target.startswith("codesign.attention"):
        builder = _attention_model
    if moe_impl == "grouped" and op.target.startswith("codesign.moe_experts"):
        builder = _moe_grouped
    if builder is None:
        raise CodesignError(f"replay: {op.name}: no native path for {op.target} (kind {op.kind})")
    return builder(op, _Maker(device, float_dtype, seed))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """The clock timed regions use on `device` (see the module docstring)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def clock_name(device: torch.device) -> str:
    return "thread CPU time" if clock(device) is time.thread_time else "wall time"


def time_fn(fn: Thunk, device: torch.device, warmup: int = 2, repeats: int = 5, inner: int = 1,
            scrub: Thunk | None = None) -> float:
    """Median seconds of one call of `fn`: `warmup` calls discarded, then `repeats` timed regions of
    `inner` calls each, bracketed by a device sync, with the garbage collector off (`no_gc`).
    `scrub`, if given, runs untimed before each timed region (a cold-call benchmark,
    `codesign.native.microbench.Scrub`)."""
    now = clock(device)
    with torch.no_grad(), no_gc():
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            if scrub is not None:
                scrub()
                _sync(device)
            t0 = now()
            for _ in range(inner):
                fn()
            _sync(device)
            times.append((now() - t0) / inner)
    return statistics.median(times)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The garbage collector off inside (a collection would land in whichever timed region
    allocates when it triggers), restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class ReplayedOp:
    node: int
    name: str
    target: str
    kind: str
    seconds: float  # median of one call x the op's repeat


def _signature(op: Op) -> tuple:
    return (op.target, op.in_shapes, op.out_shapes, op.dtype, op.gemm, op.tokens_per_expert)


def replay_ops(ops: list[tuple[int, Op]], device: str | torch.device = "cpu", float_dtype: torch.dtype = torch.float32,
               warmup: int = 2, repeats: int = 5, seed: int = 0, attention_impl: str = "sdpa", moe_impl: str = "model",
               progress: Callable[[int, int], None] | None = None) -> list[ReplayedOp]:
    """Time (node, op) pairs natively. Ops with the same target and shapes (the layers of one kind)
    are timed once; each op's tensors are freed before the next is built."""
    dev = torch.device(device)
    seen: dict[tuple, float] = {}
    out: list[ReplayedOp] = []
    nodes = list(ops)
    for i, (n, op) in enumerate(nodes):
        key = _signature(op)
        t = seen.get(key)
        if t is None:
            fn = build(op, dev, float_dtype, seed, attention_impl, moe_impl)
            t = seen[key] = time_fn(fn, dev, warmup, repeats)
            del fn
        out.append(ReplayedOp(n, op.name, op.target, op.kind, t * max(op.repeat, 1)))
        if progress:
            progress(i + 1, len(nodes))
    return out


def replay_graph(g: nx.DiGraph, device: str | torch.device = "cpu", float_dtype: torch.dtype = torch.float32,
                 warmup: int = 2, repeats: int = 5, seed: int = 0, attention_impl: str = "sdpa", moe_impl: str = "model",
                 progress: Callable[[int, int], None] | None = None) -> list[ReplayedOp]:
    """Time every op of a traced graph natively (`replay_ops` over its nodes)."""
    return replay_ops(list(g.nodes(data="op")), device, float_dtype, warmup, repeats, seed, attention_impl, moe_impl,
                      progress)


def by_kind(replayed: list[ReplayedOp]) -> dict[str, float]:
    """Seconds per op kind, summed."""
    total: dict[str, float] = {}
    for r in replayed:
        total[r.kind] = total.get(r.kind, 0.0) + r.seconds
    return dict(sorted(total.items()))
