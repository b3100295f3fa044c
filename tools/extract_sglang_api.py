#!/usr/bin/env python
"""Extract the parts of SGLang's Python API the rollout adapter depends on, from SOURCE (ast;
nothing is imported, so it runs without sglang's heavy dependencies or a GPU).

    python tools/extract_sglang_api.py SRC [--out tests/data/sglang_api_<version>.json]

SRC is a sglang wheel (.whl), or a directory holding the `sglang` package (an unpacked wheel or a
site-packages dir). `pip download --no-deps sglang==0.5.23 -d /tmp/wheels` fetches the wheel.

The manifest records: the version; Engine's public methods with their parameter names (Engine
and its bases) and the attributes it assigns; ServerArgs fields (the msgspec namespaces of 0.5.23 plus fields declared on
ServerArgs itself, or dataclass fields in older layouts); SamplingParams fields; where the
helper symbols are defined; FlattenedTensorBucket / FlattenedTensorMetadata /
LocalSerializedTensor / MultiprocessingSerializer signatures; the keys the scheduler reads from a
flattened-bucket payload; the safe unpickler's allowed globals; the memory tags; which modules read the environment
switches the adapter sets; whether update_weights_from_tensor dispatches to custom weight loaders; which names the
engine module has at module level (shutdown patches `kill_process_tree` there); whether the
result-dict keys the adapter reads occur in the tokenizer manager; and, per mixture-of-experts
model, the per-expert checkpoint names its load_weights maps (the path update_weights_from_tensor
takes), its module attributes and EntryClass.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from typing import Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.package_source import PackageSource  # noqa: E402

SYMBOLS = (
    "Engine",
    "ServerArgs",
    "FlattenedTensorBucket",
    "FlattenedTensorMetadata",
    "MultiprocessingSerializer",
    "monkey_patch_torch_reductions",
    "LocalSerializedTensor",
    "kill_process_tree",
    "SamplingParams",
)
RESULT_KEYS = ("output_ids", "meta_info", "finish_reason", "output_token_logprobs")
#: environment variables the adapter sets for SGLang (its CPU backend; one batch per generate call;
#: the cores of each TP rank on the CPU)
ENV_SWITCHES = ("SGLANG_USE_CPU_ENGINE", "SGLANG_ENABLE_COLOCATED_BATCH_GEN", "SGLANG_CPU_OMP_THREADS_BIND")
#: SGLang model modules (sglang/srt/models/) of the mixture-of-experts architectures we sync into
MOE_MODELS = ("qwen3_moe", "qwen2_moe", "mixtral")


class Source(PackageSource):
    """Read files of the sglang package from a wheel or a directory."""

    def __init__(self, src: str) -> None:
        super().__init__(src, "sglang")
        self.names = self.python_files()

    def tree(self, name: str) -> Optional[ast.Module]:
        text = self.read(name)
        if text is None:
            return None
        try:
            return ast.parse(text)
        except SyntaxError:
            return None


def module_file(module: str) -> Tuple[str, str]:
    path = module.replace(".", "/")
    return path + ".py", path + "/__init__.py"


def module_of(name: str) -> str:
    name = name[:-3]
    if name.endswith("/__init__"):
        name = name[: -len("/__init__")]
    return name.replace("/", ".")


def params_of(fn: ast.FunctionDef) -> Dict[str, object]:
    a = fn.args
    positional = [p.arg for p in a.posonlyargs + a.args]
    return {
        "params": [p for p in positional if p not in ("self", "cls")],
        "kwonly": [p.arg for p in a.kwonlyargs],
        "varargs": a.vararg is not None,
        "varkw": a.kwarg is not None,
    }


def class_defs(tree: ast.Module) -> Iterator[ast.ClassDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            yield node


def annotated_fields(cls: ast.ClassDef) -> List[str]:
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def methods_of(cls: ast.ClassDef) -> Dict[str, Dict[str, object]]:
    return {n.name: params_of(n) for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def find_definitions(src: Source) -> Dict[str, List[str]]:
    """symbol -> modules defining it at top level."""
    where: Dict[str, List[str]] = {s: [] for s in SYMBOLS}
    for name in src.names:
        if not name.startswith("sglang/srt/") and name not in ("sglang/__init__.py",):
            continue
        text = src.read(name) or ""
        if not any(s in text for s in SYMBOLS):
            continue
        tree = src.tree(name)
        if tree is None:
            continue
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in where:
                where[node.name].append(module_of(name))
            elif isinstance(node, ast.Assign) and name != "sglang/__init__.py":
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id in where and isinstance(node.value, ast.Call):
                        # e.g. ServerArgs = msgspec.defstruct(...)
                        if module_of(name) not in where[t.id]:
                            where[t.id].append(module_of(name))
    return where


def find_class(src: Source, module: str, cls_name: str) -> Optional[ast.ClassDef]:
    for fname in module_file(module):
        tree = src.tree(fname)
        if tree is None:
            continue
        for cls in class_defs(tree):
            if cls.name == cls_name:
                return cls
    return None


def engine_methods(src: Source, module: str) -> Dict[str, Dict[str, object]]:
    """Public methods of Engine, with those of its bases defined in sglang.srt.entrypoints."""
    cls = find_class(src, module, "Engine")
    if cls is None:
        raise SystemExit(f"class Engine not found in {module}")
    methods: Dict[str, Dict[str, object]] = {}
    bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
    for name in src.names:
        if not name.startswith("sglang/srt/entrypoints/"):
            continue
        tree = src.tree(name)
        for c in class_defs(tree) if tree else ():
            if c.name in bases:
                for m, p in methods_of(c).items():
                    methods.setdefault(m, p)
    methods.update(methods_of(cls))  # Engine's own definitions win
    return {m: p for m, p in sorted(methods.items()) if not m.startswith("_") or m == "__init__"}


def engine_attributes(src: Source, module: str) -> List[str]:
    """The attributes Engine's own methods assign on self (`self.loop = ...`)."""
    cls = find_class(src, module, "Engine")
    names = set()
    for node in ast.walk(cls) if cls is not None else ():
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    names.add(t.attr)
    return sorted(names)


