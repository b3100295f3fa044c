"""Loading `reward.custom_fn` ("path/to/file.py:function") and calling it.

The function is called as fn(solution_str, ground_truth) and additionally gets the keywords
data_source= and extra_info= when its signature names them or takes **kwargs.
"""

import importlib.util
import inspect
import os
import sys
import zlib
from typing import Any, Callable, Optional

from sppo_megatron.errors import UserError


def load_custom_fn(spec: str) -> Callable[..., Any]:
    """Import the function named by `spec`; UserError with one line if the file or name is wrong."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UserError(f"reward.custom_fn: expected 'path/to/file.py:function', got {spec!r}")
    if not os.path.isfile(path):
        raise UserError(f"reward.custom_fn: file not found: {path}")
    module_name = f"_sppo_custom_reward_{zlib.crc32(os.path.abspath(path).encode())}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"reward.custom_fn: cannot import {path} (not a Python file?)")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        reason = " ".join(str(e).split())
        raise UserError(f"reward.custom_fn: importing {path} failed: {type(e).__name__}: {reason}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"reward.custom_fn: no function {name!r} in {path}")
    return fn


def _keywords(fn: Callable[..., Any]) -> frozenset:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(("data_source", "extra_info"))
    return frozenset(k for k in ("data_source", "extra_info") if k in params)


class CustomScorer:
    """A loaded custom function plus the optional keywords it accepts."""

    def __init__(self, spec: str):
        self.fn = load_custom_fn(spec)
        self.keywords = _keywords(self.fn)

    def __call__(self, data_source: str, solution_str: str, ground_truth: Any, extra_info: Optional[dict] = None) -> float:
        available = {"data_source": data_source, "extra_info": extra_info}
        kwargs = {k: available[k] for k in self.keywords}
        return float(self.fn(solution_str, ground_truth, **kwargs))
