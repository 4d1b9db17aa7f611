"""Scenario files: the validation set parses; bad input gives one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.errors import CodesignError
from codesign.scenario import load_scenarios

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
name: s1
hardware: h200
model: llama-2-70b
precision: {weights: fp8, activations: fp8, kv_cache: fp8}
parallel: {tp: 8}
workload: {mode: offline, input_tokens: 294, output_tokens: 291}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_public_validation_file_parses():
    ss = load_scenarios(ROOT / "benchmarks/validation/public.yaml")
    assert len(ss) >= 8
    assert {s.workload.mode for s in ss} >= {"offline", "server", "decode", "batch"}
    ds = next(s for s in ss if s.name == "deepseek-production-h800-decode")
    assert ds.parallel == {"ep": 144, "attention_dp": 144} and ds.slo.tpot_s == 0.05
    # submitted running-batch caps: gpu_batch_size x engines (annotated in the file)
    caps = {s.name: s.workload.max_batch for s in ss}
    assert caps["mlperf-v4.1-8xh100-llama2-70b-offline"] == 896 * 4
    assert caps["mlperf-v4.1-8xh100-mixtral-8x7b-offline"] == 896 * 8
    assert caps["mlperf-v4.1-8xh200-llama2-70b-offline"] == 806 * 8
    assert caps["mlperf-v5.0-8xb200-llama2-70b-offline"] == 2048 * 8
    assert caps["h100-qwen3-8b-bf16-concurrency4-tpot"] is None
    # vLLM v0.17.1 predates vllm PR #44700: its mixed steps run GatedDeltaNet decodes in the chunk kernel;
    # its prefill attention is FlashAttention-3 through the paged KV cache (the rows' header)
    qwen = [s for s in ss if s.name.startswith("vllm-1xh200-qwen3.5-35b-a3b-")]
    assert len(qwen) == 3 and all(s.cost == {"gdn_mixed_decodes": "chunk", "attention_kernel": "vllm_flash_attn"} for s in qwen)


def test_one_mapping_and_token_units(tmp_path):
    (s,) = load_scenarios(write(tmp_path, GOOD.replace("input_tokens: 294", "input_tokens: 32k")))
    assert s.workload.input_mean == 32768 and s.parallel == {"tp": 8}
    (s,) = load_scenarios(write(tmp_path, GOOD.replace("parallel: {tp: 8}", "parallel: auto")))
    assert s.parallel == "auto"
    (s,) = load_scenarios(write(tmp_path, GOOD.replace("parallel: {tp: 8}",
                                                       "parallel: {pp: 2, layer_partition: [30, 50]}")))
    assert s.parallel == {"pp": 2, "layer_partition": [30, 50]}


@pytest.mark.parametrize(
    "old,new,pattern",
    [
        ("workload: {mode: offline", "workload: {mode: turbo", r"s\.yaml: workload\.mode: .*found: 'turbo'"),
        ("model: llama-2-70b", "model: llama-2-70b\nmodle: x", r"s\.yaml: modle: Extra inputs are not permitted"),
        ("kv_cache: fp8}", "kv_cache: fp9}", r"s\.yaml: precision\.kv_cache: expected one of .*found 'fp9'"),
        ("parallel: {tp: 8}", "parallel: {tq: 8}", r"s\.yaml: parallel\.tq: unknown parallel dimension"),
        ("parallel: {tp: 8}", "parallel: {tp: 0}", r"s\.yaml: parallel\.tp: expected an integer from 1 to 1,048,576, found 0"),
        ("parallel: {tp: 8}", "parallel: {pp: 2, layer_partition: [80]}",
         r"s\.yaml: parallel\.layer_partition: expected 2 layer counts \(one per pipeline stage, pp = 2\), found 1: \[80\]"),
        ("input_tokens: 294", "input_tokens: lots", r"s\.yaml: workload\.input_tokens.*'lots'"),
        ("mode: offline", "mode: batch", r"s\.yaml: workload\.concurrency: required for mode 'batch'"),
        ("output_tokens: 291}", "output_tokens: 291, max_batch: 0}", r"s\.yaml: workload\.max_batch: .*greater than or equal to 1 \(found: 0\)"),
        ("mode: offline,", "mode: batch, concurrency: 64, max_batch: 32,",
         r"s\.yaml: workload\.concurrency: expected at most workload\.max_batch = 32, found 64"),
        ("mode: offline,", "mode: server, max_batch: 32,",
         r"s\.yaml: workload\.max_batch: not yet supported in mode 'server'.*workload\.scheduler\.max_num_seqs"),
        ("mode: offline,", "mode: server, scheduler: {chunked_prefill: maybe},",
         r"s\.yaml: workload\.scheduler: chunked_prefill: Input should be a valid boolean"),
    ],
)
def test_bad_input_one_line(tmp_path, old, new, pattern):
    with pytest.raises(CodesignError, match=pattern) as e:
        load_scenarios(write(tmp_path, GOOD.replace(old, new)))
    assert "\n" not in str(e.value)


def test_list_errors_name_the_scenario(tmp_path):
    text = "- " + GOOD.strip().replace("\n", "\n  ") + "\n- name: s2\n  hardware: h200\n  model: m\n  chips: -1\n"
    with pytest.raises(CodesignError, match=r"s\.yaml: s2: chips: Input should be greater than or equal to 1"):
        load_scenarios(write(tmp_path, text))
    dup = "- " + GOOD.strip().replace("\n", "\n  ") + "\n- " + GOOD.strip().replace("\n", "\n  ") + "\n"
    with pytest.raises(CodesignError, match=r"name: duplicate scenario name 's1'"):
        load_scenarios(write(tmp_path, dup))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CodesignError, match=r"no such scenario file"):
        load_scenarios(tmp_path / "nope.yaml")
    with pytest.raises(CodesignError, match=r"empty scenario file"):
        load_scenarios(write(tmp_path, ""))
