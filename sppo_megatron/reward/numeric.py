"""Safe numeric evaluation of simple normalised LaTeX answers (no eval, no big integers).

Answers made of numbers, + - * / ^ !, \\frac, \\sqrt, \\pi, \\infty, a few functions and
single-letter variables are parsed into a small tree and evaluated in floating point; two
answers are compared at a few fixed points for their variables. Floats keep every operation
O(1) (9^9^9^9 overflows instead of building a huge integer), and the parser caps input length
and nesting depth, so the cost is bounded no matter what the input is. Anything else raises
NotSimple and is left to the symbolic checker.
"""

import math
import re
import zlib
from typing import Union

from sppo_megatron.reward.normalize import WORD

MAX_CHARS = 500
MAX_DEPTH = 40
MAX_TOKENS = 150
MAX_DIGITS = 15

_TOKEN = re.compile(
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+(?![.\d]))?)|(?P<cmd>\\[A-Za-z]+)|(?P<op>[-+*/^()\[\]{}!])|(?P<var>[A-Za-z])"
)
_MIXED = re.compile(r"(-?)(\d{1,9})\\frac\{(\d{1,9})\}\{(\d{1,9})\}")
_MUL_CMDS = {"\\cdot": "*", "\\times": "*", "\\div": "/"}
_FUNCS = {"\\sin": math.sin, "\\cos": math.cos, "\\tan": math.tan, "\\ln": math.log, "\\exp": math.exp}
_GREEK = {
    "\\alpha",
    "\\beta",
    "\\gamma",
    "\\delta",
    "\\theta",
    "\\phi",
    "\\varphi",
    "\\lambda",
    "\\mu",
    "\\omega",
    "\\sigma",
    "\\rho",
    "\\tau",
    "\\psi",
    "\\xi",
    "\\eta",
    "\\kappa",
    "\\nu",
    "\\zeta",
}
_NOT_VARIABLES = set("eEiI")
_CLOSING = {"(": ")", "{": "}", "[": "]"}

Node = tuple


class NotSimple(Exception):
    """The answer is outside the grammar this module evaluates."""


class Overflow(Exception):
    """A finite computation left the float range (e.g. 9^9^9^9): no reasonable answer does that."""