def server_args_fields(src: Source) -> List[str]:
    fields: List[str] = []
    tree = src.tree("sglang/srt/server_args.py")
    if tree is None:
        raise SystemExit("sglang/srt/server_args.py not found")
    for cls in class_defs(tree):
        if cls.name == "ServerArgs":
            fields += annotated_fields(cls)
    # 0.5.23+: input fields live in msgspec namespace classes carrying _NS_PATH
    for name in src.names:
        if not name.startswith("sglang/srt/arg_groups/fields/"):
            continue
        t = src.tree(name)
        for cls in class_defs(t) if t else ():
            has_ns = any(
                isinstance(n, ast.Assign) and any(isinstance(x, ast.Name) and x.id == "_NS_PATH" for x in n.targets)
                for n in cls.body
            )
            if has_ns:
                fields += annotated_fields(cls)
    return sorted(set(fields))


def sampling_fields(src: Source) -> List[str]:
    cls = find_class(src, "sglang.srt.sampling.sampling_params", "SamplingParams")
    if cls is None:
        raise SystemExit("SamplingParams not found")
    init = methods_of(cls).get("__init__")
    if init is not None:  # older, non-struct layouts
        return sorted(set(init["params"]) | set(init["kwonly"]))
    return sorted(annotated_fields(cls))


def flattened_payload_keys(src: Source, module: str) -> List[str]:
    keys: List[str] = []
    for fname in module_file(module):
        tree = src.tree(fname)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "flattened_bucket" in node.name:
                for sub in ast.walk(node):
                    if (
                        isinstance(sub, ast.Subscript)
                        and isinstance(sub.slice, ast.Constant)
                        and isinstance(sub.slice.value, str)
                    ):
                        if sub.slice.value not in keys:
                            keys.append(sub.slice.value)
    return keys


def allowed_globals(src: Source) -> List[List[str]]:
    tree = src.tree("sglang/srt/utils/common.py")
    out: List[List[str]] = []
    for cls in class_defs(tree) if tree else ():
        if cls.name != "SafeUnpickler":
            continue
        for node in cls.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "ALLOWED_GLOBALS" for t in node.targets
            ):
                for elt in getattr(node.value, "elts", []):
                    if isinstance(elt, ast.Tuple) and all(isinstance(e, ast.Constant) for e in elt.elts):
                        out.append([e.value for e in elt.elts])
    return sorted(out)


def memory_tags(src: Source) -> List[str]:
    tree = src.tree("sglang/srt/constants.py")
    tags = []
    for node in tree.body if tree else ():
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id.startswith("GPU_MEMORY_TYPE_"):
                    tags.append(node.value.value)
    return sorted(tags)


def environment_switches(src: Source) -> Dict[str, List[str]]:
    """For each ENV_SWITCHES name, the sglang modules that mention it."""
    texts = {module_of(n): src.read(n) or "" for n in src.names}
    return {env: sorted(m for m, text in texts.items() if env in text) for env in ENV_SWITCHES}


def module_level_names(src: Source, module: str) -> List[str]:
    names = set()
    for fname in module_file(module):
        tree = src.tree(fname)
        for node in tree.body if tree else ():
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    names.add((a.asname or a.name).split(".")[0])
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
    return sorted(names)


