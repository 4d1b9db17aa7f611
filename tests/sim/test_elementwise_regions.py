"""Element-wise regions (`CostOptions.elementwise_model: regions`): each run of traced element-wise
ops between two matrix/attention ops moves its external bytes once, counted here by hand on
Qwen3-8B's traced decoder layer (hidden 4,096, intermediate 12,288, BF16)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from codesign.graph.tracing import trace
from codesign.hw import load_hw
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.elementwise_regions import region_ops, segment_charged_ops
from tests.sim.helpers import op

T, H, I = 256, 4096, 12288  # prompt tokens; Qwen3-8B hidden and intermediate sizes
BF16 = 2


@pytest.fixture(scope="module")
def graph():
    return trace("qwen3-8b", phase="prefill", batch=1, tokens=T)


def _regions(g):
    by_layer = defaultdict(list)
    op_of = {}
    for n, o in g.nodes(data="op"):
        by_layer[o.layer].append(n)
        op_of[n] = o
    return by_layer, op_of, {**op_of, **region_ops(g, by_layer.values(), op_of)}


def _bytes(ops, cls="activation"):
    return sum(o.bytes_read.get(cls, 0.0) + o.bytes_written.get(cls, 0.0) for o in ops)


def _between(nodes, op_of, first: str, last: str) -> list:
    """The nodes after the op named `first` and before the op named `last` (one layer's list)."""
    names = [op_of[n].name for n in nodes]
    i, j = names.index(first), names.index(last)
    return nodes[i + 1:j]


def test_residual_add_and_rmsnorm_region_moves_four_tensors(graph):
    # Between the attention output projection and the gate projection: the residual add and the
    # post-attention RMSNorm (eager: add, _to_copy, pow, mean, add, rsqrt, mul, mul, _to_copy).
    # As vLLM's fused_add_rms_norm: read the projection output and the residual, write the new
    # residual and the normed activation: 4 x T x H x 2 bytes; the norm weight stays a weight read.
    by_layer, op_of, charged = _regions(graph)
    region = _between(by_layer[1], op_of, "layers.1.self_attn.o_proj/mm", "layers.1.mlp.gate_proj/mm")
    assert [op_of[n].kind in ("vector", "memory") for n in region] == [True] * len(region)
    assert len(region) >= 8
    eager = _bytes(op_of[n] for n in region)
    fused = _bytes(charged[n] for n in region)
    assert fused == 4 * T * H * BF16
    assert eager > 3 * fused  # the eager decomposition's per-op traffic
    assert _bytes((charged[n] for n in region), "weight") == _bytes((op_of[n] for n in region), "weight") > 0


def test_swiglu_region_reads_gate_and_up_and_writes_once(graph):
    # silu(gate) * up between the gate/up and down projections: as vLLM's silu_and_mul, read the
    # two T x I projection outputs and write the T x I down-projection input.
    by_layer, op_of, charged = _regions(graph)
    region = _between(by_layer[1], op_of, "layers.1.mlp.up_proj/mm", "layers.1.mlp.down_proj/mm")
    assert [op_of[n].target for n in region] == ["aten.silu.default", "aten.mul.Tensor"]
    assert _bytes(charged[n] for n in region) == 3 * T * I * BF16
    assert _bytes(op_of[n] for n in region) == 5 * T * I * BF16


def test_region_bytes_cost_at_hbm_streaming_bandwidth(graph):
    # The SwiGLU region at 8,192 tokens is far above the SRAM budget: its ops' bytes stream from HBM
    # at the fused element-wise kernels' rate (3.35 TB/s x efficiency.elementwise_memory 0.65 on
    # H100), not at the SRAM rate of the per-op rule.
    g = trace("qwen3-8b", phase="prefill", batch=1, tokens=8192)
    by_layer, op_of, charged = _regions(g)
    region = _between(by_layer[1], op_of, "layers.1.mlp.up_proj/mm", "layers.1.mlp.down_proj/mm")
    hw = load_hw("h100")
    regions = CostModel(hw, options=CostOptions(elementwise_model="regions"))
    per_op = CostModel(hw, options=CostOptions(elementwise_model="sram_per_op"))
    mem = sum(regions.cost(charged[n]).memory_s for n in region)
    assert mem == pytest.approx(3 * 8192 * I * BF16 / (3.35e12 * 0.65), rel=1e-9)
    assert {regions.cost(charged[n]).bottleneck for n in region} == {"hbm"}
    assert {per_op.cost(op_of[n]).bottleneck for n in region} == {"sram"}
    # the option changes nothing for the ops the per-op rule already charges to HBM (the GEMMs)
    gemm = next(n for n in by_layer[1] if op_of[n].kind == "gemm")
    assert regions.cost(op_of[gemm]) == per_op.cost(op_of[gemm])
    # and the kept parts agree with the full computation
    assert all(regions.cost(charged[n]) == regions.reference_cost(charged[n]) for n in region)


def test_cache_writes_stream_at_the_hbm_rate(graph):
    # A KV-cache write (copy_ into the cache, a memory op) is not an element-wise kernel's
    # activation traffic: it streams at efficiency.memory whatever the element-wise model.
    by_layer, op_of, charged = _regions(graph)
    (write, *_) = [n for n in by_layer[1] if charged[n].bytes_written.get("kv_cache", 0.0) > 0]
    hw = load_hw("h100")
    c = CostModel(hw, options=CostOptions(elementwise_model="regions", sram_activations=False)).cost(charged[write])
    o = charged[write]
    moved = sum(o.bytes_read.values()) + sum(o.bytes_written.values())
    assert c.memory_s == pytest.approx(moved / (3.35e12 * 0.90), rel=1e-9)


def test_an_entry_reads_the_segments_input_but_not_what_the_region_hands_it():
    # A traced kernel segment (the GatedDeltaNet conv): a zero history (Z bytes), the concatenation
    # of the segment's input (X bytes) with it, then the SiLU. The concatenation has a producer in
    # the region (the zeros), so without the `entry` mark it would read nothing from outside; as an
    # entry it reads its own reads (X + Z) less what the region hands it (Z): the input, once.
    X, Z = 1000.0, 30.0
    zeros = op("zeros", "memory")
    zeros.bytes_written = {**zeros.bytes_written, "activation": Z}
    cat = op("cat", "memory", a=X + Z)
    cat.bytes_written = {**cat.bytes_written, "activation": X + Z}
    silu = op("silu", "vector", a=X + Z)
    silu.bytes_written = {**silu.bytes_written, "activation": X + Z}
    edges = ((0, 1), (1, 2))
    moved = lambda ops: [(o.bytes_read["activation"], o.bytes_written["activation"]) for o in ops]  # noqa: E731
    assert moved(segment_charged_ops((zeros, cat, silu), edges, (1,))) == [(0.0, 0.0), (X, 0.0), (0.0, X + Z)]
    assert moved(segment_charged_ops((zeros, cat, silu), edges, ()))[1] == (0.0, 0.0)


def test_default_is_regions_and_eager_devices_never_take_them():
    # The default is regions without the SRAM split (docs/cost-model/elementwise-regions.md gives
    # the kernel table's figures); regions act only where element-wise work runs fused (the native
    # overlays turn fused_activations_on_chip off).
    assert CostOptions().elementwise_model == "regions" and CostOptions().elementwise_regions
    assert not CostOptions().elementwise_sram_split
    assert not CostOptions(elementwise_model="sram_per_op").elementwise_regions
    assert CostOptions(elementwise_model="regions").elementwise_regions
    assert not CostOptions(elementwise_model="regions", fused_activations_on_chip=False).elementwise_regions
    assert not CostOptions(elementwise_model="regions", fuse_elementwise=False).elementwise_regions


@pytest.mark.parametrize("model,chips,plan", [("qwen3.5-35b-a3b", 8, "tp8ep8"), ("qwen3-8b", 4, "tp2pp2")])
def test_step_model_equals_full_evaluation_with_regions(model, chips, plan):
    # The step model's templates, remapped ops and virtual layers charge the same regions as the
    # whole traced graph.
    from codesign.graph.shape import Group, StepShape
    from codesign.mapping import ParallelPlan, Precision
    from codesign.models import load_model
    from codesign.sim.stepper import Stepper
    from tests.sim.helpers import make_hw

    plans = {"tp8ep8": ParallelPlan(tp=8, ep=8), "tp2pp2": ParallelPlan(tp=2, pp=2)}
    hw = make_hw(**{"system.chips": chips, "system.scale_up.size": max(8, chips)})
    opts = CostOptions(elementwise_model="regions")
    st = Stepper(hw, load_model(model), plans[plan], Precision(weights="fp8", activations="fp8"), opts, cache=False)
    base = Stepper(hw, load_model(model), plans[plan], Precision(weights="fp8", activations="fp8"),
                   CostOptions(elementwise_model="sram_per_op"), cache=False)
    for shape in (StepShape.decode(37, 20_000), StepShape.prefill(1, 2048, cached=1024),
                  StepShape((Group(12, 1, 5000), Group(1, 256, 700)))):
        a, b = st.step(shape), st.full_step(shape)
        assert a.time_s == pytest.approx(b.time_s, rel=1e-12, abs=0)
        assert a.breakdown["resource"] == pytest.approx(b.breakdown["resource"], rel=1e-9, abs=1e-15)
        assert a.time_s != base.step(shape).time_s
