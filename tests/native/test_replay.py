"""Replay: every op kind and target the tracer emits for the tiny configs has a native path, and
running it gives tensors of the recorded output shapes."""

from __future__ import annotations

import collections

import pytest
import torch

import codesign as cs
from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.native.replay import build, by_kind, expert_ids, native_path, reduced_dims, replay_graph
from codesign.spec_files import available

TRACED_KINDS = {"gemm", "grouped_gemm", "attention", "vector", "memory"}


@pytest.fixture(scope="module")
def tiny_ops() -> dict[tuple, Op]:
    """One op per distinct (target, shapes) over every tiny config, prefill and decode."""
    ops: dict[tuple, Op] = {}
    for name in available("model_graphs"):
        cfg = cs.load_model(name).tiny()
        for phase, kw in (("prefill", dict(batch=1, tokens=20, context=0)), ("decode", dict(batch=2, context=21))):
            g = cs.trace(cfg, phase=phase, **kw)
            for _, op in g.nodes(data="op"):
                ops.setdefault((op.target, op.in_shapes, op.out_shapes, op.tokens_per_expert), op)
    return ops


def test_every_kind_and_target_has_a_native_path(tiny_ops):
    kinds = collections.Counter(op.kind for op in tiny_ops.values())
    assert set(kinds) == TRACED_KINDS  # the tracer emits every kind but collectives (the mapping's)
    missing = sorted({op.target for op in tiny_ops.values() if native_path(op.target) is None})
    assert missing == []


def test_replayed_ops_produce_the_recorded_shapes(tiny_ops):
    cpu = torch.device("cpu")
    with torch.no_grad():
        for op in tiny_ops.values():
            out = build(op, cpu)()
            first = out[0] if isinstance(out, (tuple, list)) else out
            assert tuple(first.shape) == tuple(op.out_shapes[0]), (op.target, op.in_shapes)


def test_attention_sdpa_and_model_kernel_agree():
    """The SDPA path and the project's own kernel compute the same causal attention with an offset."""
    op = Op("a/attn", "codesign.attention.default", "attention", "attention", 0, "full_attention+dense",
            "prefill", ((1, 4, 5, 16), (1, 2, 9, 16), (1, 2, 9, 16)), ((1, 4, 5, 16),), "float32")
    a = build(op, torch.device("cpu"), seed=3)()
    b = build(op, torch.device("cpu"), seed=3, attention_impl="model")()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_expert_ids_realise_the_counts_with_distinct_experts_per_token():
    tpe = (5, 0, 3, 8, 8, 0, 4, 4)  # 32 slots = 16 tokens x top-2
    ids = expert_ids(tpe, 16, 2)
    assert ids.shape == (16, 2)
    assert torch.bincount(ids.reshape(-1), minlength=8).tolist() == list(tpe)
    assert bool((ids[:, 0] != ids[:, 1]).all())


def test_expert_ids_rescale_counts_of_another_batch():
    ids = expert_ids((10, 30, 0, 20), 6, 2)  # 60 counted, 12 slots: 2, 6 -> capped at 6 tokens, 0, 4
    counts = torch.bincount(ids.reshape(-1), minlength=4).tolist()
    assert sum(counts) == 12 and counts[2] == 0 and max(counts) <= 6


def test_reduced_dims():
    assert reduced_dims((2, 3, 64), (2, 3, 1)) == ([2], True)
    assert reduced_dims((2, 3, 64), (2, 3)) == ([2], False)
    assert reduced_dims((4, 8, 5), (4, 5)) == ([1], False)


def test_unknown_target_is_refused_by_name():
    op = Op("x/fft", "aten.fft_r2c.default", "vector", "other", 0, "x", "decode", ((4,),), ((3,),), "float32")
    with pytest.raises(CodesignError, match="no native path for aten.fft_r2c.default"):
        build(op, torch.device("cpu"))


def test_replay_graph_times_every_op_and_scales_loops():
    cfg = cs.load_model("qwen3.5-35b-a3b").tiny()
    g = cs.trace(cfg, phase="prefill", batch=1, tokens=24, context=0)
    rows = replay_graph(g, "cpu", warmup=0, repeats=1)
    assert len(rows) == g.number_of_nodes()
    assert all(r.seconds > 0 for r in rows)
    assert set(by_kind(rows)) == {op.kind for _, op in g.nodes(data="op")}
    assert any(g.nodes[r.node]["op"].repeat > 1 for r in rows)  # the chunk loop is in the replay


def test_decode_attention_packs_gqa_heads_exactly():
    """Decode SDPA with a KV group's query heads as rows equals the project's kernel."""
    op = Op("a/attn", "codesign.attention.default", "attention", "attention", 0, "full_attention+dense",
            "decode", ((2, 8, 1, 16), (2, 2, 11, 16), (2, 2, 11, 16)), ((2, 8, 1, 16),), "float32")
    a = build(op, torch.device("cpu"), seed=5)()
    b = build(op, torch.device("cpu"), seed=5, attention_impl="model")()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_grouped_experts_equal_per_expert_matmuls():
    """moe_impl='grouped' computes each expert's SiLU-gated FFN over its own tokens."""
    import torch.nn.functional as F

    tpe = (3, 0, 2, 3)  # 8 slots = 4 tokens x top-2
    op = Op("e/experts", "codesign.moe_experts.default", "grouped_gemm", "moe_experts", 0, "full_attention+moe",
            "prefill", ((4, 16), (4, 2), (4, 2), (4, 24, 16), (4, 16, 12)), ((4, 16),), "float32",
            tokens_per_expert=tpe)
    run = build(op, torch.device("cpu"), seed=2, moe_impl="grouped")
    out = run()
    assert out.shape == (8, 16)
    rows = [0, 3, 3, 5, 8]
    named = dict(zip(run.__code__.co_freevars, (c.cell_contents for c in run.__closure__)))
    x, w1, w2 = named["xs"], named["wgu"], named["wd"]
    ref = []
    for e in range(4):
        h = x[rows[e]:rows[e + 1]] @ w1[e]
        g, u = h.chunk(2, -1)
        ref.append((F.silu(g) * u) @ w2[e])
    torch.testing.assert_close(out, torch.cat(ref), rtol=1e-4, atol=1e-5)
