"""Parallel plans and deployment precision: the mapping half of codesign's inputs.

A `ParallelPlan` says how a model is spread over chips; a `Precision` says which number formats
weights, activations, KV cache and recurrent state are stored in. Neither knows the hardware; the
plan names model dimensions (heads, experts, layers) and `check_plan` says whether it divides them.
Search (`candidate_plans`) is kept apart from evaluation (the simulator), as in Timeloop's
mapper/model split.

Plan semantics (one stage of one replica, most to least coarse):

* ``dp`` -- whole-model replicas; each gets ``batch / dp`` of the sequences.
* ``pp`` -- pipeline stages over decoder layers (contiguous, equal layer counts; the embedding goes
  with the first stage, the final norm, LM head and MTP heads with the last).
* within a stage, ``tp * attention_dp`` chips. Attention, dense MLP, shared experts, embedding and
  LM head are tensor-parallel over ``tp`` (heads / intermediate / vocab split) and data-parallel
  over ``attention_dp`` (each attention-DP group holds a full copy of those weights and serves
  ``1 / attention_dp`` of the replica's sequences, as DP-attention + EP deployments run).
* routed experts are expert-parallel over ``ep`` ranks (``num_experts / ep`` experts each); each
  expert is tensor-parallel over ``moe_tp = tp * attention_dp / ep`` chips of its rank.

chips = dp * pp * tp * attention_dp.  Examples: ``{tp: 8}`` on 8 chips (Llama-2-70B MLPerf);
``{ep: 144, attention_dp: 144}`` on 144 chips (DeepSeek-V3's decode unit); ``{tp: 8}`` for Mixtral
= experts tensor-parallel (ep = 1, moe_tp = 8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from codesign.errors import CodesignError
from codesign.hw.spec import BYTES_PER_ELEMENT
from codesign.models.config import ModelConfig

# Byte classes of the op graph and the dtype each was traced at (docs/architecture.md: bf16
# weights/activations/KV, fp32 recurrent state).
TRACED_DTYPE = {"weight": "bf16", "activation": "bf16", "kv_cache": "bf16", "state": "fp32"}


@dataclass(frozen=True)
class ParallelPlan:
    """How one deployment splits the model (see module docstring for the semantics)."""

    tp: int = 1
    ep: int = 1
    pp: int = 1
    dp: int = 1
    attention_dp: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CodesignError(f"parallel.{f.name}: expected a positive integer, found {v!r}")

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "parallel") -> "ParallelPlan":
        """A plan from a scenario's `parallel:` mapping; missing keys are 1, unknown keys are errors."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise CodesignError(f"{source}: expected a mapping such as {{tp: 8}}, found {data!r}")
        known = [f.name for f in fields(cls)]
        for k in data:
            if k not in known:
                raise CodesignError(f"{source}.{k}: unknown parallel dimension; expected one of {', '.join(known)}")
        return cls(**data)

    @property
    def chips(self) -> int:
        return self.dp * self.pp * self.tp * self.attention_dp

    @property
    def stage_chips(self) -> int:
        """Chips of one pipeline stage of one replica (the expert-parallel domain)."""
        return self.tp * self.attention_dp

    @property
    def moe_tp(self) -> int:
        """Tensor-parallel width of each routed expert (0 when ep does not divide the stage)."""
        return self.stage_chips // self.ep if self.stage_chips % self.ep == 0 else 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v != 1]
        return ", ".join(parts) or "single chip"


def _check_dtype(field: str, v: str) -> None:
    if v not in BYTES_PER_ELEMENT:
        raise CodesignError(f"precision.{field}: expected one of {', '.join(BYTES_PER_ELEMENT)}, found {v!r}")


@dataclass(frozen=True)
class Precision:
    """Storage formats of a deployment.

    * ``compute`` -- the dtype matrix ops run in. Default (None): the wider of ``weights`` and
      ``activations`` (a named assumption: mixed fp4-weight/fp8-activation GEMMs run on the fp8
      path, as on Blackwell W4A8; override to force e.g. ``compute="fp4"``).
    * ``state`` -- GatedDeltaNet recurrent state; kept fp32 by default (the delta rule accumulates
      in fp32 in every public kernel; lower precision drifts).
    * ``fp4_scale_block`` -- block-scaled FP4 stores one 1-byte scale per this many values (NVFP4:
      16, E4M3 scales; MXFP4: 32), so fp4 costs 0.5 + 1/16 bytes per value. FP8 per-tensor or
      128x128-block scales are negligible and not counted.
    """

    weights: str = "bf16"
    activations: str = "bf16"
    kv_cache: str = "bf16"
    compute: str | None = None
    state: str = "fp32"
    fp4_scale_block: int = 16

    def __post_init__(self) -> None:
        for name in ("weights", "activations", "kv_cache", "state"):
            _check_dtype(name, getattr(self, name))
        if self.compute is not None:
            _check_dtype("compute", self.compute)
        if self.fp4_scale_block < 1:
            raise CodesignError(f"precision.fp4_scale_block: expected a positive integer, found {self.fp4_scale_block!r}")

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "precision") -> "Precision":
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise CodesignError(f"{source}: expected a mapping such as {{weights: fp8}}, found {data!r}")
        known = [f.name for f in fields(cls)]
        for k in data:
            if k not in known:
                raise CodesignError(f"{source}.{k}: unknown precision field; expected one of {', '.join(known)}")
        return cls(**data)

    @property
    def matrix_dtype(self) -> str:
        """The dtype matrix ops compute in (see ``compute``)."""
        if self.compute is not None:
            return self.compute
        w, a = self.weights, self.activations
        return w if BYTES_PER_ELEMENT[w] >= BYTES_PER_ELEMENT[a] else a

    def bytes_per_element(self, dtype: str) -> float:
        """Stored bytes per value, with block-scale overhead for fp4."""
        b = BYTES_PER_ELEMENT[dtype]
        if dtype == "fp4":
            b += 1.0 / self.fp4_scale_block
        return b

    def dtype_of(self, byte_class: str) -> str:
        try:
            return {"weight": self.weights, "activation": self.activations, "kv_cache": self.kv_cache,
                    "state": self.state}[byte_class]
        except KeyError:
            raise CodesignError(f"byte class: expected one of {', '.join(TRACED_DTYPE)}, found {byte_class!r}") from None

    def scale(self, byte_class: str) -> float:
        """Factor from the traced bytes of `byte_class` to this deployment's bytes."""
        return self.bytes_per_element(self.dtype_of(byte_class)) / BYTES_PER_ELEMENT[TRACED_DTYPE[byte_class]]

    def to_dict(self) -> dict:
        return asdict(self)


