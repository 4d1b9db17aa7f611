"""Traced graphs against independent, analytical counts (the analytical formulas live only here)."""

import json

import networkx as nx
import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.graph import cache_bytes, totals, trace
from codesign.graph.router import ZipfRouter

GiB, MiB, KiB = 2**30, 2**20, 2**10


@pytest.fixture(scope="module", autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch_module=None):
    import os

    old = os.environ.get("CODESIGN_CACHE_DIR")
    os.environ["CODESIGN_CACHE_DIR"] = str(tmp_path_factory.mktemp("traces"))
    yield
    if old is None:
        os.environ.pop("CODESIGN_CACHE_DIR")
    else:
        os.environ["CODESIGN_CACHE_DIR"] = old


# Published parameter counts of the text decoder, and what "active" counts on each model card.
# Qwen3.5-397B-A17B: 396.35B / 16.3B active without the embedding table (reference table).
# Qwen3-235B-A22B: 235B / 22B activated counting the embedding table (Qwen3 technical report).
# DeepSeek-V3: 671B (MTP's 14B apart) / 37B activated (technical report; "37B" is rounded to whole
# billions, so the active check allows 1.5%).
PUBLISHED = [
    ("qwen3.5-397b-a17b", 396.35e9, 16.3e9, False, 0.01),
    ("qwen3-235b-a22b", 235e9, 22e9, True, 0.01),
    ("deepseek-v3", 671e9, 37e9, False, 0.015),
    ("llama-2-70b", 69e9, 69e9, True, 0.01),
]


@pytest.mark.parametrize("name,total,active,with_embedding,tol", PUBLISHED)
def test_parameter_counts_match_published(name, total, active, with_embedding, tol):
    cfg = cs.load_model(name)
    g = trace(cfg, "decode", batch=1, context=1024)
    assert g.graph["params_total"] == pytest.approx(total, rel=0.01)
    got = g.graph["params_active_with_embedding" if with_embedding else "params_active"]
    assert got == pytest.approx(active, rel=tol)
    assert g.graph["params_active_with_embedding"] - g.graph["params_active"] == pytest.approx(
        0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)


def _dense_decode_flops(cfg, L):
    """2 FLOPs per weight per token, plus attention 2*(d_qk + d_v) per (query, key) pair per head."""
    a = cfg.attention
    H, hd = cfg.hidden_size, a.head_dim
    proj = H * a.num_heads * hd * 2 + 2 * H * a.num_kv_heads * hd
    mlp = 3 * H * cfg.intermediate_size
    attn = 2 * a.num_heads * L * (2 * hd)
    return cfg.num_layers * (2 * (proj + mlp) + attn) + 2 * H * cfg.vocab_size


def test_dense_decode_flops_match_analytical():
    cfg = cs.load_model("llama-2-70b")
    for L in (1024, 4096):
        g = trace(cfg, "decode", batch=4, context=L)
        assert totals(g)["flops"] / 4 == pytest.approx(_dense_decode_flops(cfg, L), rel=0.02)


def test_moe_decode_flops_match_analytical():
    """Qwen3-235B-A22B: every token runs top_k of 128 experts; router 2*H*E; no shared expert."""
    cfg = cs.load_model("qwen3-235b-a22b")
    L, B = 32768, 16
    a, m = cfg.attention, cfg.moe
    H, hd = cfg.hidden_size, a.head_dim
    proj = H * a.num_heads * hd * 2 + 2 * H * a.num_kv_heads * hd
    experts = m.top_k * 3 * H * m.intermediate_size
    per_token = cfg.num_layers * (2 * (proj + experts + H * m.num_experts) + 2 * a.num_heads * L * 2 * hd) \
        + 2 * H * cfg.vocab_size
    g = trace(cfg, "decode", batch=B, context=L)
    assert totals(g)["flops"] / B == pytest.approx(per_token, rel=0.02)


