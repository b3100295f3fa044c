"""Find the final answer of a MATH-style solution: the last \\boxed{...} (\\fbox{...} when none).

Shared by the data preparation (ground truths from reference solutions) and the math reward
(answers from responses), so both read a box the same way. Linear time in the text length.
"""

from __future__ import annotations

from typing import Optional

_COMMANDS = ("\\boxed", "\\fbox")


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


def last_boxed_only_string(text: str) -> Optional[str]:
    """The last `\\boxed{...}` of `text` including the command, brace-balanced; None if absent or unclosed.

    Falls back to the last `\\fbox{...}` when there is no \\boxed. The brace-less form
    `\\boxed 5$` (seen in some solutions) runs to the next `$` or the end, as in the MATH reference code.
    """
    for command in _COMMANDS:
        start = text.rfind(command)
        if start >= 0:
            break
    else:
        return None
    after = start + len(command)
    brace = after
    while brace < len(text) and text[brace] == " ":
        brace += 1
    if brace < len(text) and text[brace] == "{":
        end = _matching_brace(text, brace)
        return None if end is None else text[start:end + 1]
    if brace > after:
        boxed = text[start:].split("$")[0]
        return boxed if boxed[after - start:].strip() else None
    return None


def remove_boxed(s: str) -> str:
    """The content of a string returned by `last_boxed_only_string` (`\\boxed{ans}` -> `ans`)."""
    for command in _COMMANDS:
        if s.startswith(command):
            rest = s[len(command):]
            stripped = rest.lstrip(" ")
            if stripped.startswith("{") and stripped.endswith("}"):
                return stripped[1:-1]
            if rest.startswith(" "):
                return stripped
    raise ValueError(f"not a \\boxed{{...}} or \\fbox{{...}} string: {s[:60]!r}")
