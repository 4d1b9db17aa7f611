"""One layer of a mixed step: the recorded segments of its groups merged into one.

A continuous-batching engine runs the groups of a step (decodes, prefill chunks, verify steps)
through each layer together: every projection, norm and expert GEMM is one kernel over all the
step's tokens (weights are read once), and attention is one variable-length kernel over every
sequence (FlashAttention's varlen path, FlashInfer's batch attention). So the merged segment takes
the first group's op list and adds the other groups' work op by op:

* ops are matched by aligning the groups' op sequences on (target, name) (difflib's longest
  matching blocks): groups of one phase align completely; a decode group and a prefill group
  differ where the model runs different kernels (GatedDeltaNet's fused recurrent step for decodes
  vs its chunked path for prefills), and those unmatched ops stay separate ops (their own kernels),
  wired to the matched ops around them; the later groups' unmatched attention ops of one key are one
  such op (every prompt chunk's attention in one kernel; other unmatched kinds, such as the chunked
  GatedDeltaNet path, stay one op per group, which its wave-count rule reads shapes of). Attention ops align only within one phase: the engines'
  varlen kernel runs the decodes' rows (a KV-streaming, memory-bound part, the decode rule and its
  occupancy term) and a prompt chunk's rows (a compute-bound part on the prefill curve of the
  deployment's kernel, `cost.attention_kernel`) in one launch, and the model charges each part by its
  own rule, as two ops (one launch more than the engine's, a few microseconds a layer), rather than
  the chunk's FLOPs at the decode rate under the decode group's shapes;
* a matched op's FLOPs and bytes are summed over the groups' per-sequence work, and its
  batch-independent part counted once: each group's quantity is affine in its sequences,
  q = c + s * seqs (the tracer records batches 1 and 2, so c = 2 q(1) - q(2) is known exactly),
  and the merged op does max(c) + sum(q - c). Weight bytes are all c (read once per step); so are
  small per-step ops on weights (a norm's 1 + w);
* GEMM problems: rows (M) add up for token-parallel matmuls (batch 1); batched matmuls of one
  per-instance shape add their batch counts; any other mix keeps the larger problem's shape with the
  summed FLOPs (the cost model scales its padding by the FLOPs);
* shapes are the first group's (the mapping reads only their last dimension), but for attention:
  decode groups' merged op carries their summed batch over its mean cached length (what the decode
  occupancy term reads), prompt chunks' merged op one query row over the groups' FLOPs-weighted
  harmonic mean of keys per row (what the prefill length ramp reads; `_attention_shapes`);
  routed-expert token counts are re-drawn for the whole step by the tracer.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from codesign.graph.op import BYTE_CLASSES, Op
from codesign.graph.segment import Segment


def _combine(vals: list[float], consts: list[float]) -> float:
    """max(c) + sum(q - c): per-sequence work summed, the batch-independent part once."""
    return max(consts) + sum(v - c for v, c in zip(vals, consts))


def _bytes(ops: list[Op], consts: list[Op], attr: str) -> dict[str, float]:
    if len(ops) == 2:  # the common mix (decodes + one prefill chunk), the same sums written out
        a, b = getattr(ops[0], attr), getattr(ops[1], attr)
        ka, kb = getattr(consts[0], attr), getattr(consts[1], attr)
        out = {}
        for c in BYTE_CLASSES:
            ca, cb = ka.get(c, 0.0), kb.get(c, 0.0)
            out[c] = max(ca, cb) + ((a.get(c, 0.0) - ca) + (b.get(c, 0.0) - cb))
        return out
    return {c: _combine([getattr(o, attr).get(c, 0.0) for o in ops], [getattr(k, attr).get(c, 0.0) for k in consts])
            for c in BYTE_CLASSES}


def _gemm(ops: list[Op]) -> tuple[int, int, int, int] | None:
    shapes = [o.gemm for o in ops]
    if any(s is None for s in shapes):
        return None
    b0, _, n0, k0 = shapes[0]
    if all(s[0] == 1 and s[2] == n0 and s[3] == k0 for s in shapes):
        return (1, sum(s[1] for s in shapes), n0, k0)
    if all(s[1:] == shapes[0][1:] for s in shapes):
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    return max(shapes, key=lambda s: s[0] * s[1] * s[2] * s[3])


def causal_keys_per_row(q_len: int, k_len: int) -> float:
    """Mean keys a query row attends to in causal attention with its `q_len` queries at the end of
    `k_len` keys (a fresh prompt: k_len = q_len; a chunk after a cache: k_len > q_len)."""
    return max(1.0, k_len - (q_len - 1) / 2.0)


def _attention_shapes(ops: list[Op]) -> tuple:
    """Recorded shapes for several groups' attention ops of one phase merged into one, the first
    group's heads and head dims with what the cost model's shape-read terms need of the whole:

    * decodes: every group's sequences (the summed batch) over their sequence-weighted mean cached
      length, so that the decode occupancy term (batch x KV heads x KV splits) sees the whole batch;
    * prompt chunks: the first group's batch with one query row over L keys, L = sum(FLOPs) /
      sum(FLOPs_i / L_i) (the FLOPs-weighted harmonic mean of the groups' keys per query row, L_i =
      `causal_keys_per_row`), so that a length ramp rate x L / (L + half) charges the merged FLOPs
      what it charges the groups' FLOPs one by one.

    The first group's shapes where any group's are not (Q, K, V) as (B, heads, S, D)."""
    shapes = [o.in_shapes for o in ops]
    if any(len(s) < 3 or any(len(x) != 4 for x in s[:3]) for s in shapes):
        return ops[0].in_shapes
    (b, h, t, d), (_, hkv, _, dk), (_, _, _, dv) = shapes[0][:3]
    if ops[0].phase == "decode":
        b = sum(s[1][0] for s in shapes)
        keys = max(1, round(sum(s[1][0] * s[1][2] for s in shapes) / b))
    else:
        total = sum(o.flops for o in ops)
        weighted = sum(o.flops / causal_keys_per_row(s[0][2], s[1][2]) for o, s in zip(ops, shapes))
        if total <= 0 or weighted <= 0:
            return ops[0].in_shapes
        t, keys = 1, max(1, round(total / weighted))
    return ((b, h, t, d), (b, hkv, keys, dk), (b, hkv, keys, dv)) + tuple(shapes[0][3:])


def merge_ops(ops: list[Op], consts: list[Op]) -> Op:
    """Matched ops of several groups as one kernel; `consts` are their batch-independent parts
    (see module docstring)."""
    if len(ops) == 1:
        return ops[0]
    a = ops[0]
    tpe = a.tokens_per_expert
    if tpe is not None:
        tpe = tuple(sum(t) for t in zip(*(o.tokens_per_expert for o in ops)))
    shapes = a.in_shapes
    if a.kind == "attention" and a.block != "mla" and any(o.in_shapes != shapes for o in ops[1:]):
        shapes = _attention_shapes(ops)
    # a new Op positionally: the first group's fields but the merged work
    return Op(a.name, a.target, a.kind, a.block, a.layer, a.layer_type, a.phase, shapes, a.out_shapes, a.dtype,
              _combine([o.flops for o in ops], [k.flops for k in consts]), _bytes(ops, consts, "bytes_read"),
              _bytes(ops, consts, "bytes_written"), max(o.repeat for o in ops), _gemm(ops), tpe,
              a.expert_weight_bytes, a.expert_flops_per_token, a.collective)


def _key(op: Op) -> tuple[str, str, str]:
    """What aligns two groups' ops: (target, name), and for attention the phase too (see module
    docstring: a prefill chunk's attention and the decodes' are costed by their own rules)."""
    return (op.target, op.name, op.phase if op.kind == "attention" else "")


_ALIGNMENTS: dict[tuple, list] = {}


def _alignment(a: tuple, b: tuple) -> list:
    """difflib's matching blocks of two op-key sequences, memoised: they depend on the segments'
    structure only, which a step shape's groups share with the shapes before it."""
    key = (a, b)
    hit = _ALIGNMENTS.get(key)
    if hit is None:
        if len(_ALIGNMENTS) >= 256:
            _ALIGNMENTS.clear()
        hit = _ALIGNMENTS[key] = SequenceMatcher(None, list(a), list(b), autojunk=False).get_matching_blocks()
    return hit


