"""The prefill attention kernel choice (`CostOptions.attention_kernel`, codesign/sim/attention_kernel.py):
vLLM's FlashAttention through the paged KV cache at the chip's `efficiency.attention_paged*` curve,
checked against a calculation by hand, against the default kernel, on the ops it must not touch, on
chips without the curve, and on the rows it is fitted on (docs/cost-model.md "Paged-KV prefill attention")."""

from __future__ import annotations

import importlib.util

import pytest

from codesign import spec_files
from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.kernel import KernelShape, build_op, predict
from codesign.sim.kernel_table import KERNEL_DIR, load_table

PAGED = CostOptions(attention_kernel="vllm_flash_attn")


def _shape(**kw) -> KernelShape:
    base = dict(op="attention", hw="h100", dtype="bf16", phase="prefill", batch=1, heads=64, kv_heads=8,
                head_dim=128, seq_q=4096, seq_kv=4096, causal=True)
    return KernelShape(**{**base, **kw})


def test_paged_prefill_is_the_curve_by_hand():
    # Qwen3-32B's 64/8 heads, one fresh 4K prompt: L = 4096 - 4095 / 2 keys per query row, FLOPs
    # 2 x heads x (the causal triangle T (T + 1) / 2) x (D + D); compute at 989 TF x attention_paged x
    # L / (L + attention_paged_seq_half); fixed time kernel_overhead + attention_paged_fixed_s.
    hw = load_hw("h100")
    e = hw.efficiency
    t = 4096
    keys = t - (t - 1) / 2
    flops = 2 * 64 * t * (t + 1) / 2 * 256
    compute = flops / (989e12 * e.attention_paged * keys / (keys + e.attention_paged_seq_half))
    p = predict(_shape(attention_kernel="vllm_flash_attn"), hw)
    assert p.flops == pytest.approx(flops, rel=1e-12)
    assert p.compute_s == pytest.approx(compute, rel=1e-12)
    assert p.overhead_s == pytest.approx(e.kernel_overhead + e.attention_paged_fixed_s, rel=1e-12)
    assert p.bound == "matrix" and p.seconds >= compute + p.overhead_s
    # the default kernel: FlashAttention-3's own curve, no extra fixed time
    d = predict(_shape(), hw)
    dense = flops / (989e12 * e.attention * keys / (keys + e.attention_seq_half))
    assert d.compute_s == pytest.approx(dense, rel=1e-12)
    assert d.overhead_s == pytest.approx(e.kernel_overhead, rel=1e-12)
    assert p.seconds > 1.1 * d.seconds  # the paged kernel is the slower one at 4K (vLLM's rows: ~20%)


def test_a_chunk_after_a_cached_prefix_reads_its_keys_per_row():
    # 2K new tokens after 6K cached: L = 8192 - 2047 / 2, the same ramp as the dense rule reads
    hw = load_hw("h200")
    e = hw.efficiency
    keys = 8192 - 2047 / 2
    p = predict(_shape(hw="h200", seq_q=2048, seq_kv=8192, attention_kernel="vllm_flash_attn"), hw)
    flops = 2 * 64 * (2048 * 6144 + 2048 * 2049 / 2) * 256
    paged = flops / (989e12 * e.attention_paged * keys / (keys + e.attention_paged_seq_half))
    assert p.compute_s == pytest.approx(paged, rel=1e-12)


def test_decode_and_mla_prefill_keep_their_own_rules():
    hw = load_hw("h100")
    dense, paged = CostModel(hw, options=CostOptions()), CostModel(hw, options=PAGED)
    decode = build_op(_shape(phase="decode", seq_q=1, seq_kv=8192, causal=False, batch=8))
    assert paged.reference_cost(decode) == dense.reference_cost(decode)
    # an MLA-shaped prefill (V's head dim 128 against K's 192): not a paged GQA kernel in vLLM
    mla = build_op(_shape(heads=128, kv_heads=128, head_dim=192, head_dim_v=128))
    assert paged.reference_cost(mla) == dense.reference_cost(mla)


def test_kept_parts_equal_the_reference_cost_under_the_option():
    cm = CostModel(load_hw("h200"), options=PAGED)
    op = build_op(_shape(hw="h200", seq_q=2048, seq_kv=6144))
    ref = cm.reference_cost(op)
    assert cm.cost(op) == ref
    assert ref.overhead_s == pytest.approx(cm.launch_s * 2.4 + load_hw("h200").efficiency.attention_paged_fixed_s)


