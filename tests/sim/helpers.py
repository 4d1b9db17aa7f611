"""Small hand-built inputs for simulator tests: a hardware spec and per-chip op graphs that do not
depend on the tracer or the mapping."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec

# H200-like numbers (accelerators.md: 989/1979 TFLOPS, 141 GB, 4.8 TB/s, 50 MB SRAM).
HW_DICT = {
    "name": "test-chip",
    "sources": ["test fixture"],
    "chip": {
        "matrix": {"bf16": "989 TFLOPS", "fp8": "1979 TFLOPS", "tile": [64, 128]},
        "vector": {"fp32": "67 TFLOPS"},
        "sram": {"capacity": "50 MB", "bandwidth": "12 TB/s"},
        "hbm": {"capacity": "141 GB", "bandwidth": "4.8 TB/s"},
    },
    "efficiency": {"gemm": 0.7, "attention": 0.6, "memory": 0.85, "vector": 0.5, "collective": 0.8, "small_m_half": 64},
    "system": {"chips": 8, "scale_up": {"topology": "switch", "size": 8, "links": 18, "link_bandwidth": "25 GB/s", "latency": "3 us"}},
    "power": {"tdp": "700 W"},
    "cost": {"per_hour": 3.5, "source": "assumed"},
}


def make_hw(**overrides) -> HardwareSpec:
    """The fixture spec with dotted-path overrides, e.g. make_hw(**{"chip.hbm.bandwidth": "8 TB/s"})."""
    import copy

    d = copy.deepcopy(HW_DICT)
    for path, value in overrides.items():
        node = d
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return HardwareSpec.model_validate(d)


def simple_collective_time(collective: dict, hw: HardwareSpec) -> float:
    """Ring-free stand-in: payload over the chip's scale-up bandwidth plus latency."""
    return hw.system.scale_up.latency + collective["bytes"] / (hw.system.scale_up.chip_bandwidth * hw.efficiency.collective)


def op(name, kind, layer=0, layer_type="full_attention+moe", block="attention", flops=0.0, w=0.0, a=0.0, kv=0.0,
       state=0.0, gemm=None, tpe=None, efpt=0.0, collective=None) -> Op:
    return Op(
        name=name, target="t", kind=kind, block=block, layer=layer, layer_type=layer_type, phase="decode",
        in_shapes=(), out_shapes=(), dtype="bfloat16", flops=flops,
        bytes_read={"weight": w, "activation": a, "kv_cache": kv, "state": state},
        bytes_written={"weight": 0.0, "activation": 0.0, "kv_cache": 0.0, "state": 0.0},
        gemm=gemm, tokens_per_expert=tpe, expert_flops_per_token=efpt, collective=collective,
    )


def layer_ops(layer: int, batch: int, tpe: tuple[int, ...], with_a2a: bool = True) -> list[Op]:
    """One decoder layer, per chip: qkv GEMM, attention, o GEMM, router, (all-to-all), experts,
    (all-to-all). Sizes loosely like a 4096-hidden MoE model in bf16."""
    H = 4096
    lt = "full_attention+moe"
    ops = [
        op(f"{layer}.qkv", "gemm", layer, lt, "attention", flops=2 * batch * H * 6144, w=H * 6144 * 2, a=batch * H * 2,
           gemm=(1, batch, 6144, H)),
        op(f"{layer}.attn", "attention", layer, lt, "attention", flops=4 * batch * 32 * 128 * 8192, kv=batch * 8192 * 1024 * 2),
        op(f"{layer}.o", "gemm", layer, lt, "attention", flops=2 * batch * H * H, w=H * H * 2, a=batch * H * 2, gemm=(1, batch, H, H)),
        op(f"{layer}.norm", "vector", layer, lt, "norm", flops=5 * batch * H, a=batch * H * 4),
        op(f"{layer}.router", "gemm", layer, lt, "moe_router", flops=2 * batch * H * 128, w=H * 128 * 2, a=batch * H * 2,
           gemm=(1, batch, 128, H)),
    ]
    efpt = 2 * 3 * H * 1536
    touched = sum(1 for t in tpe if t)
    experts = op(f"{layer}.experts", "grouped_gemm", layer, lt, "moe_experts", flops=efpt * sum(tpe), w=touched * 3 * H * 1536 * 2,
                 a=sum(tpe) * H * 2, tpe=tpe, efpt=efpt)
    if with_a2a:
        ops.append(op(f"{layer}.dispatch", "collective", layer, lt, "moe_experts",
                      collective={"type": "all_to_all", "bytes": batch * 8 * H * 1.0}))
        ops.append(experts)
        ops.append(op(f"{layer}.combine", "collective", layer, lt, "moe_experts",
                      collective={"type": "all_to_all", "bytes": batch * 8 * H * 2.0}))
    else:
        ops.append(experts)
    return ops


def chain_graph(ops_by_layer: list[list[Op]]) -> nx.DiGraph:
    """A DiGraph where every op depends on the previous one (layers in sequence)."""
    g = nx.DiGraph()
    prev = None
    i = 0
    for ops in ops_by_layer:
        for o in ops:
            g.add_node(i, op=o)
            if prev is not None:
                g.add_edge(prev, i)
            prev = i
            i += 1
    return g


@dataclass
class FakePrecision:
    weights: str = "bf16"
    activations: str = "bf16"
    kv_cache: str = "bf16"


@dataclass
class FakePlan:
    tp: int = 1
    ep: int = 1
    pp: int = 1
    dp: int = 1
    attention_dp: int = 1
    two_batch_overlap: bool | None = False


@dataclass
class FakeMapped:
    graph: nx.DiGraph
    plan: FakePlan = field(default_factory=FakePlan)
    precision: FakePrecision = field(default_factory=FakePrecision)
    chips: int = 8
    stage_layers: list[list[int]] | None = None
