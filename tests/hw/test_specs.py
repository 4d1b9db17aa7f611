"""Every shipped hardware spec loads, is sourced, and agrees with its datasheet; bad specs fail in one line."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from codesign.errors import CodesignError
from codesign.hw import available_hw, load_hw
from codesign.spec_files import folder

EXPECTED = {
    "a100", "h100", "h800", "h20", "h200", "b200", "gb200-nvl72", "mi300x", "mi325x", "mi355x",
    "tpu-v5p", "tpu-v6e", "trainium2", "gaudi3", "ascend-910c", "moe-concept", "cpu-host",
}
NAMES = available_hw()


def test_all_expected_specs_ship():
    assert EXPECTED <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_spec_loads_and_is_sourced(name: str):
    spec = load_hw(name)
    assert spec.name == name  # file name = name:
    assert spec.sources and all(s.strip() for s in spec.sources)
    assert spec.cost.source.strip()
    assert spec.system.chips >= 1
    # every quantity with a unit carries a comment: a source tag or "assumed: why"
    text = (folder("hw_specs") / f"{name}.yaml").read_text()
    for line in text.splitlines():
        if re.search(r':\s*"[-\d.]+\s*[A-Za-z/]+"', line.split("#")[0]):
            assert "#" in line, f"{name}: unsourced quantity: {line.strip()}"


@pytest.mark.parametrize("name", NAMES)
def test_hbm_capacity_states_its_unit_and_matches_the_runtime_figure(name: str):
    """docs/hardware.md: capacity is what the runtime reports ([RT], cited in MiB) or the vendor's
    figure read as GiB; each file's notes say which, and an [RT] value is the cited figure exactly."""
    spec = load_hw(name)
    assert any(n.startswith(("HBM capacity", "DRAM capacity")) for n in spec.notes), name
    runtime = [s for s in spec.sources if s.startswith("[RT]")]
    if runtime:
        mib = int(re.search(r"(\d+) MiB", runtime[0]).group(1))
        assert spec.chip.hbm.capacity == mib * 2**20
    text = (folder("hw_specs") / f"{name}.yaml").read_text()
    hbm_line = text.split("  hbm:\n", 1)[1].splitlines()[0]
    if name != "cpu-host":  # host DRAM keeps the vendor's decimal GB (see its notes)
        assert re.search(r'"[\d.]+ [MG]iB"', hbm_line), hbm_line


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_self_consistent(name: str):
    spec = load_hw(name)
    m = spec.chip.matrix
    su = spec.system.scale_up
    assert spec.chip.sram.capacity < spec.chip.hbm.capacity
    assert m.peak("fp8") >= m.peak("bf16") >= spec.efficiency.gemm * 0  # falls back, never below bf16
    if m.fp4 is not None:
        assert m.fp8 is not None and m.fp4 >= m.fp8
    if su.topology.startswith("torus"):
        assert su.dims is not None and len(su.dims) == (2 if su.topology == "torus2d" else 3)
    if spec.system.chips > su.size:
        assert spec.system.scale_out is not None


@pytest.mark.parametrize("name", ["h100", "h200", "h800", "h20", "b200", "gb200-nvl72", "mi300x",
                                  "mi325x", "mi355x", "trainium2"])
def test_fp8_is_twice_bf16_where_datasheet_says(name: str):
    m = load_hw(name).chip.matrix
    assert m.fp8 == pytest.approx(2 * m.bf16, rel=0.03)  # Trainium2: 1299 vs 2x667 = 1334


def test_gaudi3_fp8_equals_bf16():
    m = load_hw("gaudi3").chip.matrix
    assert m.fp8 == m.bf16 == 1835e12


