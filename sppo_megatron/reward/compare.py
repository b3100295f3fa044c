"""Cheap equivalence of two normalised answers: True, False, or None (undecided).

Tuples and intervals are compared element-wise with their brackets, sets and answer lists
as unordered collections, scalars numerically (numeric.py). None means "needs the symbolic
checker"; it is returned whenever a cheap verdict could disagree with math-verify.
"""

import math
import re
from typing import Optional

from sppo_megatron.reward.normalize import PLAIN_WORDS, split_assignment
from sppo_megatron.reward.numeric import NotSimple, Overflow, evaluate, has_variables, parse

MAX_ELEMENTS = 16
_OPEN, _CLOSE = "([{", ")]}"
_DECIMAL = re.compile(r"\.\d")
_INTEGER = re.compile(r"-?\d+")
_MATRIX = re.compile(r"\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}")


def _split_top_level(s: str) -> list[str]:
    """Split on commas outside any bracket."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _closes_at_end(s: str) -> bool:
    """The bracket opened at s[0] is closed by s[-1] (and not earlier)."""
    depth = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _structure(s: str) -> tuple[str, str, list[str]]:
    """('scalar'|'ordered'|'unordered', brackets, elements) of a normalised answer.

    A matrix is 'ordered' with its shape as the brackets.
    """
    matrix = _MATRIX.fullmatch(s)
    if matrix:
        rows = [row.split("&") for row in matrix.group(2).removesuffix("\\\\").split("\\\\")]
        shape = "matrix " + ",".join(str(len(row)) for row in rows)
        return "ordered", shape, [cell for row in rows for cell in row]
    if s.startswith("\\{") and s.endswith("\\}") and _closes_at_end(s[1:]):
        return "unordered", "{}", _split_top_level(s[2:-2])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closes_at_end(s):
        parts = _split_top_level(s[1:-1])
        if len(parts) > 1:
            return "ordered", s[0] + s[-1], parts
    parts = _split_top_level(s)
    if len(parts) > 1:
        return "unordered", "", parts
    return "scalar", "", [s]


def is_answer_list(normalized: str) -> bool:
    """A set or a comma-separated list of answers ("1,2", "\\{1,2\\}", "(2,2),(6,2)"), not one tuple."""
    kind, _, parts = _structure(normalized)
    return kind == "unordered" and len(parts) > 1


def _close(x: float, y: float, exact: bool) -> Optional[bool]:
    """Different beyond 1e-4 relative; equal to 1e-9 relative, or exactly when `exact` (a decimal
    literal is involved: math-verify rounds it and keeps 0.9999999999 != 1); else undecided."""
    if math.isinf(x) or math.isinf(y):
        return x == y
    scale = max(1.0, abs(x), abs(y))
    diff = abs(x - y)
    if diff > 1e-4 * scale:
        return False
    if scale >= 2.0**53:
        return None
    if exact:
        return True if x == y else None
    return True if diff <= 1e-9 * scale else None


def _values_equal(gold: list[float], answer: list[float], exact: bool) -> Optional[bool]:
    return _all_of([_close(g, a, exact) for g, a in zip(gold, answer)])


def _parse_or_none(s: str):
    try:
        return parse(s)
    except NotSimple:
        return None


def _without_assignments(gold: str, answer: str) -> Optional[tuple[str, str]]:
    """Both sides without a lone variable on the left ("x = 3" -> "3"); None when both have one
    and the names differ (math-verify: "y = 3" is not "x = 3")."""
    (g_name, g_value), (a_name, a_value) = split_assignment(gold), split_assignment(answer)
    if g_name and a_name and g_name != a_name:
        return None
    return g_value, a_value


def _values(gold: str, answer: str, numeric_only: bool = False) -> Optional[tuple[list[float], list[float]]]:
    """Both sides evaluated (at three points when there are variables); None when either is
    outside the grammar, fails to evaluate, or has variables while `numeric_only`. Raises
    Overflow when the answer leaves the float range (9^9^9^9): no reasonable gold does."""
    g_node, a_node = _parse_or_none(gold), _parse_or_none(answer)
    if g_node is None or a_node is None:
        return None
    variables = has_variables(g_node) or has_variables(a_node)
    if variables and numeric_only:
        return None
    points = 3 if variables else 1
    try:
        a_values = evaluate(a_node, points)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    try:
        return evaluate(g_node, points), a_values
    except (Overflow, ValueError, ZeroDivisionError, RecursionError):
        return None


def _scalar_equal(gold: str, answer: str) -> Optional[bool]:
    sides = _without_assignments(gold, answer)
    if sides is None:
        return None
    gold, answer = sides
    if gold == answer:
        return True
    try:
        values = _values(gold, answer)
    except Overflow:
        return False
    if values is None:
        if PLAIN_WORDS.fullmatch(gold) and PLAIN_WORDS.fullmatch(answer):
            return gold.strip("()").lower() == answer.strip("()").lower()
        return None
    exact = bool(_DECIMAL.search(gold) or _DECIMAL.search(answer))
    return _values_equal(*values, exact)


def _percent_equal(gold: str, answer: str, gold_percent: bool) -> Optional[bool]:
    """One side was written with %: math-verify takes p% as p/100, and as p only when both
    sides are integers (25% == 25, 12.5% != 12.5); numbers only."""
    sides = _without_assignments(gold, answer)
    try:
        values = None if sides is None else _values(*sides, numeric_only=True)
    except Overflow:
        return False
    if values is None:
        return None
    g_values, a_values = values
    if gold_percent:
        g_values = [v / 100 for v in g_values]
    else:
        a_values = [v / 100 for v in a_values]
    verdicts = [_values_equal(g_values, a_values, exact=True)]
    if _INTEGER.fullmatch(sides[0]) and _INTEGER.fullmatch(sides[1]):
        verdicts.append(int(sides[0]) == int(sides[1]))
    if True in verdicts:
        return True
    return False if all(v is False for v in verdicts) else None


def _all_of(verdicts: list[Optional[bool]]) -> Optional[bool]:
    if False in verdicts:
        return False
    return True if all(verdicts) else None


def _unordered_equal(gold: list[str], answer: list[str]) -> Optional[bool]:
    """Every gold element matches a distinct answer element."""
    if len(gold) != len(answer) or len(gold) > MAX_ELEMENTS:
        return None
    unused = list(range(len(answer)))
    undecided = False
    for g in gold:
        verdicts = {j: _scalar_equal(g, answer[j]) for j in unused}
        match = next((j for j, v in verdicts.items() if v), None)
        if match is not None:
            unused.remove(match)
        elif all(v is False for v in verdicts.values()):
            return False
        else:
            undecided = True
    return None if undecided else True


def answers_equal(gold: str, answer: str, gold_percent: bool = False, answer_percent: bool = False) -> Optional[bool]:
    """Equivalence of two normalised answers; None when only a symbolic check can tell.

    `gold_percent` / `answer_percent`: that side was written with a % sign (removed by
    normalisation); when only one side was, only numeric scalars are decided.
    """
    g_kind, g_brackets, g_parts = _structure(gold)
    a_kind, a_brackets, a_parts = _structure(answer)
    if gold_percent != answer_percent:
        return _percent_equal(gold, answer, gold_percent) if g_kind == a_kind == "scalar" else None
    if gold == answer:
        return True
    if g_kind == a_kind == "scalar":
        return _scalar_equal(gold, answer)
    if g_kind == a_kind == "ordered":
        if g_brackets != a_brackets or len(g_parts) != len(a_parts):
            return False
        return _all_of([_scalar_equal(g, a) for g, a in zip(g_parts, a_parts)])
    if g_kind == a_kind == "unordered":
        return _unordered_equal(g_parts, a_parts)
    if "scalar" in (g_kind, a_kind):
        parts = g_parts if g_kind != "scalar" else a_parts
        scalar = gold if g_kind == "scalar" else answer
        numeric = all(_parse_or_none(p) is not None for p in parts + [scalar])
        return False if numeric and len(parts) > 1 else None
    return None
