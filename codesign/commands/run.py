"""`codesign run`: the same model natively in torch (seeded random weights), prefill + greedy decode.

    codesign run --model qwen3.5-397b-a17b --tiny [--prompt-tokens 32 --new-tokens 32 --batch 1 --seed 0]

Prints prefill and decode tokens/s and the largest difference between the cached decode logits and
one full forward. Without --tiny the full model runs only if it fits in memory (codesign.native.run).
"""

from __future__ import annotations

import argparse
import json

from codesign.errors import CodesignError

DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name; torch is imported only when running


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run a model natively in torch (tiny configs on CPU)",
                       description="Build the model with seeded random weights, prefill a random prompt, decode "
                       "greedily token by token, report tokens/s and check decode logits against a full forward.")
    p.add_argument("--model", default="qwen3.5-397b-a17b", help="name in model_graphs/ or a path (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="same family and layer kinds at toy sizes (codesign.models.tiny)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own); tiny models are fastest on 1")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from codesign.limits import MAX_TOKENS, check_count
    from codesign.models import load_model
    from codesign.native.run import check_fits, run_native

    config = load_model(args.model)
    if args.tiny:
        config = config.tiny()
    dtype = getattr(torch, args.dtype)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CodesignError(f"--device: expected a torch device such as cpu or cuda, found {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CodesignError(f"--device: {args.device} requested but no CUDA device is available")
    if args.threads is not None:
        if args.threads < 1:
            raise CodesignError(f"--threads: expected a positive number, found {args.threads}")
        torch.set_num_threads(args.threads)
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--new-tokens", args.new_tokens),
                        ("--batch", args.batch)):
        try:
            check_count(flag, value, MAX_TOKENS)
        except ValueError as e:
            raise CodesignError(str(e)) from None
    check_fits(config, dtype, device, args.batch, args.prompt_tokens, args.new_tokens)
    r = run_native(config, args.prompt_tokens, args.new_tokens, args.batch, args.seed, dtype, str(device))
    if args.json:
        print(json.dumps(r.as_dict(), indent=2))
        return 0
    print(f"{r.model}: {r.params / 1e6:.2f}M params, {r.dtype} on {r.device} ({r.threads} threads), batch {r.batch}")
    print(f"prefill  {r.prompt_tokens} tokens: {r.prefill_s * 1e3:.1f} ms, {r.prefill_tokens_per_s:,.0f} tokens/s")
    print(f"decode   {r.new_tokens} tokens: {r.decode_s * 1e3:.1f} ms, {r.decode_tokens_per_s:,.0f} tokens/s")
    print(f"decode logits vs full forward: max abs diff {r.max_abs_diff:.2e} (logits up to {r.max_abs_logit:.2f})")
    return 0
