"""The SGLang adapter's pure parts, with no engine: result and output parsing, the version range,
the CPU thread binding, and a missing sglang as one line. Everything that talks to SGLang runs
against the real engine (tests/test_sglang_cpu.py on the CPU, tests/test_sglang_gpu.py on a GPU)."""

from __future__ import annotations

import types

import pytest

from sppo_megatron.errors import UserError
from sppo_megatron.rollout.sglang.contract import (
    ENGINE_MODULE_PATCHED,
    check_result,
    check_sglang_version,
    cpu_threads_binding,
    parse_output,
)
from sppo_megatron.rollout.sglang.process import strip_expandable_segments


def test_helpers():
    assert check_result("x", (True, "ok")) == (True, "ok")
    assert check_result("x", None) == (True, "")
    assert check_result("x", types.SimpleNamespace(success=True, message="m")) == (True, "m")
    with pytest.raises(RuntimeError, match="SGLang flush_cache refused: busy"):
        check_result("flush_cache", types.SimpleNamespace(success=False, message="busy"))
    busy = types.SimpleNamespace(success=False, message="busy")
    assert check_result("flush_cache", busy, tolerate_refusal=True) == (False, "busy")
    with pytest.raises(RuntimeError, match="refused: nope"):
        check_result("end_weight_update", [False, "nope"])
    with pytest.raises(RuntimeError, match="unexpected result"):
        check_result("x", 42)
    assert strip_expandable_segments("expandable_segments:True") is None
    assert strip_expandable_segments("a:1, expandable_segments:True,b:2") == "a:1,b:2"
    check_sglang_version("0.5.23")
    check_sglang_version("0.5.23.post2")
    for bad in ("0.5.22", "0.5.24", "0.4.9", "1.0.0"):
        with pytest.raises(UserError, match=r"not supported.*pip install -e \.\[sglang\]"):
            check_sglang_version(bad)
    out = parse_output(
        {
            "output_ids": [7, 2],
            "meta_info": {
                "finish_reason": {"type": "stop", "matched": 2},
                "output_token_logprobs": [(-1.0, 7, None), (-2.0, 2, None)],
            },
        },
        3,
        1,
    )
    assert (out.prompt_index, out.sample_index, out.response_ids, out.finish_reason, out.logprobs) == (
        3,
        1,
        [7, 2],
        "stop",
        [-1.0, -2.0],
    )
    with pytest.raises(RuntimeError, match="aborted"):
        parse_output({"output_ids": [], "meta_info": {"finish_reason": {"type": "abort", "message": "oom"}}}, 0, 0)
    assert ENGINE_MODULE_PATCHED == "kill_process_tree"


def test_missing_sglang_is_a_user_error(monkeypatch):
    import builtins

    from sppo_megatron.rollout.sglang.contract import SglangAPI

    real_import = builtins.__import__

    def no_sglang(name, *args, **kwargs):
        if name == "sglang" or name.startswith("sglang."):
            raise ImportError("No module named 'sglang'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sglang)
    with pytest.raises(UserError, match=r"install_cpu_engines\.sh"):
        SglangAPI()


def test_cpu_threads_binding():
    assert cpu_threads_binding(2, [1, 0]) == "0|1"
    assert cpu_threads_binding(2, [0]) == "0|0"  # fewer cores than ranks: they share
    assert cpu_threads_binding(3, range(8)) == "0-1|2-4|5-7"
    assert cpu_threads_binding(1, [0, 1]) == "0-1"
