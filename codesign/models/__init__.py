"""Real, runnable torch models (native) that are also traced on the meta device (codesign.graph).

`load_model(name)` reads `model_graphs/<name>.yaml`; `build_model(config)` returns the nn.Module.
"""

from __future__ import annotations

from pathlib import Path

from codesign import spec_files
from codesign.models.config import ModelConfig


def load_model(name_or_path: str | Path | ModelConfig) -> ModelConfig:
    """A validated ModelConfig from a name in model_graphs/, a YAML path, or an HF config.json path."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    p = Path(name_or_path)
    if p.suffix == ".json":
        from codesign.models.hf import config_from_hf_json

        return config_from_hf_json(p)
    return spec_files.load(ModelConfig, name_or_path, "model_graphs", "model")


def available_models() -> list[str]:
    return spec_files.available("model_graphs")


def build_model(config: ModelConfig, **kwargs):
    from codesign.models.decoder import CausalLM

    return CausalLM(config, **kwargs)


__all__ = ["ModelConfig", "load_model", "available_models", "build_model"]
