"""Microbenchmarks of the host device: the kernel-level measurements that calibration turns into an
efficiency overlay (`codesign.native.calibrate`). Nothing here runs a model end to end.

Each benchmark returns seconds per call (median of `repeats` timed regions after a discarded
warm-up, `codesign.native.replay.time_fn`), with seeded inputs; `rewarm`, a difference of two
timings, is the median of paired differences. The calibration runs them in several passes and
keeps each field's median (`codesign.native.calibrate.merge`). The per-call costs of small ops
(`module_ops` and the fused kernels at tiny shapes) are timed **cold**, because in a model every op
follows different ops, and a call repeated back to back finds its code and branch history in the
caches (on the reference VM warm calls are ~1.5-2x faster than cold ones). Two scrubs, each run
untimed before every timed call (which one applies to which op is `codesign.native.calibrate`'s
named assumption):

* `Scrub` (light): `SCRUB_OPS` other small ops (unary ops and views) and, if `SCRUB_BYTES` is set,
  a pass over that much memory. What a light aten op meets in a model: its own kind recurs within
  a few ops, and the dispatcher and TensorIterator code it shares with every other element-wise op
  stays hot. No data pass by default: a tiny model's weights and caches stay in the L2.
* `VocabularyScrub` (heavy): one call of every other op kind of the tracer's vocabulary (each aten
  target at its smallest tiny-config shape, `codesign.native.calibrate.tiny_op_shapes`, and the
  fused kernels at the tiny shapes below). What a heavy kernel meets in a model: it runs once per
  layer, and between two calls the layer's other kernels (oneDNN's convolution, the other Python
  custom ops) evict the code that only it uses (the custom-op dispatch machinery and its Python
  body, a oneDNN primitive's setup).

* `gemm(m, n, k)` — `torch.matmul` (M, K) x (K, N);
* `stream_copy(nbytes)` — a copy of a buffer far larger than the last-level cache (read + write);
* `vector_mul(numel)` — element-wise `torch.mul` of two cache-resident vectors;
* `attention_call`, `moe_experts_call`, `gdn_step_call` — the fused kernels' calls (thunks) at given
  shapes: what the benchmarks below time and what `VocabularyScrub` runs;
* `attention(t, s, heads, dim, kv_heads)` — the project's own `codesign::attention` kernel (what
  native runs use), GQA when `kv_heads` < `heads` (its extra head expansion is part of the call);
* `moe_experts(tokens, experts, ...)` — the project's `codesign::moe_experts` with a given number of
  active experts and routes per token (its per-call, per-expert and per-routed-token costs);
* `gdn_step(...)` — the project's fused GatedDeltaNet decode step (more value than key heads, as
  every GatedDeltaNet model has, so the head expansion is part of the call);
* `view_ops(...)` — Python-level view ops (view, transpose, select, t, expand, slice, unsqueeze):
  seconds per view dispatch (no kernel, no allocation);
* `module_ops(...)` — the project's RMSNorm and dense SwiGLU MLP at one token: seconds per kernel
  dispatch of the call, its views taken out at the `view_ops` figure (eager torch's per-op cost:
  dispatch, allocation, the Python between ops);
* `rewarm(block, heavy)` — that block right after one call of each heavy kernel minus the block
  after the light scrub: what light ops pay after a heavy kernel evicted their dispatch path.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from codesign.native.replay import _sync, time_fn


SCRUB_OPS = 100  # small unary ops and views, eight kinds
SCRUB_BYTES = 0  # see the module docstring
COLD_REPEATS = 5  # cold calls are timed one by one: this many times more repeats


class Scrub:
    """Light untimed work between cold calls: other small ops (unary ops, views) and, if
    `SCRUB_BYTES` is set, a pass over that much memory."""

    def __init__(self, device: torch.device) -> None:
        g = torch.Generator().manual_seed(1)
        self.xs = [torch.randn(64, generator=g).to(device) for _ in range(8)]
        self.fns = [torch.sin, torch.cos, torch.exp, torch.neg, torch.sigmoid, torch.tanh, torch.abs, torch.relu]
        self.buf = torch.zeros(SCRUB_BYTES // 4, device=device)

    def __call__(self) -> None:
        xs, fns = self.xs, self.fns
        for i in range(SCRUB_OPS):
            if i % 3:
                fns[i % 8](xs[i % 8])
            else:
                xs[i % 8].view(8, 8).transpose(0, 1)
        if self.buf.numel():
            self.buf.add_(1.0)


class VocabularyScrub:
    """Heavy untimed work between cold calls: one call of each op of a vocabulary (name -> thunk)
    except `skip`, the op being timed (`codesign.native.calibrate.vocabulary`)."""

    def __init__(self, vocabulary: dict[str, Callable[[], object]], skip: str) -> None:
        if skip not in vocabulary:
            raise ValueError(f"VocabularyScrub: {skip!r} is not in the vocabulary")
        self.names = [name for name in vocabulary if name != skip]
        self.fns = [vocabulary[name] for name in self.names]

    def __call__(self) -> None:
        for fn in self.fns:
            fn()


def cold(fn, device: torch.device, repeats: int, scrub: Callable[[], object] | None = None) -> float:
    """Median seconds of single calls of `fn`, each after an untimed scrub (default: `Scrub`)."""
    return time_fn(fn, device, warmup=3, repeats=repeats * COLD_REPEATS, scrub=scrub or Scrub(device))


def cold_call(block: Callable[[], object], scrub: Callable[[], object], device: torch.device, now: Callable[[], float],
              before: Callable[[], object] | None = None) -> float:
    """Seconds of one call of `block` on `now`'s clock, after an untimed `scrub` and, if given, an
    untimed call of `before`."""
    scrub()
    if before is not None:
        before()
    _sync(device)
    t0 = now()
    block()
    _sync(device)
    return now() - t0


def _rand(gen: torch.Generator, *shape: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device, dtype)


def gemm(m: int, n: int, k: int, device: torch.device, dtype: torch.dtype, repeats: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    a, b = _rand(g, m, k, device=device, dtype=dtype), _rand(g, k, n, device=device, dtype=dtype)
    inner = max(1, int(2e7 // max(1, 2 * m * n * k)))  # tiny shapes: several calls per timed region
    return time_fn(lambda: torch.matmul(a, b), device, warmup=2, repeats=repeats, inner=inner)


def stream_copy(nbytes: int, device: torch.device, repeats: int) -> float:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return time_fn(lambda: dst.copy_(src), device, warmup=1, repeats=repeats)


def vector_mul(numel: int, device: torch.device, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(numel, generator=g).to(device), torch.rand(numel, generator=g).to(device)
    out = torch.empty_like(x)
    return time_fn(lambda: torch.mul(x, y, out=out), device, warmup=2, repeats=repeats, inner=20)


def attention_call(t: int, s: int, heads: int, dim: int, device: torch.device, dtype: torch.dtype,
                   kv_heads: int | None = None) -> Callable[[], torch.Tensor]:
    """`codesign::attention` of t queries over s keys (causal after s - t cached)."""
    from codesign.models import kernels

    g = torch.Generator().manual_seed(0)
    q = _rand(g, 1, heads, t, dim, device=device, dtype=dtype)
    hkv = kv_heads or heads
    k, v = _rand(g, 1, hkv, s, dim, device=device, dtype=dtype), _rand(g, 1, hkv, s, dim, device=device, dtype=dtype)
    scale = kernels.default_scale(dim)
    return lambda: kernels.attention(q, k, v, s - t, 0, scale, None)


def attention(t: int, s: int, heads: int, dim: int, device: torch.device, dtype: torch.dtype, repeats: int,
              kv_heads: int | None = None, scrub: Callable[[], object] | None = None) -> float:
    call = attention_call(t, s, heads, dim, device, dtype, kv_heads)
    if t * s <= 4096:  # a tiny call: its per-call cost, timed cold
        return cold(call, device, repeats, scrub)
    return time_fn(call, device, 2, repeats)


def moe_experts_call(tokens: int, active: int, experts: int, hidden: int, width: int, device: torch.device,
                     dtype: torch.dtype, top_k: int = 1) -> Callable[[], torch.Tensor]:
    """One `moe_experts` call with `tokens` tokens, each routed to `top_k` distinct experts, spread
    evenly over `active` experts (token i to experts i, i + 1, ... mod `active`)."""
    from codesign.models import kernels

    g = torch.Generator().manual_seed(0)
    x = _rand(g, tokens, hidden, device=device, dtype=dtype)
    ids = ((torch.arange(tokens)[:, None] + torch.arange(top_k)[None, :]) % active).to(device)
    w = torch.full((tokens, top_k), 1.0 / top_k, device=device, dtype=dtype)
    wgu = _rand(g, experts, 2 * width, hidden, device=device, dtype=dtype)
    wd = _rand(g, experts, hidden, width, device=device, dtype=dtype)
    return lambda: kernels.moe_experts(x, ids, w, wgu, wd, None, None, "silu")


def moe_experts(tokens: int, active: int, experts: int, hidden: int, width: int, device: torch.device,
                dtype: torch.dtype, repeats: int, scrub: Callable[[], object] | None = None, top_k: int = 1) -> float:
    return cold(moe_experts_call(tokens, active, experts, hidden, width, device, dtype, top_k), device, repeats,
                scrub)


def gdn_step_call(batch: int, key_heads: int, heads: int, dk: int, dv: int, device: torch.device,
                  dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """The fused decode step with `key_heads` query/key heads serving `heads` value heads."""
    from codesign.models import gated_deltanet  # noqa: F401  (registers the op)

    g = torch.Generator().manual_seed(0)
    q, k = (_rand(g, batch, 1, key_heads, dk, device=device, dtype=dtype),
            _rand(g, batch, 1, key_heads, dk, device=device, dtype=dtype))
    v = _rand(g, batch, 1, heads, dv, device=device, dtype=dtype)
    decay = -torch.rand(batch, 1, heads, generator=g).to(device, dtype)
    beta = torch.rand(batch, 1, heads, generator=g).to(device, dtype)
    state = torch.zeros(batch, heads, dk, dv, device=device)
    step = torch.ops.codesign.gated_delta_rule_step
    return lambda: step(q, k, v, decay, beta, state)


def gdn_step(batch: int, key_heads: int, heads: int, dk: int, dv: int, device: torch.device, dtype: torch.dtype,
             repeats: int, scrub: Callable[[], object] | None = None) -> float:
    return cold(gdn_step_call(batch, key_heads, heads, dk, dv, device, dtype), device, repeats, scrub)


def view_call(device: torch.device) -> Callable[[], object]:
    """Python-level view ops of the kinds the models dispatch between recorded ops (view, transpose,
    select, t, expand, slice, unsqueeze) on a small tensor: one call of each."""
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0)).to(device)

    def views() -> None:
        x.view(32, 16)
        x.transpose(0, 1)
        x[0].t()
        x.expand(2, 4, 8, 16)
        x[:, :4]
        x.unsqueeze(1)
    return views


def view_ops(device: torch.device, repeats: int) -> tuple[float, int]:
    """(seconds per view dispatch, view dispatches of one call) of `view_call`, timed cold."""
    from codesign.native.dispatch import count_call

    call = view_call(device)
    n, views = count_call(call)
    if n != views:
        raise AssertionError(f"view_call: {n - views} of its {n} dispatches are not views")
    return cold(call, device, repeats) / n, n


def module_block(hidden: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    """(call, aten dispatches of one call) of the project's RMSNorm + SwiGLU MLP at one token."""
    from codesign.native.dispatch import count_module
    from codesign.models.config import ModelConfig
    from codesign.models.mlp import MLP
    from codesign.models.norms import BlockNorm

    cfg = ModelConfig(name="microbench", sources=["microbenchmark"], hidden_size=hidden, num_layers=1, vocab_size=8,
                      max_position_embeddings=8, intermediate_size=width,
                      attention={"num_heads": 1, "num_kv_heads": 1, "head_dim": hidden})
    torch.manual_seed(0)
    block = torch.nn.Sequential(BlockNorm(hidden), MLP(cfg, 0)).to(device, dtype)
    x = torch.randn(1, 1, hidden).to(device, dtype)
    return (lambda: block(x)), count_module(block, x)


