from __future__ import annotations

import math

import pytest

from codesign.mapping import (ParallelPlan, Precision, kv_bytes_per_sequence, max_batch, memory_per_chip,
                              model_params, state_bytes_per_sequence)
from codesign.units import GiB, KiB, MiB
from tests.mapping.helpers import llama2_70b, make_hw, qwen35_397b

FP8 = Precision(weights="fp8", activations="fp8", kv_cache="fp8")


def _llama_params_by_hand() -> tuple[float, float]:
    """(TP-split, replicated) parameters of Llama-2-70B from its published shapes."""
    H, L, V, I, D = 8192, 80, 32000, 28672, 128
    attn = H * 64 * D + 2 * H * 8 * D + 64 * D * H  # q, k, v (8 kv heads), o
    mlp = 3 * H * I
    split = L * (attn + mlp) + 2 * V * H  # embedding and untied LM head are vocab-parallel
    replicated = L * 2 * H + H  # two RMSNorms per layer + final norm
    return split, replicated


def test_llama2_70b_tp8_fp8_by_hand(hw):
    split, repl = _llama_params_by_hand()
    assert split + repl == pytest.approx(68.98e9, rel=1e-3)  # published 69B
    batch, ctx = 64, 2048
    m = memory_per_chip(llama2_70b(), None, hw, ParallelPlan(tp=8), FP8, batch, ctx)
    assert m.weights == pytest.approx(split / 8 + repl)  # 1 byte per fp8 weight
    kv_token_chip = 80 * 2 * (8 / 8) * 128 * 1  # one kv head per chip, K and V, fp8
    assert m.kv_cache == pytest.approx(batch * ctx * kv_token_chip)
    assert m.state == 0.0
    assert m.reserve == pytest.approx(0.05 * 80e9)
    assert m.total == pytest.approx(m.weights + m.kv_cache + m.state + m.activations + m.reserve)
    assert m.capacity == 80e9 and m.fits
    assert m.gib()["weights"] == pytest.approx(m.weights / GiB)


def test_kv_replicates_beyond_kv_heads(hw):
    # tp=16 > 8 kv heads: each chip still holds one whole kv head
    c = llama2_70b()
    assert kv_bytes_per_sequence(c, 100, tp=16) == kv_bytes_per_sequence(c, 100, tp=8) == 100 * 80 * 2 * 128 * 2


def test_qwen35_kv_and_state_per_sequence():
    c = qwen35_397b()
    assert kv_bytes_per_sequence(c, 1) == 30 * KiB  # 15 full-attention layers x 2 x 2 heads x 256 x bf16
    assert kv_bytes_per_sequence(c, 32768) == pytest.approx(0.9375 * GiB)
    assert state_bytes_per_sequence(c, conv_bytes=0.0) == 180 * MiB  # 45 GDN layers x 4 MiB fp32
    conv = 45 * (2 * 16 * 128 + 64 * 128) * 3 * 2  # conv state, bf16
    assert state_bytes_per_sequence(c) == 180 * MiB + conv


def test_qwen35_memory_ep8_by_hand():
    c = qwen35_397b()
    hw = make_hw(hbm="141 GB")
    plan = ParallelPlan(ep=8, attention_dp=8)
    batch, ctx = 100, 32768
    m = memory_per_chip(c, None, hw, plan, Precision(weights="fp8"), batch, ctx)
    seqs = math.ceil(batch / 8)
    assert m.kv_cache == pytest.approx(seqs * ctx * 30 * KiB)
    assert m.state == pytest.approx(seqs * state_bytes_per_sequence(c))
    p = model_params(c, mtp=False)
    experts = p["moe_experts"]
    assert sum(p.values()) == pytest.approx(396.35e9, rel=1e-3)  # published 396.35B
    assert m.weights == pytest.approx(experts / 8 + (sum(p.values()) - experts))  # fp8: 1 byte/param


def test_max_batch_monotone_in_capacity_and_exact():
    c, plan = qwen35_397b(), ParallelPlan(ep=8, attention_dp=8)
    prev = -1
    for cap in ("60 GB", "80 GB", "96 GB", "141 GB", "192 GB", "288 GB"):
        hw = make_hw(hbm=cap)
        b = max_batch(c, None, hw, plan, FP8, 32768)
        assert b >= prev
        prev = b
        if b:
            assert memory_per_chip(c, None, hw, plan, FP8, b, 32768).fits
            assert not memory_per_chip(c, None, hw, plan, FP8, b + 1, 32768).fits
    assert max_batch(c, None, make_hw(hbm="40 GB"), plan, FP8, 32768) == 0  # weights alone do not fit
    short = memory_per_chip(c, None, make_hw(hbm="40 GB"), plan, FP8, 1, 32768).short_by
    assert short > 0


def test_params_dict_matches_config_formula(hw):
    c = llama2_70b()
    a = memory_per_chip(c, None, hw, ParallelPlan(tp=8), FP8, 8, 1024)
    b = memory_per_chip(c, model_params(c), hw, ParallelPlan(tp=8), FP8, 8, 1024)
    assert a.weights == pytest.approx(b.weights)