def test_datasheet_figures():
    h200 = load_hw("h200")
    assert h200.chip.hbm.capacity == 143771 * 2**20  # what nvidia-smi reports, not 141e9 (docs/hardware.md)
    assert h200.chip.hbm.bandwidth == 4.8e12
    assert h200.chip.matrix.bf16 == 989e12
    h100 = load_hw("h100")
    # 18 NVLink4 links x 25 GB/s = 450 GB/s per direction = 900 GB/s bidirectional
    assert h100.system.scale_up.chip_bandwidth == 450e9
    # H800: 400 GB/s bidirectional NVLink; one 400 Gb/s NIC per GPU
    h800 = load_hw("h800")
    assert 2 * h800.system.scale_up.chip_bandwidth == 400e9
    assert h800.system.scale_out.nic_bandwidth == 400e9 / 8
    gb = load_hw("gb200-nvl72")
    assert gb.system.scale_up.size == 72 and gb.system.chips == 72
    assert gb.system.scale_up.topology == "switch"
    assert 2 * gb.system.scale_up.chip_bandwidth == 1.8e12
    mi = load_hw("mi300x").system.scale_up
    assert (mi.topology, mi.size, mi.links) == ("full_mesh", 8, 7)
    assert load_hw("tpu-v5p").system.scale_up.topology == "torus3d"
    assert load_hw("tpu-v6e").system.scale_up.topology == "torus2d"
    assert load_hw("tpu-v5p").chip.matrix.tile == (128, 128)
    assert load_hw("tpu-v6e").chip.matrix.tile == (256, 256)
    assert load_hw("h100").chip.matrix.tile == (64, 256)
    cpu = load_hw("cpu-host")
    assert cpu.chip.hbm.capacity == 24e9 and cpu.system.scale_up.size == 1


def test_peak_uses_own_path_then_falls_back():
    v5p = load_hw("tpu-v5p").chip.matrix
    assert v5p.peak("int8") == 918e12  # its own int8 path
    assert v5p.peak("fp8") == v5p.peak("fp4") == 459e12  # no fp8/fp4: runs as bf16
    h100 = load_hw("h100").chip.matrix
    assert h100.peak("fp4") == 1979e12  # no fp4 on Hopper: runs as fp8


