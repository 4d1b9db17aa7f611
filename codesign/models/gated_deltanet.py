"""Gated DeltaNet: the `linear_attention` token mixer of Qwen3-Next and Qwen3.5.

Per value head, a fixed-size state S (dk x dv) replaces the KV cache. Each token t decays the state
and writes a delta-rule correction (Yang et al., "Gated Delta Networks", arXiv:2412.06464):

    S_t = exp(g_t) * S_{t-1}
    S_t = S_t + beta_t * k_t (v_t - k_t^T S_t)^T        # correct what S already predicts for k_t
    o_t = S_t^T q_t                                      # q pre-scaled by dk^-1/2

Layer (numerical reference: transformers `Qwen3_5MoeGatedDeltaNet`, modeling_qwen3_5_moe.py):
in_proj_qkv -> causal depthwise conv1d (kernel 4, no bias) + SiLU -> split q, k, v -> L2-norm q, k ->
each key head serves num_value_heads / num_key_heads consecutive value heads -> delta rule with
beta = sigmoid(in_proj_b x) and g = -exp(A_log) * softplus(in_proj_a x + dt_bias) ->
RMSNorm(o) * SiLU(z) per value head, z = in_proj_z x -> out_proj.

Parameter names and layouts follow the Qwen3.5 checkpoints: four separate input projections
(`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`). Qwen3-Next fuses them into `in_proj_qkvz`
and `in_proj_ba`, grouped per key head; `split_qwen3_next_in_proj` converts that layout to ours.

Two kernels compute the same recurrence: `chunk_gated_delta_rule` (prefill: intra-chunk work as
batched matmuls, a short loop over chunks for the state) and `recurrent_gated_delta_rule` (decode:
token by token). Both are plain torch, so they run on the meta device for tracing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codesign.errors import CodesignError
from codesign.models import kernels
from codesign.models.config import LinearAttentionConfig, ModelConfig

# A continuation of at most this many tokens after a cached prefix (a decode token, or the last
# accepted token plus the drafted ones of a speculative verify step) runs the fused recurrent
# kernel, token by token with the state kept on chip, as serving engines run decode and
# speculative-decoding tokens (FLA's fused_recurrent_gated_delta_rule, which vLLM calls for them);
# longer continuations and fresh prompts run the chunked algorithm. Both compute the same function.
RECURRENT_MAX_TOKENS = 8

# Epsilon of the q/k L2 norm; transformers `l2norm` and the FLA kernels use 1e-6.
L2_NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2_NORM_EPS) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps) over the last dim (the FLA / transformers form, eps inside the root)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _expand_heads(q: torch.Tensor, k: torch.Tensor, num_v_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA-style: key head h serves value heads h*r .. h*r+r-1 (r = Hv / Hk), as repeat_interleave."""
    r = num_v_heads // k.shape[2]
    if r > 1:
        q = q.repeat_interleave(r, dim=2)
        k = k.repeat_interleave(r, dim=2)
    return q, k


def _start_state(initial: torch.Tensor | None, B: int, Hv: int, dk: int, dv: int, device) -> torch.Tensor:
    """The fp32 recurrent state a kernel starts from: the given one, or zeros (B, Hv, dk, dv)."""
    if initial is None:
        return torch.zeros(B, Hv, dk, dv, dtype=torch.float32, device=device)
    return initial.float()


