"""Router models: how many tokens each expert receives when the model is traced.

On the meta device the router's scores have no values, so the traced graph takes per-expert token
counts from a router model instead. Three are offered, each seeded so that the same inputs give the
same graph bit for bit:

* `UniformRouter` -- every token picks `top_k` distinct experts uniformly at random (the default; the
  design brief's E*(1-(1-k/E)^B) experts touched per layer is its expectation).
* `ZipfRouter(alpha)` -- expert popularity follows a Zipf law with exponent `alpha` over a seeded,
  per-layer random ranking of experts (routing skew as measured in production MoE serving).
* `HistogramRouter(counts)` -- a recorded histogram of tokens per expert (one list for all layers or
  one per layer), rescaled to the traced number of routed slots.

Exact sampling without replacement costs N x E random draws per layer (about 1.5 ms a layer at
N = 128, E = 512: 0.1 s for a 60-layer step). The counts come instead from the multinomial with the
same per-slot probabilities when `k/E <= exact_k_fraction` (default 0.1) or N x E > `exact_limit`.
The difference is the at-most-once-per-token constraint: it lowers each expert's count variance by a
factor of about (1 - k/E), so below 10% of experts per token the two draws differ by under 5% in
count variance (Qwen3.5: k/E = 10/512, DeepSeek-V3 8/256, Qwen3-235B 8/128 take the multinomial;
Mixtral 2/8 and small gpt-oss 4/32 the exact draw). With equal probabilities and at most 16 routed
slots per expert, the multinomial is drawn as the count of that many independent uniform picks (the
same distribution, cheaper for decode steps), counted from each generator's kept raw outputs
by NumPy's own bounded-integer rule, all layers of a step in one pass (`uniform_picks`,
`routed_matrix`: the same numbers as drawing each layer). Draws are memoised per (router, layer, tokens,
experts, k): a step shape seen before, or sharing its token count, draws nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from codesign.errors import CodesignError
from codesign.limits import show


_SEEDS: dict[tuple[int, int], np.random.SeedSequence] = {}


def _rng(seed: int, layer: int) -> np.random.Generator:
    """The generator of one (seed, layer) draw: `default_rng([seed, layer])`, with its seed
    sequence kept per (seed, layer) (hashing the seed words is most of the 17 us a generator costs;
    a generator from a kept sequence costs 5 us and draws the same numbers)."""
    ss = _SEEDS.get((seed, layer))
    if ss is None:
        ss = np.random.SeedSequence([seed, layer])
        if len(_SEEDS) < (1 << 14):
            _SEEDS[(seed, layer)] = ss
    return np.random.Generator(np.random.PCG64(ss))


# Raw 64-bit outputs of each (seed, layer) generator from its start, kept and extended on demand,
# with the bit generator positioned after them: see `uniform_picks`.
_RAW: dict[tuple[int, int], tuple[np.random.PCG64, np.ndarray]] = {}
_RAW_LIMIT = 4096  # (seed, layer) streams kept; each holds at most 16 x experts / 2 words (32 KB at 512)


def _raw(seed: int, layer: int, words: int) -> np.ndarray:
    """The first `words` raw outputs of `_rng(seed, layer)`'s bit generator (uint64)."""
    hit = _RAW.get((seed, layer))
    if hit is None:
        if len(_RAW) >= _RAW_LIMIT:
            _RAW.clear()
        ss = np.random.SeedSequence([seed, layer])
        bg = np.random.PCG64(ss)
        hit = _RAW[(seed, layer)] = (bg, bg.random_raw(max(words, 256)))
    bg, raw = hit
    if raw.shape[0] < words:
        raw = np.concatenate([raw, bg.random_raw(max(words, 2 * raw.shape[0]) - raw.shape[0])])
        _RAW[(seed, layer)] = (bg, raw)
    return raw[:words]


