"""`mapping.kv_pool: vllm`: vLLM V1's start-up KV-pool rule against hand calculations.

Every expected figure below is worked out from the model's published shapes and the rule as
vLLM v0.11.0 / v0.17.1 state it (gpu_worker.py `determine_available_memory`, gpu_model_runner.py
`profile_run`; docs/cost-model.md "vLLM's KV pool"), not from the code under test.
"""

from __future__ import annotations

import pytest

from codesign.errors import CodesignError
from codesign.hw import load_hw
from codesign.mapping import ParallelPlan, Precision
from codesign.mapping.kv_pool import vllm_profile
from codesign.mapping.options import MappingOptions
from codesign.models import load_model
from codesign.scenario import load_scenarios
from codesign.sim.serving.kv import kv_capacity
from codesign.sim.stepper import Stepper

GiB = 2**30
H100 = 81559 * 2**20  # hw_specs/h100.yaml HBM capacity (nvidia-smi memory.total)
BF16 = Precision(weights="bf16", activations="bf16", kv_cache="bf16")


def stepper(model: str, tp: int, **options) -> Stepper:
    return Stepper(load_hw("h100"), load_model(model), ParallelPlan(tp=tp), BF16, options=MappingOptions(**options))


def qwen3_32b_weights() -> float:
    """Qwen3-32B's BF16 weights from its config.json shapes: H 5120, 64 layers, 64 query / 8 KV heads
    of 128, intermediate 25600, vocabulary 151936, untied head, q/k norms."""
    H, d, I, V = 5120, 128, 25600, 151936
    layer = H * 64 * d + 2 * H * 8 * d + 64 * d * H + 3 * H * I + 2 * H + 2 * d
    return 2.0 * (2 * V * H + 64 * layer + H)


def test_profile_of_qwen3_32b_by_hand():
    cfg = load_model("qwen3-32b")
    prof = vllm_profile(cfg, ParallelPlan(tp=1), 8192, 1024, 14.0)
    # forward: residual + layer input (2 H) and the MLP's gate_up (2 I) + SiluAndMul output (I)
    assert prof.forward == pytest.approx(8192 * 2 * (2 * 5120 + 3 * 25600))
    # sampler: hidden states held (8192 + 2 x 1024 rows of H) + 14 bytes x 1024 x 151936 logits
    assert prof.sampler == pytest.approx((8192 + 2048) * 5120 * 2 + 1024 * 151936 * 14)
    assert prof.peak == prof.sampler


def test_qwen3_32b_on_one_h100_would_not_start():
    """0.9 x 79.65 GiB - 61.02 GiB of weights - 2.13 GiB profiled < 10.00 GiB for one 40,960-token
    sequence (64 layers x 8 KV heads x 128 x 2 x 2 bytes = 256 KiB a token)."""
    peak = (8192 + 2048) * 5120 * 2 + 1024 * 151936 * 14
    pool = 0.9 * H100 - qwen3_32b_weights() - peak
    assert pool / GiB == pytest.approx(8.53, abs=0.01)
    with pytest.raises(CodesignError, match=r"one max_model_len \(40960\) sequence needs 10\.00 GiB of KV cache a "
                                            r"chip, larger than the pool \(8\.53 GiB\)"):
        kv_capacity(stepper("qwen3-32b", 1, kv_pool="vllm"), 16, 8192, max_num_seqs=1024)
    # a 32,768-token max_model_len (8.00 GiB) starts, with exactly that pool
    cap = kv_capacity(stepper("qwen3-32b", 1, kv_pool="vllm", max_model_len=32768), 16, 8192, max_num_seqs=1024)
    assert cap.free_bytes == pytest.approx(pool, rel=1e-9)
    assert cap.memory.activations == pytest.approx(peak)


