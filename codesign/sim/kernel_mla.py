"""One MLA attention call (DeepSeek-V2/V3 multi-head latent attention) as a kernel-table op: the ops
the simulator costs for the part of an MLA layer that an engine's attention call covers.

The model's MLA (`codesign.models.mla.MLA`) runs two forms, and each is what the tracer records:

* **expanded** (prefill): k_nope, v = kv_b_proj(latent) per head, then causal MHA over
  qk_nope + qk_rope query/key dims and v_head_dim values (`heads` KV heads);
* **absorbed** (decode): W_uk folded into the query (q_nope @ W_uk, a per-head batched GEMM), MQA
  over the cached latent (one KV head of kv_lora_rank + qk_rope dims, the first kv_lora_rank of
  them the values), then W_uv applied to the latent output (another per-head batched GEMM).

What an engine's timed call holds (`MlaCall`, the row's `mla_call`):

* "attention": the attention kernel (plus the engine's small RoPE / latent-cache-write kernels,
  whose bytes are small next to it): TensorRT-LLM's `TrtllmAttention.forward` as aiconfigurator's
  collector calls it (q, k, v already projected in prefill; the absorbed query in decode), SGLang's
  `RadixAttention` on its FlashAttention backend;
* "vllm_impl": vLLM's `MLACommonImpl.forward` as aiconfigurator's collector calls it: in prefill
  kv_b_proj on the new tokens' latent (a BF16 GEMM, tokens x heads (qk_nope + v) x kv_lora_rank)
  before the attention kernel; in decode the W_UK_T and W_UV batched GEMMs around it.

The ops are built as `codesign.sim.kernel.build_op` builds an attention or GEMM kernel (the
tracer's shapes and byte classes); their costs are summed (`predict_mla`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from codesign.graph.op import Op
from codesign.hw.spec import BYTES_PER_ELEMENT

MlaCall = Literal["attention", "vllm_impl"]
MlaForm = Literal["expanded", "absorbed"]


def mla_form(s) -> str:
    """The row's form, or the model's own choice (`MLA.absorb == "decode"`): absorbed in decode."""
    return s.mla_form or ("absorbed" if s.phase == "decode" else "expanded")


def _bmm(name: str, heads: int, m: int, n: int, k: int, dtype: str, phase: str) -> Op:
    """A per-head batched GEMM (heads x [m, k] @ [k, n]) with the weight (heads x k x n) read once."""
    e = BYTES_PER_ELEMENT[dtype]
    return Op(name=name, target="codesign.kernel.mla_bmm", kind="gemm", block="mla", layer=0, layer_type="kernel",
              phase=phase, in_shapes=(), out_shapes=(), dtype=dtype, flops=2.0 * heads * m * n * k,
              bytes_read={"weight": heads * k * n * e, "activation": heads * m * k * e, "kv_cache": 0.0, "state": 0.0},
              bytes_written={"weight": 0.0, "activation": heads * m * n * 2.0, "kv_cache": 0.0, "state": 0.0},
              gemm=(heads, m, n, k))


def mla_ops(s) -> tuple[Op, ...]:
    """The ops of one MLA call of shape `s` (a `KernelShape` with op "mla")."""
    from codesign.sim.kernel import KernelShape, build_op

    h, r, dn, dr, dv = s.heads, s.kv_lora_rank, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim
    common = dict(hw=s.hw, dtype=s.dtype, batch=s.batch, heads=h, seq_q=s.seq_q, seq_kv=s.seq_kv, causal=True,
                  phase=s.phase)
    if mla_form(s) == "expanded":
        att = KernelShape(op="attention", kv_heads=h, head_dim=dn + dr, head_dim_v=dv, **common)
    else:
        att = KernelShape(op="attention", kv_heads=1, head_dim=r + dr, head_dim_v=r, latent=True, **common)
    # the attention op of an MLA layer, as the tracer records it inside the model's `MLA` (block "mla")
    ops = [dataclasses.replace(build_op(att), block="mla")]
    if s.mla_call == "vllm_impl":
        tokens = s.batch * s.seq_q
        if mla_form(s) == "expanded":
            # kv_b_proj over the new tokens' latent: [tokens, r] @ [r, heads (dn + dv)]
            up = KernelShape(op="gemm", hw=s.hw, dtype=s.dtype, m=tokens, n=h * (dn + dv), k=r)
            ops.insert(0, build_op(up))
        else:
            ops.insert(0, _bmm("kernel/mla_w_uk", h, tokens, r, dn, s.dtype, s.phase))  # q_nope @ W_UK_T
            ops.append(_bmm("kernel/mla_w_uv", h, tokens, dv, r, s.dtype, s.phase))  # latent out @ W_UV
    return tuple(ops)
