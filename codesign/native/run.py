"""Run a model natively in torch: seeded random weights, prefill, then token-by-token greedy decode.

In the style of gpt-fast's generate.py: `prefill` and `decode_one_token` are small free functions on
a CausalLM with fixed-shape caches; timed regions are bracketed by a device sync and preceded by a
discarded warm-up. After decoding, one full forward over the generated sequence re-computes every
decode step's logits; the largest difference says the cached path (KV, latent or GDN state) is exact.
Weights are random (seeded): this measures speed and checks consistency, not model quality.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from codesign.errors import CodesignError
from codesign.models.config import ModelConfig
from codesign.models.decoder import CausalLM
from codesign.native.replay import _sync

# A full-size model runs natively only if its weights and caches take at most this share of the
# device's memory (the rest: activations, the full-forward check, the OS). An assumption, overridable.
MEMORY_FRACTION = 0.5


@dataclass
class NativeRun:
    """What one native run measured (seconds, tokens/s, logits difference)."""

    model: str
    device: str
    dtype: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    params: int
    prefill_s: float
    decode_s: float
    prefill_tokens_per_s: float  # batch * prompt_tokens / prefill_s
    decode_tokens_per_s: float  # batch * decode steps / decode_s
    max_abs_diff: float  # cached decode logits vs one full forward
    max_abs_logit: float  # scale of the logits, to read max_abs_diff against
    threads: int  # torch intra-op threads (tiny models run fastest on one)

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def prefill(model: CausalLM, input_ids: torch.Tensor, caches: list) -> torch.Tensor:
    """Fill the caches with the prompt (B, T); return the last position's logits (B, V)."""
    return model(input_ids, 0, caches)[:, -1]


@torch.no_grad()
def decode_one_token(model: CausalLM, token: torch.Tensor, pos: int, caches: list) -> torch.Tensor:
    """One decode step for token (B, 1) at position pos; return its logits (B, V)."""
    return model(token, pos, caches)[:, -1]


