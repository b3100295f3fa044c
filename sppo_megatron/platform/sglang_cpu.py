"""SGLang on a machine without CUDA: what its CPU backend needs that PyPI does not ship for CPU.

SGLang 0.5.23 runs on the CPU with `SGLANG_USE_CPU_ENGINE=1` and the torch_native attention
backend (tests, laptops; the GPU path never comes here). Two of its imports have no CPU wheel:

* `sgl_kernel`: PyPI's `sgl-kernel` / `sglang-kernel` are CUDA builds. sglang imports a few CPU
  kernels from it at module level (KV-cache moves and request-slot writes of speculative
  decoding); the torch_native path calls none of them. `sgl_kernel_cpu.py` stands in under the
  name `sgl_kernel`, served only when no real `sgl_kernel` can be found (the finder is the LAST
  entry of `sys.meta_path`), so an installed kernel package always wins.
* `torchvision`: PyPI's builds for x86_64 need CUDA torch (`import torchvision` fails on CPU torch),
  and sglang imports it at module level for the image preprocessing of multimodal models. When no
  torchvision is installed, sglang's own modules get a placeholder from their `import` statements
  (every attribute is a placeholder, calling one raises); every other module, transformers
  included, still finds no torchvision and takes its text-only paths.

sglang runs its scheduler and detokenizer in spawned processes, where nothing of this process's
import state survives. `tools/install_cpu_engines.sh` therefore writes a `.pth` file holding
`STARTUP_LINE`: Python runs it at start-up, and it calls `install()` only in processes whose
environment has `SGLANG_USE_CPU_ENGINE=1`, which `enable()` sets for the engine it starts.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from types import ModuleType
from typing import Any, Optional, Sequence

#: sglang's switch for its CPU backend (inherited by the engine's processes)
CPU_ENGINE_ENV = "SGLANG_USE_CPU_ENGINE"
#: the .pth file the installer writes into site-packages, and the line it holds
PTH_FILE = "sppo_megatron_sglang_cpu.pth"
STARTUP_LINE = (
    f'import os; os.environ.get("{CPU_ENGINE_ENV}") == "1" and '
    '__import__("sppo_megatron.platform.sglang_cpu", fromlist=["install"]).install()'
)
_KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sgl_kernel_cpu.py")


class Missing:
    """What sglang's modules get for a torchvision name when torchvision is not installed."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> "Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: torchvision is not installed; SGLang on CPU serves text models only")

    def __repr__(self) -> str:
        return f"<{self._name}: torchvision not installed>"


_real_import = builtins.__import__


def _import_for_sglang(
    name: str, globals: Any = None, locals: Any = None, fromlist: Sequence[str] = (), level: int = 0
) -> Any:
    if level == 0 and name.split(".")[0] == "torchvision":
        return Missing(name if fromlist else "torchvision")
    return _real_import(name, globals, locals, fromlist, level)


_SGLANG_BUILTINS = dict(builtins.__dict__, __import__=_import_for_sglang)


class _PlaceholderImports(importlib.abc.Loader):
    """Runs an sglang module with an `__import__` that answers torchvision with placeholders."""

    def __init__(self, loader: importlib.machinery.SourceFileLoader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return None

    def exec_module(self, module: ModuleType) -> None:
        code = self.loader.get_code(module.__name__)
        if code is None:
            raise ImportError(f"no code for {module.__name__}")
        module.__dict__["__builtins__"] = _SGLANG_BUILTINS
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> Optional[str]:
        return self.loader.get_source(fullname)


class _SglangModules(importlib.abc.MetaPathFinder):
    """First in sys.meta_path: sglang's source modules run under `_PlaceholderImports`."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if not fullname.startswith("sglang."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _PlaceholderImports(spec.loader)
        return spec


class _KernelFallback(importlib.abc.MetaPathFinder):
    """Last in sys.meta_path: `sgl_kernel` from sgl_kernel_cpu.py when nothing else provides it."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != "sgl_kernel":
            return None
        return importlib.util.spec_from_file_location("sgl_kernel", _KERNELS)


def install() -> None:
    """Put the two finders in place (idempotent); see the module docstring."""
    if any(isinstance(f, _KernelFallback) for f in sys.meta_path):
        return
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.insert(0, _SglangModules())
    sys.meta_path.append(_KernelFallback())


def _startup_file() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_FILE)


def startup_file_installed() -> bool:
    """Whether this interpreter's site-packages holds the start-up file, as install_startup_file writes it."""
    try:
        with open(_startup_file(), encoding="utf-8") as f:
            return f.read().strip() == STARTUP_LINE
    except OSError:
        return False


def install_startup_file() -> str:
    """Write the start-up file into this interpreter's site-packages (tools/install_cpu_engines.sh);
    returns its path."""
    path = _startup_file()
    with open(path, "w", encoding="utf-8") as f:
        f.write(STARTUP_LINE + "\n")
    return path


def enable() -> None:
    """Prepare this process to host SGLang on the CPU (call before sglang is imported): the
    CPU backend switch for it and its children, and the finders here."""
    os.environ[CPU_ENGINE_ENV] = "1"
    install()