def test_efficiency_calibration():
    # docs/hardware.md: each factor is a kernel anchor over the datasheet peak
    h100 = load_hw("h100").efficiency
    # attention is the long-sequence asymptote of the length curve; at 16K non-causal (16384 keys
    # per query row) it gives TritonBench's FA3 620.7 TF (head dim 128) within 8%; the FA3 paper's
    # 740 TF peak (head dim 256) is 10% above it (head dim is not modelled)
    assert h100.attention * 16384 / (16384 + h100.attention_seq_half) * 989 == pytest.approx(620.7, rel=0.08)
    assert h100.collective == pytest.approx(370 / 450, abs=0.01)
    # the large-GEMM fraction is now the kernel fit (K ramp on top): at K = 16384 it gives DeepGEMM's
    # 4096x7168x16384 (1358 TF) within a few percent: 0.725 x 16384 / (16384 + 573) = 0.70 of 1979
    assert h100.gemm * 16384 / (16384 + h100.gemm_k_half) * 1979 == pytest.approx(1358, rel=0.03)
    assert h100.memory == pytest.approx(0.90)  # raw streaming; FlashMLA's 3000 / 3350 GB/s
    gb = load_hw("gb200-nvl72").efficiency
    assert gb.memory == pytest.approx(7.35 / 8.0, abs=0.01)
    assert gb.gemm == pytest.approx(2744 / 5000, abs=0.01)
    # constants per family: every Hopper file carries the same factors; the fused GatedDeltaNet chunk
    # kernel's curve only where its block slots (132 SMs) are known: H20's SM count and per-SM
    # tensor rate are not published, so it has no curve (docs/cost-model.md)
    assert load_hw("h800").efficiency == h100
    # but for the fused element-wise kernels' streaming fraction, which H200 has from its own kernel
    # rows (vLLM's causal conv on H200: benchmarks/kernels/fit.py --group elementwise_h200)
    h200 = load_hw("h200").efficiency
    assert h200.elementwise_memory == pytest.approx(0.51) and h100.elementwise_memory == pytest.approx(0.65)
    # and for vLLM's MXFP4 MoE curve, fitted per chip (its weight streaming is dequantisation-bound,
    # not HBM-bound: benchmarks/kernels/fit.py --group moe_triton_mxfp4_h200)
    mxfp4 = ("moe_triton_mxfp4", "moe_triton_mxfp4_memory", "moe_triton_mxfp4_overhead")
    assert h200.model_copy(update={"elementwise_memory": h100.elementwise_memory,
                                   **{f: getattr(h100, f) for f in mxfp4}}) == h100
    # H20 also has its own prefill-attention fraction (FA3 on H20, benchmarks/kernels/attention.yaml)
    # and no CUTLASS blockwise FP8 curve (a K-loop time per tile: its tensor rate is cut), nor the
    # block-FP8 MoE kernel curves (fitted on H200 rows of the full-rate parts)
    no_gdn = {"gdn_chunk": None, "gdn_chunk_units": None, "gdn_chunk_state_s": None, "gdn_chunk_fixed_s": None,
              "attention": 0.851, "cutlass_block_fp8": None,
              "cutlass_block_fp8_m_half": 0.0, "cutlass_block_fp8_k_s": 0.0}
    for f in ("moe_triton_block_fp8", "moe_trtllm_block_fp8"):
        no_gdn.update({f: None, f + "_dtypes": (), f + "_tokens_half": None, f + "_memory": None,
                       f + "_overhead": 0.0, f + "_k_half": None})
    no_gdn.update({"moe_trtllm_fp8": None, "moe_trtllm_fp8_dtypes": (), "moe_trtllm_fp8_tokens_half": None,
                   "moe_trtllm_fp8_memory": None, "moe_trtllm_fp8_overhead": 0.0})
    # nor the GQA decode attention occupancy (H100 / H200 rows; H20's SM count differs)
    no_gdn.update({"attention_decode_units_half": None, "attention_decode_split": None,
                   "attention_decode_fixed_s": 0.0})
    # nor the MLA kernels by engine (aiconfigurator's H100 / H200 rows; the full-rate parts)
    no_gdn.update({"mla_kernels": (), "mla_trtllm_prefill": None, "mla_trtllm_prefill_fixed_s": 0.0,
                   "mla_trtllm_decode_fixed_s": 0.0, "mla_sglang_fa3_decode_fixed_s": 0.0})
    # nor the paged-KV prefill attention curve (the same rows and reason)
    no_gdn.update({"attention_paged": None, "attention_paged_seq_half": 0.0, "attention_paged_fixed_s": 0.0,
                   "attention_paged_head_dim_exp": 0.0})
    # nor TensorRT-LLM's cuBLASLt FP8 GEMM curve (fitted on H100 / H200 rows of the full-rate parts)
    no_gdn.update({"cublaslt_fp8": None, "cublaslt_fp8_m_half": 0.0, "cublaslt_fp8_k_half": None,
                   "cublaslt_fp8_memory": None})
    # nor TensorRT-LLM's context attention curve (H100 / H200 rows likewise)
    no_gdn.update({"trtllm_attention": None, "trtllm_attention_fp8": None, "trtllm_attention_seq_half": None,
                   "trtllm_attention_fixed_s": 0.0})
    # nor vLLM's MXFP4 MoE curve (H100 / H200 rows)
    no_gdn.update({"moe_triton_mxfp4": None, "moe_triton_mxfp4_dtypes": (), "moe_triton_mxfp4_tokens_half": None,
                   "moe_triton_mxfp4_memory": None, "moe_triton_mxfp4_overhead": 0.0})
    assert load_hw("h20").efficiency == h100.model_copy(update=no_gdn)
    assert (h100.gdn_chunk, h100.gdn_chunk_units) == (0.307, 132)
    assert (h100.gdn_chunk_state_s, h100.gdn_chunk_fixed_s) == pytest.approx((7.9e-6, 1.81e-6), rel=1e-12)


# --- bad input: one line naming the file and the field ---------------------------------------

