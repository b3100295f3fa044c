"""Rule-based reward for MATH-style answers: the last \\boxed{...} of the response (else \\fbox{...}),
or the boxes ending it when the ground truth is a list (`final_answer`).

Two stages. `fast_score` decides most pairs with string normalisation and safe numeric
evaluation; its cost is bounded by construction (only the last box is read; answers over
MAX_ANSWER_CHARS, nested deeper than MAX_NESTING or holding control characters score 0; every
step is at most quadratic in the capped length). Only the pairs it leaves undecided go to
math-verify (`symbolic_check`), which is ~100x slower and can hang on hostile input, so
RewardScorer runs that stage in killable worker processes; `compute_score` runs both stages
in-process with no time limit.
"""

import logging
import math
import re
from typing import Optional

from sppo_megatron.reward.boxed import last_boxed_only_string, preceding_boxes, remove_boxed
from sppo_megatron.reward.compare import answers_equal, is_answer_list
from sppo_megatron.reward.normalize import normalize_answer

MAX_ANSWER_CHARS = 500
MAX_NESTING = 16
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_POWER_TOWER = re.compile(r"\d+(?:\^\{?\d+)+")
_HUGE_LITERAL = re.compile(r"\d{100}")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _last_box(solution_str: str) -> tuple[int, Optional[str]]:
    """(start of the last \\boxed, else \\fbox, command; its content or None)."""
    start = solution_str.rfind("\\boxed")
    if start < 0:
        start = solution_str.rfind("\\fbox")
        if start < 0:
            return start, None
    boxed = last_boxed_only_string(solution_str[start : start + MAX_ANSWER_CHARS + 16])
    return start, None if boxed is None else remove_boxed(boxed)


def extract_answer(solution_str: str) -> Optional[str]:
    """Content of the last \\boxed{...} (the last \\fbox{...} if there is none), or None when
    absent, unbalanced or too long.

    Only the text from that command on is scanned (str.rfind runs in C), so a megabyte
    response costs about a millisecond.
    """
    return _last_box(solution_str)[1]


def final_answer(solution_str: str, ground_truth: str) -> Optional[str]:
    """The answer of a response: its last box, or, when the ground truth is a list of answers
    ("1, 2", "\\{1, 2\\}", "(2,2), (6,2)"), the boxes that end the response joined only by
    separators (`\\boxed{1}, \\boxed{2}`, `\\boxed{(2, 2)} and \\boxed{(6, 2)}`) read as one list.
    """
    start, answer = _last_box(solution_str)
    if answer is None:
        return None
    earlier = preceding_boxes(solution_str, start, MAX_ANSWER_CHARS - len(answer))
    if not earlier:
        return answer
    gold = normalize_answer(_gold_answer(str(ground_truth)))
    return ", ".join(earlier + [answer]) if gold is not None and is_answer_list(gold) else answer


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
    if not answer.strip():
        return 0.0
    gold = _gold_answer(str(ground_truth))
    normalized, gold_normalized = normalize_answer(answer), normalize_answer(gold)
    if normalized == "":
        return 0.0
    verdict = None
    if normalized is not None and gold_normalized is not None:
        verdict = answers_equal(gold_normalized, normalized, "%" in gold, "%" in answer)
    if verdict is None:
        return 0.0 if _explosive(normalized or answer) and not _explosive(gold_normalized or gold) else None
    return float(verdict)


def _quiet_math_verify():
    """Import math-verify with its console warnings off (it logs one per disabled timeout)."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    from math_verify import parse, verify

    return parse, verify


def symbolic_check(answer: str, ground_truth: str) -> tuple[float, Optional[str]]:
    """math-verify equivalence and the first exception math-verify raised (None if none).

    Scores are exactly math-verify's own (an exception in parsing gives 0.0, one in comparing
    a pair of parsed candidates makes that pair unequal, as in `verify`); the exception is
    returned so that it is counted in `reward/errors` instead of vanishing. Signal-based
    timeouts are off: callers bound the time.
    """
    parse, verify = _quiet_math_verify()
    try:
        gold = parse("\\boxed{" + _gold_answer(str(ground_truth)) + "}", parsing_timeout=None, raise_on_error=True)
        pred = parse("\\boxed{" + answer + "}", parsing_timeout=None, raise_on_error=True)
    except Exception as e:
        return 0.0, _describe(e)
    error = None
    for g in gold:
        for p in pred:
            try:
                if verify(g, p, timeout_seconds=None, raise_on_error=True):
                    return 1.0, error
            except Exception as e:
                error = error or _describe(e)
    return 0.0, error


def _describe(e: BaseException) -> str:
    return f"math-verify: {type(e).__name__}: {e}"[:500]


def compute_score(solution_str: str, ground_truth: str) -> float:
    """1.0 if the final answer of `solution_str` (see `final_answer`) equals `ground_truth`
    mathematically, else 0.0.

    No time limit, and math-verify exceptions score as math-verify scores them: use
    RewardScorer for untrusted batches (it also counts those exceptions).
    """
    answer = final_answer(solution_str, ground_truth)
    if answer is None:
        return 0.0
    decided = fast_score(answer, ground_truth)
    return decided if decided is not None else symbolic_check(answer, ground_truth)[0]
