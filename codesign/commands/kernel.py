"""`codesign kernel`: predict one kernel on one chip through the simulator's own cost path.

    codesign kernel --hw h800 gemm --m 64 --n 2112 --k 7168 --dtype fp8 [--json]
    codesign kernel --hw h800 grouped_gemm --groups 4 --m 256 --n 7168 --k 2048 --dtype fp8
    codesign kernel --hw h100 attention --phase prefill --batch 1 --heads 8 --head-dim 256 \\
        --seq-q 16384 --seq-kv 16384 --dtype fp16
    codesign kernel --hw h100 attention --phase prefill --batch 1 --heads 64 --kv-heads 8 --head-dim 128 \\
        --seq-q 4096 --seq-kv 4096 --causal --attention-kernel vllm_flash_attn
    codesign kernel --hw h100 fused_moe --groups 8 --top-k 2 --hidden 4096 --n 7168 --tokens 512 \\
        --moe-kernel triton_fused
    codesign kernel --hw h200 gdn_chunk --batch 1 --seq-q 16384 --heads 32 --kv-heads 16 --head-dim 128
    codesign kernel --hw h200 mla --phase decode --batch 128 --heads 128 --seq-q 1 --seq-kv 2048 \
        --kv-lora-rank 512 --qk-nope-head-dim 128 --qk-rope-head-dim 64 --v-head-dim 128 --mla-kernel trtllm
    codesign kernel --hw h100 gdn_recurrent --batch 64 --heads 32 --kv-heads 16 --head-dim 128
    codesign kernel --hw h100 gdn_conv --phase prefill --batch 1 --seq-q 8192 --heads 32 --kv-heads 16 --head-dim 128
    codesign kernel --hw h800 all_to_all --ranks 8 --tokens 128 --hidden 7168 --top-k 8 --dtype fp8 \\
        --algorithm low_latency
    codesign kernel --hw h800 all_to_all --ranks 32 --tokens 4096 --hidden 7168 --top-k 8 --experts 256 \\
        --dtype fp8
    codesign kernel --hw h100 all_reduce --ranks 8 --bytes 1e9 --algorithm nvls
    codesign kernel --hw h100 all_gather --ranks 8 --bytes 33554432

Prints seconds, TFLOPS, GB/s (the kernel's HBM bytes, or for collectives the bytes over its
slowest link tier) and the limiting resource. The op is the one the tracer and mapping build for
that shape, costed by `CostModel` (collectives by `codesign.mapping.collective_time`).
"""

from __future__ import annotations

import argparse
import json
from typing import get_args

from pydantic import ValidationError

from codesign.errors import CodesignError, format_validation_error
from codesign.sim.cost_options import AttentionKernel, GemmKernel, MlaKernel, MoeKernel

_SHAPE_ARGS = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("groups", "m", "n", "k"),
    "fused_moe": ("groups", "top_k", "hidden", "n", "tokens"),
    "attention": ("batch", "heads", "kv_heads", "head_dim", "head_dim_v", "seq_q", "seq_kv"),
    "mla": ("batch", "heads", "seq_q", "seq_kv", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
    "gdn_chunk": ("batch", "heads", "kv_heads", "head_dim", "head_dim_v", "seq_q"),
    "gdn_recurrent": ("batch", "heads", "kv_heads", "head_dim", "head_dim_v"),
    "gdn_conv": ("batch", "heads", "kv_heads", "head_dim", "head_dim_v", "seq_q"),
    "all_to_all": ("ranks", "tokens", "hidden", "top_k"),
    "all_reduce": ("ranks",),
    "all_gather": ("ranks",),
    "reduce_scatter": ("ranks",),
}


