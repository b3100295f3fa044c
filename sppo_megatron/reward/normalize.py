"""String normalisation of final answers (after the Hendrycks MATH / verl math_dapo normalisers).

Cheap rewrites that make equivalent LaTeX spellings identical, so that most answers are
decided by string or numeric comparison without a symbolic checker. Each rewrite is one that
math-verify (0.9.0) makes too, so a verdict reached on the rewritten strings is math-verify's;
a spelling math-verify could read differently (digits split by spaces, a trailing letter it
takes for a unit) makes `normalize_answer` return None ("ask math-verify"). Every rewrite is a
fixed replacement or a regex that cannot backtrack catastrophically (at worst quadratic), and
callers cap the answer length, so the cost is bounded.
"""

import re
from typing import Optional

_SPACES = ("\n", "\t", "\\,", "\\;", "\\:", "\\qquad", "\\quad")
_DROP = (
    "\\!",
    "\\displaystyle",
    "\\left",
    "\\right",
    "^{\\circ}",
    "^\\circ",
    "°",
    "\\degree",
    "\\$",
    "$",
    "\\%",
    "%",
)
_RENAME = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("**", "^"), ("{,}", ","))
_AND_OR = re.compile(r",?\s*\\text\{\s*(?:and|or)\s*\}")
_TEXT_COMMAND = re.compile(r"\\(?:text(?:normal|bf|it|rm)?|math(?:rm|it|bf)|mbox)(?![A-Za-z])")
# math-verify drops everything from the first text command on when the answer ends with its
# closing brace (optionally ^digit): "5\\text{ cm}^2", "12 \\text{apples}", "5 \\text{ cm}, 6 \\text{ cm}".
_TRAILING_TEXT = re.compile(_TEXT_COMMAND.pattern + r"\{.*?\}(?:\^\d|\{\^\d\})?$")
_TEXT_ANSWER = re.compile(_TEXT_COMMAND.pattern + r"\s*\{([^{}]*)\}")
# The closed list of unit words stripped after a number: real units that math-verify strips
# too (its list, latex2sympy2_extended.math_normalization.units, also holds letters such as
# "m", "g", "s", "t" and non-units, left to it; "dollars", "mg" or "weeks" written bare it keeps).
UNIT_WORDS = (
    "cm",
    "mm",
    "km",
    "kg",
    "ft",
    "feet",
    "inch",
    "inches",
    "yard",
    "mile",
    "meter",
    "metre",
    "liter",
    "litre",
    "gallon",
    "hour",
    "hr",
    "minute",
    "min",
    "second",
    "sec",
    "day",
    "month",
    "year",
    "degree",
    "unit",
    "acre",
    "hectare",
    "mph",
    "kmph",
    "cent",
    "pound",
    "lb",
)
_UNIT = "(?:square|sq|cubic)?\\s*(?:" + "|".join(sorted(UNIT_WORDS, key=len, reverse=True)) + ")(?:es|s)?"
_TRAILING_UNITS = re.compile(r"(?<=[\d}\s])\s*" + _UNIT + r"\s*$")
# Short trailing words math-verify strips as units although they are usually variables or
# noise ("5 s", "3 t", "2 ab"): the fast path cannot know which was meant, so it asks.
_MV_SHORT_UNITS = re.compile(
    r"[\d}\s]\s*(?:[tshcdglmo]|st|th|rd|ab|bc|am|pm|by|gm|dm|lt|mt|mp|cc|rs|yr|per|are)"
    r"(?:es|s)?\s*$"
)
_SPLIT_DIGITS = re.compile(r"\d\s+\.?\d")
WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
PLAIN_WORDS = re.compile(r"\(?[A-Za-z]+\)?")
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{[A-Za-z*]*\}")
# Spaces go, except one after a command that a letter follows ("\\cdot x" must not become "\\cdotx").
_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|\s+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL_COMMA = re.compile(r"0,\d{3}")
_ASSIGNED = re.compile(r"^(?:[A-Za-z](?:_\{?\w{1,3}\}?)?|\\[A-Za-z]{2,8})(?:=(?!=)|\\in(?![A-Za-z]))")
_CONTROL_SPACE = re.compile(r"(?<!\\)\\ ")
_INT_SLASH = re.compile(r"^(-?)(\d{1,15})/(\d{1,15})$")
_FRAC_DIGITS = re.compile(r"\\frac(\d)(\d+)")


