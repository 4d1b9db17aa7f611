"""Recording torch's dispatcher: one model segment on the meta device -> a list of ops with edges.

`record(fn, inputs, classes, names)` runs `fn` under `Recorder`, a `TorchDispatchMode`. Every aten
op (and each of codesign's fused kernels, `codesign::attention` and `codesign::moe_experts`) that
reaches the dispatcher becomes one `Op`:

* FLOPs of matrix ops come from torch's own formulas (`torch.utils.flop_counter.flop_registry`);
  element-wise ops count one FLOP per output element (input element for reductions); the fused
  attention kernel counts its causal/windowed (query, key) pairs exactly; grouped experts count
  6*H*I per routed token from the router model's per-expert counts.
* Bytes read and written are split by class -- `weight`, `activation`, `kv_cache`, `state` -- by
  tagging the segment's parameters and cache buffers before the run and propagating the tag
  through views (a slice of the KV cache is KV cache). View ops move no data and are not recorded.
* Edges are data dependencies: the op that last produced (or wrote into) a tensor's storage.
* The module path and the `block` tag of the innermost enclosing module name each op.
* A loop written with `kernels.chunk_loop(n)` runs once; its ops carry `repeat = n` and totals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from codesign.graph.op import BYTE_CLASSES, Op
from codesign.graph.segment import INPUT, Segment
from codesign.models import kernels


_GEMMS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_mm"}
# Ops that only reinterpret metadata (no data movement) although their schema is not a view.
_FREE = {
    "aten._unsafe_view",
    "aten.detach",
    "aten.alias",
    "aten.lift_fresh",
    "aten.lift_fresh_copy",
    "aten._reshape_alias",
    "prim.device",
    "aten.sym_size",
    "aten.sym_stride",
    "aten.sym_numel",
    "aten.sym_storage_offset",
}
# Pure data movement: run by copy engines / as memory-bound kernels.
_MEMORY = {
    "aten.copy_",
    "aten._to_copy",
    "aten.clone",
    "aten.index_copy_",
    "aten.index_copy",
    "aten.index_select",
    "aten.embedding",
    "aten.cat",
    "aten.stack",
    "aten.slice_scatter",
    "aten.index_put_",
    "aten.index_put",
    "aten.index",
    "aten.gather",
    "aten.scatter",
    "aten.scatter_",
    "aten.constant_pad_nd",
    "aten.repeat",
    "aten.repeat_interleave",
    "aten.flip",
    "aten.roll",
}
_FACTORIES = {"aten.zeros", "aten.empty", "aten.full", "aten.ones", "aten.arange", "aten.new_zeros", "aten.new_empty",
              "aten.new_full", "aten.new_ones", "aten.zeros_like", "aten.empty_like", "aten.ones_like", "aten.full_like",
              "aten.scalar_tensor", "aten.empty_strided", "aten.eye", "aten.tril", "aten.triu", "aten.randn", "aten.rand"}
# Ops that write only their source's elements into a larger destination.
_INDEXED_WRITES = {"aten.index_copy_", "aten.index_put_", "aten.scatter_", "aten.slice_scatter"}
# Gathers read only the rows they gather from their first input (an embedding lookup reads B*T rows
# of the table, not the table).
_GATHERS = {"aten.embedding", "aten.index_select", "aten.index", "aten.gather"}
_REDUCTIONS = {"aten.sum", "aten.mean", "aten.amax", "aten.max", "aten.var_mean", "aten.var", "aten.norm",
               "aten.linalg_vector_norm", "aten.cumsum", "aten.logsumexp", "aten.prod", "aten.min", "aten.amin"}


def nbytes(t: torch.Tensor) -> float:
    return float(t.numel() * t.element_size())


class Recorder(TorchDispatchMode):
    """A dispatch mode that records ops (see module docstring). Use through `record()`."""

    def __init__(self, classes: dict[int, str], module_names: dict[int, tuple[str, str | None]], phase: str):
        super().__init__()
        self.phase = phase
        self.ops: list[Op] = []
        self.edges: list[tuple[int, int]] = []
        self.entries: set[int] = set()
        self._class: dict[int, str] = dict(classes)  # id(tensor) -> byte class
        self._root: dict[int, int] = {}  # id(view) -> id(root storage tensor)
        self._producer: dict[int, int] = {}  # id(root) -> op index that last wrote it
        self._keep: list[torch.Tensor] = []  # keep ids stable for the whole recording
        self._module_names = module_names
        self._stack: list[tuple[str, str | None]] = []
        self._repeat = 1

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Recording never runs under torch.compile. Without this, torch wraps __torch_dispatch__ in a
        # guard whose first call imports its whole compiler stack (over a second) for nothing.
        return False

    # ---- module context (forward hooks) --------------------------------------------------------
    def push(self, module: torch.nn.Module) -> None:
        entry = self._module_names.get(id(module))
        if entry is not None:
            self._stack.append(entry)

    def pop(self, module: torch.nn.Module) -> None:
        if id(module) in self._module_names and self._stack:
            self._stack.pop()

    def _where(self) -> tuple[str, str]:
        name = self._stack[-1][0] if self._stack else ""
        block = next((b for _, b in reversed(self._stack) if b), "other")
        return name, block

    @contextlib.contextmanager
    def repeated(self, n: int):
        prev = self._repeat
        self._repeat = prev * n
        try:
            yield
        finally:
            self._repeat = prev

    # ---- tensor bookkeeping --------------------------------------------------------------------
    def _rootid(self, t: torch.Tensor) -> int:
        return self._root.get(id(t), id(t))

    def cls(self, t: torch.Tensor) -> str:
        return self._class.get(self._rootid(t), "activation")

    def mark_input(self, t: torch.Tensor) -> None:
        self._keep.append(t)
        self._producer[id(t)] = INPUT

    def producer(self, t: torch.Tensor) -> int | None:
        return self._producer.get(self._rootid(t))

    # ---- the dispatch hook ---------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = str(func._overloadpacket) if hasattr(func, "_overloadpacket") else str(func)
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        flat_out = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        self._keep.extend(flat_out)

        if func.is_view or packet in _FREE:
            # Metadata only: the outputs share the first input's storage, class and producer.
            if flat_in:
                root = self._rootid(flat_in[0])
                for o in flat_out:
                    self._root[id(o)] = root
            return out

        if packet == "aten._to_copy" and flat_in and self.cls(flat_in[0]) == "weight":
            # A dtype cast of a weight (a router or norm weight used in fp32): a deployment stores the
            # weight in the dtype it computes with, so the cast moves nothing and the result is weight.
            for o in flat_out:
                self._class[id(o)] = "weight"
            return out

        self._record(func, packet, args, kwargs, out, flat_in, flat_out)
        return out

    def _record(self, func, packet, args, kwargs, out, flat_in, flat_out) -> None:
        name, block = self._where()
        schema_args = func._schema.arguments
        mutates_self = bool(schema_args) and schema_args[0].alias_info is not None and schema_args[0].alias_info.is_write
        rd = {c: 0.0 for c in BYTE_CLASSES}
        wr = {c: 0.0 for c in BYTE_CLASSES}
        flops = 0.0
        gemm = None
        tokens_per_expert = None
        expert_bytes = 0.0
        expert_fpt = 0.0

        if packet == "aten.linalg_solve_triangular":
            # Triangular solve A X = B with A (.., n, n), B (.., n, k): n^2 k multiply-adds per matrix
            # (n^2 k FLOPs: half of a dense n x n by n x k product), as used by GatedDeltaNet's chunk form.
            kind = "gemm"
            a, b = args[0], args[1]
            n, k = a.shape[-1], b.shape[-1]
            batch = max(1, b.numel() // (n * k))
            flops = float(batch * n * n * k)
            gemm = (batch, n, k, n)
            for t in flat_in:
                rd[self.cls(t)] += nbytes(t)
        elif packet == "codesign.gated_delta_rule_step":
            # Fused recurrent GatedDeltaNet step, per head and token: decay (dk dv), k^T S (2 dk dv),
            # rank-1 update (2 dk dv), q^T S (2 dk dv) = 7 dk dv FLOPs; the state is read and written once.
            kind = "vector"
            q, v, state = args[0], args[2], args[5]
            B, T, Hv, dv = v.shape
            dk = q.shape[-1]
            flops = float(B * T * Hv * 7 * dk * dv)
            for t in flat_in:
                rd[self.cls(t)] += nbytes(t)
            wr["state"] += nbytes(state)
            wr["activation"] += sum(nbytes(o) for o in flat_out)
            mutates_self = False
            self._producer[self._rootid(state)] = len(self.ops)
        elif packet in _GEMMS:
            kind = "gemm"
            flops = float(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
            a, b = (args[1], args[2]) if packet in {"aten.addmm", "aten.baddbmm"} else (args[0], args[1])
            if a.dim() == 3:
                gemm = (a.shape[0], a.shape[1], b.shape[2], a.shape[2])
            else:
                gemm = (1, a.shape[0], b.shape[1], a.shape[1])
            for t in flat_in:
                rd[self.cls(t)] += nbytes(t)
        elif packet == "codesign.attention":
            kind = "attention"
            q, k, v = args[0], args[1], args[2]
            q_offset, window = int(args[3]), int(args[4])
            B, Hq, T, D = q.shape
            S = k.shape[2]
            pairs = kernels.attention_pairs(T, q_offset, window)
            flops = 2.0 * B * Hq * pairs * (D + v.shape[-1])
            touched = min(S, window + T - 1) if window > 0 else S  # a windowed kernel reads the window only
            rd[self.cls(q)] += nbytes(q)
            rd[self.cls(k)] += nbytes(k) * touched / S
            if self._rootid(v) != self._rootid(k):  # MLA: v is a slice of the same latent rows as k
                rd[self.cls(v)] += nbytes(v) * touched / S
            for t in flat_in[3:]:
                rd[self.cls(t)] += nbytes(t)
        elif packet == "codesign.moe_experts":
            kind = "grouped_gemm"
            x, topk_ids, w_gu, w_d = args[0], args[1], args[3], args[4]
            b_gu = args[5] if len(args) > 5 else kwargs.get("b_gate_up")
            b_d = args[6] if len(args) > 6 else kwargs.get("b_down")
            N, k = topk_ids.shape
            E, two_i, H = w_gu.shape
            # Which experts get how many tokens is not knowable on the meta device: the counts (and
            # with them the FLOPs and expert weight bytes) are filled per layer from a router model
            # when the segment is placed in the graph (codesign.graph.tracing).
            expert_bytes = (nbytes(w_gu) + nbytes(w_d)) / E
            for bias in (b_gu, b_d):
                if isinstance(bias, torch.Tensor):
                    expert_bytes += nbytes(bias) / E
            expert_fpt = 2.0 * H * two_i + 2.0 * (two_i // 2) * H
            routed = float(N * k)
            flops = routed * expert_fpt
            rd[self.cls(x)] += routed * H * x.element_size()  # each routed slot gathers its token
            rd["activation"] += nbytes(args[1]) + nbytes(args[2])
        else:
            kind = "memory" if (packet in _MEMORY or packet in _FACTORIES) else "vector"
            if packet in _GATHERS and flat_in and flat_out:
                rd[self.cls(flat_in[0])] += nbytes(flat_out[0])
                for t in flat_in[1:]:
                    rd[self.cls(t)] += nbytes(t)
            elif packet not in _FACTORIES:
                srcs = flat_in[1:] if (mutates_self and packet in _INDEXED_WRITES | {"aten.copy_"}) else flat_in
                for t in srcs:
                    rd[self.cls(t)] += nbytes(t)
            if kind == "vector":
                base = flat_in[0] if (packet in _REDUCTIONS and flat_in) else (flat_out[0] if flat_out else None)
                flops = float(base.numel()) if base is not None and base.is_floating_point() else 0.0

        # Writes: into the mutated tensor's class, else new activations.
        if packet == "codesign.gated_delta_rule_step":
            pass  # counted above
        elif mutates_self and flat_in:
            dst = flat_in[0]
            if packet in _INDEXED_WRITES:
                src = next((t for t in flat_in[1:] if t.is_floating_point()), None)
                wbytes = nbytes(src) if src is not None else 0.0
            else:
                wbytes = nbytes(dst)
            wr[self.cls(dst)] += wbytes
        else:
            for o in flat_out:
                wr["activation"] += nbytes(o)

        if self._repeat > 1:
            flops *= self._repeat
            rd = {c: v * self._repeat for c, v in rd.items()}
            wr = {c: v * self._repeat for c, v in wr.items()}

        idx = len(self.ops)
        dtype = str(flat_out[0].dtype).replace("torch.", "") if flat_out else (
            str(flat_in[0].dtype).replace("torch.", "") if flat_in else "")
        self.ops.append(Op(
            name=f"{name}/{packet.split('.', 1)[-1]}" if name else packet.split(".", 1)[-1],
            target=str(func),
            kind=kind,
            block=block,
            layer=0,
            layer_type="",
            phase=self.phase,
            in_shapes=tuple(tuple(t.shape) for t in flat_in),
            out_shapes=tuple(tuple(t.shape) for t in flat_out),
            dtype=dtype,
            flops=flops,
            bytes_read=rd,
            bytes_written=wr,
            repeat=self._repeat,
            gemm=gemm,
            tokens_per_expert=tokens_per_expert,
            expert_weight_bytes=expert_bytes,
            expert_flops_per_token=expert_fpt,
        ))

        seen = set()
        for t in flat_in:
            p = self.producer(t)
            if p is None or p in seen:
                continue
            seen.add(p)
            if p == INPUT:
                self.entries.add(idx)
            elif p != idx:
                self.edges.append((p, idx))
        # This op is now the producer of what it wrote.
        if mutates_self and flat_in:
            self._producer[self._rootid(flat_in[0])] = idx
        for o in flat_out:
            if id(o) not in self._root or not mutates_self:
                self._producer[self._rootid(o)] = idx


def record(
    fn: Callable[[], torch.Tensor],
    modules: torch.nn.Module,
    inputs: list[torch.Tensor],
    classes: dict[int, str],
    phase: str,
) -> Segment:
    """Run `fn()` under a Recorder. `modules` supplies names and block tags; `inputs` are the
    segment's inputs (their consumers become entry points); `classes` tags tensors by id."""
    names: dict[int, tuple[str, str | None]] = {}
    for qual, m in modules.named_modules():
        names[id(m)] = (qual, getattr(m, "block", None))
    rec = Recorder(classes, names, phase)
    for t in inputs:
        rec.mark_input(t)
    pre = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: rec.push(m))
    post = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: rec.pop(m))
    try:
        with kernels.loop_handler(rec.repeated), rec:
            result = fn()
    finally:
        pre.remove()
        post.remove()
    out = result[0] if isinstance(result, (tuple, list)) else result
    exit_ = rec.producer(out)
    return Segment(ops=rec.ops, edges=rec.edges, entries=sorted(rec.entries),
                   exit=INPUT if exit_ is None else exit_)
