"""The routed-expert kernel implementation of a deployment (`CostOptions.moe_kernel`: the grouped
GEMM rule or the chip's Triton fused_moe curves, `efficiency.moe_triton*`) and the MoE runner's
kernels through HBM (`CostOptions.moe_unfused_epilogue`: the unfused permute, activation and
un-permute kernels' bytes and the grouped GEMMs' intermediate buffers). `MoeKernels` is a part of
`codesign.sim.cost.CostModel`; the grouped GEMM's padding and ramp rule is the model's own
(`grouped_gemm_time`)."""

from __future__ import annotations

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec


# The efficiency curve of each Triton `cost.moe_kernel` (docs/cost-model.md "MoE kernel implementation").
MOE_KERNEL_CURVE = {"triton_fused": "moe_triton", "triton_fused_default": "moe_triton_default",
                    "triton_fused_block_fp8": "moe_triton_block_fp8",
                    "trtllm_cutlass_block_fp8": "moe_trtllm_block_fp8",
                    "trtllm_cutlass_fp8": "moe_trtllm_fp8", "triton_mxfp4": "moe_triton_mxfp4"}


def routed_rows(tokens_per_expert: tuple[int, ...] | None) -> int:
    """(token, expert) rows of a routed-expert op on its chip: the sum of its tokens per expert."""
    return sum([t for t in tokens_per_expert or () if t > 0])


def _routed(op: Op) -> int:
    """`routed_rows` of the op's own tokens per expert."""
    return routed_rows(op.tokens_per_expert)


def _expert_dims(op: Op) -> tuple[float, float] | None:
    """(hidden H, intermediate I) of a traced expert block from its weights' shapes (gate/up
    (E, 2I, H), down (E, H, I)); None for an op without them (a single grouped GEMM command)."""
    shapes = op.in_shapes
    if len(shapes) < 5 or len(shapes[3]) != 3 or len(shapes[4]) != 3:
        return None
    return float(shapes[3][2]), float(shapes[4][2])


class MoeKernels:
    """`CostModel`'s routed-expert kernel rates and the MoE runner's HBM kernels; reads the model's
    options, matrix dtype and bandwidths."""

    def _moe_kernel(self, hw: HardwareSpec) -> None:
        """Rates of the routed-expert kernel implementation (`CostOptions.moe_kernel`): the grouped
        GEMM's by default; the Triton fused_moe curve's (`MOE_KERNEL_CURVE`: `efficiency.moe_triton*`
        for "triton_fused", `moe_triton_default*`, `moe_triton_block_fp8*`, `moe_trtllm_block_fp8*`,
        `moe_trtllm_fp8*`, `moe_triton_mxfp4*`),
        refused on a chip or matrix dtype without that curve."""
        eff = hw.efficiency
        self.grouped_half = self.half
        self.grouped_hbm_bw = self.matrix_hbm_bw
        self.grouped_fixed_s = 0.0
        self.grouped_k_half = self.k_half  # the K ramp of expert GEMMs (`_grouped_k_ramp`); None: none
        if self.opts.moe_kernel == "grouped":
            return
        field = MOE_KERNEL_CURVE[self.opts.moe_kernel]
        curve = eff.moe_kernel_curve(field, self.matrix_dtype)
        if curve is None:
            have = ", ".join(getattr(eff, field + "_dtypes")) if getattr(eff, field) is not None else "none"
            raise CodesignError(f"cost.moe_kernel: {self.opts.moe_kernel} needs efficiency.{field} of {hw.name} "
                                f"for {self.matrix_dtype} (a fit on that kernel's rows of that dtype); "
                                f"{hw.name}'s {field}_dtypes: {have}")
        frac, half, memory, fixed, self.grouped_k_half = curve
        self.grouped_rate = hw.chip.matrix.peak(self.matrix_dtype) * frac
        if half is not None:
            self.grouped_half = half
        if memory is not None:
            self.grouped_hbm_bw = hw.chip.hbm.bandwidth * memory
        self.grouped_fixed_s = fixed

    def grouped_overhead(self, op: Op, routed_tokens: int) -> float:
        """Fixed seconds of a routed-expert op with `routed_tokens` (token, expert) rows on this
        chip: its kernels' fixed time, and with `moe_unfused_epilogue` the serial HBM time of the
        permute, activation and un-permute kernels (`unfused_moe_bytes`)."""
        o = self.launch_s * self.opts.grouped_op_kernels + self.grouped_fixed_s
        if self.unfused_moe_bw is not None and routed_tokens > 0:
            o += self.unfused_moe_bytes(op, routed_tokens) / self.unfused_moe_bw
        return o

    def unfused_gemm_bytes(self, op: Op, routed_tokens: int) -> float:
        """HBM bytes the two grouped GEMMs add with `moe_unfused_epilogue`, inside their own kernels
        (overlapped with their compute like the op's other bytes): per routed row gate/up writes
        its output, 2 I o, and the down GEMM reads the activation kernel's output, I a, and writes
        its own, H o (see `unfused_moe_bytes` for the symbols; 0 without the traced weights)."""
        dims = _expert_dims(op)
        if dims is None:
            return 0.0
        h, i = dims
        return routed_tokens * (2.0 * i * self.opts.moe_gemm_output_bytes + i * self.matrix_bytes
                                + h * self.opts.moe_gemm_output_bytes)

    def unfused_moe_bytes(self, op: Op, routed_tokens: int) -> float:
        """HBM bytes of the MoE runner's non-GEMM kernels for `routed_tokens` routed rows
        (`CostOptions.moe_unfused_epilogue`), with hidden size H and intermediate size I from the
        traced expert weights (gate/up (E, 2I, H), down (E, H, I)), a = bytes of the matrix dtype,
        o = `moe_gemm_output_bytes`, per routed row: permute 2 H a (read the token, write its copy),
        gated activation 2 I o + I a (read gate/up's output, write the down GEMM's input), un-permute
        H o (read the down GEMM's row; the combined output is the op's own write). 0 for an op
        without the traced expert weights (a single grouped GEMM: `codesign kernel`)."""
        dims = _expert_dims(op)
        if dims is None:
            return 0.0
        h, i = dims
        a, o = self.matrix_bytes, self.opts.moe_gemm_output_bytes
        return routed_tokens * (2.0 * h * a + 2.0 * i * o + i * a + h * o)
