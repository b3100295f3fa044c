"""String normalisation of final answers (after the Hendrycks MATH / verl math_dapo normalisers).

Cheap rewrites that make equivalent LaTeX spellings identical, so that most answers are
decided by string or numeric comparison without a symbolic checker. Every rewrite is a fixed
replacement or a regex that cannot backtrack catastrophically (at worst quadratic), and
callers cap the answer length, so the cost is bounded.
"""

import re

_DROP = (
    "\n", "\\!", "\\,", "\\;", "\\:", "~", "\\displaystyle", "\\left", "\\right",
    "^{\\circ}", "^\\circ", "°", "\\degree", "\\$", "$", "\\%", "%", "{,}", "\\quad",
)
_RENAME = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\lbrace", "\\{"), ("\\rbrace", "\\}"), ("**", "^"))
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|textit|textnormal|mbox|mathrm|rm)\s*\{([^{}]*)\}")
# Trailing words after a number ("5 cm", "12 dollars", "3 square units"): words of three or
# more letters, or any word separated by a space (a lone glued letter, as in "2x", is a variable).
_TRAILING_UNITS = re.compile(r"(?<=[\d}])(?:\s*[A-Za-z]{3,}|\s+[A-Za-z]+)(?:\s+[A-Za-z]+)*\.?(?:\s*\^\{?[23]\}?)?\s*$")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGNED = re.compile(r"^(?:[A-Za-z](?:_\{?\w{1,3}\}?)?|\\[A-Za-z]{2,8})(?:=(?!=)|\\in(?![A-Za-z]))")
_CONTROL_SPACE = re.compile(r"(?<!\\)\\ ")
_SQUARED_CUBED = re.compile(r"\^\{?[23]\}?")
_INT_SLASH = re.compile(r"^(-?)(\d{1,15})/(\d{1,15})$")


def _remove_trailing_text_units(s: str) -> str:
    """Hendrycks: a "\\text{ " (with a space) only ever introduces units; drop it to the end."""
    head, sep, tail = s.partition("\\text{ ")
    if sep and head.strip() and not any(c.isdigit() for c in _SQUARED_CUBED.sub("", tail)):
        return head
    return s


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


def strip_assignment(s: str) -> str:
    """'x=3' -> '3', 'k \\in [1,2]' -> '[1,2]': a lone variable name on the left is not part of the answer."""
    m = _ASSIGNED.match(s)
    if m and s.count("=") <= 1:
        return s[m.end():]
    return s


def normalize_answer(answer: str) -> str:
    """Canonical spelling of one final answer (the content of a \\boxed{...}).

    Spaces, \\left/\\right, degree signs, dollar and percent signs, thousands separators,
    \\text{...} wrappers and trailing unit words are removed; \\dfrac and \\tfrac become \\frac;
    one-character \\frac and \\sqrt arguments get braces; "x = 3" becomes "3"; integer "a/b"
    becomes \\frac{a}{b}.
    """
    s = _CONTROL_SPACE.sub("", answer.strip())
    for old in _DROP:
        s = s.replace(old, "")
    for old, new in _RENAME:
        s = s.replace(old, new)
    s = _remove_trailing_text_units(s)
    s = _TEXT_WRAPPER.sub(lambda m: " " + m.group(1).strip() + " ", s).strip()
    s = _TRAILING_UNITS.sub("", s)
    s = s.replace("\\\\", "\\") if "\\begin" not in s else s
    s = s.replace(" ", "").rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = strip_assignment(s)
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
