"""The vendored SGLang API manifest (tests/data/sglang_api_<PINNED>.json, written by
tools/extract_sglang_api.py): the contract tests check the adapter against it and the fake
engine of the adapter tests accepts only its ServerArgs fields."""

from __future__ import annotations

import functools
import json
import os

PINNED = "0.5.23"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict:
    with open(os.path.join(DATA, f"sglang_api_{PINNED}.json"), encoding="utf-8") as f:
        return json.load(f)