# ---- validity ------------------------------------------------------------------------------------

def _heads_split(n: int, tp: int) -> bool:
    """Heads split over tp chips, or replicate evenly when tp exceeds them (KV/key heads)."""
    return n % tp == 0 or tp % n == 0


def check_plan(config: ModelConfig, plan: ParallelPlan, chips: int) -> str | None:
    """None when `plan` can run `config` on `chips` chips, else one line saying why not.

    Infeasible is a result: the caller reports it as a row with feasible = false.
    """
    if plan.chips != chips:
        return (f"plan {{{plan}}} uses dp*pp*tp*attention_dp = {plan.chips} chips, "
                f"the deployment has {chips}")
    tp = plan.tp
    if config.num_layers % plan.pp:
        return f"num_layers ({config.num_layers}) is not divisible by pp ({plan.pp})"
    kinds = set(config.layer_types)
    if kinds & {"full_attention", "sliding_attention"}:
        a = config.attention
        if a.num_heads % tp:
            return f"attention.num_heads ({a.num_heads}) is not divisible by tp ({tp})"
        if not _heads_split(a.num_kv_heads, tp):
            return (f"attention.num_kv_heads ({a.num_kv_heads}) neither divides nor is divisible by tp ({tp}); "
                    "KV heads cannot be split or replicated evenly")
    if "mla" in kinds and config.mla.num_heads % tp:
        return f"mla.num_heads ({config.mla.num_heads}) is not divisible by tp ({tp})"
    if "linear_attention" in kinds:
        la = config.linear_attention
        if la.num_value_heads % tp:
            return f"linear_attention.num_value_heads ({la.num_value_heads}) is not divisible by tp ({tp})"
        if not _heads_split(la.num_key_heads, tp):
            return f"linear_attention.num_key_heads ({la.num_key_heads}) neither divides nor is divisible by tp ({tp})"
    if "dense" in config.mlp_types and config.intermediate_size % tp:
        return f"intermediate_size ({config.intermediate_size}) is not divisible by tp ({tp})"
    if config.is_moe:
        moe = config.moe
        if plan.stage_chips % plan.ep:
            return (f"ep ({plan.ep}) does not divide the chips of a stage, tp*attention_dp = "
                    f"{plan.stage_chips}")
        if moe.num_experts % plan.ep:
            return f"moe.num_experts ({moe.num_experts}) is not divisible by ep ({plan.ep})"
        if moe.intermediate_size % plan.moe_tp:
            return (f"moe.intermediate_size ({moe.intermediate_size}) is not divisible by the expert "
                    f"tensor-parallel width tp*attention_dp/ep = {plan.moe_tp}")
        if moe.shared_expert_intermediate_size and moe.shared_expert_intermediate_size % tp:
            return (f"moe.shared_expert_intermediate_size ({moe.shared_expert_intermediate_size}) "
                    f"is not divisible by tp ({tp})")
    elif plan.ep > 1:
        return f"ep ({plan.ep}) > 1 but {config.name} has no MoE layers"
    return None


# ---- search space --------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_plans(config: ModelConfig, chips: int, max_tp: int | None = None,
                    max_pp: int | None = None) -> list[ParallelPlan]:
    """Valid plans for `parallel: auto`, in a deterministic order (fewest pipeline stages, then
    widest tp). Only enumerates; the simulator evaluates.

    Pruning rules (named, so that the space stays in the tens, not thousands):
    * dense models: tp * pp * dp = chips, attention_dp = ep = 1.
    * MoE models: additionally attention_dp > 1 only together with full expert parallelism
      (ep = tp * attention_dp, the DP-attention + EP layout), and ep in {1, tp * attention_dp}
      otherwise (pure-TP experts or one expert group per stage chip).
    * ``max_tp`` (e.g. the scale-up domain size) and ``max_pp`` bound tp and pp when given.
    """
    out: list[ParallelPlan] = []
    for pp in _divisors(chips):
        if max_pp is not None and pp > max_pp:
            continue
        for tp in sorted(_divisors(chips // pp), reverse=True):
            if max_tp is not None and tp > max_tp:
                continue
            rest = chips // (pp * tp)
            adps = _divisors(rest) if config.is_moe else [1]
            for adp in adps:
                dp = rest // adp
                stage = tp * adp
                eps = [stage] if adp > 1 else sorted({1, stage})
                for ep in eps if config.is_moe else [1]:
                    plan = ParallelPlan(tp=tp, ep=ep, pp=pp, dp=dp, attention_dp=adp)
                    if check_plan(config, plan, chips) is None:
                        out.append(plan)
    return out
