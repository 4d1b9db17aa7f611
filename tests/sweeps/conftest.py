"""Small inputs for sweep tests: a two-layer model and the fixture chip as files, so that worker
processes and subprocesses read them as users' files are read, and each point is fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.sim.helpers import HW_DICT

TINY = dict(name="tiny-llama", sources=["test fixture"], hidden_size=256, vocab_size=1024,
            max_position_embeddings=65536, intermediate_size=512, num_layers=2,
            attention=dict(num_heads=4, num_kv_heads=2, head_dim=64))


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("sweep-inputs")
    model, hw = d / "tiny-llama.yaml", d / "sweep-chip.yaml"
    model.write_text(yaml.safe_dump(TINY))
    hw.write_text(yaml.safe_dump({**HW_DICT, "name": "sweep-chip", "system": {**HW_DICT["system"], "chips": 1}}))
    return {"model": str(model), "hardware": str(hw)}


@pytest.fixture
def base(inputs) -> dict:
    return {"hardware": inputs["hardware"], "model": inputs["model"], "chips": 1, "parallel": {"tp": 1},
            "workload": {"mode": "decode", "input_tokens": 1024, "max_batch": 64}}


def write_sweep(path: Path, base: dict, grid: dict, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": "t", "base": base, "grid": grid, **extra}, sort_keys=False))
    return path
