"""The paged-KV prefill curve's head-dim term (`efficiency.attention_paged_head_dim_exp`,
codesign/sim/attention_kernel.py): the rate x (D / 128) ** exp, checked by hand at Qwen3.5's head dim
256, as a no-op at head dim 128 and on the other kernels, as an override, and on the vLLM 0.24 rows it
is fitted on (benchmarks/kernels/aic_vllm_attention_prefill_d256.yaml; docs/cost-model.md "Paged-KV
prefill attention at head dim 256")."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from codesign import spec_files
from codesign.hw import load_hw
from codesign.hw.spec import Efficiency
from codesign.sim.cost import CostOptions
from codesign.sim.kernel import KernelShape, predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table

D256 = "aic_vllm_attention_prefill_d256.yaml"


def _shape(**kw) -> KernelShape:
    # Qwen3.5-9B's full-attention layer at TP1: 16 query / 4 KV heads of 256
    base = dict(op="attention", hw="h100", dtype="bf16", phase="prefill", batch=1, heads=16, kv_heads=4,
                head_dim=256, seq_q=4096, seq_kv=4096, causal=True, attention_kernel="vllm_flash_attn")
    return KernelShape(**{**base, **kw})


def _with(hw, **eff):
    return hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update=eff)})


def test_head_dim_256_is_the_curve_times_the_term_by_hand():
    # one fresh 4K prompt: L = 4096 - 4095 / 2 keys per query row; FLOPs 2 x 16 heads x the causal
    # triangle T (T + 1) / 2 x (256 + 256); rate 989 TF x attention_paged x 2 ** exp x L / (L + half)
    hw = load_hw("h100")
    e = hw.efficiency
    assert e.attention_paged_head_dim_exp > 0
    t = 4096
    keys = t - (t - 1) / 2
    flops = 2 * 16 * t * (t + 1) / 2 * 512
    rate = 989e12 * e.attention_paged * 2 ** e.attention_paged_head_dim_exp * keys / (keys + e.attention_paged_seq_half)
    p = predict(_shape(), hw)
    assert p.flops == pytest.approx(flops, rel=1e-12)
    assert p.compute_s == pytest.approx(flops / rate, rel=1e-12)
    assert p.overhead_s == pytest.approx(e.kernel_overhead + e.attention_paged_fixed_s, rel=1e-12)
    # the override: exponent 0 is the head-dim-128 curve's rate at head dim 256, 2 ** exp x slower
    off = predict(_shape(), _with(hw, attention_paged_head_dim_exp=0.0))
    assert off.compute_s == pytest.approx(p.compute_s * 2 ** e.attention_paged_head_dim_exp, rel=1e-12)


def test_head_dim_128_and_the_other_kernels_do_not_move():
    hw = load_hw("h200")
    off = _with(hw, attention_paged_head_dim_exp=0.0)
    d128 = _shape(hw="h200", heads=64, kv_heads=8, head_dim=128)
    assert predict(d128, hw) == predict(d128, off)  # (128 / 128) ** exp = 1, bit for bit
    for kernel in ("flash_attention", "trtllm"):
        s = _shape(hw="h200", attention_kernel=None)
        opts = CostOptions(attention_kernel=kernel)
        assert predict(s, hw, opts) == predict(s, off, opts)


def test_the_exponent_is_bounded_and_named():
    with pytest.raises(ValidationError, match="attention_paged_head_dim_exp"):
        Efficiency.model_validate({**load_hw("h100").efficiency.model_dump(), "attention_paged_head_dim_exp": 5.0})


def _rows():
    return load_table(KERNEL_DIR / D256).rows


def test_rows_are_the_databases_latencies_and_the_fit_reads_them_all():
    rows = {(r.hw, r.batch, r.kv_heads, r.seq_q): r.seconds for r in _rows()}
    assert len(rows) == len(_rows()) == 176  # 11 lengths x 4 batches x 2 shapes x 2 chips, none twice
    assert all(r.heads == 16 and r.kv_heads in (2, 4) and r.head_dim == 256 and r.causal and r.seq_q == r.seq_kv
               and r.attention_kernel == "vllm_flash_attn" for r in _rows())
    # database latency (ms) at the cited commit, read from the parquet files
    assert rows[("h100", 1, 4, 16384)] == pytest.approx(2.92197323e-3, rel=1e-5)
    assert rows[("h100", 8, 2, 2048)] == pytest.approx(0.52755733e-3, rel=1e-5)
    assert rows[("h200", 4, 4, 512)] == pytest.approx(0.05710933e-3, rel=1e-5)
    assert rows[("h200", 1, 4, 16384)] == pytest.approx(2.97733879e-3, rel=1e-5)
    s = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(s)
    s.loader.exec_module(fit)
    select, bounds, _ = fit.GROUPS["attention_paged"]
    assert all(select(r) for r in _rows()) and "attention_paged_head_dim_exp" in bounds


def test_the_curve_meets_its_rows_and_misses_them_without_the_term():
    hws = {h: load_hw(h) for h in ("h100", "h200")}
    errs = [(r, predict(r, hws[r.hw]).seconds / r.seconds - 1) for r in _rows()]
    assert sum(abs(e) for _, e in errs) / len(errs) < 0.06
    # beyond 21%: only the four batch-1 rows at 512 tokens, each slower in the database than its own
    # batch-2 row (twice the work; the file's header), all predicted fast (since the head-dim-64 rows
    # joined the fit one H100 batch-2 1K row reads +20.1%)
    far = sorted((r.hw, r.kv_heads, r.batch, r.seq_q) for r, e in errs if abs(e) > 0.21)
    assert far == [("h100", 2, 1, 512), ("h100", 4, 1, 512), ("h200", 2, 1, 512), ("h200", 4, 1, 512)]
    assert all(e < -0.21 for r, e in errs if abs(e) > 0.21)
    # without the term the head-dim-128 curve is ~25% slow on every length from 1K up
    offs = {h: _with(hw, attention_paged_head_dim_exp=0.0) for h, hw in hws.items()}
    slow = [predict(r, offs[r.hw]).seconds / r.seconds - 1 for r in _rows() if r.seq_q >= 1024]
    assert sum(slow) / len(slow) > 0.2


def test_decode_rows_at_head_dim_256_are_shown_and_miss_as_head_dim_128_does():
    # vLLM 0.24.0's FA3 decode at Qwen3.5's heads: seq_kv = the database's step + 1 (the collector's
    # seq_lens counts the query token); shown, not fitted (no fit group reads them)
    rows = load_table(KERNEL_DIR / "aic_vllm_attention_decode_d256.yaml").rows
    assert len(rows) == 136 and all(r.phase == "decode" and r.head_dim == 256 and r.seq_q == 1 for r in rows)
    assert {r.seq_kv for r in rows} == {2048, 4096, 8192, 16384, 32768}
    at = {(r.hw, r.kv_heads, r.batch, r.seq_kv): r.seconds for r in rows}
    assert at[("h100", 2, 1, 16384)] == pytest.approx(0.02680533e-3, rel=1e-4)  # step 16383
    assert at[("h100", 4, 128, 2048)] == pytest.approx(0.36446933e-3, rel=1e-5)
    assert at[("h200", 2, 1, 16384)] == pytest.approx(25.973e-6, rel=1e-9)
    s = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(s)
    s.loader.exec_module(fit)
    assert not any(select(r) for select, _, _ in fit.GROUPS.values() for r in rows)
    hws = {h: load_hw(h) for h in ("h100", "h200")}
    err = {r: predict(r, hws[r.hw]).seconds / r.seconds - 1 for r in rows}
    many = [e for r, e in err.items() if r.batch >= 16]
    few = [e for r, e in err.items() if r.batch <= 8]
    assert len(many) == 56 and sum(abs(e) for e in many) / len(many) < 0.08
    assert len(few) == 80 and sum(few) / len(few) > 0.2  # too slow at few work units (the file's header)
