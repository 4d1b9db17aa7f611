"""The cost model of eager torch execution on the host device (what `codesign run` measures).

Serving engines fuse element-wise work into GEMM epilogues and launch kernels from CUDA graphs, and
`codesign.sim.cost.CostModel` charges them so. Eager torch on a CPU does neither: every op the
tracer records is one dispatch, and the tracer's three fused kernels run natively as Python custom
ops of many small kernels. `EagerCostModel` keeps the base model's compute and memory terms and
replaces its per-kernel overhead by the eager one (each a named, calibrated assumption of the
calibration overlay, `codesign.native.overlay`):

* eager torch dispatches every op the tracer records, element-wise and data movement included:
  each pays its own per-call cost, `eager.ops[key]` (measured cold at a tiny shape, so a oneDNN
  convolution or a triangular solve pays what it costs to set up; the key is the target, and a
  binary element-wise op with a Python-scalar operand has its own, `codesign.native.replay.cost_key`,
  falling back to the target's in an overlay without it), or `CostOptions.launch_overhead_s` for a
  target not measured;
* it also dispatches the views and reshapes between them that the tracer does not record: each
  recorded aten op pays `view_ratio` view dispatches at `eager.view_s` (a view makes no kernel and
  allocates no storage: calibrated on Python-level view ops) and `dispatch_ratio - 1 - view_ratio`
  (at least 0) other unrecorded dispatches at `launch_overhead_s` (dispatch, allocation, the Python
  between ops; calibrated per kernel dispatch on the project's RMSNorm + MLP modules at one token,
  its views at `view_s`). `dispatch_ratio` and `view_ratio` are the step's aten dispatches and its
  views counted on the meta device (`codesign.native.dispatch.counts`) over its recorded aten ops
  (named assumption: the unrecorded dispatches are spread evenly over the recorded ops). An overlay
  without `view_s` charges views at `launch_overhead_s`;
* `codesign::attention`, `codesign::gated_delta_rule_step` pay their measured per-call cost, and
  `codesign::moe_experts` its per-call cost plus a per-active-expert cost (its loop over experts)
  plus a per-route cost for each routed (token, expert) pair (`eager.moe_route_s`: its gathers,
  gated activation and weighted index_add, and what its small per-expert GEMMs fall short of the
  calibrated GEMM rate);
* a heavy kernel (the three fused kernels and the aten targets in `eager.heavy_ops`, the oneDNN
  convolution) evicts the dispatch path that the light ops after it share: each call of one also
  pays `eager.heavy_rewarm_s`, what a block of light ops costs more right after one heavy kernel
  than after light ops (`codesign.native.microbench.rewarm`; docs/native.md "Cold regimes");
* a loop recorded once for `repeat` trips (the GatedDeltaNet chunk recurrence) pays its overhead
  `repeat` times: eager torch dispatches the body on every trip;
* a cast between two floating dtypes that the trace records (the bf16 model's casts to fp32 and
  back, in every norm and in the GatedDeltaNet kernel) costs nothing in an fp32 run: `Tensor.to` of
  a tensor already of that dtype returns it, no dispatch (`is_native_identity`; the native run casts
  every floating tensor to fp32);
* the step's unrecorded dispatches (`step_ratios`) are counted without those that a per-call figure
  already covers: `eager.ops` times an op through the call the model makes (a batched GEMM through
  `torch.matmul`, with its four views and `_unsafe_view`), and `eager.op_views` / `op_others` say
  how many such dispatches each figure holds.
"""

from __future__ import annotations

from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec
from codesign.native.overlay import EagerCosts
from codesign.native.replay import cost_key
from codesign.sim.cost import CostModel, CostOptions
from codesign.sim.op_cost import OpCost, Residency


