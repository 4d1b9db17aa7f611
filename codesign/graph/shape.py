"""Step shapes: what one forward step of a serving engine batches together.

A step is a list of **groups**; each group is `seqs` sequences that each add `new_tokens` tokens
after `cached_tokens` tokens already in their KV cache / recurrent state. Continuous-batching
engines (vLLM, SGLang, TensorRT-LLM) run steps such as:

* a pure decode batch: ``StepShape.decode(64, kv_len=32_768)`` = one group (64, 1, 32_767);
* a chunked-prefill piece: ``StepShape.prefill(1, 8_192, cached=16_384)`` = (1, 8192, 16384);
* a speculative (MTP) verify step: ``StepShape.verify(64, cached=32_767, draft=1)`` = (64, 2, 32767);
* a mix: decodes and prefill chunks in one step (``StepShape((Group(...), Group(...)))``).

Words, used the same way everywhere: ``cached_tokens`` is the prefix already in the cache before the
step; ``kv_len`` = cached + new is what the step's last position attends over. A decode "at context
L" is ``kv_len = L``.

Shapes are frozen and hashable (cache keys); `canonical()` merges groups of equal
(new_tokens, cached_tokens, logits) and sorts them, so two spellings of one step share a key.

**Routed tokens** (`routed`): the new tokens the step's routed experts see, when they differ from
its groups' tokens. An attention-data-parallel step in lock step (docs/mapping.md, "Attention-DP
lock step") is evaluated as one rank's groups on every rank, while its experts and all-to-alls
carry all ranks' real tokens; ``routed`` holds those. None (the default, and what a value equal to
`tokens` becomes) means every new token is routed.
"""

from __future__ import annotations

from dataclasses import dataclass

from codesign.errors import CodesignError


@dataclass(frozen=True, order=True)
class Group:
    """`seqs` sequences, each adding `new_tokens` after `cached_tokens` cached ones."""

    seqs: int
    new_tokens: int
    cached_tokens: int = 0
    # Positions per sequence that go through the LM head: the last one for a decode or a prompt
    # chunk, every one for a speculative verify (each drafted token is checked).
    logits: int = 1

    def __post_init__(self) -> None:
        s, n, c, lg = self.seqs, self.new_tokens, self.cached_tokens, self.logits
        if not (type(s) is int and type(n) is int and type(c) is int and type(lg) is int):  # plain ints: fast
            for name in ("seqs", "new_tokens", "cached_tokens", "logits"):
                v = getattr(self, name)
                if not isinstance(v, int) or isinstance(v, bool):
                    raise CodesignError(f"step shape: {name}: expected an integer, found {v!r}")
        if not 1 <= self.logits <= self.new_tokens:
            raise CodesignError(f"step shape: logits: expected 1 to new_tokens ({self.new_tokens}), found {self.logits}")
        if self.seqs < 1 or self.new_tokens < 1 or self.cached_tokens < 0:
            raise CodesignError(f"step shape: expected seqs >= 1, new_tokens >= 1 and cached_tokens >= 0, found "
                                f"seqs={self.seqs}, new_tokens={self.new_tokens}, cached_tokens={self.cached_tokens}")

    @property
    def tokens(self) -> int:
        """New tokens of the whole group."""
        return self.seqs * self.new_tokens

    @property
    def kv_len(self) -> int:
        """Tokens each sequence's last new position attends over."""
        return self.cached_tokens + self.new_tokens

    @property
    def phase(self) -> str:
        """How the tracer records it: one new token per sequence is a decode step, more a prefill
        (a prompt chunk or a speculative verify of several tokens)."""
        return "decode" if self.new_tokens == 1 else "prefill"


@dataclass(frozen=True)
class StepShape:
    """The groups of one step (see module docstring)."""

    groups: tuple[Group, ...]
    # new tokens the routed experts and all-to-alls see (None: all of `tokens`; see module docstring)
    routed: int | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            raise CodesignError("step shape: expected at least one group, found none")
        if not all(isinstance(g, Group) for g in self.groups):
            raise CodesignError("step shape: groups must be Group(seqs, new_tokens, cached_tokens)")
        r = self.routed
        if r is not None:
            if type(r) is not int or r < 1:
                raise CodesignError(f"step shape: routed: expected a positive integer (the new tokens the routed "
                                    f"experts see), found {r!r}")
            if r == self.tokens:
                object.__setattr__(self, "routed", None)  # every token routed: the plain step's key

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def decode(cls, batch: int, kv_len: int) -> "StepShape":
        """`batch` sequences each generating their `kv_len`-th token."""
        if not isinstance(kv_len, int) or kv_len < 1:
            raise CodesignError(f"step shape: decode kv_len: expected a positive integer, found {kv_len!r}")
        return cls((Group(batch, 1, kv_len - 1),))

    @classmethod
    def prefill(cls, batch: int, tokens: int, cached: int = 0) -> "StepShape":
        """`batch` prompts (or prompt chunks) of `tokens` each after `cached` cached tokens."""
        return cls((Group(batch, tokens, cached),))

    @classmethod
    def verify(cls, batch: int, cached: int, draft: int) -> "StepShape":
        """A speculative verify step: the last accepted token plus `draft` drafted ones per sequence."""
        return cls((Group(batch, draft + 1, cached, logits=draft + 1),))

    # -- views ---------------------------------------------------------------------------------
    @property
    def seqs(self) -> int:
        return sum(g.seqs for g in self.groups)

    @property
    def tokens(self) -> int:
        """New tokens of the whole step (what token-parallel ops such as GEMMs see)."""
        return sum(g.tokens for g in self.groups)

    @property
    def routed_tokens(self) -> int:
        """New tokens the step's routed experts see (`routed`, else `tokens`)."""
        return self.tokens if self.routed is None else self.routed

    @property
    def is_mixed(self) -> bool:
        return len(self.groups) > 1

    def canonical(self) -> "StepShape":
        """Groups of equal (new_tokens, cached_tokens, logits) merged, sorted by them."""
        merged: dict[tuple[int, int, int], int] = {}
        for g in self.groups:
            key = (g.new_tokens, g.cached_tokens, g.logits)
            merged[key] = merged.get(key, 0) + g.seqs
        return StepShape(tuple(Group(s, n, c, lg) for (n, c, lg), s in sorted(merged.items())), self.routed)

    def __str__(self) -> str:
        text = " + ".join(f"{g.seqs}x(new {g.new_tokens}, cached {g.cached_tokens})" for g in self.groups)
        return text if self.routed is None else f"{text}, {self.routed} routed"


__all__ = ["Group", "StepShape"]
