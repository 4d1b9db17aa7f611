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

import math

from codesign.errors import CodesignError
from codesign.graph.op import Op
from codesign.hw.spec import HardwareSpec

# The head dim at which the paged-KV prefill curve's head-dim term is 1: the head dim of the vLLM
# 0.14 rows its fraction, half-length and fixed time were first fitted on.
PAGED_REFERENCE_HEAD_DIM = 128


def gqa_shapes(op: Op) -> bool:
    """Whether attention op `op` records K and V as (B, heads, S, D) with one head dim (GQA / MHA);
    not MLA, whose V is a slice of the latent K (decode) or whose decompressed V has its own head dim
    (prefill)."""
    shapes = op.in_shapes
    return len(shapes) >= 3 and len(shapes[1]) == 4 and len(shapes[2]) == 4 and shapes[1][3] == shapes[2][3]


def paged_gqa(op: Op) -> bool:
    """A GQA / MHA prefill attention op (`gqa_shapes`): what the engines' prefill kernels of
    `CostOptions.attention_kernel` run (vLLM's FlashAttention through the paged cache, TensorRT-LLM's
    context FMHA)."""
    return op.kind == "attention" and op.phase != "decode" and gqa_shapes(op)


class AttentionKernels:
    """`CostModel`'s attention rates and prefill kernel curves; reads the model's options and attention dtype."""

    def _attention_rates(self, hw: HardwareSpec) -> None:
        """Attention's rates and terms: the prefill and decode fractions of peak (FP8 kernels and
        decode kernels have their own where the chip has kernel data), the prefill length ramp, the
        prefill kernel (`_attention_kernel`), the GQA decode occupancy term and the engine's MLA
        kernel (`CostOptions.mla_kernel`)."""
        eff, chip = hw.efficiency, hw.chip
        att = eff.attention_fp8 if (self.attention_dtype == "fp8" and eff.attention_fp8) else eff.attention
        self.attention_rate = chip.matrix.peak(self.attention_dtype) * att
        self.decode_attention_rate = chip.matrix.peak(self.attention_dtype) * (
            eff.attention_decode * att / eff.attention if eff.attention_decode else att)
        # Prefill attention vs sequence length (None: flat `attention_rate`).
        self.attention_seq_half = eff.attention_seq_half if self.opts.attention_seq_ramp else None
        # Prefill attention kernel (`CostOptions.attention_kernel`): the chosen engine kernel's curve of GQA / MHA
        # prefill ops where chosen (None: the default kernel above).
        self._attention_kernel(hw)
        # GQA decode attention occupancy (None / 0: off, the flat memory rate).
        occ = self.opts.decode_attention_occupancy
        self.decode_units_half = eff.attention_decode_units_half if occ else None
        self.decode_split = eff.attention_decode_split
        self.decode_fixed_s = eff.attention_decode_fixed_s if occ else 0.0
        # MLA attention kernel of the engine (`CostOptions.mla_kernel`): (prefill rate factor,
        # prefill fixed seconds, decode fixed seconds); None: the calibrated curves as they are.
        self.mla_terms: tuple[float, float, float] | None = None
        if self.opts.mla_kernel != "calibrated":
            self.mla_terms = eff.mla_kernel_terms(self.opts.mla_kernel)
            if self.mla_terms is None:
                raise CodesignError(f"cost.mla_kernel: {hw.name} has no kernel rows of {self.opts.mla_kernel!r} "
                                    f"(its efficiency.mla_kernels: {', '.join(eff.mla_kernels) or 'none'}); "
                                    f"expected calibrated or one of those")

    def attention_terms(self, op: Op) -> tuple[float, float]:
        """(HBM-byte factor, extra seconds per call) of attention op `op` (1, 0 for other ops).

        A GQA decode op (`gqa_shapes`): its bytes stream at the memory rate x W / (W +
        efficiency.attention_decode_units_half), W = batch x kv_heads x ceil(S /
        attention_decode_split) from its K shape (B, Hkv, S, D), charged as bytes x (W + half) / W,
        plus efficiency.attention_decode_fixed_s (the occupancy term; factor 1 where it is off). An
        MLA op (block "mla") under `CostOptions.mla_kernel`: (1, that kernel's fixed seconds per call
        of its phase); other MLA decode ops and unknown shapes (1, 0). A prefill op: (1, the prefill
        kernel's fixed seconds per call: 0 but for a `CostOptions.attention_kernel` other than
        "flash_attention")."""
        if op.kind != "attention":
            return 1.0, 0.0
        if self.mla_terms is not None and op.block == "mla":
            return 1.0, (self.mla_terms[2] if op.phase == "decode" else self.mla_terms[1])
        if op.phase != "decode":
            return 1.0, self.prefill_fixed_s(op)
        if not gqa_shapes(op):
            return 1.0, 0.0
        half = self.decode_units_half
        if half is None:
            return 1.0, self.decode_fixed_s
        b, hkv, s, _ = op.in_shapes[1]
        units = b * hkv * (math.ceil(s / self.decode_split) if self.decode_split else 1)
        if units <= 0:
            return 1.0, self.decode_fixed_s
        return (units + half) / units, self.decode_fixed_s

    def _attention_kernel(self, hw: HardwareSpec) -> None:
        """The curve of `CostOptions.attention_kernel`: (rate, half-length or None) and a fixed time
        per call. "vllm_flash_attn": peak(attention dtype) x `attention_paged` (FP8: x attention_fp8 /
        attention, the dense kernel's FP8-to-16-bit ratio), `attention_paged_seq_half`,
        `attention_paged_fixed_s`, x (D / 128) ** `attention_paged_head_dim_exp` per op of head dim D
        (`paged_head_dim_factor`); "trtllm": peak x `trtllm_attention` (FP8: `trtllm_attention_fp8`
        where fitted), `trtllm_attention_seq_half`, `trtllm_attention_fixed_s`. Refused on a chip
        without the chosen curve. None / 0 for "flash_attention"."""
        self.paged_attention: tuple[float, float | None] | None = None
        self.prefill_attention_fixed_s = 0.0
        self.paged_head_dim_exp = 0.0
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
            self.paged_head_dim_exp = eff.attention_paged_head_dim_exp
        self.paged_attention = (hw.chip.matrix.peak(self.attention_dtype) * frac,
                                half if (self.opts.attention_seq_ramp and half) else None)
        self.prefill_attention_fixed_s = fixed

    def paged_prefill_seconds(self, op: Op, flops: float, keys: float | None) -> float | None:
        """Matrix seconds of `flops` of prefill attention op `op` on the chosen kernel's curve,
        rate x `paged_head_dim_factor` x L / (L + half) with L = `keys` (the keys per query row); None where the curve is
        off or the op is not a GQA / MHA prefill (`paged_gqa`): the default rule then applies."""
        if self.paged_attention is None or not paged_gqa(op):
            return None
        rate, half = self.paged_attention
        rate *= self.paged_head_dim_factor(op)
        if half is None or keys is None:
            return flops / rate
        return flops / (rate * keys / (keys + half))

    def paged_head_dim_factor(self, op: Op) -> float:
        """The chosen kernel's rate factor at the head dim D of GQA / MHA prefill op `op` (K's last
        dim): (D / `PAGED_REFERENCE_HEAD_DIM`) ** `attention_paged_head_dim_exp` for
        vllm_flash_attn, 1 for the other kernels and where the exponent is 0."""
        if not self.paged_head_dim_exp:
            return 1.0
        return (op.in_shapes[1][3] / PAGED_REFERENCE_HEAD_DIM) ** self.paged_head_dim_exp

    def prefill_fixed_s(self, op: Op) -> float:
        """Fixed seconds per call of prefill attention op `op` beyond `kernel_overhead`: the chosen
        kernel's fixed time where its curve applies, else 0."""
        return self.prefill_attention_fixed_s if self.paged_attention is not None and paged_gqa(op) else 0.0