def _tokenize(s: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(s):
        if s[pos] == " ":
            pos += 1
            continue
        m = _TOKEN.match(s, pos)
        if not m:
            raise NotSimple(s[pos])
        tokens.append((m.lastgroup, m.group()))
        pos = m.end()
        if len(tokens) > MAX_TOKENS:
            raise NotSimple("too many tokens")
    return tokens


class _Parser:
    """Recursive descent over the token list; depth-limited."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        self.pos += 1
        return tok

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise NotSimple("too deep")

    def expr(self) -> Node:
        self.enter()
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            node = ("add" if op == "+" else "sub", node, self.term())
        self.depth -= 1
        return node

    def starts_atom(self) -> bool:
        kind, text = self.peek()
        if kind in ("num", "var"):
            return True
        if kind == "op":
            return text in "({["
        return kind == "cmd" and text not in _MUL_CMDS

    def term(self) -> Node:
        node = self.unary()
        while True:
            kind, text = self.peek()
            if (kind == "op" and text in "*/") or (kind == "cmd" and text in _MUL_CMDS):
                self.take()
                op = _MUL_CMDS.get(text, text)
                node = ("mul" if op == "*" else "div", node, self.unary())
            elif self.starts_atom():
                node = ("mul", node, self.power())
            else:
                return node

    def unary(self) -> Node:
        if self.peek() in (("op", "-"), ("op", "+")):
            self.enter()
            sign = self.take()[1]
            node = self.unary()
            self.depth -= 1
            return ("neg", node) if sign == "-" else node
        return self.power()

    def power(self) -> Node:
        node = self.atom()
        while self.peek() == ("op", "!"):
            self.take()
            node = ("fact", node)
        if self.peek() == ("op", "^"):
            self.take()
            self.enter()
            node = ("pow", node, self.exponent())
            self.depth -= 1
            if self.peek() == ("op", "^"):
                raise NotSimple("a^b^c")  # math-verify does not read it as a^(b^c)
        return node

    def exponent(self) -> Node:
        """A signed atom: in x^2y only the 2 is the exponent."""
        if self.peek() in (("op", "-"), ("op", "+")):
            sign = self.take()[1]
            node = self.exponent()
            return ("neg", node) if sign == "-" else node
        return self.atom()

    def argument(self) -> Node:
        """A function's argument as math-verify reads it: \\sin 2x is sin(2x), \\sin(x) is sin(x);
        \\sin(x)y, \\sin x \\cos x, \\sin x / 2 and \\sin^2 x are left to it."""
        if self.peek() == ("op", "^"):
            raise NotSimple("function power")
        self.enter()
        bracketed = self.peek() in (("op", "("), ("op", "["), ("op", "{"))
        node = self.atom() if bracketed else self.power()
        if bracketed and self.peek() in (("op", "^"), ("op", "!")):
            raise NotSimple("\\sin(x)^2")
        while not bracketed and self.starts_atom():
            if self.peek()[1] in _FUNCS:
                raise NotSimple("function in a function argument")
            node = ("mul", node, self.power())
        kind, text = self.peek()
        if self.starts_atom() or (kind == "op" and text in "*/") or (kind == "cmd" and text in _MUL_CMDS):
            raise NotSimple("function argument")
        self.depth -= 1
        return node

    def group(self) -> Node:
        """A braced argument, or a single number/variable token (\\frac12 was normalised already)."""
        kind, text = self.peek()
        if kind == "op" and text == "{":
            return self.atom()
        if kind in ("num", "var"):
            return self.atom()
        raise NotSimple("argument")

    def atom(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            if sum(c.isdigit() for c in text.partition("e")[0].partition("E")[0]) > MAX_DIGITS:
                raise NotSimple("more digits than a float holds")
            return ("num", float(text))
        if kind == "var":
            if text in _NOT_VARIABLES:
                raise NotSimple(text)
            return ("var", text)
        if kind == "op" and text in _CLOSING:
            self.enter()
            node = self.expr()
            if self.take() != ("op", _CLOSING[text]):
                raise NotSimple("bracket")
            self.depth -= 1
            return node
        if kind == "cmd":
            return self.command(text)
        raise NotSimple(text or "end")

    def command(self, name: str) -> Node:
        if name == "\\frac":
            return ("div", self.group(), self.group())
        if name == "\\sqrt":
            index = None
            if self.peek() == ("op", "["):
                self.take()
                index = self.expr()
                if self.take() != ("op", "]"):
                    raise NotSimple("sqrt index")
            return ("sqrt", self.group(), index)
        if name == "\\pi":
            return ("num", math.pi)
        if name == "\\infty":
            return ("inf",)
        if name in _FUNCS:
            return ("func", name, self.argument())
        if name in _GREEK:
            return ("var", name)
        raise NotSimple(name)


def parse(s: str) -> Node:
    """Parse a normalised answer; raises NotSimple outside the supported grammar."""
    if not s or len(s) > MAX_CHARS or WORD.search(s):
        raise NotSimple("empty, long or wordy")
    m = _MIXED.fullmatch(s)
    if m and int(m.group(4)):
        value = int(m.group(2)) + int(m.group(3)) / int(m.group(4))
        return ("num", -value if m.group(1) else value)
    parser = _Parser(_tokenize(s))
    node = parser.expr()
    if parser.pos != len(parser.tokens):
        raise NotSimple("trailing tokens")
    return node


def _variable_value(name: str, point: int) -> float:
    """Fixed pseudo-random magnitude in [0.4, 1.6), negative at point 1 (so sqrt(x^2) != x, as in
    SymPy); the same name gets the same value on both sides."""
    magnitude = 0.4 + 1.2 * (zlib.crc32(f"{name}#{point}".encode()) % 9973) / 9973
    return -magnitude if point == 1 else magnitude


def _root(x: float, index: float) -> float:
    if index == 2:
        return math.sqrt(x)
    if x < 0 and float(index).is_integer() and int(index) % 2 == 1:
        return -math.pow(-x, 1.0 / index)
    return math.pow(x, 1.0 / index)


def _apply(node: Node, args: list[float]) -> float:
    op = node[0]
    if op == "neg":
        return -args[0]
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "div":
        return args[0] / args[1]
    if op == "pow":
        return math.pow(args[0], args[1])
    if op == "sqrt":
        return _root(args[0], 2 if len(args) == 1 else args[1])
    if op == "fact":
        if not float(args[0]).is_integer() or args[0] < 0:
            raise ValueError("factorial")
        if args[0] > 170:
            raise OverflowError("factorial")
        return float(math.factorial(int(args[0])))
    return _FUNCS[node[1]](args[0])


def _evaluate(node: Node, point: int) -> float:
    op = node[0]
    if op == "num":
        if math.isinf(node[1]):
            raise Overflow()
        return node[1]
    if op == "inf":
        return math.inf
    if op == "var":
        return _variable_value(node[1], point)
    args = []
    for child in node[1:]:
        if isinstance(child, tuple):
            args.append(_evaluate(child, point))
    try:
        value = _apply(node, args)
    except OverflowError:
        raise Overflow() from None
    if math.isnan(value):
        raise ValueError("nan")
    if math.isinf(value) and all(math.isfinite(a) for a in args):
        raise Overflow()
    return value


def has_variables(node: Union[Node, str, None]) -> bool:
    if not isinstance(node, tuple):
        return False
    return node[0] == "var" or any(has_variables(c) for c in node[1:])


def evaluate(node: Node, points: int = 1) -> list[float]:
    """Values at the first `points` fixed variable points. Raises Overflow, ValueError or ZeroDivisionError."""
    return [_evaluate(node, k) for k in range(points)]