BASE = yaml.safe_load((folder("hw_specs") / "h200.yaml").read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _load_error(tmp_path: Path, edit) -> str:
    data = copy.deepcopy(BASE)
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(CodesignError) as e:
        load_hw(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    return msg


def test_missing_field(tmp_path):
    msg = _load_error(tmp_path, lambda d: d["chip"]["hbm"].pop("bandwidth"))
    assert "chip.hbm.bandwidth: Field required" in msg


def test_negative_value(tmp_path):
    msg = _load_error(tmp_path, lambda d: d["chip"]["hbm"].update(bandwidth="-1 TB/s"))
    assert "chip.hbm.bandwidth" in msg and "from 1 B/s to 1 EB/s" in msg and "found '-1 TB/s'" in msg


@pytest.mark.parametrize("value", ["4.8 TB", "fast"])
def test_mistyped_unit(tmp_path, value):
    msg = _load_error(tmp_path, lambda d: d["chip"]["hbm"].update(bandwidth=value))
    assert "chip.hbm.bandwidth" in msg
    assert "expected a bandwidth quantity such as '4.8 TB/s'" in msg and repr(value) in msg


def test_unknown_key(tmp_path):
    msg = _load_error(tmp_path, lambda d: d["chip"]["hbm"].update(bandwith="4.8 TB/s"))
    assert "chip.hbm.bandwith: Extra inputs are not permitted" in msg


def test_torus_dims_must_match_size(tmp_path):
    def edit(d):
        d["system"]["scale_up"].update(topology="torus2d", size=8, dims=[3, 3])
    msg = _load_error(tmp_path, edit)
    assert "system.scale_up" in msg and "multiply to 9, expected size=8" in msg


def test_unknown_name_lists_available():
    with pytest.raises(CodesignError) as e:
        load_hw("h2000")
    msg = str(e.value)
    assert msg.startswith("unknown hardware spec 'h2000'; available: ")
    for n in EXPECTED:
        assert n in msg


def test_dims_only_with_a_torus():
    """A parsed field acts or is refused: dims shape a torus and mean nothing for a switch."""
    import copy

    from codesign.errors import CodesignError
    from codesign.hw.spec import HardwareSpec
    from codesign.spec_files import validate
    from tests.sim.helpers import HW_DICT

    d = copy.deepcopy(HW_DICT)
    d["system"]["scale_up"]["dims"] = [2, 4]
    with pytest.raises(CodesignError, match=r"dims: only a torus2d or torus3d topology has dims, found dims \[2, 4\] "
                                            r"with topology 'switch'"):
        validate(HardwareSpec, d, "hw.yaml")


def test_cdna_large_gemm_fractions_are_amds_sustained_max_achievable_flops():
    # AMD MAF (benchmarks/kernels/max_achievable_gemm.yaml): MAF / datasheet peak, per chip and dtype.
    # The spec values are solved through the cost path (fit.py --maf), so they sit slightly above
    # the bare ratio (ramp at M = 4096 and the 2 us per-kernel time): within 1.5% of it.
    for name, bf16, fp8 in (("mi300x", 708, 1273), ("mi325x", 843, 1519)):
        e = load_hw(name).efficiency
        assert e.gemm == pytest.approx(bf16 / 1307.4, rel=0.015)
        assert e.gemm_for("bf16") == e.gemm and e.gemm_for("fp16") == e.gemm
        assert e.gemm_for("fp8") == pytest.approx(fp8 / 2614.9, rel=0.015)
    # MI325X (1000 W) sustains ~19% more FP8 than MI300X (750 W): 1519 / 1273
    ratio = load_hw("mi325x").efficiency.gemm_for("fp8") / load_hw("mi300x").efficiency.gemm_for("fp8")
    assert ratio == pytest.approx(1519 / 1273, rel=0.005)
    # chips without per-dtype data keep one fraction for every dtype
    h = load_hw("h100").efficiency
    assert h.gemm_by_dtype is None and h.gemm_for("fp8") == h.gemm


def test_gemm_by_dtype_refuses_an_unknown_dtype_or_a_bad_fraction(tmp_path):
    msg = _load_error(tmp_path, lambda d: d["efficiency"].update(gemm_by_dtype={"fp9": 0.5}))
    assert "efficiency.gemm_by_dtype.fp9" in msg
    msg = _load_error(tmp_path, lambda d: d["efficiency"].update(gemm_by_dtype={"fp8": 1.5}))
    assert "efficiency.gemm_by_dtype.fp8" in msg and "1.5" in msg


def test_a_loaded_file_is_reused_until_its_text_changes(tmp_path):
    """`spec_files.load` keeps validated inputs by their file's text: the same unchanged file gives
    the same frozen object; an edited file is read and validated again, and a broken edit is the
    usual one-line error, not the kept object."""
    import yaml

    from codesign.errors import CodesignError
    from codesign.hw import load_hw

    spec = yaml.safe_load(open("hw_specs/h200.yaml"))
    path = tmp_path / "chip.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = load_hw(path)
    assert load_hw(path) is first
    spec["chip"]["hbm"]["bandwidth"] = "9 TB/s"
    path.write_text(yaml.safe_dump(spec))
    edited = load_hw(path)
    assert edited is not first and edited.chip.hbm.bandwidth == 9e12 and first.chip.hbm.bandwidth != 9e12
    spec["chip"]["hbm"]["bandwidth"] = "fast"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(CodesignError, match="bandwidth"):
        load_hw(path)