def merge_segments(segments: list[Segment], consts: list[Segment]) -> Segment:
    """One segment doing the work of all `segments` (one layer kind, one group each); `consts[i]`
    is segment i at zero sequences (its batch-independent part, op for op)."""
    if len(segments) == 1:
        return segments[0]
    base = segments[0]
    members: list[list[tuple[Op, Op]]] = [[(op, k)] for op, k in zip(base.ops, consts[0].ops)]
    edges = set(base.edges)
    entries = set(base.entries)
    # attention ops the first group does not run, by key: where the later groups' match (several
    # prompt chunks' attention beside a decode group), they are one kernel too
    extra: dict[tuple[str, str, str], int] = {}
    for seg, const in zip(segments[1:], consts[1:]):
        index: dict[int, int] = {}  # op of seg -> merged op
        for block in _alignment(tuple([_key(o) for o in base.ops]), tuple([_key(o) for o in seg.ops])):
            for j in range(block.size):
                index[block.b + j] = block.a + j
                members[block.a + j].append((seg.ops[block.b + j], const.ops[block.b + j]))
        taken: set[int] = set()
        for j, op in enumerate(seg.ops):
            if j not in index:  # a kernel the first group does not run
                at = extra.get(_key(op)) if op.kind == "attention" else None
                if at is None or at in taken:
                    at = extra[_key(op)] = len(members)
                    members.append([])
                members[at].append((op, const.ops[j]))
                index[j] = at
                taken.add(at)
        edges.update((index[a], index[b]) for a, b in seg.edges if index[a] != index[b])
        entries.update(index[e] for e in seg.entries)
    ops = [merge_ops([o for o, _ in m], [k for _, k in m]) for m in members]
    return Segment(ops=ops, edges=sorted(edges), entries=sorted(entries), exit=base.exit, params=base.params,
                   wall_s=0.0)


__all__ = ["causal_keys_per_row", "merge_segments", "merge_ops"]