def _kernel_choice(q: argparse.ArgumentParser, what: str, names: object, note: str = "") -> None:
    """`--<what>-kernel`: the `CostOptions.<what>_kernel` value the kernel ran; its help lists the
    option type's values, the first of them its default."""
    values = get_args(names)
    q.add_argument(f"--{what}-kernel", dest=f"{what}_kernel", default=None,
                   help=f"{note}{' | '.join(values)} (default: {values[0]}, cost.{what}_kernel)")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("kernel", help="predict one kernel (GEMM, grouped GEMM, attention, MLA call, GatedDeltaNet chunk / decode / conv, collective) on one chip",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hw", required=True, help="hardware spec name (hw_specs/) or path")
    p.add_argument("--json", action="store_true", help="print JSON")
    ops = p.add_subparsers(dest="op", required=True, metavar="OP")
    for op, names in _SHAPE_ARGS.items():
        q = ops.add_parser(op, help={"gdn_chunk": "GatedDeltaNet chunked prefill (chunk_gated_delta_rule)",
                                            "mla": "one MLA attention call (DeepSeek-V2/V3) as an engine's call holds it",
                                            "gdn_recurrent": "GatedDeltaNet decode step (fused recurrent kernel)",
                                            "gdn_conv": "GatedDeltaNet causal conv + SiLU (prefill or decode)",
                                            "fused_moe": "one MoE layer's routed experts (tokens routed top-k of groups experts)"
                                            }.get(op, f"{op} kernel"))
        for n in names:
            q.add_argument(f"--{n.replace('_', '-')}", dest=n, type=int, required=n not in ("kv_heads", "head_dim_v"))
        q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        q.add_argument("--dtype", default="bf16", help="fp4 | fp8 | int8 | bf16 | fp16 | fp32 (default bf16)")
        if op == "grouped_gemm":
            q.add_argument("--layout", choices=("contiguous", "masked"), default=None)
        if op == "gemm":
            _kernel_choice(q, "gemm", GemmKernel)
        if op == "fused_moe":
            _kernel_choice(q, "moe", MoeKernel)
            q.add_argument("--ranks", type=int, default=None,
                           help="expert parallelism: one rank's groups / ranks experts over all the tokens (none: all experts)")
        if op == "mla":
            q.add_argument("--phase", choices=("prefill", "decode"), required=True)
            q.add_argument("--mla-form", dest="mla_form", choices=("expanded", "absorbed"), default=None,
                           help="none: expanded in prefill, absorbed in decode (the model's own choice)")
            q.add_argument("--mla-call", dest="mla_call", choices=("attention", "vllm_impl"), default=None,
                           help="what the call holds: the attention kernel (default) or vLLM's MLA impl with its projections")
            _kernel_choice(q, "mla", MlaKernel)
        if op == "attention":
            q.add_argument("--phase", choices=("prefill", "decode"), required=True)
            q.add_argument("--causal", action="store_true")
            q.add_argument("--latent", action="store_true", help="MLA: V is part of the cached K latent")
            _kernel_choice(q, "attention", AttentionKernel, "prefill: ")
        if op == "gdn_conv":
            q.add_argument("--phase", choices=("prefill", "decode"), required=True)
        if op in ("all_reduce", "all_gather", "reduce_scatter"):
            q.add_argument("--bytes", type=float, required=True, help="message bytes per rank")
        if op == "all_to_all":
            q.add_argument("--experts", type=int, default=None,
                           help="routed experts over the ranks: normal kernels deduplicate per destination rank "
                                "(and per node across scale-up domains); none: top-k copies per token")
            q.add_argument("--top-groups", dest="top_groups", type=int, default=None,
                           help="group-limited routing: nodes a token's experts may come from")
        if op in ("all_to_all", "all_reduce", "all_gather", "reduce_scatter"):
            q.add_argument("--algorithm", default=None, help="collective algorithm (e.g. low_latency, nvls, ring)")
    return p


def shape_from_args(args: argparse.Namespace):
    from codesign.sim.kernel import KernelShape

    fields = {"op": args.op, "hw": args.hw, "dtype": args.dtype}
    for n in _SHAPE_ARGS[args.op] + ("layout", "phase", "causal", "latent", "bytes", "algorithm", "moe_kernel",
                                       "gemm_kernel", "attention_kernel", "experts", "top_groups", "mla_form",
                                       "mla_call", "mla_kernel") + (("ranks",) if args.op == "fused_moe" else ()):
        v = getattr(args, n, None)
        if v is not None:
            fields[n] = v
    try:
        return KernelShape.model_validate(fields)
    except ValidationError as e:
        raise CodesignError(format_validation_error(f"kernel {args.op}", e)) from None


def run(args: argparse.Namespace) -> int:
    from codesign.hw import load_hw
    from codesign.mapping.collectives import ALGORITHMS
    from codesign.sim.kernel import predict

    shape = shape_from_args(args)
    if shape.algorithm is not None and shape.algorithm not in ALGORITHMS:
        raise CodesignError(f"--algorithm: expected one of {', '.join(ALGORITHMS)}, found {shape.algorithm!r}")
    hw = load_hw(args.hw)
    p = predict(shape, hw)
    if args.json:
        print(json.dumps({"hw": hw.name, "shape": shape.model_dump(exclude_none=True), **p.to_dict()}, indent=2))
        return 0
    print(f"{shape.op} on {hw.name}: {p.seconds * 1e6:.2f} us, {p.tflops:.1f} TFLOPS, {p.gbps:.0f} GB/s, "
          f"limited by {p.bound} (compute {p.compute_s * 1e6:.2f} us, memory {p.memory_s * 1e6:.2f} us, "
          f"fixed {p.overhead_s * 1e6:.2f} us)")
    return 0