def test_qwen3_235b_tp8_by_hand():
    """TP8: the fused-MoE caches set the forward (top_k 8 x (max(2 x 1536/8, 4096) + 1536/8) + 4096
    elements a token, above attention's 1024 + 2 x 128 + 1024), the sampler the peak; one
    262,144-token sequence (94 layers x 1 KV head a rank x 128 x 2 x 2 bytes) fits."""
    st = stepper("qwen3-235b-a22b", 8, kv_pool="vllm")
    prof = vllm_profile(st.config, st.plan, 8192, 1024, 14.0)
    assert prof.forward == pytest.approx(8192 * 2 * (2 * 4096 + 8 * (4096 + 192) + 4096))
    sampler = (8192 + 2048) * 4096 * 2 + 1024 * 151936 * 14
    assert prof.sampler == pytest.approx(sampler)
    cap = kv_capacity(st, 16, 8192, max_num_seqs=1024)
    assert cap.free_bytes == pytest.approx(0.9 * H100 - cap.memory.weights - sampler, rel=1e-9)
    assert cap.seq_footprint(262144) == pytest.approx(262144 * 94 * 128 * 2 * 2)
    assert cap.free_bytes > cap.seq_footprint(262144)
    # against the default rule: the 5% reserve and the simulator's own activations (20.27 GiB)
    base = kv_capacity(stepper("qwen3-235b-a22b", 8), 16, 8192, max_num_seqs=1024)
    assert base.free_bytes / GiB == pytest.approx(20.27, abs=0.01)
    assert cap.free_bytes / GiB == pytest.approx(14.76, abs=0.01)


def test_options_act_by_their_amounts():
    kw = {"kv_pool": "vllm"}
    base = kv_capacity(stepper("qwen3-14b", 1, **kw), 16, 8192, max_num_seqs=1024).free_bytes
    util = kv_capacity(stepper("qwen3-14b", 1, gpu_memory_utilization=0.8, **kw), 16, 8192, max_num_seqs=1024).free_bytes
    assert base - util == pytest.approx(0.1 * H100, rel=1e-9)
    nt = kv_capacity(stepper("qwen3-14b", 1, kv_pool_non_torch_gib=0.5, **kw), 16, 8192, max_num_seqs=1024).free_bytes
    assert base - nt == pytest.approx(0.5 * GiB, rel=1e-9)
    sort = kv_capacity(stepper("qwen3-14b", 1, sampler_bytes_per_logit=28.0, **kw), 16, 8192, max_num_seqs=1024).free_bytes
    assert base - sort == pytest.approx(1024 * 151936 * 14, rel=1e-9)  # the sampler is the peak at both
    # the profiling batch is the engine's: 256 sequences leave more than 1024
    fewer = kv_capacity(stepper("qwen3-14b", 1, **kw), 16, 8192, max_num_seqs=256).free_bytes
    assert fewer > base


def test_default_rule_unchanged():
    """`reserve`: capacity - weights - the simulator's activations - 5% of HBM, as before."""
    cap = kv_capacity(stepper("qwen3-14b", 1), 16, 8192, max_num_seqs=1024)
    m = cap.memory
    assert m.reserve == pytest.approx(0.05 * H100)
    assert cap.free_bytes == pytest.approx(H100 - m.weights - m.activations - 0.05 * H100)


def _scenario(tmp_path, mapping: str, mode: str = "server") -> str:
    p = tmp_path / "s.yaml"
    requests = ", requests: 4" if mode == "server" else ""
    p.write_text(f"name: s\nhardware: h100\nchips: 1\nmodel: qwen3-14b\nparallel: {{tp: 1}}\n"
                 f"workload: {{mode: {mode}, input_tokens: 128, output_tokens: 4{requests}}}\nmapping: {mapping}\n")
    return str(p)


@pytest.mark.parametrize("mapping, message", [
    ("{gpu_memory_utilization: 0.8}", r"s\.yaml.*gpu_memory_utilization acts only with kv_pool 'vllm'"),
    ("{max_model_len: 1000}", r"s\.yaml.*max_model_len acts only with kv_pool 'vllm'"),
    ("{kv_pool: vllm, reserve_fraction: 0.1}", r"s\.yaml.*reserve_fraction acts only with kv_pool 'reserve'"),
    ("{kv_pool: vllm, gpu_memory_utilization: 1.5}", r"s\.yaml.*gpu_memory_utilization.*less than or equal to 1"),
    ("{kv_pool: sglang}", r"s\.yaml.*kv_pool.*'reserve' or 'vllm'"),
])
def test_bad_pool_options_refused(tmp_path, mapping, message):
    with pytest.raises(CodesignError, match=message):
        load_scenarios(_scenario(tmp_path, mapping))


