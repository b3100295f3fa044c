"""Rule-based rewards for numeric final answers: GSM8K and the synthetic `arith` task.

GSM8K: the number after the last '####', else the last number in the response. arith (the
CPU demo's "a+b=" task): the content of the last \\boxed{...}, else the last number. Commas,
'$' and a trailing period are ignored; values are compared as numbers. Only the tail of a
long response is searched, so the cost is bounded.
"""

import math
import re
from typing import Optional

from sppo_megatron.reward.math import extract_answer

TAIL_CHARS = 2000
MAX_NUMBER_CHARS = 64
_NUMBER = re.compile(r"-?\$?\s?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def _to_float(text: str) -> Optional[float]:
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not cleaned or len(cleaned) > MAX_NUMBER_CHARS:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def last_number(text: str) -> Optional[float]:
    """The last number in the final TAIL_CHARS characters of `text`."""
    matches = _NUMBER.findall(text[-TAIL_CHARS:])
    return _to_float(matches[-1]) if matches else None


def _first_number(text: str) -> Optional[float]:
    match = _NUMBER.search(text)
    return _to_float(match.group()) if match else None


def _numbers_equal(value: Optional[float], ground_truth: str) -> float:
    expected = _to_float(str(ground_truth).split("####")[-1].strip())
    if value is None or expected is None:
        return 0.0
    return float(math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9))


def compute_score(solution_str: str, ground_truth: str) -> float:
    """1.0 if the GSM8K final answer ('#### N', else the last number) equals `ground_truth`."""
    marker = solution_str.rfind("####")
    if marker < 0:
        return _numbers_equal(last_number(solution_str), ground_truth)
    return _numbers_equal(_first_number(solution_str[marker + 4 : marker + 4 + TAIL_CHARS]), ground_truth)


def compute_arith_score(solution_str: str, ground_truth: str) -> float:
    """1.0 if the last boxed answer (else the last number) equals `ground_truth` numerically."""
    boxed = extract_answer(solution_str)
    value = _to_float(boxed.strip()) if boxed is not None else last_number(solution_str)
    return _numbers_equal(value, ground_truth)