class EagerCostModel(CostModel):
    def __init__(self, hw: HardwareSpec, eager: EagerCosts, matrix_dtype: str = "fp32", attention_dtype: str = "fp32",
                 options: CostOptions | None = None, dispatch_ratio: float = 1.0, view_ratio: float = 0.0) -> None:
        super().__init__(hw, matrix_dtype, attention_dtype, options)
        self.eager = eager
        self.dispatch_ratio = dispatch_ratio
        self.view_ratio = view_ratio
        self.heavy = frozenset(eager.heavy_ops)

    def cost(self, op: Op, residency: Residency = Residency()) -> OpCost:
        if is_native_identity(op):
            return OpCost(0.0, 0.0, 0.0, 0.0, "overhead")
        return super().cost(op, residency)

    def overhead(self, op: Op) -> float:
        if op.kind == "collective":
            return 0.0
        target = op.target.split(".")[:2]
        name = ".".join(target)
        rewarm = self.eager.heavy_rewarm_s
        if name == "codesign.attention":
            per_call = self.eager.attention_s + rewarm
        elif name == "codesign.gated_delta_rule_step":
            per_call = self.eager.gated_delta_rule_step_s + rewarm
        elif name == "codesign.moe_experts":
            tpe = op.tokens_per_expert or ()
            active = sum(1 for t in tpe if t > 0)
            per_call = (self.eager.moe_experts_s + active * self.eager.moe_expert_s + sum(tpe) * self.eager.moe_route_s
                        + rewarm)
        else:
            launch = self.launch_s  # the options value, else the chip's efficiency.kernel_overhead
            view = self.eager.view_s or launch
            others = max(self.dispatch_ratio - 1.0 - self.view_ratio, 0.0)
            key = cost_key(op)
            if key not in self.eager.ops:  # an overlay without the key's own entry (older ones): the target's
                key = op.target
            per_call = self.eager.ops.get(key, launch) + self.view_ratio * view + others * launch
            if key in self.heavy:
                per_call += rewarm
        return per_call * max(op.repeat, 1)


def is_fused(op: Op) -> bool:
    return op.target.startswith("codesign.")


# floating dtypes as the tracer names an op's output (`Op.dtype`), and those of two bytes
_FLOATS = frozenset({"float32", "bfloat16", "float16", "float64"})
_HALVES = frozenset({"bfloat16", "float16"})


def is_native_identity(op: Op) -> bool:
    """Whether `op` is a cast between two floating dtypes, which an fp32 native run does not dispatch
    (every floating tensor is fp32 there, and `Tensor.to` of a tensor already of the dtype returns it).
    The source dtype is read from the op's bytes per input element: 2 (bf16 / fp16) to any float, or
    4 (fp32) to a half type; a cast from 4 bytes to fp32 is taken for int32 -> fp32 (the trace records
    only casts that dispatch, and fp32 -> fp32 does not), from 8 bytes for int64 / fp64 -> float: real."""
    if not op.target.startswith("aten._to_copy") or op.dtype not in _FLOATS or not op.in_shapes:
        return False
    n = 1
    for d in op.in_shapes[0]:
        n *= d
    per = sum(op.bytes_read.values()) / (n * max(op.repeat, 1)) if n else 0.0
    return per == 2.0 or (per == 4.0 and op.dtype in _HALVES)


def _dispatched(ops) -> list[Op]:
    """The recorded aten ops an eager fp32 run dispatches (not the fused kernels, collectives or the
    identity casts)."""
    return [op for op in ops if not is_fused(op) and op.kind != "collective" and not is_native_identity(op)]


def recorded_dispatches(ops) -> int:
    """Aten dispatches the recorded ops stand for (loop bodies count once per trip)."""
    return sum(max(op.repeat, 1) for op in _dispatched(ops))


def step_ratios(eager: EagerCosts, ops, dispatches: int, views: int) -> tuple[float, float]:
    """(dispatch_ratio, view_ratio) of a step whose recorded ops are `ops` and whose native run
    dispatches `dispatches` aten ops, `views` of them views (`codesign.native.dispatch.counts`):
    per recorded dispatch, all its dispatches and its unrecorded views, less the views and other
    dispatches that the recorded ops' per-call figures already hold (`eager.op_views`, `op_others`)."""
    own = _dispatched(ops)
    recorded = max(sum(max(op.repeat, 1) for op in own), 1)

    def held(table: dict[str, int]) -> int:
        return sum(max(op.repeat, 1) * table.get(cost_key(op), table.get(op.target, 0)) for op in own)

    free_views = max(views - held(eager.op_views), 0)
    others = max(dispatches - views - recorded - held(eager.op_others), 0)
    return 1.0 + (free_views + others) / recorded, free_views / recorded
