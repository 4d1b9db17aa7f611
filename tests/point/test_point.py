"""The input tree: dotted-path overrides round-trip, unknown paths name their neighbours, the point
hash is stable across processes and moves with every leaf."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

import codesign as cs
from codesign.errors import CodesignError
from codesign.point import Point, get, leaf_paths, override, point_hash, schema_paths

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base() -> Point:
    # a shipped spec and model, a fixed plan; chips and context from the spec and the workload
    return cs.design_point("h200", "qwen3.5-35b-a3b", plan={"tp": 8, "ep": 8},
                    workload={"mode": "decode", "input_tokens": "32k"})


def other_value(p: Point, path: str, value: typing.Any) -> typing.Any:
    """Another valid value for a leaf (None: no other value to try)."""
    special = {
        "parallel": {"tp": 8}, "context": [8192], "chips": 4, "name": "renamed",
        "workload.mode": "offline", "workload.input_tokens": 4096,
        # refused in decode mode, each naming its field
        "workload.mtp": {"tokens": 2}, "workload.concurrency": 4, "workload.rate_per_s": 2.0,
        "model.moe.topk_group": 2, "chip.host": {"capacity": "1 TB", "bandwidth": "100 GB/s"},
        "chip.matrix.fp4": 4e15, "model.attention.sliding_window": 4096, "parallel.redundant_experts": 0,
        "model.layer_types": ["full_attention"] * p.model.num_layers,
        "model.mlp_types": ["dense"] + ["moe"] * (p.model.num_layers - 1), "model.intermediate_size": 1024,
        "model.layer_pattern": ["linear_attention", "full_attention"],
        "model.num_layers": 20, "model.first_dense_layers": 1, "model.moe.top_k": 4, "model.moe.n_group": 2,
        "model.attention.num_kv_heads": 1, "model.attention.num_heads": 32,
        "model.linear_attention.num_key_heads": 8, "model.linear_attention.num_value_heads": 16,
        "model.moe.num_experts": 128, "model.activation": "gpt_oss_swiglu", "model.moe.scoring": "sigmoid",
        "model.moe.softmax_order": "topk_then_softmax",
        "chip.matrix.tile": [128, 128], "system.scale_up.topology": "full_mesh", "system.scale_up.dims": None,
        "mapping.placement": "round_robin", "mapping.allreduce_algorithm": "ring", "mapping.reduce_dtype": "fp32",
        "cost.attention_dtype": "fp8", "cost.attention_kernel": "vllm_flash_attn", "precision.compute": "bf16", "precision.weights": "bf16",
        "precision.activations": "bf16", "precision.kv_cache": "fp8", "precision.state": "bf16",
        "system.chips": 4, "hw.sources": ["another source"], "hw.notes": ["a note"], "model.sources": ["s"],
        "model.notes": ["n"], "slo.ttft_s": 1.0, "slo.tpot_s": 0.05, "workload.max_batch": 64,
        "efficiency.grouped_gemm": 0.5, "efficiency.overlap_exponent": 2.0,
        "mapping.two_batch_overlap": True, "mapping.dispatch_fp8": False, "mapping.ep_exchange": "all_gather",
        "model.mla": None,
        "model.total_params_reference": 1e9, "model.active_params_reference": 1e8,
        "system.scale_out": None,
        "efficiency.moe_triton_dtypes": ["bf16", "fp8"], "efficiency.moe_triton_default_dtypes": ["fp8", "bf16", "fp16"],
        "efficiency.moe_triton_block_fp8_dtypes": ["fp8", "bf16"],
        "efficiency.moe_trtllm_block_fp8_dtypes": ["fp8", "bf16"],
        "efficiency.moe_trtllm_fp8_dtypes": ["fp8", "bf16"],
        "efficiency.moe_triton_mxfp4_dtypes": ["bf16", "fp8"],
        "efficiency.mla_kernels": ["trtllm"], "cost.mla_kernel": "trtllm",
        "mapping.kv_pool": "vllm",
        "cost.elementwise_model": "regions",
    }
    if path in special:
        return special[path]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value > 1 else 2
    if isinstance(value, float):
        return value * 0.5 if value <= 1 else value * 2
    if isinstance(value, str):
        return value + "-x"
    return None


def test_every_leaf_round_trips_to_its_own_value(base):
    h = point_hash(base)
    leaves = leaf_paths(base)
    assert len(leaves) > 120 and "chip.hbm.bandwidth" in leaves and "model.moe.num_experts" in leaves
    for path in leaves:
        same = override(base, {path: get(base, path)})
        assert same == base, path
        assert point_hash(same) == h, path


def test_every_leaf_takes_another_value_and_moves_the_hash(base):
    h = point_hash(base)
    changed = refused = 0
    for path in leaf_paths(base):
        value = get(base, path)
        new = other_value(base, path, value)
        if new == value or (new is None and value is None):
            continue
        try:
            q = override(base, {path: new})
        except CodesignError as e:  # a validator may refuse a value; it must say which field
            assert path.split(".")[-1] in str(e) or path in str(e), (path, str(e))
            refused += 1
            continue
        got = get(q, path)
        assert got == new or (isinstance(got, tuple) and list(got) == new), (path, got, new)
        assert point_hash(q) != h, path
        assert q.overrides == {path: q.overrides[path]}
        changed += 1
    # refused: chip.host (not yet supported), three model fields whose other value breaks a
    # cross-field rule, three server-only workload fields in decode mode, five server-mode
    # sections (scheduler, disaggregation, step_model, slo_search, frontend) that take a mapping, not None,
    # mapping.all_to_all_mode (one of three names), cost.gdn_mixed_decodes, cost.gemm_kernel and
    # workload.arrival (one of two each), and mapping.gpu_memory_utilization and
    # mapping.sampler_bytes_per_logit (they act only with mapping.kv_pool: vllm)
    assert changed >= 115 and refused <= 19, (changed, refused)


def test_issue_examples_work_as_written(base):
    q = cs.override(base, {"chip.hbm.bandwidth": "8 TB/s", "model.moe.num_experts": 256, "parallel.ep": 8,
                           "mapping.two_batch_overlap": True, "workload.max_batch": 64,
                           "cost.launch_overhead_s": "5 us"})
    assert q.hw.chip.hbm.bandwidth == 8e12 and q.model.moe.num_experts == 256 and q.parallel.ep == 8
    assert q.mapping.two_batch_overlap is True and q.workload.max_batch == 64
    assert q.cost.launch_overhead_s == pytest.approx(5e-6)
    assert q.overrides["chip.hbm.bandwidth"] == 8e12
    # the long spelling reaches the same field; price.* is the spec's cost section
    assert cs.override(base, {"hw.chip.hbm.bandwidth": "8 TB/s"}) == cs.override(base, {"chip.hbm.bandwidth": 8e12})
    assert cs.override(base, {"price.per_hour": 2.0}).hw.cost.per_hour == 2.0


def test_values_go_through_the_file_validators(base):
    # YAML reads 3.0e12 as text: a bare number in text is SI units, as a bare number is
    assert override(base, {"chip.hbm.bandwidth": "3.0e12"}).hw.chip.hbm.bandwidth == 3e12
    with pytest.raises(CodesignError, match=r"chip\.hbm\.bandwidth: expected a bandwidth quantity from 1 B/s"):
        override(base, {"chip.hbm.bandwidth": "-1 TB/s"})
    with pytest.raises(CodesignError, match=r"chip\.hbm\.bandwidth: .*bandwidth quantity"):
        override(base, {"chip.hbm.bandwidth": "fast"})
    with pytest.raises(CodesignError, match=r"parallel\.ep: expected an integer from 1 to 1,048,576, found 0"):
        override(base, {"parallel.ep": 0})
    with pytest.raises(CodesignError, match=r"cost\.sram_fraction: Input should be less than or equal to 1"):
        override(base, {"cost.sram_fraction": 3})
    with pytest.raises(CodesignError, match=r"model\.moe: top_k \(8\) exceeds num_experts \(4\)"):
        override(base, {"model.moe.num_experts": 4})


def test_unknown_path_lists_neighbours(base):
    with pytest.raises(CodesignError, match=r"chip\.hbm\.bandwith: unknown path; nearest valid: chip\.hbm\.bandwidth"):
        override(base, {"chip.hbm.bandwith": "8 TB/s"})
    with pytest.raises(CodesignError, match=r"parallel\.epp: unknown path; nearest valid: .*parallel\.ep\b"):
        override(base, {"parallel.epp": 8})
    with pytest.raises(CodesignError, match=r"the spec's cost section is price\.per_hour"):
        override(base, {"cost.per_hour": 1.0})
    with pytest.raises(CodesignError, match=r"nowhere\.at\.all: unknown path; nearest valid: chip, chips, context, cost"):
        get(base, "nowhere.at.all")


def test_shadowing_defaults_follow_their_source(base):
    fixed = override(base, {"chips": 8, "context": [4096]})
    assert override(fixed, {"system.chips": 4}).resolved_chips == 4
    assert override(fixed, {"workload.input_tokens": 2048}).contexts == [2048]
    assert override(fixed, {"system.chips": 4, "chips": 2}).resolved_chips == 2


def test_layer_layout_follows_num_layers(base):
    q = override(base, {"model.num_layers": 20})
    assert len(q.model.layer_types) == 20 and q.model.layer_types[:4] == base.model.layer_types[:4]


def test_schema_paths_cover_every_root():
    roots = {p.split(".")[0] for p in schema_paths()}
    assert roots >= {"chip", "efficiency", "system", "power", "price", "hw", "model", "chips", "context", "parallel",
                     "precision", "workload", "slo", "cost", "mapping", "name"}


def test_hash_is_stable_across_processes(base):
    code = ("import codesign as cs; p = cs.design_point('h200', 'qwen3.5-35b-a3b', plan={'tp': 8, 'ep': 8}, "
            "workload={'mode': 'decode', 'input_tokens': '32k'}); print(cs.point_hash(p))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == point_hash(base)


def test_hash_includes_the_code_version(base, monkeypatch):
    import codesign
    from codesign import point as point_mod

    h = point_hash(base)
    monkeypatch.setattr(codesign, "__version__", "9.9.9")
    assert point_hash(base.model_copy()) != h
    monkeypatch.undo()
    monkeypatch.setattr(point_mod, "source_hash", lambda: "0" * 64)
    assert point_hash(base.model_copy()) != h


def test_whole_spec_and_model_by_name(base):
    q = override(base, {"hw": "h100", "model": "qwen3-8b", "parallel": {"tp": 8}})
    assert q.hw.name == "h100" and q.model.name == "qwen3-8b"
    assert q.overrides["hw"] == "h100" and q.overrides["model"] == "qwen3-8b"
    with pytest.raises(CodesignError, match=r"unknown hardware spec 'h999'"):
        override(base, {"hw": "h999"})


def test_bad_contexts_are_one_line(base):
    for bad in ("inf", "1e400", ",", "0"):
        with pytest.raises(CodesignError, match=r"context: .*expected"):
            override(base, {"context": bad})
