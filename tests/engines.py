"""Test-side helpers for the real rollout engines (`engine` marker): whether one is installed, and
which engine processes are alive (the suite fails if it leaves one behind: tests/conftest.py).

Tests that need an engine call `require_sglang()`: without the CPU install
(`bash tools/install_cpu_engines.sh --python PYTHON`) they skip with the reason, or fail where
SPPO_REQUIRE_ENGINES=1 (CI sets it, so that a broken install cannot pass as a skip).
"""

from __future__ import annotations

import importlib.util
import os
from typing import List

import psutil
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


def engine_processes() -> List[psutil.Process]:
    """Live processes of a rollout engine on this machine (SGLang names its own `sglang::...`)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if (proc.info["name"] or "").startswith("sglang::") and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found