def moe_weight_names(src: Source, model: str) -> Dict[str, object]:
    """What one MoE model's load_weights (also update_weights_from_tensor's path) accepts: the
    per-expert checkpoint names given to FusedMoE.make_expert_params_mapping, the checkpoint
    names its stacked_params_mapping fuses (q/k/v, gate/up), the module attributes the model
    defines (HF names resolve through them) and its EntryClass."""
    tree = src.tree(f"sglang/srt/models/{model}.py")
    if tree is None:
        return {}
    expert_names: Dict[str, str] = {}
    attributes, stacked = set(), set()
    entry: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "stacked_params_mapping" for t in node.targets
        ):
            for item in getattr(node.value, "elts", []):  # (param_name, checkpoint weight_name, shard_id)
                if isinstance(item, ast.Tuple) and len(item.elts) == 3 and isinstance(item.elts[1], ast.Constant):
                    stacked.add(item.elts[1].value)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "make_expert_params_mapping":
            expert_names.update(
                {
                    k.arg: k.value.value
                    for k in node.keywords
                    if k.arg and k.arg.startswith("ckpt_") and isinstance(k.value, ast.Constant)
                }
            )
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and getattr(node.value, "id", None) == "self"
        ):
            attributes.add(node.attr)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EntryClass" for t in node.targets):
            value = node.value
            entry = (
                [e.id for e in value.elts] if isinstance(value, (ast.List, ast.Tuple)) else [getattr(value, "id", "")]
            )
    return {
        "expert_checkpoint_names": expert_names,
        "attributes": sorted(attributes),
        "entry_classes": entry,
        "stacked_checkpoint_names": sorted(stacked),
    }


def version_of(src: Source) -> str:
    for fname, pattern in (
        ("sglang/_version.py", r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)"),
        ("sglang/version.py", r"__version__\s*=\s*['\"]([^'\"]+)"),
    ):
        text = src.read(fname) or ""
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    m = re.search(r"sglang-([0-9][^-]*)-", os.path.basename(src.src))
    return m.group(1) if m else "unknown"


def extract(src_path: str) -> Dict[str, object]:
    src = Source(src_path)
    where = find_definitions(src)
    engine_module = (where["Engine"] or ["sglang.srt.entrypoints.engine"])[0]

    def cls_info(symbol: str) -> Dict[str, object]:
        mods = where.get(symbol) or []
        cls = find_class(src, mods[0], symbol) if mods else None
        if cls is None:
            return {}
        return {"fields": annotated_fields(cls), "methods": methods_of(cls)}

    tm_text = src.read("sglang/srt/managers/tokenizer_manager.py") or ""
    return {
        "sglang_version": version_of(src),
        "engine": {
            "module": engine_module,
            "methods": engine_methods(src, engine_module),
            "attributes": engine_attributes(src, engine_module),
        },
        "engine_module_names": module_level_names(src, engine_module),
        "server_args_fields": server_args_fields(src),
        "sampling_params_fields": sampling_fields(src),
        "symbols": {s: where[s] for s in SYMBOLS},
        "classes": {
            s: cls_info(s)
            for s in (
                "FlattenedTensorBucket",
                "FlattenedTensorMetadata",
                "LocalSerializedTensor",
                "MultiprocessingSerializer",
            )
        },
        "flattened_bucket_payload_keys": flattened_payload_keys(
            src, "sglang.srt.model_executor.model_runner_components.weight_updater"
        ),
        "safe_unpickler_allowed_globals": allowed_globals(src),
        "memory_tags": memory_tags(src),
        "environment_switches": environment_switches(src),
        "custom_weight_loader_dispatch": "load_format in self.custom_weight_loaders"
        in (src.read("sglang/srt/model_executor/model_runner_components/weight_updater.py") or ""),
        "result_keys_in_tokenizer_manager": {k: (f'"{k}"' in tm_text or f"'{k}'" in tm_text) for k in RESULT_KEYS},
        "moe_models": {m: moe_weight_names(src, m) for m in MOE_MODELS},
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="sglang wheel (.whl) or a directory containing the sglang package")
    parser.add_argument("--out", help="output JSON (default: tests/data/sglang_api_<version>.json)")
    args = parser.parse_args(argv)
    manifest = extract(args.src)
    out = args.out or os.path.join(
        os.path.dirname(__file__), "..", "tests", "data", f"sglang_api_{manifest['sglang_version']}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(
        f"wrote {os.path.normpath(out)} (sglang {manifest['sglang_version']}: {len(manifest['engine']['methods'])} "
        f"Engine methods, {len(manifest['server_args_fields'])} ServerArgs fields)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