def test_vllm_pool_refused_outside_server_mode(tmp_path):
    from codesign.sim.simulate import simulate_scenario

    (s,) = load_scenarios(_scenario(tmp_path, "{kv_pool: vllm}", mode="decode"))
    with pytest.raises(CodesignError, match=r"mapping\.kv_pool: 'vllm' is not yet supported in mode 'decode'"):
        simulate_scenario(s)


def test_validation_rows_with_vllms_pool_start_and_fit():
    """Every public validation row that sets `kv_pool: vllm` passes vLLM's start check at its own
    scheduler values (the page ran it), and the Qwen3-32B rows, which would not, keep `reserve`."""
    from pathlib import Path

    from codesign.point import Point
    from codesign.sim.serving.config import scheduler_config

    root = Path(__file__).resolve().parents[3]
    rows = load_scenarios(root / "benchmarks" / "validation" / "public.yaml")
    with_vllm = [s for s in rows if s.mapping.get("kv_pool") == "vllm"]
    assert {s.name.split("-")[0] for s in with_vllm} == {"vllm"} and len(with_vllm) == 25
    for s in with_vllm:
        p = Point.from_scenario(s)
        st = Stepper(p.hw, p.model, ParallelPlan.from_dict(s.parallel), Precision.from_dict(s.precision),
                     options=p.mapping)
        sched = scheduler_config(s.workload.scheduler, hw=p.hw)
        cap = kv_capacity(st, sched.block_size, sched.max_num_batched_tokens, max_num_seqs=sched.max_num_seqs)
        longest = s.workload.input_tokens + s.workload.output_tokens
        assert cap.free_bytes / cap.replicas > cap.seq_footprint(longest), s.name
    assert not any(s.mapping.get("kv_pool") for s in rows if "qwen3-32b" in s.name)


def test_start_refusal_names_the_row(tmp_path):
    from codesign.sim.simulate import simulate_scenario

    p = tmp_path / "q.yaml"
    p.write_text("name: q32\nhardware: h100\nchips: 1\nmodel: qwen3-32b\nparallel: {tp: 1}\nmapping: {kv_pool: vllm}\n"
                 "precision: {weights: bf16, activations: bf16, kv_cache: bf16}\n"
                 "workload: {mode: server, input_tokens: 128, output_tokens: 4, requests: 4}\n")
    (s,) = load_scenarios(str(p))
    with pytest.raises(CodesignError, match=r"^q32: mapping\.kv_pool: vllm: vLLM would refuse to start: one "
                                            r"max_model_len \(40960\) sequence needs 10\.00 GiB"):
        simulate_scenario(s)


def _block_live_peak(g, layer: int, block: str) -> float:
    """Peak bytes of activation outputs alive at once inside one block of a traced graph: an op's
    output lives from the op until its last consumer ran (nodes run in trace order)."""
    nodes = sorted(n for n, d in g.nodes(data=True) if d["op"].layer == layer and d["op"].block == block)
    peak = 0.0
    for i in nodes:
        live = sum(g.nodes[j]["op"].bytes_written["activation"] for j in nodes
                   if j <= i and (j == i or any(k >= i for k in g.successors(j))))
        peak = max(peak, live)
    return peak


def test_mlp_term_against_the_traced_graphs_liveness():
    """The forward peak's dense-MLP term (vLLM's gate_up_proj output 2 I plus SiluAndMul's I, a
    token) equals the peak of live tensors in the traced Qwen3-32B MLP at 8,192 tokens (gate, up,
    silu(gate) and their product: three T x I tensors at once), which runs the projections apart."""
    from codesign.graph import trace
    from codesign.graph.shape import StepShape
    from codesign.mapping.kv_pool import ACTIVATION_BYTES, _block_widths

    cfg = load_model("qwen3-32b")
    g = trace(cfg, shape=StepShape.prefill(1, 8192))
    mlp = 3 * 25600
    assert mlp in _block_widths(cfg, ParallelPlan(tp=1), 8192)
    assert _block_live_peak(g, 3, "mlp") == pytest.approx(8192 * ACTIVATION_BYTES * mlp)
