"""Test-side helpers for the real rollout engines (`engine` marker): whether one is installed, and
which engine processes are alive (the suite fails if it leaves one behind: tests/conftest.py).

Tests that need an engine call `require_sglang()` or carry `needs_vllm`: without the CPU install
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

INSTALL = "bash tools/install_cpu_engines.sh --python PYTHON"
_REQUIRED = os.environ.get("SPPO_REQUIRE_ENGINES") == "1"
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None and not _REQUIRED, reason=f"vllm is not installed: {INSTALL}"
)


def _missing(reason: str) -> None:
    if _REQUIRED:
        pytest.fail(f"{reason} (SPPO_REQUIRE_ENGINES=1)")
    pytest.skip(reason)


def require_sglang() -> None:
    if importlib.util.find_spec("sglang") is None:
        _missing(f"sglang is not installed: {INSTALL}")
    if not torch.cuda.is_available():
        from sppo_megatron.platform import sglang_cpu

        if not sglang_cpu.startup_file_installed():
            _missing(f"SGLang's CPU start-up file is missing: {INSTALL}")


def engine_processes() -> List[psutil.Process]:
    """Live processes of a rollout engine on this machine (SGLang names its own `sglang::...`)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if (proc.info["name"] or "").startswith("sglang::") and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found