def chunk_gated_delta_rule(
    q: torch.Tensor,  # (B, T, Hk, dk)
    k: torch.Tensor,  # (B, T, Hk, dk)
    v: torch.Tensor,  # (B, T, Hv, dv)
    g: torch.Tensor,  # (B, T, Hv) log decay, <= 0
    beta: torch.Tensor,  # (B, T, Hv) write strength in (0, 1)
    initial_state: torch.Tensor | None = None,  # (B, Hv, dk, dv)
    chunk_size: int = 64,
    scale: float | None = None,  # query scale; default dk^-1/2
    recurrence=None,  # callable running the state hand-over (default `chunk_recurrence`)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated delta rule over a whole sequence in chunks (the WY/UT form used for prefill).

    Returns the output (B, T, Hv, dv) in q's dtype and the final state (B, Hv, dk, dv) in fp32.
    All work is fp32. Within a chunk the T x T delta-rule dependencies are solved at once with a
    unit-lower-triangular system (batched over every chunk); only the state hand-over between
    chunks is sequential, written with `kernels.chunk_loop` so a trace records one iteration.
    """
    out_dtype = q.dtype
    B, T, _, dk = k.shape
    Hv, dv = v.shape[2], v.shape[3]
    C = chunk_size
    q, k = _expand_heads(q, k, Hv)
    # (B, H, T, .) in fp32
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))
    g, beta = (x.transpose(1, 2).float() for x in (g, beta))
    q = q * (dk**-0.5 if scale is None else scale)

    # Pad T to a multiple of C. Padded steps have k = 0, beta = 0, g = 0: no write, no decay, so
    # the final state is exact; their outputs are dropped.
    pad = (C - T % C) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    Tp = T + pad
    N = Tp // C

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (B, H, Tp, d) -> (B, H, N, C, d)
        return x.reshape(B, Hv, N, C, x.shape[-1])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    bc = beta.reshape(B, Hv, N, C, 1)
    gcum = g.reshape(B, Hv, N, C).cumsum(-1)  # log decay from chunk start to position t, inclusive
    # decay[i, j] = exp(gcum_i - gcum_j) for j <= i; masked to -inf above the diagonal before exp
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = (gcum.unsqueeze(-1) - gcum.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()

    # ---- intra-chunk, batched over all chunks -------------------------------------------------
    k_beta = kc * bc
    # (I + A) u = beta v with A strictly lower: A[i, j] = beta_i k_i.k_j decay[i, j]. The solve
    # applies all earlier in-chunk delta-rule corrections at once (UT transform).
    system = (k_beta @ kc.transpose(-1, -2)) * decay  # diagonal = beta_i |k_i|^2, ignored (unit)
    u = torch.linalg.solve_triangular(system, vc * bc, upper=False, unitriangular=True)
    # the part of each token's write that the chunk-start state already predicts: w S
    w = torch.linalg.solve_triangular(system, k_beta * gcum.exp().unsqueeze(-1), upper=False, unitriangular=True)
    attn = (qc @ kc.transpose(-1, -2)) * decay  # causal: decay is 0 above the diagonal
    q_dec = qc * gcum.exp().unsqueeze(-1)  # query reads the chunk-start state through the decay so far
    k_dec = kc * (gcum[..., -1:] - gcum).exp().unsqueeze(-1)  # key's write decays to the chunk end
    chunk_decay = gcum[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)

    # ---- inter-chunk: sequential state hand-over ------------------------------------------------
    state = _start_state(initial_state, B, Hv, dk, dv, q.device)
    out, state = (recurrence or chunk_recurrence)(u, w, q_dec, attn, k_dec, chunk_decay, state)
    out = out[:, :, :T].transpose(1, 2).to(out_dtype)
    return out, state


def chunk_recurrence(u, w, q_dec, attn, k_dec, chunk_decay, state) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk-by-chunk state hand-over of `chunk_gated_delta_rule`: per chunk i, the corrections
    against the chunk-start state, the chunk's output and the state carried on. Inputs (B, H, N, C, .)
    and the state (B, H, dk, dv); returns the padded output (B, H, N C, dv) and the final state."""
    B, Hv, N, C, dv = u.shape
    out = torch.empty(B, Hv, N * C, dv, dtype=torch.float32, device=u.device)
    for i in kernels.chunk_loop(N):
        s = i * C
        v_new = u[:, :, i] - w[:, :, i] @ state  # (B, H, C, dv) corrections against the old state
        out[:, :, s : s + C] = q_dec[:, :, i] @ state + attn[:, :, i] @ v_new
        state = state * chunk_decay[:, :, i] + k_dec[:, :, i].transpose(-1, -2) @ v_new
    return out, state


def recurrent_gated_delta_rule(
    q: torch.Tensor,  # (B, T, Hk, dk)
    k: torch.Tensor,  # (B, T, Hk, dk)
    v: torch.Tensor,  # (B, T, Hv, dv)
    g: torch.Tensor,  # (B, T, Hv)
    beta: torch.Tensor,  # (B, T, Hv)
    initial_state: torch.Tensor | None = None,  # (B, Hv, dk, dv)
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated delta rule token by token (decode). Same arguments and results as the chunked form."""
    out_dtype = q.dtype
    B, T, _, dk = k.shape
    Hv, dv = v.shape[2], v.shape[3]
    q, k = _expand_heads(q, k, Hv)
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))  # (B, H, T, .)
    g, beta = (x.transpose(1, 2).float() for x in (g, beta))  # (B, H, T)
    q = q * (dk**-0.5 if scale is None else scale)
    state = _start_state(initial_state, B, Hv, dk, dv, q.device)
    out = torch.empty(B, Hv, T, dv, dtype=torch.float32, device=q.device)
    for t in kernels.chunk_loop(T):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, d)
        state = state * g[:, :, t].exp()[..., None, None]
        predicted = (state * k_t.unsqueeze(-1)).sum(-2)  # k_t^T S: (B, H, dv)
        delta = (v_t - predicted) * beta[:, :, t].unsqueeze(-1)
        state = state + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        out[:, :, t] = (state * q_t.unsqueeze(-1)).sum(-2)
    return out.transpose(1, 2).to(out_dtype), state


@torch.library.custom_op("codesign::gated_delta_rule_step", mutates_args=("state",))
def gated_delta_rule_step(
    q: torch.Tensor,  # (B, T, Hk, dk)
    k: torch.Tensor,  # (B, T, Hk, dk)
    v: torch.Tensor,  # (B, T, Hv, dv)
    g: torch.Tensor,  # (B, T, Hv)
    beta: torch.Tensor,  # (B, T, Hv)
    state: torch.Tensor,  # (B, Hv, dk, dv) fp32, updated in place
) -> torch.Tensor:  # (B, T, Hv, dv)
    """The decode step as ONE fused kernel (as FLA's fused_recurrent_gated_delta_rule): the state is
    read once and written once in place; the per-token intermediates (decayed state, outer product)
    never reach memory. Traced as a single op so its bytes are the state's, not the intermediates'."""
    out, new_state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
    state.copy_(new_state)
    return out


@gated_delta_rule_step.register_fake
def _gated_delta_rule_step_fake(q, k, v, g, beta, state):
    return q.new_empty((*v.shape[:-1], v.shape[-1]))


class ChunkRecurrence(nn.Module):
    """`chunk_recurrence` as a module, so that a trace names the state hand-over's ops
    `<layer>.linear_attn.chunk_rule.recurrence/...` (whatever the number of chunks)."""

    def forward(self, u, w, q_dec, attn, k_dec, chunk_decay, state):
        return chunk_recurrence(u, w, q_dec, attn, k_dec, chunk_decay, state)


class ChunkGatedDeltaRule(nn.Module):
    """`chunk_gated_delta_rule` as a module of its own, so that a trace names its ops
    `<layer>.linear_attn.chunk_rule/...` (the state hand-over `...chunk_rule.recurrence/...`):
    serving engines run this whole computation (cumulative decay, the triangular solves, the
    intra-chunk products and the chunk-by-chunk state hand-over) as ONE fused prefill kernel
    (FlashInfer's or FLA's chunk_gated_delta_rule), which the cost model charges as a whole
    (`codesign.sim.cost`, "fused GatedDeltaNet chunk kernel"), not as the eager decomposition
    recorded here. No parameters; numerics are the function's."""

    def __init__(self) -> None:
        super().__init__()
        self.recurrence = ChunkRecurrence()  # RECURRENCE_SCOPE

    def forward(self, q, k, v, g, beta, initial_state=None, chunk_size: int = 64):
        return chunk_gated_delta_rule(q, k, v, g, beta, initial_state, chunk_size, recurrence=self.recurrence)


# Module names of the chunk kernel inside a GatedDeltaNet layer and of its state hand-over inside
# it (the op-name scopes the cost model keys on).
CHUNK_RULE_SCOPE = "chunk_rule"
RECURRENCE_SCOPE = "recurrence"


def causal_conv(qkv: torch.Tensor, weight: torch.Tensor, history: torch.Tensor,
                conv_state: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise conv (kernel K = weight's last dim, no bias) + SiLU over qkv (B, C, T) after
    `history` (B, C, K-1, the inputs before the first token); the last K-1 inputs are written into
    `conv_state` when given (none when K is 1). What serving engines run as one kernel
    (`causal_conv1d_fn` for prompts, `causal_conv1d_update` for decodes)."""
    K = weight.shape[-1]
    x = torch.cat([history, qkv], dim=-1)  # (B, C, K-1+T)
    if conv_state is not None:
        conv_state.copy_(x[:, :, x.shape[-1] - (K - 1) :])
    return F.silu(F.conv1d(x, weight, None, groups=qkv.shape[1]))


class GatedRMSNorm(nn.Module):
    """RMSNorm of the delta-rule output times SiLU(z), per value head (`Qwen3_5MoeRMSNormGated`).

    Unlike the model's other Qwen3.5 norms the weight is a plain scale initialised to 1 (not
    zero-centred); the normalised value is cast back to the input dtype before the weight, as HF does.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight * xf.to(dtype)
        return (y * F.silu(z.float())).to(dtype)


class GatedDeltaNetCache(nn.Module):
    """Per-layer decode state: the conv's last kernel-1 inputs and the fp32 recurrent state.

    Buffers so that a trace sees them as tensors of the `state` class; both are updated in place.
    """

    def __init__(self, batch: int, conv_dim: int, kernel: int, num_v_heads: int, dk: int, dv: int, device, dtype) -> None:
        super().__init__()
        self.register_buffer("conv_state", torch.zeros(batch, conv_dim, kernel - 1, device=device, dtype=dtype))
        self.register_buffer(
            "recurrent_state", torch.zeros(batch, num_v_heads, dk, dv, device=device, dtype=torch.float32)
        )


class GatedDeltaNet(nn.Module):
    """Qwen3.5 `linear_attention` layer. Mixer interface: forward(x, start_pos, cache) -> (B, T, H)."""

    block = "linear_attention"

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        la: LinearAttentionConfig | None = config.linear_attention
        if la is None:
            raise CodesignError(f"model {config.name}: linear_attention: expected a section for layer {layer_idx}, found none")
        self.layer_idx = layer_idx
        self.hidden_size = H = config.hidden_size
        self.num_k_heads, self.num_v_heads = la.num_key_heads, la.num_value_heads
        self.head_k_dim, self.head_v_dim = la.key_head_dim, la.value_head_dim
        self.key_dim = la.num_key_heads * la.key_head_dim
        self.value_dim = la.num_value_heads * la.value_head_dim
        self.conv_dim = la.conv_dim
        self.conv_kernel = la.conv_kernel
        self.chunk_size = la.chunk_size

        self.in_proj_qkv = nn.Linear(H, self.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(H, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(H, self.num_v_heads, bias=False)
        self.in_proj_a = nn.Linear(H, self.num_v_heads, bias=False)
        # depthwise causal conv; the padding is applied by hand (left only), so none here
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, la.conv_kernel, groups=self.conv_dim, bias=False)
        # Decay g = -exp(A_log) * softplus(a + dt_bias) (Mamba-2 style discretisation). Init as HF:
        # A ~ U(0.01, 16), dt_bias = 1; checkpoints overwrite both.
        self.dt_bias = nn.Parameter(torch.ones(self.num_v_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads).uniform_(0.01, 16).log())
        self.chunk_rule = ChunkGatedDeltaRule()  # CHUNK_RULE_SCOPE
        self.norm = GatedRMSNorm(self.head_v_dim, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, H, bias=False)

    def make_cache(self, batch: int, max_len: int, device=None, dtype: torch.dtype | None = None) -> GatedDeltaNetCache:
        """Fixed-size state; max_len is unused (the state does not grow with the context)."""
        dtype = dtype or self.in_proj_qkv.weight.dtype
        device = device or self.in_proj_qkv.weight.device
        return GatedDeltaNetCache(
            batch, self.conv_dim, self.conv_kernel, self.num_v_heads, self.head_k_dim, self.head_v_dim, device, dtype
        )

    def _conv(self, qkv: torch.Tensor, start_pos: int, cache: GatedDeltaNetCache | None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over (B, conv_dim, T); reads and refreshes the conv state."""
        K = self.conv_kernel
        if cache is None or start_pos == 0:
            history = qkv.new_zeros(qkv.shape[0], qkv.shape[1], K - 1)  # a fresh sequence has no past
        else:
            history = cache.conv_state.to(qkv.dtype)
        return causal_conv(qkv, self.conv1d.weight, history, None if cache is None else cache.conv_state)

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache: GatedDeltaNetCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self._conv(self.in_proj_qkv(x).transpose(1, 2), start_pos, cache).transpose(1, 2)
        q, k, v = torch.split(qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2norm(q.reshape(B, T, self.num_k_heads, self.head_k_dim).float())
        k = l2norm(k.reshape(B, T, self.num_k_heads, self.head_k_dim).float())
        v = v.reshape(B, T, self.num_v_heads, self.head_v_dim)
        beta = torch.sigmoid(self.in_proj_b(x))
        # fp32: in half precision exp(A_log) may overflow
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias.float())

        if cache is not None and start_pos > 0 and T <= RECURRENT_MAX_TOKENS:
            o = gated_delta_rule_step(q, k, v, g, beta, cache.recurrent_state)  # in place on the state
        else:
            initial = cache.recurrent_state if (cache is not None and start_pos > 0) else None
            o, state = self.chunk_rule(q, k, v, g, beta, initial, self.chunk_size)
            if cache is not None:
                cache.recurrent_state.copy_(state)

        z = self.in_proj_z(x).reshape(B, T, self.num_v_heads, self.head_v_dim)
        o = self.norm(o.to(x.dtype), z)
        return self.out_proj(o.reshape(B, T, self.value_dim))


def split_qwen3_next_in_proj(
    in_proj_qkvz: torch.Tensor, in_proj_ba: torch.Tensor, la: LinearAttentionConfig
) -> dict[str, torch.Tensor]:
    """Qwen3-Next fused input projections -> this module's (Qwen3.5) four projections.

    Qwen3-Next groups rows per key head: [q_h, k_h, v_h(r heads), z_h(r heads)] for each key head h
    (and [b_h(r), a_h(r)] for `in_proj_ba`), r = Hv / Hk (`fix_query_key_value_ordering` in
    transformers' modeling_qwen3_next.py). Value head order is h*r + j in both layouts.
    """
    Hk, dk, dv = la.num_key_heads, la.key_head_dim, la.value_head_dim
    r = la.num_value_heads // Hk
    H = in_proj_qkvz.shape[-1]
    w = in_proj_qkvz.reshape(Hk, 2 * dk + 2 * r * dv, H)
    q, k, v, z = torch.split(w, [dk, dk, r * dv, r * dv], dim=1)
    ba = in_proj_ba.reshape(Hk, 2 * r, H)
    b, a = torch.split(ba, [r, r], dim=1)
    flat = lambda t: t.reshape(-1, H)  # noqa: E731
    return {
        "in_proj_qkv.weight": torch.cat([flat(q), flat(k), flat(v)], dim=0),
        "in_proj_z.weight": flat(z),
        "in_proj_b.weight": flat(b),
        "in_proj_a.weight": flat(a),
    }
