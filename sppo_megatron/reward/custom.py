"""Loading `reward.custom_fn` ("path/to/file.py:function") and calling it.

Called by keyword with verl's names, so a verl reward file works unchanged:
    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)
A function that names only some of them (e.g. `score(solution_str, ground_truth)`) gets those;
one with **kwargs gets all four. A parameter verl would not fill is refused when loading.
"""

import importlib.util
import inspect
import os
import sys
import zlib
from typing import Any, Callable, Optional, Tuple

from sppo_megatron.errors import UserError


def load_custom_fn(spec: str) -> Callable[..., Any]:
    """Import the function named by `spec`; UserError with one line if the file, name or signature is wrong."""
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
    _keywords(fn, spec)  # a signature verl's keywords cannot fill is refused here, not in a worker
    return fn


VERL_KEYWORDS = ("data_source", "solution_str", "ground_truth", "extra_info")


def _keywords(fn: Callable[..., Any], spec: str) -> Tuple[str, ...]:
    """The verl keywords `fn` takes; UserError if it needs an argument verl does not pass."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return VERL_KEYWORDS
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return VERL_KEYWORDS
    for p in params.values():
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise UserError(
                f"reward.custom_fn {spec}: parameter {p.name!r} is positional-only; the function is "
                f"called by keyword with {', '.join(VERL_KEYWORDS)}"
            )
        if p.name not in VERL_KEYWORDS and p.default is inspect.Parameter.empty:
            raise UserError(
                f"reward.custom_fn {spec}: parameter {p.name!r} is not one of verl's compute_score "
                f"keywords ({', '.join(VERL_KEYWORDS)}) and has no default"
            )
    if "solution_str" not in params:
        raise UserError(f"reward.custom_fn {spec}: the function takes no solution_str (the response to score)")
    return tuple(k for k in VERL_KEYWORDS if k in params)


class CustomScorer:
    """A loaded custom function plus the verl keywords it accepts."""

    def __init__(self, spec: str):
        self.fn = load_custom_fn(spec)
        self.keywords = _keywords(self.fn, spec)

    def __call__(
        self, data_source: str, solution_str: str, ground_truth: Any, extra_info: Optional[dict] = None
    ) -> float:
        available = {
            "data_source": data_source,
            "solution_str": solution_str,
            "ground_truth": ground_truth,
            "extra_info": extra_info,
        }
        return float(self.fn(**{k: available[k] for k in self.keywords}))