def test_prefill_attention_is_causal():
    """Prefill of T tokens: T(T+1)/2 (query, key) pairs per head, not T^2."""
    cfg = cs.load_model("qwen3-8b")
    T = 2048
    g = trace(cfg, "prefill", batch=1, tokens=T, context=0)
    att = sum(op.flops for _, op in g.nodes(data="op") if op.kind == "attention")
    a = cfg.attention
    assert att == pytest.approx(cfg.num_layers * a.num_heads * T * (T + 1) / 2 * 2 * 2 * a.head_dim, rel=1e-9)


def test_qwen35_kv_and_state_bytes():
    cfg = cs.load_model("qwen3.5-397b-a17b")
    c = cache_bytes(cfg)
    # 15 full-attention layers x 2 KV heads x 256 dims x (K and V) x 2 bytes = 30 KiB per token
    assert c["kv_cache_bytes_per_token"] == 30 * KiB
    # 45 GatedDeltaNet layers x 64 value heads x 128 x 128 x 4 bytes = 180 MiB, plus the conv state
    la = cfg.linear_attention
    conv = 45 * la.conv_dim * (la.conv_kernel - 1) * 2  # conv state in the activation dtype (bf16)
    assert c["state_bytes_per_sequence"] == pytest.approx(180 * MiB + conv, rel=0.01)
    assert c["state_bytes_per_sequence"] >= 180 * MiB


def test_context_scaling_kv_linear_state_constant():
    cfg = cs.load_model("qwen3.5-397b-a17b")
    g1 = trace(cfg, "decode", batch=8, context=32768)
    g2 = trace(cfg, "decode", batch=8, context=65536)
    full = {"full_attention+moe"}
    gdn = {"linear_attention+moe"}
    kv1, kv2 = totals(g1, full)["read_kv_cache"], totals(g2, full)["read_kv_cache"]
    assert kv2 / kv1 == pytest.approx(2.0, rel=1e-3)  # KV reads grow linearly with context
    # each decode step reads 8 x 32768 x 30 KiB of KV cache
    assert kv1 == pytest.approx(8 * 32768 * 30 * KiB, rel=1e-3)
    s1, s2 = totals(g1, gdn)["read_state"], totals(g2, gdn)["read_state"]
    assert s1 == s2 and s1 >= 8 * 180 * MiB  # the recurrent state is read whole, whatever the context
    assert totals(g1, gdn)["read_kv_cache"] == 0


def test_expert_weight_bytes_follow_the_router():
    cfg = cs.load_model("qwen3.5-397b-a17b")
    g = trace(cfg, "decode", batch=64, context=4096)
    per_expert = 3 * cfg.hidden_size * cfg.moe.intermediate_size * 2  # bf16
    for _, op in g.nodes(data="op"):
        if op.kind == "grouped_gemm":
            assert sum(op.tokens_per_expert) == 64 * cfg.moe.top_k
            touched = sum(1 for c in op.tokens_per_expert if c)
            assert op.bytes_read["weight"] == pytest.approx(touched * per_expert)
    zipf = trace(cfg, "decode", batch=64, context=4096, router=ZipfRouter(alpha=1.2))
    w_u = totals(g, {"linear_attention+moe"})["read_weight"]
    w_z = totals(zipf, {"linear_attention+moe"})["read_weight"]
    assert w_z < w_u  # skewed routing concentrates on fewer experts


def test_trace_is_deterministic_and_cached():
    cfg = cs.load_model("qwen3-next-80b-a3b")
    a = trace(cfg, "decode", batch=32, context=8192, seed=3)
    b = trace(cfg, "decode", batch=32, context=8192, seed=3)
    assert [op.to_dict() for _, op in a.nodes(data="op")] == [op.to_dict() for _, op in b.nodes(data="op")]
    assert list(a.edges) == list(b.edges)
    c = trace(cfg, "decode", batch=32, context=8192, seed=4)
    assert [op.tokens_per_expert for _, op in a.nodes(data="op")] != [op.tokens_per_expert for _, op in c.nodes(data="op")]


