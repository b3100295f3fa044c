"""Rule-based reward for MATH-style answers: the last \\boxed{...} of the response (else \\fbox{...}).

Two stages. `fast_score` decides most pairs with string normalisation and safe numeric
evaluation; its cost is bounded by construction (only the last box is read; answers over
MAX_ANSWER_CHARS, nested deeper than MAX_NESTING or holding control characters score 0; every
step is at most quadratic in the capped length). Only the pairs it leaves undecided go to
math-verify (`symbolic_score`), which is ~100x slower and can hang on hostile input, so
RewardScorer runs that stage in killable worker processes; `compute_score` runs both stages
in-process with no time limit.
"""

import logging
import math
import re
from typing import Optional

from sppo_megatron.reward.boxed import last_boxed_only_string, remove_boxed
from sppo_megatron.reward.compare import answers_equal
from sppo_megatron.reward.normalize import normalize_answer

MAX_ANSWER_CHARS = 500
MAX_NESTING = 16
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_POWER_TOWER = re.compile(r"\d+(?:\^\{?\d+)+")
_HUGE_LITERAL = re.compile(r"\d{100}")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def extract_answer(solution_str: str) -> Optional[str]:
    """Content of the last \\boxed{...} (the last \\fbox{...} if there is none), or None when
    absent, unbalanced or too long.

    Only the text from that command on is scanned (str.rfind runs in C), so a megabyte
    response costs about a millisecond.
    """
    start = solution_str.rfind("\\boxed")
    if start < 0:
        start = solution_str.rfind("\\fbox")
        if start < 0:
            return None
    boxed = last_boxed_only_string(solution_str[start:start + MAX_ANSWER_CHARS + 16])
    if boxed is None:
        return None
    return remove_boxed(boxed)


def _nesting(s: str) -> int:
    depth = deepest = 0
    for c in s:
        if c in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")}]":
            depth -= 1
    return deepest


def _gold_answer(ground_truth: str) -> str:
    """Ground truths are usually the bare answer; accept a full solution with a box too."""
    if any(cmd in ground_truth for cmd in _BOX_COMMANDS):
        boxed = extract_answer(ground_truth)
        if boxed is not None:
            return boxed
    return ground_truth


def _explosive(normalized: str) -> bool:
    """A number of 100+ digits, or an integer power tower (9^{9^{9}}, 10^10^10) or exponent
    (2^{9999999}) beyond float range: no benchmark answer is that large, and SymPy would try to
    build the integer or evaluate to that precision.
    """
    if _HUGE_LITERAL.search(normalized):
        return True
    for match in _POWER_TOWER.finditer(normalized):
        numbers = [float(n) for n in re.findall(r"\d+", match.group())]
        value = numbers[-1]
        try:
            for base in reversed(numbers[:-1]):
                value = math.pow(base, value)
        except OverflowError:
            value = math.inf
        if math.isinf(value) and (len(numbers) > 2 or numbers[-1] >= 1e6):
            return True
    return False


def fast_score(answer: str, ground_truth: str) -> Optional[float]:
    """1.0 or 0.0 when cheap checks decide, None when the symbolic checker is needed."""
    if len(answer) > MAX_ANSWER_CHARS or _nesting(answer) > MAX_NESTING or _CONTROL_CHARS.search(answer):
        return 0.0
    gold = _gold_answer(str(ground_truth))
    normalized = normalize_answer(answer)
    if not normalized:
        return 0.0
    gold_normalized = normalize_answer(gold)
    verdict = answers_equal(gold_normalized, normalized, "%" in gold, "%" in answer)
    if verdict is None:
        return 0.0 if _explosive(normalized) and not _explosive(gold_normalized) else None
    return float(verdict)


def _quiet_math_verify():
    """Import math-verify with its console warnings off (it logs one per disabled timeout)."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    from math_verify import parse, verify

    return parse, verify


def symbolic_score(answer: str, ground_truth: str) -> float:
    """math-verify equivalence, with its signal-based timeouts disabled (callers bound the time)."""
    parse, verify = _quiet_math_verify()
    try:
        gold = parse("\\boxed{" + _gold_answer(str(ground_truth)) + "}", parsing_timeout=None)
        pred = parse("\\boxed{" + answer + "}", parsing_timeout=None)
        return float(verify(gold, pred, timeout_seconds=None))
    except Exception:
        return 0.0


def compute_score(solution_str: str, ground_truth: str) -> float:
    """1.0 if the last boxed answer of `solution_str` equals `ground_truth` mathematically, else 0.0.

    No time limit: use RewardScorer for untrusted batches.
    """
    answer = extract_answer(solution_str)
    if answer is None:
        return 0.0
    decided = fast_score(answer, ground_truth)
    return decided if decided is not None else symbolic_score(answer, ground_truth)
