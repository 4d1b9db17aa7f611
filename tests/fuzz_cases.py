"""Fuzz cases for every input loader and for `simulate`, shared by the property tests
(tests/test_fuzz_inputs.py, driven by hypothesis) and the benchmark (benchmarks/fuzz_bench.py,
seeded `random.Random`, >= 100,000 cases).

A case starts from a shipped input (every hardware spec, model config, the example and validation
scenarios, public HF config.json key sets) and applies one to three mutations: drop a field, replace
a value by one of a random type (None, booleans, small/huge/negative integers, NaN/inf/denormal
floats, quantity strings with wrong units or absurd magnitudes, random unicode, nested lists and
mappings), scale a number by 0, -1, 1e9 or 1e-9, add an unknown key, or replace the whole document.
A few cases are raw bytes or text written as the file itself (Latin-1, binary, NUL bytes, deep
nesting, random unicode).

The properties (`run_case`): a loader either returns its model or raises `CodesignError`; nothing
else escapes, nothing takes longer than the case's time limit; `simulate` rows carry no NaN or
infinity, and a feasible row has positive throughput and step times.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from codesign import spec_files
from codesign.errors import CodesignError

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("hw", "model", "scenario", "hf", "file")

# CodesignErrors raised by the row guard (`codesign.results.check_row`): NaN rows, counted apart.
GUARD_MARK = "outside the range the cost model covers"


# ---- seeds ---------------------------------------------------------------------------------------

def _yaml_docs(folder: str) -> list[Any]:
    return [spec_files.read_yaml(p) for p in sorted((ROOT / folder).glob("*.yaml"))]


def _hf_seeds() -> list[dict]:
    from tests.models.test_configs import HF_FILES  # key subsets of public config.json files

    return [copy.deepcopy(v) for v in HF_FILES.values()]


_SEEDS: dict[str, list[Any]] = {}


def seeds(kind: str) -> list[Any]:
    """The unmutated documents of one kind (read once)."""
    if kind not in _SEEDS:
        if kind == "hw":
            _SEEDS[kind] = _yaml_docs("hw_specs")
        elif kind == "model":
            _SEEDS[kind] = _yaml_docs("model_graphs")
        elif kind == "scenario":
            docs = spec_files.read_yaml(ROOT / "examples" / "scenario.yaml")
            docs = (docs if isinstance(docs, list) else [docs]) + spec_files.read_yaml(
                ROOT / "benchmarks" / "validation" / "public.yaml")
            # the loader also accepts one mapping: seed with single scenarios and short lists
            _SEEDS[kind] = [d for d in docs] + [docs[:2], docs[2:5]]
        elif kind == "hf":
            _SEEDS[kind] = _hf_seeds()
        else:
            raise KeyError(kind)
    return _SEEDS[kind]


# ---- random values -------------------------------------------------------------------------------

_QUANTITY_TEXT = ["4.8 TB/s", "141 GB", "989 TFLOPS", "2 us", "700 W", "1e400 TB/s", "-1 GB", "0 B/s",
                  ".nan GB", "inf TFLOPS", "3 GHz", "4.8 TB", "141 GB/s", "5", "1e-300 s", "1 EB/s",
                  "2 ZB", "50 MiB", "1e30 us", "nan", "inf", "-inf", "", " ", "1e308 PFLOPS", "12 kW"]
_TOKEN_TEXT = ["32k", "256K", "1M", "inf", "1e400", "-8", "0", "0.5k", ",", "1e12", "nan", "4096.0", "k"]
_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e-300, 1e308, 1.7976931348623157e308,
           -1.0, 0.5, 1.0, 2.0, 1e9, 1e-9, 1e30]
_INTS = [0, 1, -1, 2, 3, 7, 8, 64, -8, 1 << 31, 1 << 63, 10**9, 10**12, 10**30, -(10**18), 10**400]


def random_text(rng: random.Random) -> str:
    """Random unicode (any plane, control characters included; no lone surrogates)."""
    n = rng.choice([0, 1, 3, 10, 40])
    out = []
    for _ in range(n):
        c = rng.choice([rng.randrange(0, 128), rng.randrange(128, 0xD800), rng.randrange(0xE000, 0x110000)])
        out.append(chr(c))
    return "".join(out)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A value of a random type, biased towards the ones that break parsers."""
    k = rng.randrange(12)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice(_INTS)
    if k == 3:
        return rng.randint(-1000, 100_000)
    if k == 4:
        return rng.choice(_FLOATS)
    if k == 5:
        return rng.uniform(-1e6, 1e6) * 10.0 ** rng.randint(-12, 12)
    if k == 6:
        return rng.choice(_QUANTITY_TEXT)
    if k == 7:
        return rng.choice(_TOKEN_TEXT)
    if k == 8:
        return random_text(rng)
    if k == 9 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 5]))]
    if k == 10 and depth < 3:
        return {random_text(rng) or "k": random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3]))}
    return rng.choice(["auto", "fp8", "bf16", "switch", "torus3d", "decode", "moe", "full_attention", "llama"])


