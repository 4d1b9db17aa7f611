"""The prefill attention kernel implementation of a deployment (`CostOptions.attention_kernel`):
FlashAttention-3 on contiguous K and V at the chip's `efficiency.attention` and `attention_seq_half`
curve (the default), vLLM's FlashAttention backend reading K and V through its paged KV cache at
the chip's `efficiency.attention_paged*` curve (docs/cost-model.md "Paged-KV prefill attention"), or
TensorRT-LLM's context FMHA at `efficiency.trtllm_attention*` (docs/cost-model.md "TensorRT-LLM
kernel rows on H100 / H200"). Each non-default kernel acts on GQA / MHA prefill ops (`paged_gqa`);
MLA prefill has its own choice (`CostOptions.mla_kernel`).
`AttentionKernels` is a part of `codesign.sim.cost.CostModel`; the default kernel's ramp is the
model's own (`attention_seq_ramp`)."""

from __future__ import annotations

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec


def paged_gqa(op: Op) -> bool:
    """A prefill attention op whose K and V rows have one head dim (GQA / MHA, what vLLM's
    FlashAttention backend runs through the paged cache); not MLA, whose prefill attends to
    K and V decompressed from the latent cache (V's head dim differs from K's)."""
    shapes = op.in_shapes
    return (op.kind == "attention" and op.phase != "decode" and len(shapes) >= 3 and len(shapes[1]) == 4
            and len(shapes[2]) == 4 and shapes[1][3] == shapes[2][3])


class AttentionKernels:
    """`CostModel`'s prefill attention kernel curves; reads the model's options and attention dtype."""

    def _attention_kernel(self, hw: HardwareSpec) -> None:
        """The curve of `CostOptions.attention_kernel`: (rate, half-length or None) and a fixed time
        per call. "vllm_flash_attn": peak(attention dtype) x `attention_paged` (FP8: x attention_fp8 /
        attention, the dense kernel's FP8-to-16-bit ratio), `attention_paged_seq_half`,
        `attention_paged_fixed_s`; "trtllm": peak x `trtllm_attention` (FP8: `trtllm_attention_fp8`
        where fitted), `trtllm_attention_seq_half`, `trtllm_attention_fixed_s`. Refused on a chip
        without the chosen curve. None / 0 for "flash_attention"."""
        self.paged_attention: tuple[float, float | None] | None = None
        self.prefill_attention_fixed_s = 0.0
        kernel = self.opts.attention_kernel
        if kernel == "flash_attention":
            return
        eff = hw.efficiency
        fp8 = self.attention_dtype == "fp8"
        if kernel == "trtllm":
            if eff.trtllm_attention is None:
                raise CodesignError(
                    f"cost.attention_kernel: trtllm is not yet supported on {hw.name}: expected "
                    f"efficiency.trtllm_attention (a TensorRT-LLM context attention curve fitted on kernel rows), "
                    f"found none")
            frac = eff.trtllm_attention_fp8 if (fp8 and eff.trtllm_attention_fp8) else eff.trtllm_attention
            half = eff.trtllm_attention_seq_half
            fixed = eff.trtllm_attention_fixed_s
        else:
            if eff.attention_paged is None:
                raise CodesignError(
                    f"cost.attention_kernel: {kernel} is not yet supported on {hw.name}: expected "
                    f"efficiency.attention_paged (a paged-KV prefill attention curve fitted on kernel rows), "
                    f"found none")
            frac = eff.attention_paged * (eff.attention_fp8 / eff.attention if fp8 and eff.attention_fp8 else 1.0)
            half = eff.attention_paged_seq_half
            fixed = eff.attention_paged_fixed_s
        self.paged_attention = (hw.chip.matrix.peak(self.attention_dtype) * frac,
                                half if (self.opts.attention_seq_ramp and half) else None)
        self.prefill_attention_fixed_s = fixed

    def paged_prefill_seconds(self, op: Op, flops: float, keys: float | None) -> float | None:
        """Matrix seconds of `flops` of prefill attention op `op` on the chosen kernel's curve,
        rate x L / (L + half) with L = `keys` (the keys per query row); None where the curve is
        off or the op is not a GQA / MHA prefill (`paged_gqa`): the default rule then applies."""
        if self.paged_attention is None or not paged_gqa(op):
            return None
        rate, half = self.paged_attention
        if half is None or keys is None:
            return flops / rate
        return flops / (rate * keys / (keys + half))

    def prefill_fixed_s(self, op: Op) -> float:
        """Fixed seconds per call of prefill attention op `op` beyond `kernel_overhead`: the chosen
        kernel's fixed time where its curve applies, else 0."""
        return self.prefill_attention_fixed_s if self.paged_attention is not None and paged_gqa(op) else 0.0