def test_graph_is_a_connected_dag_from_embedding_to_head():
    g = trace(cs.load_model("qwen3.5-35b-a3b"), "prefill", batch=1, tokens=256)
    assert nx.is_directed_acyclic_graph(g)
    assert nx.is_weakly_connected(g)
    first = next(iter(nx.topological_sort(g)))
    assert g.nodes[first]["op"].layer_type == "embed"
    sinks = [g.nodes[n]["op"] for n in g if g.out_degree(n) == 0]
    # what nothing in the step reads again: the logits, and the write-back of caches and states
    assert {op.layer_type for op in sinks if op.bytes_written["state"] + op.bytes_written["kv_cache"] == 0} == {"head"}


def test_context_beyond_the_maximum_is_refused():
    with pytest.raises(CodesignError, match="exceeds the model's maximum of 4096"):
        trace(cs.load_model("llama-2-70b"), "decode", batch=1, context=8192)


def test_cli_trace_json(capsys):
    from codesign.cli import main

    assert main(["trace", "--model", "qwen3.5-397b-a17b", "--batch", "64", "--context", "32k", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("params_total", "params_active", "flops_per_token", "kv_cache_bytes_per_token",
                "state_bytes_per_sequence", "trace_s"):
        assert key in out
    assert out["kv_cache_bytes_per_token"] == 30 * KiB


def test_cli_says_when_the_refused_context_was_the_default(capsys):
    from codesign.cli import main

    assert main(["trace", "--model", "llama-2-70b"]) == 2
    err = capsys.readouterr().err
    assert err == ("codesign: error: llama-2-70b: the default context 32k (32768 tokens) exceeds the model's "
                   "maximum of 4096 tokens; pass a shorter one, e.g. --context 4k\n")
    assert main(["trace", "--model", "llama-2-70b", "--context", "8k"]) == 2  # asked for: no default named
    assert capsys.readouterr().err == (
        "codesign: error: llama-2-70b: context 8192 exceeds the model's maximum of 4096 tokens\n")


def test_summary_table_reports_gib():
    from codesign.graph.summary import summary_table

    g = trace(cs.load_model("qwen3-8b"), "decode", batch=2, context=1024)
    table = summary_table(g).set_index("layer_type")
    weight = sum(op.bytes_read["weight"] + op.bytes_written["weight"] for _, op in g.nodes(data="op"))
    assert table.loc["total", "weight_gib"] == pytest.approx(weight / 2**30, rel=1e-12)
    assert not any(c.endswith("_gb") for c in table.columns)


def test_cli_trace_table_labels_gib(capsys):
    from codesign.cli import main

    assert main(["trace", "--model", "qwen3-8b", "--context", "1k"]) == 0
    out = capsys.readouterr().out
    assert "weight GiB" in out and "kv_cache GiB" in out and " GB" not in out


def test_cli_unknown_model_lists_names(capsys):
    from codesign.cli import main

    assert main(["trace", "--model", "gpt-9"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'gpt-9'" in err and "qwen3.5-397b-a17b" in err and "\n" == err[-1] and err.count("\n") == 1


def test_embedding_lookup_reads_only_its_rows():
    cfg = cs.load_model("qwen3.5-397b-a17b")
    g = trace(cfg, "decode", batch=64, context=4096)
    embed = [op for _, op in g.nodes(data="op") if op.layer_type == "embed"]
    assert len(embed) == 1
    assert embed[0].bytes_read["weight"] == 64 * cfg.hidden_size * 2  # 64 rows of bf16, not the table


def test_mla_decode_reads_the_latent_cache_once():
    """DeepSeek-V3 absorbed decode attends over (kv_lora 512 + rope 64) bf16 values per token per layer;
    k and v are two views of the same latent rows and must not be counted twice."""
    cfg = cs.load_model("deepseek-v3")
    g = trace(cfg, "decode", batch=8, context=4096)
    per_token_layer = (cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim) * 2
    assert totals(g)["read_kv_cache"] == pytest.approx(8 * 4096 * cfg.num_layers * per_token_layer, rel=1e-6)


def test_gdn_decode_moves_the_state_once_each_way():
    """The fused decode step reads and writes each sequence's fp32 state once; no state-sized
    intermediates reach memory (the unfused element-wise chain around it moves less than half as
    much as the state; an unfused recurrence moved 6x the state)."""
    cfg = cs.load_model("qwen3.5-397b-a17b")
    la = cfg.linear_attention
    g = trace(cfg, "decode", batch=16, context=8192)
    t = totals(g, {"linear_attention+moe"})
    state = 45 * 16 * la.num_value_heads * la.key_head_dim * la.value_head_dim * 4
    conv = 45 * 16 * la.conv_dim * (la.conv_kernel - 1) * 2
    assert t["read_state"] == pytest.approx(state + conv, rel=1e-9)
    assert t["written_state"] == pytest.approx(state + conv, rel=1e-9)
    assert t["read_activation"] + t["written_activation"] < 0.5 * t["read_state"]


def test_resident_weight_bytes_by_layer_add_up_to_the_parameters():
    cfg = cs.load_model("qwen3.5-397b-a17b")
    g = trace(cfg, "decode", batch=1, context=1024)
    wb = g.graph["weight_bytes"]
    decoder = sum(sum(b.values()) for layer, b in wb.items() if layer <= cfg.num_layers)
    assert decoder == pytest.approx(2 * g.graph["params_total"], rel=1e-12)  # bf16
    mtp = sum(sum(b.values()) for layer, b in wb.items() if layer > cfg.num_layers)
    assert mtp == pytest.approx(2 * g.graph["params_mtp"], rel=1e-12)
    experts = wb[0]["moe_experts"]
    assert experts == 512 * 3 * cfg.hidden_size * cfg.moe.intermediate_size * 2


@pytest.mark.parametrize("name", ["qwen3.5-397b-a17b", "deepseek-v3", "gpt-oss-120b", "mixtral-8x7b"])
@pytest.mark.parametrize("phase,batch,tokens,cached", [("decode", 37, 1, 4999), ("prefill", 3, 200, 0),
                                                      ("prefill", 2, 96, 3000), ("decode", 1, 1, 70_000)])
def test_batch_and_context_extrapolation_equal_a_direct_recording(name, phase, batch, tokens, cached):
    """Segments are recorded at batch 1 and 2 and two cached lengths and extrapolated; a direct
    recording must agree exactly, op by op."""
    from codesign.graph import recording, tracing as tm

    cfg = cs.load_model(name)
    for seg in ["embed", "head", *{str(cfg.layer_types.index(t)) for t in set(cfg.layer_types)}]:
        derived = tm._segment(cfg, seg, phase, batch, tokens, cached, use_disk=False)
        direct = recording.record_segment(cfg, seg, phase, batch, tokens, cached)
        assert [o.to_dict() for o in derived.ops] == [o.to_dict() for o in direct.ops]
        assert derived.edges == direct.edges


def _anchor_forms(phase: str, tokens: int):
    """Per distinct Qwen3.5-397B layer kind: its four anchor recordings {(batch, cached): segment}
    and the bilinear form built from them (None where batches 1 and 2 record differently)."""
    from codesign.graph import extrapolation as ex, tracing as tm

    cfg = cs.load_model("qwen3.5-397b-a17b")
    A = tm.CONTEXT_ANCHOR
    for seg in sorted({str(cfg.layer_types.index(t)) for t in set(cfg.layer_types)}):
        kind = cfg.layer_kind(int(seg))
        rec = {(b, c): tm._recorded(cfg, seg, kind, phase, b, tokens, c, False) for b in (1, 2) for c in (A, A + 1)}
        yield rec, ex.Bilinear.build(rec[1, A], rec[2, A], rec[1, A + 1], rec[2, A + 1])


@pytest.mark.parametrize("phase,tokens", [("decode", 1), ("prefill", 64)])
def test_bilinear_form_equals_nested_extrapolation(phase, tokens):
    """The one-pass bilinear form of a layer segment (batch and cached length at once) gives every
    op field of the two nested one-step extrapolations it replaces (context, then batch)."""
    import dataclasses

    from codesign.graph import extrapolation as ex, tracing as tm

    A = tm.CONTEXT_ANCHOR
    for rec, form in _anchor_forms(phase, tokens):
        for batch, cached in [(3, 1000), (177, 32_767), (64, 262_000)]:
            ones = ex.extrapolate(rec[1, A], rec[1, A + 1], cached - A)
            twos = ex.extrapolate(rec[2, A], rec[2, A + 1], cached - A)
            nested = ex.extrapolate(ones, twos, batch - 1) if ones and twos else None
            if form is None:  # batch 1 and 2 record differently (GatedDeltaNet prefill): neither applies
                assert nested is None
                continue
            got = form.at(batch - 1, cached - A)
            assert [dataclasses.astuple(o) for o in got.ops] == [dataclasses.astuple(o) for o in nested.ops]


def _exact(op) -> list:
    """Every field of an op with its type and repr: equal only when bit for bit the same."""
    import dataclasses

    return [(type(v).__name__, repr(v)) for v in dataclasses.astuple(op)]


@pytest.mark.parametrize("phase,tokens", [("decode", 1), ("prefill", 64)])
def test_compiled_bilinear_form_equals_its_reference(phase, tokens, monkeypatch):
    """`Bilinear.at` (one compiled expression per op) gives every op field of the table-driven
    `Bilinear.at_reference` with the same type and bits, and shares the same constant objects
    (byte dicts, shapes) with the recording, at shapes beyond, between and below the anchors."""
    from codesign.graph import extrapolation as ex

    monkeypatch.setattr(ex, "COMPILE_AFTER", 1)  # compiled at the first use
    for rec, form in _anchor_forms(phase, tokens):
        if form is None:
            continue
        for tb, tc in [(0, 0), (1, 1), (-1, 5000), (99, 29_999), (176, 32_766), (511, 262_000), (-1, 0)]:
            got, ref = form.at(tb, tc), form.at_reference(tb, tc)
            assert [_exact(o) for o in got.ops] == [_exact(o) for o in ref.ops]
            for g, r, a in zip(got.ops, ref.ops, form.segment.ops):
                assert (g.bytes_read is a.bytes_read) == (r.bytes_read is a.bytes_read)
                assert (g.bytes_written is a.bytes_written) == (r.bytes_written is a.bytes_written)
            assert (got.edges, got.entries, got.exit) == (ref.edges, ref.entries, ref.exit)


@pytest.mark.parametrize("seg,phase,tokens", [("embed", "decode", 1), ("head", "decode", 1), ("3", "prefill", 64),
                                              ("0", "decode", 1)])
def test_compiled_linear_extrapolation_equals_extrapolate(seg, phase, tokens, monkeypatch):
    """`Linear.at` (compiled) gives every op field of `extrapolate` with the same type and bits,
    sharing the recording's constant objects the same way, at batches beyond and below the two."""
    from codesign.graph import extrapolation as ex, tracing as tm

    monkeypatch.setattr(ex, "COMPILE_AFTER", 1)  # compiled at the first use
    cfg = cs.load_model("qwen3.5-397b-a17b")
    kind = seg if not seg.isdigit() else cfg.layer_kind(int(seg))
    one, two = (tm._recorded(cfg, seg, kind, phase, b, tokens, 0, False) for b in (1, 2))
    line = ex.Linear.build(one, two)
    assert line is not None
    for t in (-1, 0, 1, 99, 4095):
        got, ref = line.at(t), ex.extrapolate(one, two, t)
        assert [_exact(o) for o in got.ops] == [_exact(o) for o in ref.ops]
        for g, r, a in zip(got.ops, ref.ops, one.ops):
            assert (g.bytes_read is a.bytes_read) == (r.bytes_read is a.bytes_read)
            assert (g.in_shapes is a.in_shapes) == (r.in_shapes is a.in_shapes)
        assert (got.edges, got.entries, got.exit) == (ref.edges, ref.entries, ref.exit)


@pytest.mark.parametrize("model", ["qwen3.5-397b-a17b", "deepseek-v3"])
def test_skeleton_ops_equal_assembled_segments(model):
    """`skeleton_ops` (decoder layers of a bilinear form placed at once) gives the ops, edges and
    values, bit for bit, of assembling the kept pieces of `step_segments`, and each kept MoE
    layer's routed-expert op as its segment holds it, for decode, prefill, verify and mixed steps."""
    from codesign.graph import tracing as tm
    from codesign.graph.router import make_router
    from codesign.graph.shape import Group, StepShape

    cfg = cs.load_model(model)
    router = make_router(None)
    kinds = {}
    for i in range(cfg.num_layers):
        kinds.setdefault(cfg.layer_kind(i), i)
    keep = {-1, cfg.num_layers, cfg.num_layers - 1, *kinds.values()}
    # the first decode shape of a placement is made by the reference, the next ones compiled
    for shape in [StepShape.decode(100, 30_000), StepShape.decode(37, 20_000), StepShape.decode(300, 100_000),
                  StepShape.decode(2, 5000), StepShape.decode(64, 2),
                  StepShape.prefill(3, 128, 4096), StepShape.verify(32, cached=32_000, draft=1),
                  StepShape((Group(48, 1, 30_000), Group(1, 2048, 4096)))]:
        pieces = tm.step_segments(cfg, shape)
        want_ops, want_edges = tm.assemble_ops(cfg, [p for p in pieces if p[0] in keep], shape, router)
        ops, edges, experts = tm.skeleton_ops(cfg, shape, keep, router)
        if shape == StepShape.decode(100, 30_000) and model.startswith("qwen"):  # the placed path (DeepSeek: none)
            assert any(tm._form_at(cfg, str(i), cfg.layer_kind(i), "decode", 100, 1, 29_999, True) is not None
                       for i in kinds.values())
        assert edges == want_edges
        assert [_exact(o) for o in ops] == [_exact(o) for o in want_ops]
        for layer in keep:
            if 0 <= layer < cfg.num_layers and cfg.mlp_types[layer] == "moe":
                seg_op = next(o for o in pieces[layer + 1][2].ops if o.kind == "grouped_gemm")
                assert _exact(experts[layer]) == _exact(seg_op)
    if model.startswith("qwen"):  # both ways of placing a layer were compared: the reference and compiled
        form = tm._form_at(cfg, "0", cfg.layer_kind(0), "decode", 100, 1, 29_999, True)
        assert any(callable(fn) for fn in form._placed.values())


def test_op_clone_copies_every_field():
    import dataclasses

    from codesign.graph.op import Op

    op = Op(**{f.name: f"v{i}" if f.type == "str" else i + 1 for i, f in enumerate(dataclasses.fields(Op))})
    assert op.clone().to_dict() == op.to_dict() and op.clone() is not op


def test_graph_package_imports_the_tracer_lazily():
    """`codesign.graph.op` needs no torch: the mapping and the simulator import it cheaply."""
    import subprocess
    import sys

    code = ("import sys, codesign.graph.op, codesign.mapping, codesign.graph.tracing, codesign.sim; "
            "assert 'torch' not in sys.modules; "
            "from codesign.graph import cache_bytes; from codesign.graph import trace; assert callable(trace); "
            "import codesign.graph.tracing, codesign; from codesign.graph import trace as t2; assert callable(t2); "
            "assert callable(codesign.graph.trace)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_verify_steps_trace_the_recurrent_gated_deltanet_kernel():
    """A speculative verify step (a few tokens after a cached prefix) runs GatedDeltaNet's fused
    recurrent kernel: one op reading and writing the state once, FLOPs for every token; a long
    continuation runs the chunked algorithm."""
    from codesign.graph.shape import StepShape
    from codesign.models.gated_deltanet import RECURRENT_MAX_TOKENS

    cfg = cs.load_model("qwen3.5-35b-a3b")
    la = cfg.linear_attention
    g = trace(cfg, shape=StepShape.verify(4, cached=1000, draft=2))
    steps = [o for _, o in g.nodes(data="op") if o.layer == 0 and o.target.startswith("codesign.gated_delta_rule_step")]
    assert len(steps) == 1
    (s,) = steps
    state = 4 * la.num_value_heads * la.key_head_dim * la.value_head_dim * 4  # fp32
    assert s.bytes_written["state"] == state and s.flops == 4 * 3 * la.num_value_heads * 7 * la.key_head_dim * la.value_head_dim
    long = trace(cfg, shape=StepShape.prefill(1, RECURRENT_MAX_TOKENS + 1, cached=1000))
    assert not any(o.target.startswith("codesign.gated_delta_rule_step") for _, o in long.nodes(data="op"))


def test_trace_out_writes_node_link_json_with_the_step_shape(tmp_path, capsys):
    """`codesign trace --out FILE` writes the graph as JSON: every op, and the step shape as groups."""
    from codesign.cli import main

    out = tmp_path / "g.json"
    assert main(["trace", "--model", "qwen3-8b", "--batch", "4", "--context", "1k", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["graph"]["shape"] == [{"seqs": 4, "new_tokens": 1, "cached_tokens": 1023, "logits": 1}]
    g = trace(cs.load_model("qwen3-8b"), "decode", batch=4, context=1024)
    assert len(d["nodes"]) == g.number_of_nodes() and len(d["edges"]) == g.number_of_edges()


def test_shape_derived_segments_are_bounded_least_recently_used_first():
    """Segments derived per step shape are kept in a bounded memo that drops the least recently
    used entry first (a long serving run asks for thousands of shapes); None is a kept value."""
    from codesign.graph.tracing import _Recent

    memo = _Recent(3)
    for k in "abc":
        memo[k] = k.upper()
    assert memo.get("a") == "A"  # a is now the most recent
    memo["d"] = None
    assert list(memo) == ["c", "a", "d"] and "b" not in memo
    assert "d" in memo and memo.get("d") is None and memo.get("zz", 1) == 1


def test_compiled_evaluators_code_is_kept_on_disk(tmp_path, monkeypatch):
    """An evaluator's code is compiled once and kept beside the recordings: a fresh process (memo
    cleared) loads it and evaluates the same ops; a corrupt file is compiled again, not fatal."""
    from codesign.graph import extrapolation as ex, tracing as tm

    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ex, "COMPILE_AFTER", 1)
    cfg = cs.load_model("qwen3.5-397b-a17b")
    one, two = (tm._recorded(cfg, "head", "head", "decode", b, 1, 0, True) for b in (1, 2))
    want = [_exact(o) for o in ex.extrapolate(one, two, 41).ops]
    ex._CODE.clear()
    assert [_exact(o) for o in ex.Linear(one, two).at(41).ops] == want
    files = list((tmp_path / "code").glob("*.marshal"))
    assert len(files) == 1
    ex._CODE.clear()
    assert [_exact(o) for o in ex.Linear(one, two).at(41).ops] == want  # loaded from the file
    files[0].write_bytes(b"not marshal data")
    ex._CODE.clear()
    assert [_exact(o) for o in ex.Linear(one, two).at(41).ops] == want  # compiled again
