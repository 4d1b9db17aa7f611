"""The dense MLP's gated activation as a kernel of its own, through HBM
(`CostOptions.mlp_unfused_activation`, docs/cost-model.md "Engine effect: dense SwiGLU through
HBM"): the engine runs the MLP's gate/up projection as GEMM(s) that write their 2 x intermediate
output to HBM, then a separate SwiGLU kernel that reads it and writes the down projection's input
(TensorRT-LLM v0.9.0's LLaMA `GatedMLP`, a "Known Issue" of its performance page). Off by default:
the activation is fused into the GEMMs' epilogue/prologue, as the traced element-wise ops are.
`MlpActivationKernel` is a part of `codesign.sim.cost.CostModel`; it charges the activation kernel
on the layer's down-projection GEMM, where its input size is known (the GEMM's M rows and K = the
intermediate size on this chip)."""

from __future__ import annotations

from codesign.graph.op import Op

# The dense MLP's row-parallel projection: the op the activation kernel's time is charged on.
_DOWN = "down_proj"


def is_mlp_down(op: Op) -> bool:
    """Whether `op` is a dense MLP's down-projection GEMM (block `mlp`; a MoE shared expert's is
    block `moe_shared` and is not charged)."""
    return op.kind == "gemm" and op.block == "mlp" and op.name.split("/")[0].endswith(_DOWN)


class MlpActivationKernel:
    """`CostModel`'s dense-MLP activation kernel through HBM; reads the model's options, matrix
    dtype, per-kernel fixed time and streaming bandwidth (`unfused_mlp_bw`, None when off)."""

    def unfused_mlp_bytes(self, gemm: tuple[int, int, int, int] | None) -> float:
        """HBM bytes of the separate SwiGLU kernel in front of a down-projection GEMM of problem
        `gemm` = (batch, M rows, N = hidden, K = intermediate on this chip): per row it reads the
        gate/up output, 2 K o, and writes the down GEMM's input, K a (o =
        `mlp_gemm_output_bytes`, a = bytes of the matrix dtype). 0 without a GEMM problem."""
        if gemm is None:
            return 0.0
        b, m, _, k = gemm
        return float(b) * m * (2.0 * k * self.opts.mlp_gemm_output_bytes + k * self.matrix_bytes)

    def mlp_down_overhead(self, gemm: tuple[int, int, int, int] | None) -> float:
        """Fixed seconds of a dense MLP's down-projection GEMM with `mlp_unfused_activation`: the
        GEMM kernel's own (`_kernel_overhead`), then the activation kernel's bytes at HBM streaming
        bandwidth (`efficiency.memory`), serial before it, and its own fixed time (one kernel)."""
        return self._kernel_overhead + self.unfused_mlp_bytes(gemm) / self.unfused_mlp_bw + self.launch_s