@torch.no_grad()
def generate(model: CausalLM, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Greedy decode: (tokens (B, P+new_tokens), step logits (B, new_tokens, V), prefill_s, decode_s).

    Step i's logits are those that chose token P+i (step 0 comes from prefill).
    """
    B, P = prompt.shape
    device = prompt.device
    caches = model.make_caches(B, P + new_tokens)
    _sync(device)
    t0 = time.perf_counter()
    logits = prefill(model, prompt, caches)
    _sync(device)
    t1 = time.perf_counter()
    step_logits = [logits]
    tokens = [prompt, logits.argmax(-1, keepdim=True)]
    for i in range(new_tokens - 1):
        logits = decode_one_token(model, tokens[-1], P + i, caches)
        step_logits.append(logits)
        tokens.append(logits.argmax(-1, keepdim=True))
    _sync(device)
    t2 = time.perf_counter()
    return torch.cat(tokens, 1), torch.stack(step_logits, 1), t1 - t0, t2 - t1


def build_native(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> CausalLM:
    """CausalLM with seeded random weights (torch's default initialisation), in eval mode."""
    torch.manual_seed(seed)
    return CausalLM(config, dtype=dtype, device=device).eval()


def footprint_bytes(config: ModelConfig, dtype: torch.dtype, batch: int, max_len: int) -> int:
    """Weights plus caches of a native run, counted on the meta device (nothing allocated)."""
    weights, per_token, fixed = _footprint_terms(config, dtype, batch)
    return weights + fixed + per_token * max_len


def _footprint_terms(config: ModelConfig, dtype: torch.dtype, batch: int) -> tuple[int, int, int]:
    """(weight bytes, cache bytes per token of length, cache bytes independent of length): caches
    are fixed-shape buffers, linear in their length (KV) or constant (GatedDeltaNet state)."""
    model = CausalLM(config, dtype=dtype, device="meta")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def cache(n: int) -> int:
        caches = model.make_caches(batch, n, device="meta", dtype=dtype)
        return sum(b.numel() * b.element_size() for c in caches for b in c.buffers())

    one, two = cache(1), cache(2)
    return weights, two - one, one - (two - one)


def activation_bytes(config: ModelConfig, dtype: torch.dtype, batch: int, length: int) -> int:
    """Peak activation bytes of the largest forward a run makes (the full-forward check over
    `length` tokens). A named estimate: the fp32 logits and their float copy, 16 hidden-sized
    tensors per token in flight, and, with softmax attention, three fp32 (B, H, L, L) score-sized
    tensors (scores, mask, probabilities: `kernels.attention` is the plain, unfused form)."""
    elt = torch.empty((), dtype=dtype).element_size()
    per_token = batch * (config.vocab_size * 4 * 2 + config.hidden_size * elt * 16)
    heads = 0
    if config.attention is not None:
        heads = config.attention.num_heads
    if config.mla is not None:
        heads = max(heads, config.mla.num_heads)
    return per_token * length + 3 * batch * heads * length * length * 4


def device_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]  # free bytes
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config: ModelConfig, dtype: torch.dtype, device: torch.device, batch: int, prompt_tokens: int,
               new_tokens: int) -> None:
    """Refuse (CodesignError) a run whose weights, caches and peak activations exceed
    MEMORY_FRACTION of the device's memory, naming the largest prompt that fits."""
    weights, per_token, fixed = _footprint_terms(config, dtype, batch)
    have = MEMORY_FRACTION * device_memory_bytes(device)

    def need(prompt: int) -> int:
        length = prompt + new_tokens
        return weights + fixed + per_token * length + activation_bytes(config, dtype, batch, length)

    total = need(prompt_tokens)
    if total <= have:
        return
    gib = 2.0**30
    dt = str(dtype).replace("torch.", "")
    head = (f"model {config.name}: batch {batch} x ({prompt_tokens:,} prompt + {new_tokens:,} new tokens) needs "
            f"{total / gib:,.1f} GiB at {dt} (weights, caches, activations), more than {MEMORY_FRACTION:.0%} of the "
            f"{have / MEMORY_FRACTION / gib:,.1f} GiB of {device.type} memory")
    if need(1) > have:
        raise CodesignError(f"{head}; not even a 1-token prompt fits (use --tiny, or fewer --new-tokens / --batch)")
    lo, hi = 1, prompt_tokens  # need(lo) fits, need(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= have else (lo, mid)
    raise CodesignError(f"{head}; expected --prompt-tokens at most {lo:,} at this --batch and --new-tokens")


def run_native(
    config: ModelConfig,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    batch: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    warmup: bool = True,
) -> NativeRun:
    """Build `config` with seeded random weights, run prefill + greedy decode, check and time it.

    The caller picks the config (a tiny one, or a full one that `check_fits`).
    """
    if prompt_tokens < 1 or new_tokens < 1 or batch < 1:
        raise CodesignError(
            f"run: prompt tokens, new tokens and batch must be >= 1 (found {prompt_tokens}, {new_tokens}, {batch})"
        )
    dev = torch.device(device)
    model = build_native(config, seed, dtype, device)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_tokens), generator=g).to(dev)
    if warmup:  # first calls pay for allocation and kernel selection; discarded
        generate(model, prompt[:, : min(prompt_tokens, 4)], 2)
    tokens, step_logits, prefill_s, decode_s = generate(model, prompt, new_tokens)
    with torch.no_grad():
        full = model(tokens[:, :-1])  # (B, P+N-1, V): position P-1+i predicts token P+i
    ref = full[:, prompt_tokens - 1 :]
    diff = (step_logits.float() - ref.float()).abs().max().item()
    steps = new_tokens - 1  # decode calls after the prefill's first token
    return NativeRun(
        model=config.name,
        device=str(dev),
        dtype=str(dtype).replace("torch.", ""),
        batch=batch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        params=sum(p.numel() for p in model.parameters()),
        prefill_s=prefill_s,
        decode_s=decode_s,
        prefill_tokens_per_s=batch * prompt_tokens / prefill_s if prefill_s > 0 else float("inf"),
        decode_tokens_per_s=batch * steps / decode_s if steps and decode_s > 0 else float("nan"),
        max_abs_diff=diff,
        max_abs_logit=ref.float().abs().max().item(),
        threads=torch.get_num_threads(),
    )
