"""Hardware specs (`hw_specs/*.yaml`) and their interconnect topologies."""

from __future__ import annotations

from pathlib import Path

from codesign import spec_files
from codesign.hw.spec import BYTES_PER_ELEMENT, HardwareSpec


def load_hw(name_or_path: str | Path | HardwareSpec) -> HardwareSpec:
    if isinstance(name_or_path, HardwareSpec):
        return name_or_path
    return spec_files.load(HardwareSpec, name_or_path, "hw_specs", "hardware spec")


def available_hw() -> list[str]:
    return spec_files.available("hw_specs")


__all__ = ["HardwareSpec", "BYTES_PER_ELEMENT", "load_hw", "available_hw"]
