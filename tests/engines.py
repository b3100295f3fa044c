"""Test-side helpers for the real rollout engines (`engine` marker): whether one is installed.

Tests that need an engine call `require_sglang()`: without the CPU install
(`bash tools/install_cpu_engines.sh --python PYTHON`) they skip with the reason, or fail where
SPPO_REQUIRE_ENGINES=1 (CI sets it, so that a broken install cannot pass as a skip).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def _missing(reason: str) -> None:
    if os.environ.get("SPPO_REQUIRE_ENGINES") == "1":
        pytest.fail(f"{reason} (SPPO_REQUIRE_ENGINES=1)")
    pytest.skip(reason)


def require_sglang() -> None:
    if importlib.util.find_spec("sglang") is None:
        _missing("sglang is not installed: bash tools/install_cpu_engines.sh --python PYTHON")
    if not torch.cuda.is_available():
        from sppo_megatron.platform import sglang_cpu

        if not sglang_cpu.startup_file_installed():
            _missing("SGLang's CPU start-up file is missing: bash tools/install_cpu_engines.sh --python PYTHON")