def module_ops(hidden: int, width: int, device: torch.device, dtype: torch.dtype, repeats: int,
               view_s: float = 0.0) -> tuple[float, int, int]:
    """(seconds per kernel dispatch, dispatches, of which views) of the project's RMSNorm + SwiGLU
    MLP at one token: the call's cold time less its views at `view_s` each, over its other dispatches."""
    from codesign.native.dispatch import count_call

    call, _ = module_block(hidden, width, device, dtype)
    n, views = count_call(call)
    return (cold(call, device, repeats) - views * view_s) / (n - views), n, views


def rewarm(block: Callable[[], object], heavy: dict[str, Callable[[], object]], device: torch.device,
           repeats: int) -> dict[str, float]:
    """Seconds a block of light ops costs more right after one call of each heavy kernel than after
    the light scrub alone: what the light ops after a heavy kernel pay to re-warm what it evicted.
    Paired: each sample times the block after the light scrub, then after the light scrub and one
    heavy call, and keeps the difference (a shared machine's slow drifts cancel); the median of
    `repeats` x `COLD_REPEATS` pairs after a discarded warm-up."""
    from codesign.native.replay import clock, no_gc

    now, light = clock(device), Scrub(device)

    def timed(before: Callable[[], object] | None) -> float:
        return cold_call(block, light, device, now, before)

    out = {}
    with torch.no_grad(), no_gc():
        for name, fn in heavy.items():
            for _ in range(3):
                timed(fn)
            out[name] = statistics.median(timed(fn) - timed(None) for _ in range(repeats * COLD_REPEATS))
    return out