def test_refused_on_a_chip_without_the_curve_and_a_bad_name_is_named():
    with pytest.raises(CodesignError, match=r"cost.attention_kernel: vllm_flash_attn is not yet supported on .*"
                                            r"expected efficiency.attention_paged"):
        CostModel(load_hw("b200"), options=PAGED)
    with pytest.raises(CodesignError, match=r"cost: attention_kernel: Input should be 'flash_attention', "
                                            r"'vllm_flash_attn' or 'trtllm' \(found: 'flashinfer'\)"):
        CostOptions.from_dict({"attention_kernel": "flashinfer"})
    with pytest.raises(ValueError, match="attention_kernel applies to prefill attention only"):
        _shape(phase="decode", seq_q=1, causal=False, attention_kernel="vllm_flash_attn")


def test_the_ramp_switch_turns_the_paged_ramp_off_too():
    hw = load_hw("h100")
    p = predict(_shape(attention_kernel="vllm_flash_attn"), hw,
                CostOptions(elementwise_kernels_per_matrix_kernel=0.0, attention_seq_ramp=False,
                            attention_kernel="vllm_flash_attn"))
    flops = 2 * 64 * 4096 * 4097 / 2 * 256
    assert p.compute_s == pytest.approx(flops / (989e12 * hw.efficiency.attention_paged), rel=1e-12)


def _rows():
    return [r for f in ("aic_vllm_attention.yaml", "aic_vllm_attention_prefill.yaml")
            for r in load_table(KERNEL_DIR / f).rows if r.phase == "prefill"]


def test_rows_are_the_databases_latencies_and_the_fit_reads_them_all():
    rows = {(r.hw, r.batch, r.heads, r.kv_heads, r.seq_q): r.seconds for r in _rows()}
    assert len(rows) == len(_rows()) == 360  # no point twice across the two files
    # database latency (ms) at the cited commit, read from the parquet files
    assert rows[("h100", 1, 64, 8, 2048)] == pytest.approx(0.177371e-3, rel=1e-5)
    assert rows[("h100", 1, 64, 8, 512)] == pytest.approx(0.030336e-3, rel=1e-4)
    assert rows[("h100", 2, 8, 1, 3072)] == pytest.approx(0.105152e-3, rel=1e-5)
    assert rows[("h200", 8, 32, 8, 8192)] == pytest.approx(8.577360e-3, rel=1e-6)
    assert all(r.attention_kernel == "vllm_flash_attn" and r.causal and r.seq_q == r.seq_kv for r in _rows())
    s = importlib.util.spec_from_file_location("fit", spec_files.ROOT / "benchmarks" / "kernels" / "fit.py")
    fit = importlib.util.module_from_spec(s)
    s.loader.exec_module(fit)
    paged, dense = fit.GROUPS["attention_paged"][0], fit.GROUPS["attention_seq"][0]
    assert all(paged(r) and not dense(r) for r in _rows())
    assert not any(paged(r) for r in load_table(KERNEL_DIR / "attention.yaml").rows)


def test_the_curve_meets_its_rows():
    # MAPE over the 360 rows at the shipped (rounded) values; four H100 rows at 12K-16K that are slower
    # than their neighbours in the database itself are the only ones beyond 35% (the files' headers)
    hws = {h: load_hw(h) for h in ("h100", "h200")}
    errs = [(r, predict(r, hws[r.hw]).seconds / r.seconds - 1) for r in _rows()]
    assert sum(abs(e) for _, e in errs) / len(errs) < 0.07
    far = sorted((r.hw, r.batch, r.heads, r.seq_q) for r, e in errs if abs(e) > 0.35)
    assert far == [("h100", 1, 8, 16384), ("h100", 2, 24, 16384), ("h100", 4, 64, 12288), ("h100", 8, 8, 16384)]
    assert all(e < 0 for r, e in errs if abs(e) > 0.35)


def test_cli_kernel_attention_takes_the_kernel(capsys):
    import json

    from codesign.cli import main

    args = ["kernel", "--hw", "h100", "attention", "--phase", "prefill", "--batch", "1", "--heads", "64",
            "--kv-heads", "8", "--head-dim", "128", "--seq-q", "4096", "--seq-kv", "4096", "--causal"]
    assert main(args + ["--attention-kernel", "vllm_flash_attn", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seconds"] == pytest.approx(predict(_shape(attention_kernel="vllm_flash_attn"), load_hw("h100")).seconds)
    assert main(args + ["--attention-kernel", "paged"]) == 2
    assert "attention_kernel" in capsys.readouterr().err