def _remove_text(s: str) -> Optional[str]:
    """Trailing text (units, words) dropped as math-verify drops it; a whole-answer \\text{...}
    unwrapped ("\\text{(B)}" -> "(B)"); None when text is left elsewhere."""
    m = _TRAILING_TEXT.search(s)
    if m and s[: m.start()].strip():
        s = s[: m.start()]
    whole = _TEXT_ANSWER.fullmatch(s.strip())
    if whole:
        return whole.group(1).strip()
    return None if _TEXT_COMMAND.search(s) else s


def _brace_one_char_args(s: str, command: str, n_args: int) -> str:
    """\\frac12 -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}: wrap single-character arguments in braces."""
    parts = s.split(command)
    out = [parts[0]]
    for part in parts[1:]:
        fixed, rest = "", part
        for _ in range(n_args):
            if rest[:1] == "{" or rest[:1] == "[" or not rest:
                break
            if rest[0] == "\\":
                break
            fixed += "{" + rest[0] + "}"
            rest = rest[1:]
        out.append(command + fixed + rest)
    return "".join(out)


def split_assignment(s: str) -> tuple[str, str]:
    """'x=3' -> ('x', '3'), 'k \\in [1,2]' -> ('k', '[1,2]'), '3' -> ('', '3'): a lone variable name
    on the left is not part of the answer."""
    m = _ASSIGNED.match(s)
    if m and s.count("=") <= 1:
        return s[: m.end()].rstrip("=").removesuffix("\\in"), s[m.end() :]
    return "", s


def _strip_units(s: str) -> str:
    """Up to two trailing unit words ("5 square cm", "3 cm^2" via \\text), as math-verify strips them."""
    for _ in range(2):
        stripped = _TRAILING_UNITS.sub("", s)
        if not stripped.strip() or stripped == s:
            break
        s = stripped
    return s


def _separators(s: str) -> Optional[str]:
    """Thousands separators and the decimal comma, read as math-verify reads a whole answer:
    strict d{1,3}(,ddd)+ is one number, "0,ddd" is 0.ddd; any other comma separates elements."""
    if not _THOUSANDS.fullmatch(s):
        return s
    if _DECIMAL_COMMA.fullmatch(s):
        return s.replace(",", ".")
    return None if s.lstrip("-").startswith("0") else s.replace(",", "")


def normalize_answer(answer: str) -> Optional[str]:
    """Canonical spelling of one final answer (the content of a \\boxed{...}); None when only
    math-verify can tell how to read it.

    LaTeX spacing becomes spaces; \\left/\\right, degree signs, dollar and percent signs,
    thousands separators (strictly d{1,3}(,ddd)+ with no spaces), \\text{...} wrappers and
    trailing unit words from UNIT_WORDS are removed; then spaces go, so "2 x" is the product
    "2x". \\dfrac and \\tfrac become \\frac; one-character \\frac and \\sqrt arguments get braces;
    integer "a/b" becomes \\frac{a}{b}. "x = 3" stays: compare.py drops the name.
    """
    s = _CONTROL_SPACE.sub(" ", answer.strip())
    for old in _SPACES:
        s = s.replace(old, " ")
    for old in _DROP:
        s = s.replace(old, "")
    for old, new in _RENAME:
        s = s.replace(old, new)
    s = _AND_OR.sub(",", s)
    s = _remove_text(s)
    if s is None:
        return None
    s = _strip_units(s).strip()
    if _SPLIT_DIGITS.search(s) or _MV_SHORT_UNITS.search(s):
        return None
    s = _separators(s)
    if s is None:
        return None
    s = s.replace("\\\\", "\\") if "\\begin" not in s else s
    s = _SPACE.sub(lambda m: m.group(1) + " " if m.group(1) else "", s)
    if s.endswith(".") or (WORD.search(_ENVIRONMENT.sub("", s)) and not PLAIN_WORDS.fullmatch(s)):
        return None
    s = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", s)  # math-verify: \frac612 is 6/12
    s = _brace_one_char_args(s, "\\frac", 2)
    s = _brace_one_char_args(s, "\\sqrt", 1)
    s = s.replace("{.", "{0.").replace("(.", "(0.").replace(",.", ",0.")
    if s.startswith("."):
        s = "0" + s
    elif s.startswith("-."):
        s = "-0" + s[1:]
    m = _INT_SLASH.match(s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return s