def lemire_picks(u32: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(picks in [0, E) as int64, rows holding a rejected output) of rows of 32-bit outputs, by
    NumPy's bounded-integer rule (Lemire): pick = (u32 x E) >> 32, rejected where the product's low
    32 bits fall below (2^32 - E) mod E. A row without a rejection is exactly what the generator
    draws from those outputs."""
    E = int(num_experts)
    if E > 1 and E & (E - 1) == 0:
        # a power of two: (u32 x 2^k) >> 32 is u32 >> (32 - k), and the threshold (2^32 - E) mod E
        # is 0 (nothing rejected); the same picks without the 64-bit product
        picks = (u32 >> np.uint32(33 - E.bit_length())).astype(np.int64)
        return picks, np.zeros(u32.shape[0], dtype=bool)
    m = u32.astype(np.uint64) * np.uint64(E)
    picks = (m >> np.uint64(32)).astype(np.int64)
    threshold = (2 ** 32 - E) % E
    if not threshold:
        return picks, np.zeros(u32.shape[0], dtype=bool)
    return picks, ((m & np.uint64(0xFFFFFFFF)) < np.uint64(threshold)).any(axis=1)


def uniform_picks(seed: int, layers: list[int], slots: int, num_experts: int) -> np.ndarray:
    """Counts per expert (one row per layer, int64) of `slots` independent uniform picks among
    `num_experts`, each layer's picks being exactly `_rng(seed, layer).integers(0, num_experts,
    size=slots)`: NumPy draws them with Lemire's method from 32-bit outputs (the low then the high
    half of each 64-bit PCG64 output), pick = (u32 x E) >> 32, rejected when the low 32 bits of the
    product fall below (2^32 - E) mod E. Those outputs are kept per (seed, layer) (`_raw`), so a
    draw costs no generator construction and all layers count in one `bincount`. A layer whose
    picks meet a rejection (probability below E / 2^32 per pick; never for a power of two) is drawn
    by the generator itself."""
    E = int(num_experts)
    L = len(layers)
    if slots <= 0 or L == 0:
        return np.zeros((L, E), dtype=np.int64)
    if E > 1 and E & (E - 1) == 0 and L * E < 2 ** 32:
        return _power_of_two_picks(seed, layers, slots, E)
    words = (slots + 1) // 2
    raw = np.empty((L, words), dtype=np.uint64)
    for i, layer in enumerate(layers):
        raw[i] = _raw(seed, layer, words)
    u32 = raw.view(np.uint32)[:, :slots]
    picks, rejected = lemire_picks(u32, E)
    for j in np.flatnonzero(rejected).tolist():
        picks[j] = _rng(seed, layers[j]).integers(0, E, size=slots)
    picks += (np.arange(L, dtype=np.int64) * E)[:, None]
    return np.bincount(picks.ravel(), minlength=L * E).reshape(L, E)


# The last counts of `_power_of_two_picks` per (seed, layers, experts): (slots, read-only counts).
_LAST: dict[tuple, tuple[int, np.ndarray]] = {}


def _power_of_two_picks(seed: int, layers: list[int], slots: int, E: int) -> np.ndarray:
    """`uniform_picks` where E is a power of two (nothing is rejected: (2^32 - E) mod E = 0, and
    (u32 x E) >> 32 is u32 >> (32 - log2 E)). A layer's counts of its first n picks are those of
    its first m picks plus those of picks m..n-1 (the picks are a prefix of one stream), so a draw
    near the last one of these layers counts only the picks between (integers: exact), added to
    (or taken from) a copy of the last counts one pick at a time. Returns a read-only array."""
    L = len(layers)
    key = (seed, tuple(layers), E)
    last = _LAST.get(key)
    if last is not None and abs(slots - last[0]) < slots:
        lo, hi = (last[0], slots) if slots > last[0] else (slots, last[0])
        out = last[1].copy()
        (np.add if slots > last[0] else np.subtract).at(out.reshape(-1), _keys(seed, key[1], lo, hi, E).ravel(), 1)
    else:
        out = np.bincount(_keys(seed, key[1], 0, slots, E).ravel(), minlength=L * E).reshape(L, E)
    out.flags.writeable = False
    if len(_LAST) >= 64:  # each a layers x experts array (about 180 KB for 44 layers x 512)
        _LAST.clear()
    _LAST[key] = (slots, out)
    return out


def _keys(seed: int, layers: tuple[int, ...], lo: int, hi: int, E: int) -> np.ndarray:
    """Picks lo..hi-1 of each layer's stream (layers x (hi - lo), uint32), each offset by its row
    times E: the flat (layer, expert) cell it counts in, E a power of two."""
    L = len(layers)
    w0, w1 = lo // 2, (hi + 1) // 2  # 64-bit words holding 32-bit outputs lo..hi-1
    raw = np.ascontiguousarray(_stacked(seed, layers, w1)[:, w0:w1])
    u32 = raw.view(np.uint32)[:, lo - 2 * w0: hi - 2 * w0]
    keys = u32 >> np.uint32(33 - E.bit_length())
    keys += (np.arange(L, dtype=np.uint32) * np.uint32(E))[:, None]
    return keys


# The raw outputs of several layers' streams as one (layers x words) array, by (seed, layers): the
# rows of `_raw`, kept so that a draw slices them at once. Bounded.
_STACKS: dict[tuple, np.ndarray] = {}


def _stacked(seed: int, layers: tuple[int, ...], words: int) -> np.ndarray:
    """At least the first `words` raw outputs of each layer's stream (`_raw`), one row per layer."""
    key = (seed, layers)
    hit = _STACKS.get(key)
    if hit is None or hit.shape[1] < words:
        width = max(words, 256 if hit is None else 2 * hit.shape[1])
        hit = np.stack([_raw(seed, layer, width) for layer in layers]) if layers else np.zeros((0, width), np.uint64)
        if len(_STACKS) >= 64:
            _STACKS.clear()
        _STACKS[key] = hit
    return hit


def _sample_without_replacement(rng: np.random.Generator, n_tokens: int, top_k: int, logp: np.ndarray) -> np.ndarray:
    """Counts per expert when each of n_tokens picks top_k distinct experts with log-weights logp
    (Gumbel top-k: exact sampling without replacement)."""
    E = logp.shape[0]
    counts = np.zeros(E, dtype=np.int64)
    block = max(1, 65536 // E)
    for start in range(0, n_tokens, block):
        n = min(block, n_tokens - start)
        keys = logp[None, :] + rng.gumbel(size=(n, E))
        picks = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
        counts += np.bincount(picks.ravel(), minlength=E)
    return counts


@dataclass(frozen=True)
class RouterModel:
    """Base: `tokens_per_expert(layer, n_tokens, num_experts, top_k)` -> counts summing to n_tokens*top_k."""

    seed: int = 0
    exact_limit: int = 65_536  # N x E draws above which the multinomial draw is used
    exact_k_fraction: float = 0.1  # k/E at or below which the multinomial draw is used

    def probabilities(self, layer: int, num_experts: int) -> np.ndarray:
        return np.full(num_experts, 1.0 / num_experts)

    def tokens_per_expert(self, layer: int, n_tokens: int, num_experts: int, top_k: int) -> np.ndarray:
        p = self.probabilities(layer, num_experts)
        rng = _rng(self.seed, layer)
        if n_tokens * num_experts <= self.exact_limit and top_k > self.exact_k_fraction * num_experts:
            return _sample_without_replacement(rng, n_tokens, top_k, np.log(p))
        return rng.multinomial(n_tokens * top_k, p).astype(np.int64)

    def describe(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


@dataclass(frozen=True)
class UniformRouter(RouterModel):
    def tokens_per_expert(self, layer: int, n_tokens: int, num_experts: int, top_k: int) -> np.ndarray:
        slots = n_tokens * top_k
        if n_tokens * num_experts <= self.exact_limit and top_k > self.exact_k_fraction * num_experts:
            return super().tokens_per_expert(layer, n_tokens, num_experts, top_k)
        if slots <= 16 * num_experts:
            # The multinomial over equal probabilities is the count of `slots` independent uniform
            # picks: drawn directly, O(slots), where the multinomial's O(experts) binomial chain
            # would cost more (up to ~16 slots per expert: 1,000 slots over 512 experts take 17 us
            # instead of 43, 8,000 take 70 instead of 90).
            return uniform_picks(self.seed, [layer], slots, num_experts)[0]
        return super().tokens_per_expert(layer, n_tokens, num_experts, top_k)

    def picks_regime(self, n_tokens: int, num_experts: int, top_k: int) -> bool:
        """Whether a draw of this size counts independent uniform picks (`uniform_picks`)."""
        exact = n_tokens * num_experts <= self.exact_limit and top_k > self.exact_k_fraction * num_experts
        return not exact and n_tokens * top_k <= 16 * num_experts


@dataclass(frozen=True)
class ZipfRouter(RouterModel):
    alpha: float = 1.0  # popularity of the r-th most popular expert ~ 1 / r**alpha

    def probabilities(self, layer: int, num_experts: int) -> np.ndarray:
        ranks = np.arange(1, num_experts + 1, dtype=np.float64)
        w = ranks ** (-self.alpha)
        perm = np.random.default_rng([self.seed, layer, 1]).permutation(num_experts)
        p = np.empty(num_experts)
        p[perm] = w / w.sum()
        return p

    def describe(self) -> str:
        return f"ZipfRouter(alpha={self.alpha}, seed={self.seed})"


@dataclass(frozen=True)
class HistogramRouter(RouterModel):
    """Recorded tokens-per-expert histogram(s): `counts` is one list, or one list per MoE layer."""

    counts: tuple = field(default=())

    def _hist(self, layer: int, num_experts: int) -> np.ndarray:
        c = self.counts
        rows = c if c and isinstance(c[0], (list, tuple)) else [c]
        h = np.asarray(rows[layer % len(rows)], dtype=np.float64)
        if h.shape != (num_experts,):
            raise ValueError(f"histogram has {h.shape[0]} experts, the model has {num_experts}")
        if h.sum() <= 0:
            raise ValueError("histogram counts must not all be zero")
        return h

    def probabilities(self, layer: int, num_experts: int) -> np.ndarray:
        h = self._hist(layer, num_experts)
        return h / h.sum()

    def tokens_per_expert(self, layer: int, n_tokens: int, num_experts: int, top_k: int) -> np.ndarray:
        # Deterministic rescaling by largest remainder: the recorded shape, the traced volume.
        p = self.probabilities(layer, num_experts)
        total = n_tokens * top_k
        exact = p * total
        counts = np.floor(exact).astype(np.int64)
        short = total - int(counts.sum())
        if short:
            order = np.argsort(-(exact - counts), kind="stable")
            counts[order[:short]] += 1
        return counts

    def describe(self) -> str:
        return f"HistogramRouter({len(self.counts)} entries)"


_DRAWS: dict[tuple, tuple[tuple[int, ...], np.ndarray]] = {}
_DRAWS_LIMIT = 1 << 14


def _draw(router: RouterModel, layer: int, n_tokens: int, num_experts: int, top_k: int
          ) -> tuple[tuple[int, ...], np.ndarray] | None:
    """The memoised draw as (tuple, read-only int64 array); None for a router that cannot be hashed."""
    try:
        key = (router, layer, n_tokens, num_experts, top_k)
        hit = _DRAWS.get(key)
    except TypeError:
        return None
    if hit is None:
        if len(_DRAWS) >= _DRAWS_LIMIT:
            _DRAWS.clear()
        arr = np.asarray(router.tokens_per_expert(layer, n_tokens, num_experts, top_k), dtype=np.int64)
        arr.flags.writeable = False
        hit = _DRAWS[key] = (tuple(arr.tolist()), arr)
    return hit


def routed_counts(router: RouterModel, layer: int, n_tokens: int, num_experts: int, top_k: int) -> tuple[int, ...]:
    """`router.tokens_per_expert(...)` as a tuple of ints, memoised (see module docstring); a
    router that cannot be hashed draws every time."""
    hit = _draw(router, layer, n_tokens, num_experts, top_k)
    if hit is None:
        return tuple(int(c) for c in router.tokens_per_expert(layer, n_tokens, num_experts, top_k))
    return hit[0]


def routed_array(router: RouterModel, layer: int, n_tokens: int, num_experts: int, top_k: int) -> np.ndarray:
    """`routed_counts` as a read-only int64 array (the same memoised draw)."""
    hit = _draw(router, layer, n_tokens, num_experts, top_k)
    if hit is None:
        return np.asarray(router.tokens_per_expert(layer, n_tokens, num_experts, top_k), dtype=np.int64)
    return hit[1]


_MATRICES: dict[tuple, np.ndarray] = {}
_MATRICES_LIMIT = 64


def routed_matrix(router: RouterModel, layers: list[int], n_tokens: int, num_experts: int, top_k: int) -> np.ndarray:
    """The draws of `layers` (draw indices) as one read-only (layers x experts) int64 array, equal
    row by row to `routed_array`: a uniform router's decode-sized draws are counted together
    (`uniform_picks`), others stacked from the per-layer draws. Memoised per (router, layers,
    tokens, experts, k)."""
    try:
        key = (router, tuple(layers), n_tokens, num_experts, top_k)
        hit = _MATRICES.get(key)
    except TypeError:
        key, hit = None, None
    if hit is not None:
        return hit
    if isinstance(router, UniformRouter) and type(router).tokens_per_expert is UniformRouter.tokens_per_expert \
            and router.picks_regime(n_tokens, num_experts, top_k):
        out = uniform_picks(router.seed, list(layers), n_tokens * top_k, num_experts)
    else:
        out = np.stack([routed_array(router, layer, n_tokens, num_experts, top_k) for layer in layers])
    out.flags.writeable = False
    if key is not None:
        if len(_MATRICES) >= _MATRICES_LIMIT:
            _MATRICES.clear()
        _MATRICES[key] = out
    return out


def expected_experts_touched(num_experts: int, top_k: int, n_tokens: int) -> float:
    """E * (1 - (1 - k/E)^B): the expected distinct experts a uniform router touches."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** n_tokens)


def make_router(spec: str | RouterModel | None, seed: int = 0) -> RouterModel:
    """'uniform', 'zipf' or 'zipf:1.2' -> a router model; None -> uniform."""
    if isinstance(spec, RouterModel):
        return spec
    if spec is None or spec == "uniform":
        return UniformRouter(seed=seed)
    if isinstance(spec, str) and (spec == "zipf" or spec.startswith("zipf:")):
        text = spec.split(":", 1)[1] if ":" in spec else "1.0"
        try:
            alpha = float(text)
        except ValueError:
            alpha = math.nan
        if not 0.0 <= alpha <= 100.0:
            raise CodesignError(f"router: expected zipf:ALPHA with ALPHA a number from 0 to 100, found {spec[:60]!r}")
        return ZipfRouter(seed=seed, alpha=alpha)
    raise CodesignError(f"router: expected uniform, zipf, zipf:ALPHA or a RouterModel, found {show(spec)}")
