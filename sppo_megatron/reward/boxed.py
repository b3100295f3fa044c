"""Find the final answer of a MATH-style solution: the last \\boxed{...} (\\fbox{...} when none).

Shared by the data preparation (ground truths from reference solutions) and the math reward
(answers from responses), so both read a box the same way. Linear time in the text length.
"""

from __future__ import annotations

import re
from typing import Optional

_COMMANDS = ("\\boxed", "\\fbox")
# What may stand between two boxes that together give one answer list: a comma, a semicolon,
# "and"/"or" (bare or in \text{}), dollar signs and spaces ("$\\boxed{1}$, $\\boxed{2}$").
_BETWEEN_BOXES = re.compile(r"[\s$]*(?:,|;|,?\s*(?:and|or)|,?\s*\\text\{\s*(?:and|or)\s*\})?[\s$]*")
MAX_BOXES = 8
MAX_BETWEEN_CHARS = 24


def _matching_brace(text: str, open_at: int) -> Optional[int]:
    """Index of the brace closing the one at `open_at`, or None if the text ends first."""
    depth = 0
    for i in range(open_at, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxed_at(text: str, start: int, command: str) -> Optional[str]:
    """The `command{...}` starting at `start`, brace-balanced; None if unclosed or empty.

    The brace-less form `\\boxed 5$` (seen in some solutions) runs to the next `$` or the end,
    as in the MATH reference code.
    """
    after = start + len(command)
    brace = after
    while brace < len(text) and text[brace] == " ":
        brace += 1
    if brace < len(text) and text[brace] == "{":
        end = _matching_brace(text, brace)
        return None if end is None else text[start : end + 1]
    if brace > after:
        boxed = text[start:].split("$")[0]
        return boxed if boxed[after - start :].strip() else None
    return None


def last_boxed_only_string(text: str) -> Optional[str]:
    """The last `\\boxed{...}` of `text` including the command, brace-balanced; None if absent or unclosed.

    Falls back to the last `\\fbox{...}` when there is no \\boxed.
    """
    for command in _COMMANDS:
        start = text.rfind(command)
        if start >= 0:
            return _boxed_at(text, start, command)
    return None


def preceding_boxes(text: str, start: int, max_chars: int) -> list[str]:
    """Contents of the boxes directly before the one at `text[start:]`, nearest last, that are
    joined to it only by a separator (",", ";", "and", "or"): `\\boxed{1}, \\boxed{2}` is one
    answer list. At most MAX_BOXES - 1 boxes and `max_chars` characters are read.
    """
    command = next(c for c in _COMMANDS if text.startswith(c, start))
    found: list[str] = []
    budget = max_chars
    while len(found) < MAX_BOXES - 1:
        window = max(0, start - MAX_BETWEEN_CHARS - budget)
        before = text.rfind(command, window, start)
        if before < 0:
            break
        boxed = _boxed_at(text[before:start], 0, command)
        if boxed is None or not _BETWEEN_BOXES.fullmatch(text, before + len(boxed), start):
            break
        budget -= len(boxed)
        if budget < 0:
            break
        found.append(remove_boxed(boxed))
        start = before
    return found[::-1]


def remove_boxed(s: str) -> str:
    """The content of a string returned by `last_boxed_only_string` (`\\boxed{ans}` -> `ans`)."""
    for command in _COMMANDS:
        if s.startswith(command):
            rest = s[len(command) :]
            stripped = rest.lstrip(" ")
            if stripped.startswith("{") and stripped.endswith("}"):
                return stripped[1:-1]
            if rest.startswith(" "):
                return stripped
    raise ValueError(f"not a \\boxed{{...}} or \\fbox{{...}} string: {s[:60]!r}")
