"""Parallel plans and deployment precision: the mapping half of codesign's inputs.

A `ParallelPlan` says how a model is spread over chips; a `Precision` says which number formats
weights, activations, KV cache and recurrent state are stored in. Neither knows the hardware; the
plan names model dimensions (heads, experts, layers) and `check_plan` says whether it divides them.
Search (`candidate_plans`) is kept apart from evaluation (the simulator), as in Timeloop's
mapper/model split.

Plan semantics (one stage of one replica, most to least coarse):

* ``dp`` -- whole-model replicas; each gets ``batch / dp`` of the sequences.
* ``pp`` -- pipeline stages over contiguous runs of decoder layers (the embedding goes with the first
  stage, the final norm, LM head and MTP heads with the last). When pp does not divide the layers,
  stages are uneven by the named rule of `partition_layers` (vLLM's), or as ``layer_partition``
  says (layer counts per stage, as vLLM's ``VLLM_PP_LAYER_PARTITION``).
* within a stage, ``tp * attention_dp`` chips. Attention, dense MLP, shared experts, embedding and
  LM head are tensor-parallel over ``tp`` (heads / intermediate / vocab split) and data-parallel
  over ``attention_dp`` (each attention-DP group holds a full copy of those weights and serves
  ``1 / attention_dp`` of the replica's sequences, as DP-attention + EP deployments run).
* routed experts are expert-parallel over ``ep`` ranks (``(num_experts + r) / ep`` expert slots
  each, r = ``redundant_experts``); each expert is tensor-parallel over
  ``moe_tp = tp * attention_dp / ep`` chips of its rank.
* ``redundant_experts`` -- extra copies of hot experts (DeepSeek-V3 report, arXiv 2412.19437,
  section 3.4; DeepSeek's inference-system overview, Feb 2025: 256 routed experts + 32 redundant =
  288 slots, 2 per GPU, on the 144-GPU decode unit). ``"auto"`` (the default) adds the fewest
  copies that make ``num_experts + r`` divisible by ``ep``: 0 whenever ep divides the experts (so
  every such plan is unchanged), 32 for 256 experts on ep = 144. A plan that asks for an EP width
  the experts do not divide can only run with copies, so auto is what such a request means; set
  ``0`` to forbid copies or a number to add more (any r with (E + r) divisible by ep).

chips = dp * pp * tp * attention_dp.  Examples: ``{tp: 8}`` on 8 chips (Llama-2-70B MLPerf);
``{ep: 144, attention_dp: 144}`` on 144 chips (DeepSeek-V3's decode unit); ``{tp: 8}`` for Mixtral
= experts tensor-parallel (ep = 1, moe_tp = 8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from typing import TYPE_CHECKING, Callable

from codesign.errors import CodesignError
from codesign.hw.spec import BYTES_PER_ELEMENT
from codesign.limits import MAX_CHIPS, MAX_EXPERTS, show
from codesign.models.config import ModelConfig

if TYPE_CHECKING:
    from codesign.hw.spec import HardwareSpec

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
    redundant_experts: int | str = "auto"
    layer_partition: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "layer_partition":
                self._check_partition(v)
            elif f.name == "redundant_experts":
                if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_EXPERTS):
                    raise CodesignError(f"parallel.redundant_experts: expected 'auto' or an integer from 0 to "
                                        f"{MAX_EXPERTS:,}, found {show(v)}")
            elif not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_CHIPS:
                raise CodesignError(f"parallel.{f.name}: expected an integer from 1 to {MAX_CHIPS:,}, found {show(v)}")

    def _check_partition(self, v: object) -> None:
        if v is None:
            return
        if not isinstance(v, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                        for n in v):
            raise CodesignError(f"parallel.layer_partition: expected a list of positive layer counts, one per "
                                f"pipeline stage, found {v!r}")
        if len(v) != self.pp:
            raise CodesignError(f"parallel.layer_partition: expected {self.pp} layer counts (one per pipeline "
                                f"stage, pp = {self.pp}), found {len(v)}: {list(v)}")
        object.__setattr__(self, "layer_partition", tuple(v))  # hashable: plans key the caches

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

    def redundant(self, num_experts: int) -> int:
        """Extra expert copies r for a model of `num_experts` routed experts ("auto" resolved:
        the fewest that make num_experts + r divisible by ep)."""
        if self.redundant_experts == "auto":
            return -num_experts % self.ep
        return int(self.redundant_experts)

    def expert_slots(self, num_experts: int) -> int:
        """Expert slots per EP rank, (E + r) / ep (0 when ep does not divide E + r)."""
        n = num_experts + self.redundant(num_experts)
        return n // self.ep if n % self.ep == 0 else 0

    def to_dict(self) -> dict[str, int | str | list[int] | None]:
        d = asdict(self)
        if self.layer_partition is not None:
            d["layer_partition"] = list(self.layer_partition)
        return d

    def __str__(self) -> str:
        parts = [f"{f.name}={_show(getattr(self, f.name))}" for f in fields(self)
                 if getattr(self, f.name) != f.default]
        return ", ".join(parts) or "single chip"


def _show(v: object) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, tuple) else str(v)


# ---- pipeline stages ------------------------------------------------------------------------------

# The named rule that splits decoder layers over pipeline stages when pp does not divide them.
STAGE_SPLIT_RULE = "vllm"


def partition_layers(num_layers: int, pp: int, partition: tuple[int, ...] | None = None) -> list[int]:
    """Decoder layers per pipeline stage (contiguous stages, first to last).

    With ``partition`` (``ParallelPlan.layer_partition``) the counts are as given. Otherwise every
    stage gets ``num_layers // pp`` layers and the ``r = num_layers % pp`` remaining layers go one
    each to the r stages just before the last one (stage pp - 2, then pp - 3, ...). This is vLLM's
    rule (`vllm.distributed.utils.get_pp_indices`, vllm-project/vllm, the default when
    ``VLLM_PP_LAYER_PARTITION`` is unset): the last stage is spared because it also runs the final
    norm and LM head, and while r <= pp - 2 the first stage is spared too because it holds the
    embedding, which lowers the most loaded stage's memory. Example: 94 layers (Qwen3-235B-A22B) on
    pp = 8 -> [11, 12, 12, 12, 12, 12, 12, 11]. Named ``STAGE_SPLIT_RULE = "vllm"``; override per
    plan with ``layer_partition``.
    """
    if partition is not None:
        if len(partition) != pp or sum(partition) != num_layers:
            raise CodesignError(f"parallel.layer_partition: expected {pp} layer counts summing to "
                                f"num_layers ({num_layers}), found {list(partition)}")
        return list(partition)
    if not 1 <= pp <= num_layers:
        raise CodesignError(f"parallel.pp: expected 1 to num_layers ({num_layers}) pipeline stages, found {pp}")
    counts = [num_layers // pp] * pp
    for i in range(num_layers % pp):
        counts[pp - 2 - i] += 1
    return counts


def _check_dtype(field: str, v: str) -> None:
    if not isinstance(v, str) or v not in BYTES_PER_ELEMENT:
        raise CodesignError(f"precision.{field}: expected one of {', '.join(BYTES_PER_ELEMENT)}, found {show(v)}")


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
    * ``expert_weights`` -- the routed experts' weights (`block: moe_experts`), where a checkpoint
      quantises them apart from the rest (gpt-oss: MXFP4 experts, BF16 attention, router and
      embeddings). Default (None): ``weights``. They are stored and streamed at this dtype (memory,
      expert weight reads); their GEMMs compute in the deployment's matrix dtype, so a dtype whose
      own matrix dtype would differ (experts wider than the other weights) is refused.
    """

    weights: str = "bf16"
    activations: str = "bf16"
    kv_cache: str = "bf16"
    compute: str | None = None
    state: str = "fp32"
    fp4_scale_block: int = 16
    expert_weights: str | None = None

    def __post_init__(self) -> None:
        for name in ("weights", "activations", "kv_cache", "state"):
            _check_dtype(name, getattr(self, name))
        if self.compute is not None:
            _check_dtype("compute", self.compute)
        b = self.fp4_scale_block
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 1024:
            raise CodesignError(f"precision.fp4_scale_block: expected an integer from 1 to 1,024, found {show(b)}")
        if self.expert_weights is not None:
            _check_dtype("expert_weights", self.expert_weights)
            own = Precision(self.expert_weights, self.activations, compute=self.compute).matrix_dtype
            if own != self.matrix_dtype:
                raise CodesignError(f"precision.expert_weights: {self.expert_weights} experts would compute in {own}, "
                                    f"the other GEMMs in {self.matrix_dtype}; experts with their own matrix dtype are "
                                    "not yet supported (set compute, or expert weights no wider than weights)")

    @property
    def routed_weights(self) -> str:
        """The routed experts' weight dtype (``expert_weights``, else ``weights``)."""
        return self.expert_weights or self.weights

    def for_experts(self) -> "Precision":
        """This precision with the routed experts' weight dtype as ``weights``: what the expert
        mapping scales their weight bytes with."""
        if self.expert_weights is None:
            return self
        return Precision(self.expert_weights, self.activations, self.kv_cache,
                         self.compute if self.compute is not None else self.matrix_dtype, self.state,
                         self.fp4_scale_block)

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
        d = asdict(self)
        if d["expert_weights"] is None:
            del d["expert_weights"]  # results written before the field stay the same
        return d


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
    if plan.pp > config.num_layers:
        return f"pp ({plan.pp}) exceeds num_layers ({config.num_layers}): a pipeline stage would hold no layer"
    if plan.layer_partition is not None and sum(plan.layer_partition) != config.num_layers:
        return (f"layer_partition {list(plan.layer_partition)} sums to {sum(plan.layer_partition)} layers, "
                f"the model has num_layers = {config.num_layers}")
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
        E, r = moe.num_experts, plan.redundant(moe.num_experts)
        if (E + r) % plan.ep:
            if r == 0:
                return (f"moe.num_experts ({E}) is not divisible by ep ({plan.ep}) and redundant_experts is 0 "
                        f"('auto' would add {-E % plan.ep} copies)")
            return (f"moe.num_experts + redundant_experts ({E} + {r} = {E + r}) is not divisible by "
                    f"ep ({plan.ep})")
        if r > E * (plan.ep - 1):
            return (f"redundant_experts ({r}) exceeds num_experts x (ep - 1) = {E * (plan.ep - 1)}: "
                    "a rank would hold two copies of one expert")
        if moe.intermediate_size % plan.moe_tp:
            return (f"moe.intermediate_size ({moe.intermediate_size}) is not divisible by the expert "
                    f"tensor-parallel width tp*attention_dp/ep = {plan.moe_tp}")
        if moe.shared_expert_intermediate_size and moe.shared_expert_intermediate_size % tp:
            return (f"moe.shared_expert_intermediate_size ({moe.shared_expert_intermediate_size}) "
                    f"is not divisible by tp ({tp})")
    elif plan.ep > 1:
        return f"ep ({plan.ep}) > 1 but {config.name} has no MoE layers"
    elif plan.redundant_experts not in ("auto", 0):
        return f"redundant_experts ({plan.redundant_experts}) > 0 but {config.name} has no MoE layers"
    return None


