"""Mixed steps' attention (codesign.graph.mixed): the decodes' attention and the prompt chunks'
attention are two ops a layer, the chunks' one op with their summed FLOPs and the FLOPs-weighted
harmonic mean of their keys per row; checked against the groups traced alone."""

from __future__ import annotations

import pytest

from codesign.graph import trace
from codesign.graph.mixed import causal_keys_per_row
from codesign.graph.shape import Group, StepShape
from codesign.models import load_model

DECODES = Group(700, 1, 300)
PROMPTS = (Group(1, 150, 0), Group(1, 160, 0), Group(1, 512, 1024))  # the last: a chunk after a cache


def _attention(shape: StepShape, layer: int = 0) -> list:
    g = trace(load_model("qwen3-8b"), shape=shape)
    return [op for _, op in g.nodes(data="op") if op.kind == "attention" and op.layer == layer]


def test_decode_and_prompt_attention_are_separate_ops_and_prompts_are_one():
    mixed = _attention(StepShape((DECODES,) + PROMPTS))
    assert sorted(op.phase for op in mixed) == ["decode", "prefill"]
    dec = next(op for op in mixed if op.phase == "decode")
    pre = next(op for op in mixed if op.phase == "prefill")
    (alone_dec,) = _attention(StepShape((DECODES,)))
    # the decodes' op is theirs alone: its shapes, FLOPs and KV bytes
    assert dec.in_shapes == alone_dec.in_shapes and dec.flops == pytest.approx(alone_dec.flops)
    assert dec.bytes_read["kv_cache"] == pytest.approx(alone_dec.bytes_read["kv_cache"])
    # the prompts' op: their FLOPs summed, one query row over L keys, L the FLOPs-weighted harmonic mean
    alone = [_attention(StepShape((p,)))[0] for p in PROMPTS]
    flops = [op.flops for op in alone]
    assert pre.flops == pytest.approx(sum(flops))
    lens = [p.cached_tokens + p.new_tokens - (p.new_tokens - 1) / 2 for p in PROMPTS]  # keys per row, by hand
    assert [causal_keys_per_row(op.in_shapes[0][2], op.in_shapes[1][2]) for op in alone] == lens
    harmonic = sum(flops) / sum(f / n for f, n in zip(flops, lens))
    assert pre.in_shapes[0][2] == 1 and pre.in_shapes[1][2] == round(harmonic)


def test_one_prompt_keeps_its_own_shapes():
    mixed = _attention(StepShape((DECODES, PROMPTS[2])))
    (alone,) = _attention(StepShape((PROMPTS[2],)))
    pre = next(op for op in mixed if op.phase == "prefill")
    assert pre.in_shapes == alone.in_shapes and pre.flops == pytest.approx(alone.flops)


def test_decode_groups_attention_is_one_op_over_their_whole_batch():
    """Decode groups at different cached lengths (a served batch): one attention op whose shapes hold
    all 3 + 5 sequences over their sequence-weighted mean KV length (what the decode occupancy term
    reads), with the groups' FLOPs and KV bytes summed."""
    groups = (Group(3, 1, 100), Group(5, 1, 300))
    (merged,) = _attention(StepShape(groups))
    alone = [_attention(StepShape((g,)))[0] for g in groups]
    q, k, v = merged.in_shapes
    assert q[0] == k[0] == v[0] == 3 + 5
    assert k[2] == v[2] == round((3 * 101 + 5 * 301) / 8)  # each group's S = cached + 1
    assert k[1] == alone[0].in_shapes[1][1] and k[3] == alone[0].in_shapes[1][3]
    assert merged.flops == pytest.approx(sum(op.flops for op in alone))
    assert merged.bytes_read["kv_cache"] == pytest.approx(sum(op.bytes_read["kv_cache"] for op in alone))
