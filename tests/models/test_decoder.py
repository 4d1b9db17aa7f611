"""Decoder stack: cached decode == full forward for every family, HF attribute names, block tags,
meta-device forward, tiny configs of model_graphs/, and the native run (library and CLI)."""

from __future__ import annotations

import pytest
import torch
import yaml

from codesign.cli import main
from codesign.models import available_models, load_model
from codesign.models.decoder import CausalLM
from codesign.native.run import run_native
from tests.conftest import FAMILIES, jitter, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_matches_full_forward(family: str) -> None:
    cfg = make_config(family)
    torch.manual_seed(0)
    model = CausalLM(cfg, dtype=torch.float32).eval()
    jitter(model, 1)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        caches = model.make_caches(2, 16)
        parts = [model(ids[:, :5], 0, caches)] + [model(ids[:, t : t + 1], t, caches) for t in range(5, 12)]
    assert full.shape == (2, 12, cfg.vocab_size)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_runs_on_meta_device(family: str) -> None:
    cfg = make_config(family)
    model = CausalLM(cfg, device="meta")
    ids = torch.zeros(1, 5, dtype=torch.long, device="meta")
    assert model(ids).shape == (1, 5, cfg.vocab_size)
    caches = model.make_caches(1, 40, device="meta")
    assert model(ids[:, :1], 30, caches).device.type == "meta"


def test_hf_names_and_block_tags() -> None:
    model = CausalLM(make_config("gpt-oss"), dtype=torch.float32)
    keys = set(model.state_dict())
    for k in ["embed_tokens.weight", "norm.weight", "lm_head.weight", "layers.1.input_layernorm.weight",
              "layers.1.post_attention_layernorm.weight", "layers.0.self_attn.q_proj.bias", "layers.0.self_attn.sinks",
              "layers.0.mlp.gate_proj.weight", "layers.0.mlp.down_proj.weight"]:
        assert k in keys, k
    blocks = {name: getattr(m, "block", None) for name, m in model.named_modules()}
    assert blocks["embed_tokens"] == "embed" and blocks["lm_head"] == "lm_head" and blocks["norm"] == "norm"
    assert blocks["layers.0.self_attn"] == "attention" and blocks["layers.0.mlp"] == "mlp"
    assert blocks["layers.0.input_layernorm"] == "norm"
    mla = CausalLM(make_config("deepseek-mla"), dtype=torch.float32)
    assert mla.layers[0].self_attn.block == "mla"
    # norms inside a block carry no tag of their own: their ops belong to the block
    assert getattr(mla.layers[0].self_attn.kv_a_layernorm, "block", None) is None
    assert len(mla.mtp) == 0


def test_tied_embeddings_share_one_tensor() -> None:
    cfg = make_config("llama").model_copy(update={"tie_word_embeddings": True})
    model = CausalLM(cfg, dtype=torch.float32)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in CausalLM(make_config("llama")).parameters()) - 256 * 64


@pytest.mark.parametrize("name", available_models())
def test_tiny_config_keeps_the_family(name: str) -> None:
    full = load_model(name)
    tiny = full.tiny()
    assert tiny.hidden_size == 64 and tiny.vocab_size == 256 and tiny.num_layers <= 8
    assert set(tiny.layer_types) == set(full.layer_types)
    assert set(zip(tiny.layer_types, tiny.mlp_types)) <= set(zip(full.layer_types, full.mlp_types))
    # the layout is a prefix of the full one after its dense prefix (same order of layer kinds)
    k = full.first_dense_layers
    kinds = list(zip(full.layer_types, full.mlp_types))
    tiny_kinds = list(zip(tiny.layer_types, tiny.mlp_types))
    rest = tiny_kinds[min(k, 1):]
    assert rest == kinds[k : k + len(rest)] or rest == [kinds[k]] * len(rest)
    if full.attention:
        a, t = full.attention, tiny.attention
        for flag in ("qk_norm", "output_gate", "sinks", "bias", "partial_rotary_factor", "rope_theta"):
            assert getattr(t, flag) == getattr(a, flag), flag
        assert (t.num_kv_heads < t.num_heads) == (a.num_kv_heads < a.num_heads)
    if full.moe:
        assert tiny.moe.scoring == full.moe.scoring and (tiny.moe.n_group > 1) == (full.moe.n_group > 1)
        assert bool(tiny.moe.shared_expert_intermediate_size) == bool(full.moe.shared_expert_intermediate_size)
    assert tiny.mtp_layers == min(full.mtp_layers, 1)


def test_tiny_qwen35_keeps_three_linear_one_full() -> None:
    tiny = load_model("qwen3.5-397b-a17b").tiny()
    assert tiny.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert tiny.attention.rotary_dim == 4  # 25% of 16


@pytest.mark.slow
@pytest.mark.parametrize("name", available_models())
def test_every_tiny_model_runs_natively_and_consistently(name: str) -> None:
    r = run_native(load_model(name).tiny(), prompt_tokens=6, new_tokens=4, batch=2, warmup=False)
    assert r.max_abs_diff < 1e-4


def test_native_run_checks_decode_against_full_forward() -> None:
    r = run_native(make_config("qwen3.5-gated"), prompt_tokens=7, new_tokens=5, batch=2, seed=3)
    assert r.max_abs_diff < 1e-4 and r.max_abs_logit > 0.1
    assert r.prefill_tokens_per_s > 0 and r.decode_tokens_per_s > 0
    assert r.params == sum(p.numel() for p in CausalLM(make_config("qwen3.5-gated")).parameters())


def test_cli_run_tiny(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--model", "llama-3.1-70b", "--tiny", "--prompt-tokens", "5", "--new-tokens", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-70b-tiny" in out and "tokens/s" in out and "max abs diff" in out


def test_cli_run_refuses_a_model_that_does_not_fit(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--model", "llama-3.1-405b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codesign: error: model llama-3.1-405b: batch 1 x (32 prompt + 32 new tokens) needs ") \
        and "(weights, caches, activations)" in err and "use --tiny" in err


def test_cli_run_full_config_that_fits(tmp_path, capsys: pytest.CaptureFixture) -> None:
    # a small config given as a YAML path runs without --tiny
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(make_config("deepseek-mla").model_dump(exclude_none=True)))
    assert main(["run", "--model", str(path), "--prompt-tokens", "4", "--new-tokens", "2", "--json"]) == 0
    assert '"max_abs_diff"' in capsys.readouterr().out


def test_cli_run_rejects_bad_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--model", "llama-3.1-70b", "--tiny", "--new-tokens", "0"]) == 2
    assert capsys.readouterr().err == "codesign: error: --new-tokens: expected an integer from 1 to 4,294,967,296, found 0\n"


def test_mtp_head_cached_matches_full() -> None:
    cfg = make_config("deepseek-mla").model_copy(update={"mtp_layers": 1})
    torch.manual_seed(0)
    model = CausalLM(cfg, dtype=torch.float32).eval()
    jitter(model, 1)
    assert len(model.mtp) == 1
    ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = model.norm(model.hidden_states(ids[:, :9]))  # (2, 9, H)
        nxt = ids[:, 1:].unsqueeze(1)  # (2, 1, 9): the token after each position
        (full,) = model.mtp_forward(hidden, nxt)
        caches = model.make_mtp_caches(2, 12)
        parts = [model.mtp_forward(hidden[:, :4], nxt[..., :4], 0, caches)[0]]
        parts += [model.mtp_forward(hidden[:, t : t + 1], nxt[..., t : t + 1], t, caches)[0] for t in range(4, 9)]
    assert full.shape == (2, 9, cfg.vocab_size)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
