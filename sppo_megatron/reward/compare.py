"""Cheap equivalence of two normalised answers: True, False, or None (undecided).

Tuples and intervals are compared element-wise with their brackets, sets and answer lists
as unordered collections, scalars numerically (numeric.py). None means "needs the symbolic
checker"; it is returned whenever a cheap verdict could disagree with math-verify.
"""

import math
import re
from typing import Optional

from sppo_megatron.reward.normalize import strip_assignment
from sppo_megatron.reward.numeric import NotSimple, Overflow, evaluate, has_variables, parse

MAX_ELEMENTS = 16
_PLAIN_WORDS = re.compile(r"\(?[A-Za-z]+\)?")
_OPEN, _CLOSE = "([{", ")]}"
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


def _close(x: float, y: float) -> Optional[bool]:
    """Equal to 1e-9 relative, different beyond 1e-4 relative, undecided in between."""
    if math.isinf(x) or math.isinf(y):
        return x == y
    scale = max(1.0, abs(x), abs(y))
    diff = abs(x - y)
    if diff <= 1e-9 * scale:
        return True if scale < 2.0**53 else None
    return False if diff > 1e-4 * scale else None


def _values_equal(gold: list[float], answer: list[float]) -> Optional[bool]:
    verdicts = [_close(g, a) for g, a in zip(gold, answer)]
    if False in verdicts:
        return False
    return True if all(verdicts) else None


def _parse_or_none(s: str):
    try:
        return parse(s)
    except NotSimple:
        return None


def _scalar_equal(gold: str, answer: str, gold_percent: bool = False, answer_percent: bool = False) -> Optional[bool]:
    """A side written with % may also mean its value / 100 (25% == 0.25, as math-verify has it)."""
    gold, answer = strip_assignment(gold), strip_assignment(answer)
    if gold == answer:
        return True
    g_node, a_node = _parse_or_none(gold), _parse_or_none(answer)
    if g_node is None or a_node is None:
        if _PLAIN_WORDS.fullmatch(gold) and _PLAIN_WORDS.fullmatch(answer):
            return gold.strip("()").lower() == answer.strip("()").lower()
        return None
    points = 3 if has_variables(g_node) or has_variables(a_node) else 1
    try:
        a_values = evaluate(a_node, points)
    except Overflow:
        return False
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    try:
        g_values = evaluate(g_node, points)
    except (Overflow, ValueError, ZeroDivisionError, RecursionError):
        return None
    verdicts = [_values_equal(g_values, a_values)]
    if gold_percent:
        verdicts.append(_values_equal([v / 100 for v in g_values], a_values))
    if answer_percent:
        verdicts.append(_values_equal(g_values, [v / 100 for v in a_values]))
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
    """Equivalence of two normalised answers; None when only a symbolic check can tell."""
    if gold == answer:
        return True
    g_kind, g_brackets, g_parts = _structure(gold)
    a_kind, a_brackets, a_parts = _structure(answer)
    if g_kind == a_kind == "scalar":
        return _scalar_equal(gold, answer, gold_percent, answer_percent)
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
