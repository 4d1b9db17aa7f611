"""Mixed GatedDeltaNet steps as the serving engine runs them: decodes through the chunk kernel.

A step that holds prompt chunks and decodes together (chunked prefill) runs each GatedDeltaNet
layer's delta rule one of two ways, a fact of the engine version (``CostOptions.gdn_mixed_decodes``):

* ``"split"`` (the default; what the traced graph records): each decode's state is updated in place
  by the recurrent kernel, the prompt chunks run the chunk kernel. vLLM since PR #44700 (merged
  2026-06-06, "Split mixed prefill+decode batches: route decodes to the recurrent kernel").
* ``"chunk"``: every non-speculative sequence of the step, decodes included, runs through ONE call
  of the chunk kernel. vLLM before PR #44700 (v0.17.1 among them), `Qwen3NextGatedDeltaNet._forward_core`
  (vllm/model_executor/models/qwen3_next.py, which Qwen3.5 reuses) when the step has a prefill::

      initial_state = ssm_state[non_spec_state_indices_tensor].contiguous()   # gather
      initial_state[~has_initial_state, ...] = 0
      core_attn_out_non_spec, last_recurrent_state = chunk_gated_delta_rule(..., initial_state=initial_state,
                                                    output_final_state=True, cu_seqlens=non_spec_query_start_loc)
      ssm_state[non_spec_state_indices_tensor] = last_recurrent_state.to(ssm_state.dtype)   # scatter

  The recurrent kernel runs only in decode-only steps (the ``elif num_decodes > 0`` branch). PR
  #44700's description: "Each decode becomes its own chunk padded to FLA_CHUNK_SIZE=64, so D decodes
  cost D near-empty 64-token chunks of wasted work" (its kernel table: 953 decodes alone 1,843.7 us
  in the recurrent kernel; with a 7,239-token prefill in one chunk call 4,361.6 us, the prefill
  alone 464.1 us).

What ``"chunk"`` adds to a mixed step, per GatedDeltaNet layer on one chip, over the ``"split"``
costing of the traced graph (D decodes and P prompt chunks of one engine replica; heads after the
TP split; the state in `precision.state`, fp32 by default as the trace keeps it):

1. **Gather and scatter of every state**: the indexed read into a contiguous tensor and the indexed
   write back, each reading and writing the state once: ``4 x (D + P) x state bytes`` at the chip's
   HBM rate (``efficiency.memory``). The zeroing of fresh sequences' states is left out (P states).
2. **A padded chunk per decode and value head**: the chunk kernel's recurrence work for one
   ``chunk_size``-token chunk, ``6 C dk dv + 2 C^2 dv`` FLOPs per (sequence, head) pair, at the
   chip's fused chunk-kernel rate (16-bit peak x ``efficiency.gdn_chunk``, the curve fitted on
   FlashInfer's kernel rows; chips without it: the bf16 GEMM rate). Full occupancy (the decodes'
   pairs fill the prompt chunks' waves; thousands of pairs). The state's own load and store in the
   kernel are the recurrent kernel's traffic, which the split costing already charges: kept.

Left out (named): the conv update of the decodes through the prefill conv kernel (a few KiB per
sequence), and the step's CUDA-graph mode (mixed steps above the capture size run eagerly either way).
Speculative-verify groups (``logits > 1``) keep the recurrent kernel in both modes (vLLM's ``spec``
path). Only mixed steps change: a decode-only or prefill-only step is the same in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from codesign.graph.shape import StepShape

if TYPE_CHECKING:
    from codesign.sim.stepper import Stepper

STATE_BYTES = 4  # fp32 recurrent state: `precision.state`'s default (vLLM's Qwen3.5 mamba_ssm_dtype)


@dataclass(frozen=True)
class MixedGdn:
    """Per-step extra seconds of the ``"chunk"`` mode for one deployment (module docstring)."""

    layers: int  # GatedDeltaNet layers a step passes through (all pipeline stages in turn)
    heads: int  # value heads per chip after the TP split
    dk: int
    dv: int
    chunk: int  # the chunk kernel's chunk length C
    replicas: int  # engine replicas the step's sequences are spread over (dp x attention_dp)
    hbm_bytes_per_s: float
    chunk_flops_per_s: float
    element_bytes: float = STATE_BYTES  # bytes per state element (`precision.state`)

    @property
    def state_bytes(self) -> float:
        """Bytes of one sequence's state in one layer on one chip."""
        return self.heads * self.dk * self.dv * self.element_bytes

    @property
    def pad_flops(self) -> float:
        """Recurrence FLOPs of one padded chunk for one (sequence, value head) pair."""
        C, dk, dv = self.chunk, self.dk, self.dv
        return 6.0 * C * dk * dv + 2.0 * C * C * dv

    def split_counts(self, shape: StepShape) -> tuple[int, int]:
        """(decode sequences, prompt-chunk sequences) of the step, speculative verifies excluded."""
        d = sum(g.seqs for g in shape.groups if g.new_tokens == 1)
        p = sum(g.seqs for g in shape.groups if g.new_tokens > 1 and g.logits == 1)
        return d, p

    def __call__(self, shape: StepShape) -> float:
        """Seconds this mode adds to the step of `shape` (`StepTimeModel`'s `extra` hook)."""
        mem, comp = self.extra_s(shape)
        return mem + comp

    def extra_s(self, shape: StepShape) -> tuple[float, float]:
        """(memory seconds, compute seconds) this mode adds to the step; zero unless it mixes
        decodes and prompt chunks."""
        d, p = self.split_counts(shape)
        if not d or not p:
            return 0.0, 0.0
        r = self.replicas
        d_chip, p_chip = -(-d // r), -(-p // r)  # the busiest replica's share
        mem = self.layers * 4.0 * (d_chip + p_chip) * self.state_bytes / self.hbm_bytes_per_s
        comp = self.layers * d_chip * self.heads * self.pad_flops / self.chunk_flops_per_s
        return mem, comp


def mixed_gdn(stepper: "Stepper") -> MixedGdn | None:
    """The ``"chunk"`` mode's model for a `Stepper`'s point, or None where it does not act (the
    option is ``"split"``, or the model has no GatedDeltaNet layers)."""
    from codesign.sim.cost import CostModel

    cfg, plan, hw = stepper.config, stepper.plan, stepper.hw
    la = cfg.linear_attention
    if stepper.cost.gdn_mixed_decodes != "chunk" or la is None:
        return None
    layers = sum(1 for t in cfg.layer_types if t == "linear_attention")
    if not layers:
        return None
    cm = CostModel(hw, "bf16", "bf16", stepper.cost)
    rate = cm.gdn_rate or hw.chip.matrix.peak("bf16") * hw.efficiency.gemm_for("bf16")
    heads = max(1, la.num_value_heads // max(1, plan.tp))
    prec = stepper.precision
    return MixedGdn(layers=layers, heads=heads, dk=la.key_head_dim, dv=la.value_head_dim, chunk=la.chunk_size,
                    replicas=max(1, plan.dp * plan.attention_dp), hbm_bytes_per_s=cm.hbm_bw, chunk_flops_per_s=rate,
                    element_bytes=prec.bytes_per_element(prec.state))


__all__ = ["MixedGdn", "STATE_BYTES", "mixed_gdn"]
