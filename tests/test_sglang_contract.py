"""Contract of the SGLang adapter with the pinned sglang version.

Always (offline): every Engine method / keyword, ServerArgs field, sampling key, module path,
payload key, memory tag and environment switch the adapter uses exists in the vendored API manifest
tests/data/sglang_api_<version>.json, extracted from the sglang source by
tools/extract_sglang_api.py.

Per mixture-of-experts architecture: the bridge table's expert (and router / shared-expert)
HF names are the ones SGLang's load_weights maps (the path update_weights_from_tensor takes).

Against the real source (SPPO_SGLANG_SRC = a sglang wheel or a directory holding the sglang
package, an installed sglang, or else the pinned wheel downloaded without dependencies into
$XDG_CACHE_HOME/sppo-megatron/sglang, ~/.cache/sppo-megatron/sglang by default: outside the
repository): the manifest is re-extracted from it and must equal the vendored one, so the
checks above hold against the real source too. Skipped only when no index has the wheel.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import tomllib

import pytest
import torch

from sppo_megatron.platform import sglang_cpu
from sppo_megatron.rollout.base import SamplingParams
from sppo_megatron.rollout.sglang import contract as adapter
from sppo_megatron.rollout.sglang import engine as adapter_engine
from sppo_megatron.rollout.sglang.process import engine_died_handler
from sppo_megatron.rollout.sglang.seeding import RESEED_LOADER
from tests.sglang_manifest import PINNED, load_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _accepts(method: dict, keyword: str) -> bool:
    return keyword in method["params"] or keyword in method["kwonly"] or method["varkw"]


def test_pinned_version_is_supported_and_matches_setup_extra():
    m = load_manifest()
    assert m["sglang_version"] == PINNED
    adapter.check_sglang_version(PINNED)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert f"sglang=={PINNED}" in tomllib.load(f)["project"]["optional-dependencies"]["sglang"]


def test_engine_methods_and_keywords_exist():
    methods = load_manifest()["engine"]["methods"]
    for name, keywords in adapter.ENGINE_CALLS.items():
        assert name in methods, f"Engine.{name} does not exist in sglang {PINNED}"
        for kw in keywords:
            assert _accepts(methods[name], kw), f"Engine.{name} has no parameter {kw!r} in sglang {PINNED}"
    assert methods["__init__"]["varkw"]  # Engine(**server_args)


#: what the adapter touches on the Engine object outside `_call`: shutdown(), the tokenizer manager
#: (its event loop's signal handlers) and the event loop (stopped when an engine process dies)
ENGINE_ATTRIBUTES = ("shutdown", "tokenizer_manager", "loop")


def test_adapter_calls_only_declared_engine_methods():
    """Static check of sglang/engine.py: every self._call/_checked names a declared method with
    declared keywords, and the engine object is touched nowhere else except shutdown()."""
    tree = ast.parse(inspect.getsource(adapter_engine))
    seen = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("_call", "_checked")
        ):
            if not (node.args and isinstance(node.args[0], ast.Constant)):
                continue  # the generic dispatch inside _checked itself
            method = node.args[0].value
            kws = {k.arg for k in node.keywords}
            assert method in adapter.ENGINE_CALLS, method
            assert kws <= set(adapter.ENGINE_CALLS[method]), (method, kws)
            seen.add(method)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "engine"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            assert node.attr in ENGINE_ATTRIBUTES, f"direct use of self.engine.{node.attr}"
            if node.attr != "shutdown":
                assert node.attr in load_manifest()["engine"]["attributes"], node.attr
    assert seen >= set(adapter.ENGINE_CALLS) - {"shutdown"}


@pytest.mark.parametrize("device", [torch.device("cuda", 2), torch.device("cpu")], ids=["gpu", "cpu"])
def test_server_args_fields_exist(device):
    fields = set(load_manifest()["server_args_fields"])
    args = adapter.server_args(
        "/m",
        tp=2,
        device=device,
        mem_fraction=0.5,
        max_total_tokens=4096,
        dtype=torch.bfloat16,
        seed=1,
        nccl_port=12345,
        sigquit_handler=engine_died_handler,
    )
    missing = sorted(set(args) - fields)
    assert not missing, f"ServerArgs of sglang {PINNED} has no field(s) {missing}"
    assert args["custom_weight_loader"] == [RESEED_LOADER]
    assert args.get("device", "cuda") == device.type and args.get("base_gpu_id", 2) == 2
    if device.type == "cpu":  # the KV cache never sized from the machine's free RAM
        assert args["max_total_tokens"] == 4096 and not args["enable_memory_saver"]
    import pickle

    pickle.loads(pickle.dumps(args))  # ServerArgs (with the SIGQUIT handler) is pickled to the schedulers


def test_environment_switches_and_reseed_loader_exist():
    """The switches the adapter sets are read by the modules that act on them, and
    update_weights_from_tensor dispatches a custom load_format to its loader (seeding.py)."""
    m = load_manifest()
    switches = m["environment_switches"]
    assert "sglang.srt.managers.scheduler" in switches[adapter.COLOCATED_BATCH_ENV]
    assert "sglang.srt.managers.tokenizer_manager" in switches[adapter.COLOCATED_BATCH_ENV]
    assert "sglang.srt.platforms" in switches[sglang_cpu.CPU_ENGINE_ENV]
    assert m["custom_weight_loader_dispatch"]


def test_sampling_keys_exist():
    fields = set(load_manifest()["sampling_params_fields"])
    keys = adapter.sampling_params_dict(SamplingParams(temperature=0.5, top_k=3), [2])
    assert set(keys) <= fields, sorted(set(keys) - fields)
    assert set(adapter.SAMPLING_KEYS) <= fields


def test_symbols_modules_payload_and_tags():
    m = load_manifest()
    for name, module in adapter.SGLANG_SYMBOLS.items():
        assert module in m["symbols"][name], f"{name} is defined in {m['symbols'][name]}, adapter imports {module}"
    assert adapter.ENGINE_MODULE_PATCHED in m["engine_module_names"]
    assert list(adapter.FLATTENED_PAYLOAD_KEYS) == m["flattened_bucket_payload_keys"]
    assert set(adapter.MEMORY_TAGS) == set(m["memory_tags"])
    bucket = m["classes"]["FlattenedTensorBucket"]["methods"]
    assert "named_tensors" in bucket["__init__"]["params"] and {"get_flattened_tensor", "get_metadata"} <= set(bucket)
    assert m["classes"]["LocalSerializedTensor"]["fields"] == ["values"]
    assert "obj" in m["classes"]["MultiprocessingSerializer"]["methods"]["serialize"]["params"]
    allowed = {tuple(x) for x in m["safe_unpickler_allowed_globals"]}
    # what our payloads pickle by reference must pass the scheduler's strict unpickler
    assert ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata") in allowed
    assert (adapter.SGLANG_SYMBOLS["LocalSerializedTensor"], "LocalSerializedTensor") in allowed
    assert ("sglang.srt.utils.patch_torch", "_rebuild_cuda_tensor_modified") in allowed
    assert ("torch", "Size") in allowed and ("torch", "bfloat16") in allowed
    assert all(m["result_keys_in_tokenizer_manager"].values())


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen2_moe", "mixtral"])
def test_sglang_loads_the_bridge_expert_names(model_type):
    """update_weights_from_tensor hands the streamed names to the model's load_weights: the
    bridge table's per-expert HF names must be the ones it maps into FusedMoE
    (`experts.{e}.<name>.`), and every module on the path of the other MoE names must exist."""
    from sppo_megatron.models.arch import ARCHITECTURES

    arch, model = ARCHITECTURES[model_type], load_manifest()["moe_models"][model_type]
    assert arch.hf_class in model["entry_classes"]
    accepted = {model["expert_checkpoint_names"][f"ckpt_{p}_proj_name"] for p in ("gate", "up", "down")}
    streamed = set()
    for row in arch.params:
        for name in row.hf:
            parts = name.split(".")
            if row.per_expert:
                assert parts[-4:-2] == ["experts", "{expert}"], name
                streamed.add(parts[-2])
            elif row.mlp == "moe":  # router / shared expert: modules under the layer, or stacked
                assert set(parts[3:-1]) <= set(model["attributes"]) | set(model["stacked_checkpoint_names"]), name
    assert streamed == accepted, (streamed, accepted)


def _download_wheel():
    """The pinned wheel, fetched once without dependencies into the user cache (not the
    repository; None when pip cannot reach an index that has it)."""
    import glob
    import subprocess
    import sys

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = os.path.join(base, "sppo-megatron", "sglang")
    found = glob.glob(os.path.join(cache, f"sglang-{PINNED}-*.whl"))
    if not found:
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-q",
                    f"sglang=={PINNED}",
                    "-d",
                    cache,
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError):
            return None
        found = glob.glob(os.path.join(cache, f"sglang-{PINNED}-*.whl"))
    return found[0] if found else None


def _real_source():
    src = os.environ.get("SPPO_SGLANG_SRC")
    if src:
        return src
    spec = importlib.util.find_spec("sglang")
    if spec is not None and spec.submodule_search_locations:
        return os.path.dirname(list(spec.submodule_search_locations)[0])
    return _download_wheel()


@pytest.mark.slow
def test_manifest_matches_real_source():
    src = _real_source()
    if src is None:
        pytest.skip(
            "sglang source not available (pip download failed): set SPPO_SGLANG_SRC to the sglang-0.5.23 wheel "
            "(pip download --no-deps sglang==0.5.23) or install sglang to check the vendored manifest"
        )
    from tools import extract_sglang_api

    real = json.loads(json.dumps(extract_sglang_api.extract(src)))
    if real["sglang_version"] != PINNED:
        pytest.skip(f"source at {src} is sglang {real['sglang_version']}, not the pinned {PINNED}")
    assert real == load_manifest()