# ---- search space --------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    """Divisors of n in increasing order, in O(sqrt n)."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


# Candidate search: the largest share of redundant expert slots a candidate may add, r / E
# (DeepSeek's decode unit adds 32 to 256 = 12.5%; twice that is still a plausible EPLB budget).
MAX_CANDIDATE_REDUNDANCY = 0.25


def candidate_plans(config: ModelConfig, chips: int, max_tp: int | None = None, max_pp: int | None = None, *,
                    hw: "HardwareSpec | None" = None, precision: Precision | None = None,
                    max_redundancy: float = MAX_CANDIDATE_REDUNDANCY) -> list[ParallelPlan]:
    """Valid plans for `parallel: auto`, in a deterministic order (fewest pipeline stages, then
    widest tp, then fewest attention-DP groups). Only enumerates; the simulator evaluates.

    Pruning rules (named, so that the space stays around twenty plans even at 144+ chips):

    * ``max_tp`` (pass the scale-up domain size) and ``max_pp`` bound tp and pp.
    * **Domain alignment** (when ``max_tp`` is given): a stage of tp x attention_dp chips either
      divides the domain size or is a whole number of domains, so no EP / TP group straddles a
      domain boundary partly.
    * **Pipeline last**: pp > 1 only with the widest valid tp and no attention-DP (TP fills the
      scale-up domain first and pipeline stages span domains: Narayanan et al., SC'21, "Efficient
      large-scale language model training on GPU clusters using Megatron-LM", takeaway 1).
    * dense models: attention_dp = ep = 1.
    * MoE models: attention_dp > 1 only with full expert parallelism (ep = tp x attention_dp, the
      DP-attention + EP layout) and then tp in {1, widest valid}; without attention-DP, ep in
      {1, tp} (TP experts or one expert group per chip).
    * **Redundant experts**: ep <= num_experts, and the copies ``"auto"`` adds are at most
      ``max_redundancy`` x num_experts (default 0.25).
    * **Weights fit** (when ``hw`` is given): plans whose chips cannot hold the weights and one
      sequence (``memory_per_chip`` at batch 1, context 1, ``precision`` or bf16) are dropped; they
      would be infeasible rows anyway; and pp > 1 only when the same (tp, ep) does not fit with
      fewer stages (deeper pipelines then only add stage hops).
    """
    fits: Callable[[ParallelPlan], bool] | None = None
    if hw is not None:
        from codesign.mapping.memory import memory_per_chip  # memory imports this module

        prec = precision or Precision()

        def fits(p: ParallelPlan) -> bool:
            return memory_per_chip(config, None, hw, p, prec, 1, 1).fits

    def aligned(stage: int) -> bool:
        return max_tp is None or max_tp % stage == 0 or stage % max_tp == 0

    def experts_ok(ep: int) -> bool:
        if not config.is_moe or ep == 1:
            return True
        E = config.moe.num_experts
        return ep <= E and (-E % ep) <= max_redundancy * E

    # tp widths valid for the attention / dense parts (experts checked per plan below: with ep = tp
    # they are not tensor-split, so their intermediate size must not veto a tp width here)
    tps = [tp for tp in sorted(_divisors(chips), reverse=True)
           if (max_tp is None or tp <= max_tp)
           and check_plan(config, ParallelPlan(tp=tp, ep=tp if config.is_moe else 1), tp) is None]
    widest = tps[0] if tps else 1
    fitted: set[tuple[int, int, int]] = set()  # (tp, ep, attention_dp) that fit at fewer stages
    out: list[ParallelPlan] = []
    for pp in _divisors(chips):
        if (max_pp is not None and pp > max_pp) or pp > config.num_layers:
            continue  # pp need not divide the layers: stages may be uneven (partition_layers)
        for tp in tps:
            if (chips // pp) % tp or (pp > 1 and tp != widest):
                continue
            rest = chips // (pp * tp)
            adps = [a for a in _divisors(rest) if a == 1 or (config.is_moe and pp == 1 and tp in (1, widest))]
            for adp in adps:
                stage = tp * adp
                if not aligned(stage):
                    continue
                eps = [stage] if adp > 1 else sorted({1, stage}) if config.is_moe else [1]
                for ep in eps:
                    if not experts_ok(ep):
                        continue
                    plan = ParallelPlan(tp=tp, ep=ep, pp=pp, dp=rest // adp, attention_dp=adp)
                    if check_plan(config, plan, chips) is not None:
                        continue
                    if fits is not None:
                        if not fits(plan) or (pp > 1 and (tp, ep, adp) in fitted):
                            continue
                        fitted.add((tp, ep, adp))
                    out.append(plan)
    return out