# ---- mutation ------------------------------------------------------------------------------------

def _paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every location in a document: mapping keys and list indices, depth first."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def mutate(doc: Any, rng: random.Random, value: Callable[[random.Random], Any] = random_value,
           numbers_only: bool = False) -> Any:
    """A deep copy of `doc` with one to three mutations (see the module docstring). With
    `numbers_only`, mutations replace numbers and quantities only (documents that mostly still load,
    for `simulate`)."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        paths = list(_paths(doc))
        if numbers_only:
            paths = [p for p in paths if p and _is_number(_get(doc, p))]
            if not paths:
                return doc
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.1:
                return value(rng)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        old = parent[key]
        op = rng.randrange(6) if not numbers_only else rng.choice([1, 2, 2, 6, 6, 6])
        if op == 6:  # a plausible change: the number scaled by a modest factor, or a small count
            parent[key] = _plausible(old, rng)
        elif op == 0 and isinstance(parent, dict):
            del parent[key]
        elif op == 2 and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = old * rng.choice([0, -1, 1e9, 1e-9, 1e300, 2, 0.5])
            if isinstance(old, int) and rng.random() < 0.5:
                parent[key] = int(old * rng.choice([0, -1, 1000, 10**9, 2]))
        elif op == 2 and isinstance(old, str) and numbers_only:
            parent[key] = rng.choice(_QUANTITY_TEXT)
        elif op == 3 and isinstance(parent, dict):
            parent[random_text(rng) or "unknown_key"] = value(rng)
        elif op == 4 and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = str(old)  # a number written as a string
        else:
            parent[key] = value(rng)
    return doc


_LEADING_NUMBER = re.compile(r"^\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)")


def _is_number(v: Any) -> bool:
    """A number, or a quantity string such as "4.8 TB/s"."""
    if isinstance(v, bool):
        return False
    return isinstance(v, (int, float)) or (isinstance(v, str) and bool(_LEADING_NUMBER.match(v)))


def _plausible(v: Any, rng: random.Random) -> Any:
    if isinstance(v, int):
        return rng.choice([1, 2, 3, 4, 7, 8, 16, 64, v * 2, max(1, v // 2), v + 1])
    factor = rng.choice([1e-3, 0.01, 0.1, 0.5, 0.9, 1.1, 2.0, 10.0, 100.0, 1e3])
    if isinstance(v, float):
        return v * factor if v > 0.05 else v
    m = _LEADING_NUMBER.match(v)
    try:
        return f"{float(m.group(1)) * factor:g}{v[m.end():]}"
    except ValueError:
        return v


# ---- raw files -----------------------------------------------------------------------------------

def random_file_bytes(rng: random.Random, seed_doc: Any) -> bytes:
    """File content: a shipped document damaged at the byte level, or bytes/text of no format."""
    k = rng.randrange(7)
    text = yaml.safe_dump(seed_doc, sort_keys=False, allow_unicode=True)
    if k == 0:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 16, 300])))
    if k == 1:
        return text.replace("a", "\xe9").encode("latin-1", "replace")
    if k == 2:
        b = bytearray(text.encode())
        for _ in range(rng.choice([1, 5, 20])):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if k == 3:
        n = rng.choice([10, 100, 2000])
        return ("[" * n + "]" * n).encode() if rng.random() < 0.5 else ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, n))).encode()
    if k == 4:
        return random_text(rng).encode("utf-8", "surrogatepass")
    if k == 5:  # anchors and aliases: a small file describing a huge tree
        return b"a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n" \
               b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d]\nnotes: [*e,*e,*e,*e,*e,*e]\n"
    return text[: rng.randrange(len(text) + 1)].encode()  # truncated


# ---- cases ---------------------------------------------------------------------------------------

@dataclass
class Case:
    kind: str  # hw | model | scenario | hf | file | simulate
    data: Any  # the mutated document, file bytes, or simulate arguments
    target: str = ""  # for `file`: which loader reads the bytes (hw | model | scenario | hf)

    def describe(self, width: int = 300) -> str:
        text = repr(self.data)
        return f"{self.kind}{'/' + self.target if self.target else ''}: {text[:width]}"


def make_case(kind: str, rng: random.Random, value: Callable[[random.Random], Any] = random_value) -> Case:
    """One loader case of `kind` ("hw", "model", "scenario", "hf" or "file")."""
    if kind == "file":
        target = rng.choice(["hw", "model", "scenario", "hf"])
        return Case("file", random_file_bytes(rng, rng.choice(seeds(target))), target)
    return Case(kind, mutate(rng.choice(seeds(kind)), rng, value))


def _to_json_safe(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {str(k): _to_json_safe(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_to_json_safe(v) for v in doc]
    if isinstance(doc, int) and not isinstance(doc, bool) and doc.bit_length() > 1000:
        return 1e400  # json writes Infinity
    if isinstance(doc, bytes):
        return doc.decode("latin-1")  # JSON has no bytes: their text
    return doc


def _load(kind: str, data: Any, workdir: Path, raw: bytes | None = None) -> Any:
    from codesign.hw.spec import HardwareSpec
    from codesign.models import load_model
    from codesign.models.config import ModelConfig
    from codesign.models.hf import config_from_hf_json
    from codesign.scenario import load_scenarios, parse_scenarios

    if kind == "hf":
        p = workdir / "config.json"
        p.write_bytes(raw if raw is not None else json.dumps(_to_json_safe(data)).encode())
        return config_from_hf_json(p) if raw is not None else load_model(p)
    if raw is not None:
        p = workdir / "input.yaml"
        p.write_bytes(raw)
        if kind == "scenario":
            return load_scenarios(p)
        return spec_files.load(HardwareSpec if kind == "hw" else ModelConfig, p, "-", kind)
    if kind == "scenario":
        return parse_scenarios(data, "fuzz.yaml")
    return spec_files.validate(HardwareSpec if kind == "hw" else ModelConfig, data, "fuzz.yaml")


# ---- simulate cases ------------------------------------------------------------------------------

# Small models keep a simulate case well under a second: the tiny configs of three families (dense
# GQA, hybrid GatedDeltaNet + MoE, MLA + MoE) and one full-size dense model.
SIM_MODELS = ("qwen3-8b", "qwen3.5-397b-a17b:tiny", "deepseek-v3:tiny", "mixtral-8x7b:tiny")


def _model(name: str):
    from codesign.models import load_model

    base, _, tiny = name.partition(":")
    c = load_model(base)
    return c.tiny() if tiny else c


def make_sim_case(rng: random.Random, value: Callable[[random.Random], Any] = random_value) -> Case:
    """Arguments of one `simulate` call: a shipped spec with number/quantity mutations (or, one
    time in four, a mutated tiny model config), a small context, chips and plan."""
    from codesign.hw import available_hw

    hw_name = rng.choice(available_hw())
    hw_doc = spec_files.read_yaml(ROOT / "hw_specs" / f"{hw_name}.yaml")
    model = rng.choice(SIM_MODELS)
    model_doc = None
    if rng.random() < 0.25:
        model_doc = mutate(_model(model).model_dump(exclude={"layer_pattern"}), rng, value, numbers_only=True)
    else:
        hw_doc = mutate(hw_doc, rng, value, numbers_only=True)
    args = {
        "context": rng.choice([[1024], [4096], [256], [2048, 8192], ["4k"], [1]]),
        "chips": rng.choice([None, None, 1, 2, 4, 8, 16, 64, 144, rng.randint(1, 300)]),
        "plan": rng.choice(["auto", "auto", {"tp": 1}, {"tp": 2}, {"tp": 8}, {"ep": 8, "attention_dp": 8},
                            {"pp": 2}, {"tp": rng.choice([1, 2, 4])}]),
        "workload": rng.choice([None, None, {"mode": "offline", "input_tokens": 512, "output_tokens": 128},
                                {"mode": "prefill", "input_tokens": 2048},
                                {"mode": "batch", "concurrency": rng.choice([1, 8, 1000]), "input_tokens": 1024,
                                 "output_tokens": 64}]),
    }
    if args["workload"] is not None:
        args["context"] = None
    return Case("simulate", {"hw": hw_doc, "model": model, "model_doc": model_doc, **args})


def _simulate(data: dict) -> list:
    from codesign.hw.spec import HardwareSpec
    from codesign.models.config import ModelConfig
    from codesign.sim import simulate

    hw = spec_files.validate(HardwareSpec, data["hw"], "fuzz-hw.yaml")
    config = (spec_files.validate(ModelConfig, data["model_doc"], "fuzz-model.yaml") if data["model_doc"] is not None
              else _model(data["model"]))
    return simulate(hw, config, context=data["context"], chips=data["chips"], plan=data["plan"],
                    workload=data["workload"])


def row_problem(r: Any) -> str | None:
    """Why a result row breaks the properties (NaN/inf anywhere; a feasible row without positive
    throughput and times), or None."""
    from codesign.results import _numbers

    for key, v in _numbers("", r.to_dict()):
        if not math.isfinite(v):
            return f"{key} = {v!r}"
    if r.feasible:
        rate = r.input_tokens_per_s if r.mode == "prefill" else r.output_tokens_per_s
        if rate is None or not rate > 0:
            return f"feasible with rate {rate!r}"
        for key in ("ttft_s", "tpot_s"):
            v = getattr(r, key)["mean"]
            if v is not None and not v > 0:
                return f"feasible with {key} {v!r}"
    return None


# ---- running -------------------------------------------------------------------------------------

class Hang(Exception):
    """A case ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` in the block after `seconds` (SIGALRM; main thread, Unix)."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Outcome:
    status: str  # loaded | refused | untyped | hang | nan_row | guard
    detail: str = ""


def run_case(case: Case, limit_s: float, workdir: Path | None = None) -> Outcome:
    """Run one case under a time limit and classify it (see `Outcome.status`)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fuzz"))
    try:
        with time_limit(limit_s):
            if case.kind == "simulate":
                rows = _simulate(case.data)
                for r in rows:
                    problem = row_problem(r)
                    if problem:
                        return Outcome("nan_row", f"{r.name}: {problem}")
            elif case.kind == "file":
                _load(case.target, None, workdir, raw=case.data)
            else:
                _load(case.kind, case.data, workdir)
        return Outcome("loaded")
    except CodesignError as e:
        msg = str(e)
        if "\n" in msg:
            return Outcome("untyped", f"CodesignError spanning {msg.count(chr(10)) + 1} lines: {msg[:200]}")
        return Outcome("guard" if GUARD_MARK in msg else "refused", msg[:300])
    except Hang as e:
        return Outcome("hang", str(e))
    except Exception as e:  # noqa: BLE001 -- the property under test: nothing else escapes
        return Outcome("untyped", f"{type(e).__name__}: {str(e)[:200]}")
