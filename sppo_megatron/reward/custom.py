"""Loading `reward.custom_fn` ("path/to/file.py:function") and calling it.

What it returns is read as verl's reward managers read it: a number (a bool counts as 0 / 1), or
a dict whose "score" is one (its other numeric entries become `reward/extra/<key>` metrics). A
string, None or any other value is an error naming the function and the value, never coerced.

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
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

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


def _is_number(value: Any) -> bool:
    return isinstance(value, bool) or (not isinstance(value, (str, bytes)) and hasattr(type(value), "__float__"))


def reward_value(value: Any, spec: str) -> Tuple[float, Dict[str, float]]:
    """(score, extra metrics) of what the custom function returned; TypeError naming it otherwise."""
    extras: Dict[str, float] = {}
    if isinstance(value, dict):
        if "score" not in value:
            raise TypeError(f"reward.custom_fn {spec} returned a dict without a 'score' key (keys: {sorted(value)})")
        extras = {str(k): float(v) for k, v in value.items() if k != "score" and _is_number(v)}
        value = value["score"]
    if not _is_number(value):
        raise TypeError(f"reward.custom_fn {spec} returned {value!r} ({type(value).__name__}), not a number")
    return float(value), extras


def extra_metrics(extras: Iterable[Dict[str, float]], num_samples: int) -> Dict[str, float]:
    """`reward/extra/<key>`: each extra entry's mean over the samples that returned it (verl logs
    a dict return's other keys the same way)."""
    values: Dict[str, List[float]] = {}
    for sample in extras:
        for key, value in sample.items():
            values.setdefault(key, []).append(value)
    return {f"reward/extra/{key}": sum(v) / len(v) for key, v in sorted(values.items()) if num_samples}


class CustomScorer:
    """A loaded custom function plus the verl keywords it accepts."""

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_custom_fn(spec)
        self.keywords = _keywords(self.fn, spec)

    def __call__(
        self, data_source: str, solution_str: str, ground_truth: Any, extra_info: Optional[dict] = None
    ) -> Tuple[float, Dict[str, float]]:
        """(score, extra metrics); TypeError when the function returns no number (see the module docstring)."""
        available = {
            "data_source": data_source,
            "solution_str": solution_str,
            "ground_truth": ground_truth,
            "extra_info": extra_info,
        }
        return reward_value(self.fn(**{k: available[k] for k in self.keywords}), self.spec)
