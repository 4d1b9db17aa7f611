"""The H100-like spec fixture of the mapping tests (see helpers.py)."""

from __future__ import annotations

import pytest

from codesign.hw.spec import HardwareSpec
from tests.mapping.helpers import make_hw


@pytest.fixture
def hw() -> HardwareSpec:
    return make_hw()
