"""Microbenchmarks of the host device: the kernel-level measurements that calibration turns into an
efficiency overlay (`codesign.native.calibrate`). Nothing here runs a model end to end.

Each benchmark returns seconds per call (median of `repeats` timed regions after a discarded
warm-up, `codesign.native.replay.time_fn`), with seeded inputs. The per-call costs of small ops
(`module_ops` and the fused kernels at tiny shapes) are timed **cold**: before each timed call a
`Scrub` runs untimed — `SCRUB_OPS` other small ops (unary ops and views) and, if `SCRUB_BYTES`
is set, a pass over that much memory — because in a model every op follows different ops, and a
call repeated back to back finds its code and branch history in the caches (a named assumption:
on the reference VM warm calls are ~1.5-2x faster than cold ones). No data pass by default: a tiny
model's weights and caches stay in the L2 between its ops.

* `gemm(m, n, k)` — `torch.matmul` (M, K) x (K, N);
* `stream_copy(nbytes)` — a copy of a buffer far larger than the last-level cache (read + write);
* `vector_mul(numel)` — element-wise `torch.mul` of two cache-resident vectors;
* `attention(t, s, heads, dim, kv_heads)` — the project's own `codesign::attention` kernel (what
  native runs use), GQA when `kv_heads` < `heads` (its extra head expansion is part of the call);
* `moe_experts(tokens, experts, ...)` — the project's `codesign::moe_experts` with a given number of
  active experts (its per-call and per-expert costs);
* `gdn_step(...)` — the project's fused GatedDeltaNet decode step (more value than key heads, as
  every GatedDeltaNet model has, so the head expansion is part of the call);
* `module_ops(...)` — the project's RMSNorm and dense SwiGLU MLP at one token: seconds per aten
  dispatch (views included) of the call (eager torch's per-op cost: dispatch, allocation, the
  Python between ops).
"""

from __future__ import annotations

import torch

from codesign.native.replay import time_fn


SCRUB_OPS = 100  # small unary ops and views, eight kinds
SCRUB_BYTES = 0  # see the module docstring
COLD_REPEATS = 5  # cold calls are timed one by one: this many times more repeats


class Scrub:
    """Untimed work between cold calls: other small ops (unary ops, views, reductions) and a
    pass over a buffer the size of the L2."""

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


def cold(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of single calls of `fn`, each after an untimed `Scrub`."""
    return time_fn(fn, device, warmup=3, repeats=repeats * COLD_REPEATS, scrub=Scrub(device))


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


def attention(t: int, s: int, heads: int, dim: int, device: torch.device, dtype: torch.dtype, repeats: int,
              kv_heads: int | None = None) -> float:
    from codesign.models import kernels

    g = torch.Generator().manual_seed(0)
    q = _rand(g, 1, heads, t, dim, device=device, dtype=dtype)
    hkv = kv_heads or heads
    k, v = _rand(g, 1, hkv, s, dim, device=device, dtype=dtype), _rand(g, 1, hkv, s, dim, device=device, dtype=dtype)
    scale = kernels.default_scale(dim)
    call = lambda: kernels.attention(q, k, v, s - t, 0, scale, None)  # noqa: E731
    if t * s <= 4096:  # a tiny call: its per-call cost, timed cold
        return cold(call, device, repeats)
    return time_fn(call, device, 2, repeats)


def moe_experts(tokens: int, active: int, experts: int, hidden: int, width: int, device: torch.device,
                dtype: torch.dtype, repeats: int) -> float:
    """One `moe_experts` call with `tokens` tokens at top-1 spread over `active` experts."""
    from codesign.models import kernels

    g = torch.Generator().manual_seed(0)
    x = _rand(g, tokens, hidden, device=device, dtype=dtype)
    ids = (torch.arange(tokens) % active).reshape(tokens, 1).to(device)
    w = torch.ones(tokens, 1, device=device, dtype=dtype)
    wgu = _rand(g, experts, 2 * width, hidden, device=device, dtype=dtype)
    wd = _rand(g, experts, hidden, width, device=device, dtype=dtype)
    return cold(lambda: kernels.moe_experts(x, ids, w, wgu, wd, None, None, "silu"), device, repeats)


def gdn_step(batch: int, key_heads: int, heads: int, dk: int, dv: int, device: torch.device, dtype: torch.dtype,
             repeats: int) -> float:
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
    return cold(lambda: step(q, k, v, decay, beta, state), device, repeats)


def module_ops(hidden: int, width: int, device: torch.device, dtype: torch.dtype, repeats: int) -> tuple[float, int]:
    """(seconds per aten dispatch, dispatches) of the project's RMSNorm + SwiGLU MLP at one token."""
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
    t = cold(lambda: block(x), device, repeats)
    n = count_module(block, x)
    return t / n, n
