"""A seeded corpus of (kind, response, gold) MATH answers for checking the fast path against math-verify.

Each generator returns a gold answer and spellings of it that are equivalent, equivalent only
under a reading math-verify may not share, or wrong, over the answer kinds a policy writes:
numbers, fractions, radicals, expressions with variables, implicit products with and without
spaces, units, lists, tuples, intervals, sets, matrices, thousands separators, decimal commas,
functions (logarithms, trigonometry).
Fixed cases from math-verify's and Hendrycks MATH's own tests are added as they are.
"""

import random
from typing import Callable

Case = tuple[str, list[str]]

# Short boxed-form (gold, answer) pairs from math-verify's tests
# (https://github.com/huggingface/Math-Verify, tests/test_all.py at 5d148cf; verdicts come from
# the installed math-verify, not from the expectations there).
MATH_VERIFY_CASES = [
    ("-5", "-5"),
    ("7425000", "7,425,000"),
    ("1000", "1 000"),
    ("1000", "1000.0"),
    ("1000.0", "1,000.0"),
    ("1000.99", "1000,99"),
    ("1,22", "1.22"),
    ("0.4", ".4"),
    ("1000.99", "1,000.99"),
    ("0,111", "0.111"),
    ("10/9", "\\frac{10}{9}"),
    ("-10/9", "-\\frac{10}{9}"),
    ("[0,1)", "[0,1)"),
    ("[0,9)", "[0,1)"),
    ("(0,9)", "[0,9)"),
    ("1", "-[0,1)"),
    ("1/3", "\\frac13"),
    ("1", "\\frac3{3}"),
    ("\\sqrt{3}", "\\sqrt3"),
    ("1/3", "\\cfrac{1}{3}"),
    ("1/3", "\\dfrac{1}{3}"),
    ("1/3", "\\tfrac{1}{3}"),
    ("1/3", "1/3"),
    ("1/3", "\\left( \\frac{1}{3} \\right)"),
    ("1/3", "k = \\frac{1}{3}"),
    ("28\\%", "28 pct"),
    ("28\\%", "28 %"),
    ("28\\%", "28"),
    ("0.28", "28"),
    ("28/100", "28"),
    ("28", "28/100"),
    ("\\frac{28}{100}", "28"),
    ("x \\leq 5", "5 \\geq x"),
    ("x \\geq 5", "5 \\leq x"),
    ("x = 11", "x = 5+5+1 = 7 =11"),
    ("7 = 11a+c", "11a+c"),
    ("11", "x=11"),
    ("11", "x\\approx11"),
    ("x < 1", "-x > -1"),
    ("x < 1", "x > -1"),
    ("a +3z = 0", "0"),
    ("2x + z = 1", "1"),
    ("a^2 + b = 0", "0"),
    ("k=1", "1"),
    ("1", "k=1"),
    ("z = 1 + 1 = 2", "z = 3+3 = 2"),
    ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"),
    ("\\frac{1}{12}", "0.0833333333333333"),
    ("(1,\\frac{9}{2})", "(1,4.5)"),
    ("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}"),
    ("\\tan^2(y)+1", "\\sec^2(y)"),
    ("34x+45y-20z+100=0", "-34x-45y+20z-100=0"),
    ("(a+5)(b+2)", "(+5)(b+2)"),
    ("2", "\\frac{1+\\sqrt{5}}{2}"),
    ("1\\sqrt{19}", "1"),
    ("(\\frac{3}{5},\\frac{8}{3}]", "(0.6,2.6667]"),
    ("x+2n+1", "x+1"),
    ("(3,1)", "{1,3}"),
    ("(1,3)", "{1,3}"),
    ("\\text{E}", "E"),
    ("x \\in [-2,7]", "-2 \\le x \\le 7"),
    ("4", "4\\sqrt{2}"),
]

# The is_equiv cases of Hendrycks MATH
# (https://github.com/hendrycks/math, modeling/math_equivalence_test.py).
HENDRYCKS_CASES = [
    ("\\tfrac{1}{2} + \\frac1{72}", "\\\\frac{1}{2} + 2/3"),
    ("10, 4, -2", "4, 10, -2"),
    ("10, 4, 2", "4, 12, 2"),
    ("\\tfrac{1}{2} +\\! \\frac1{72}", "\\\\dfrac{1}{2} +\\frac{1}{72}"),
    ("10\\text{ units}", "10 "),
    ("10\\text{ units}", "100 "),
    ("10", "\\$10"),
    ("\\left(x-2\\right)\\left(x+2\\right)", "(x-2)(x+2)"),
    ("0.1, 4, 2", "4, .1, 2"),
    ("0.1", ".1"),
    ("10\\%", "10"),
    ("10\\sqrt{3} + \\sqrt4", "10\\sqrt3 + \\sqrt{4}"),
    ("\\frac34i", "\\frac{3}{4}i"),
    ("\\tfrac83", "\\frac{8}{3}"),
    ("5x - 7y + 11z + 4 = 0", "x + y - z + 2 = 0"),
    ("1/2", "\\frac{1}{2}"),
]


def _numbers(r: random.Random) -> Case:
    n = r.randint(-500, 5000)
    d = r.randint(1, 99) / 10
    return str(n), [
        str(n),
        f"{n}.0",
        f"\\${n}",
        f"x = {n}",
        f"{n + 1}",
        f"{-n}",
        f"{10 * n}",
        f"{d}",
        f"{n}{d:g}",
        f"{n}.",
        f"+{n}",
        f"{n} + 0",
    ]


def _fractions(r: random.Random) -> Case:
    a, b = r.randint(1, 30), r.randint(2, 13)
    return f"\\frac{{{a}}}{{{b}}}", [
        f"\\dfrac{{{a}}}{{{b}}}",
        f"{a}/{b}",
        f"{a / b:.6f}",
        f"{a / b:.3f}",
        f"\\frac{{{2 * a}}}{{{2 * b}}}",
        f"\\frac{{{b}}}{{{a}}}",
        f"-\\frac{{{a}}}{{{b}}}",
        f"\\frac{a}{b}" if a < 10 else f"{a}/{b + 1}",
        f"{a}\\div{b}",
        f"({a})/({b})",
    ]


def _radicals(r: random.Random) -> Case:
    k, m = r.randint(2, 9), r.choice([2, 3, 5, 6, 7, 10])
    return f"{k}\\sqrt{{{m}}}", [
        f"\\sqrt{{{k * k * m}}}",
        f"{k}\\sqrt{m}",
        f"{k} \\sqrt{{{m}}}",
        f"\\sqrt{{{m}}}{k}",
        f"{k}\\sqrt{{{m + 1}}}",
        f"\\sqrt{{{k * m}}}",
        f"{k * m**0.5:.4f}",
        f"{k}\\cdot\\sqrt{{{m}}}",
        f"\\frac{{{2 * k}\\sqrt{{{m}}}}}{{2}}",
        f"{k}{m}",
    ]


def _variables(r: random.Random) -> Case:
    a, b = r.randint(1, 9), r.randint(1, 9)
    v, w = r.sample("xyntkab", 2)
    return f"{a}{v}+{b}", [
        f"{a}{v} + {b}",
        f"{b}+{a}{v}",
        f"{a} {v} + {b}",
        f"{a}\\cdot {v}+{b}",
        f"{a}*{v}+{b}",
        f"{a}{v}+{b}{w}",
        f"{a}{v}-{b}",
        f"{a}{w}+{b}",
        f"{a}({v}+{b})",
        f"{a}{v}+{b}+{w}-{w}",
        f"\\frac{{{2 * a}{v}+{2 * b}}}{{2}}",
        f"{a}{v}^2+{b}",
    ]


def _implicit_products(r: random.Random) -> Case:
    n = r.randint(2, 12)
    v = r.choice("xynabk")
    gold = r.choice([f"{n}{v}", f"{n} {v}", f"{n}\\,{v}", f"{n}{v}^2", f"{n} {v}^2"])
    return gold, [
        f"{n}{v}",
        f"{n} {v}",
        f"{n}\\,{v}",
        f"{n}\\cdot{v}",
        f"{n}{v}^2",
        f"{n} {v}^2",
        str(n),
        f"{n}\\ {v}",
        f"{v}{n}",
        f"{v} \\cdot {n}",
        f"{n}{v}{v}",
        f"{n + 1}{v}",
        f"{n} {v} + 2 y",
        f"{n}~{v}",
    ]


def _units(r: random.Random) -> Case:
    n = r.randint(2, 999)
    unit = r.choice(
        [
            "cm",
            "meters",
            "m",
            "km",
            "inches",
            "feet",
            "degrees",
            "units",
            "square units",
            "hours",
            "seconds",
            "s",
            "t",
            "dollars",
            "mg",
            "weeks",
            "cm^2",
            "minutes",
            "years",
            "mph",
            "g",
            "kg",
        ]
    )
    gold = r.choice([str(n), f"{n}\\text{{ {unit}}}", f"{n} \\text{{{unit}}}", f"{n}^\\circ"])
    return gold, [
        str(n),
        f"{n} {unit}",
        f"{n}{unit}",
        f"{n}\\text{{ {unit}}}",
        f"{n}\\text{{{unit}}}",
        f"{n} \\mbox{{{unit}}}",
        f"{n}\\,\\text{{{unit}}}",
        f"{n + 1} {unit}",
        f"{n}\\ {unit}",
        f"{n}\\text{{ {unit}}}^2",
        f"{n}^\\circ",
        f"{n}^{{\\circ}}",
        f"{n} x",
        f"{n} \\text{{{unit}}}, {n}",
    ]


def _lists(r: random.Random) -> Case:
    a, b, c = r.sample(range(-9, 20), 3)
    gold = r.choice([f"{a}, {b}", f"{a},{b},{c}", f"\\{{{a}, {b}\\}}", f"x = {a}, {b}"])
    return gold, [
        f"{a}, {b}",
        f"{b}, {a}",
        f"{a},{b},{c}",
        f"{c}, {b}, {a}",
        f"\\{{{b}, {a}\\}}",
        f"{a}",
        f"{a}, {b + 1}",
        f"x = {a}, x = {b}",
        f"{a}\\text{{ and }}{b}",
        f"{a} \\text{{ or }} {b}",
        f"{a}; {b}",
        f"{a}, {b}, {b}",
    ]


def _tuples(r: random.Random) -> Case:
    a, b = r.randint(-9, 9), r.randint(10, 99)
    return f"({a},{b})", [
        f"\\left( {a}, {b} \\right)",
        f"({a}, {b})",
        f"({b}, {a})",
        f"({a}, {b + 1})",
        f"[{a}, {b}]",
        f"{a}, {b}",
        f"\\{{{a}, {b}\\}}",
        f"({a},{b},0)",
        f"(x, y) = ({a}, {b})",
        f"({a}.0, {b})",
    ]


def _intervals(r: random.Random) -> Case:
    a, b = r.randint(-20, 0), r.randint(1, 20)
    gold = r.choice([f"(-\\infty,{a}]", f"[{a},{b})", f"({a},{b})", f"[{a},\\infty)"])
    return gold, [
        f"(-\\infty, {a}]",
        f"\\left(-\\infty, {a}\\right]",
        f"(-\\infty, {a})",
        f"[{a}, {b})",
        f"({a}, {b}]",
        f"[{a}, \\infty)",
        f"({a},{b})",
        f"[{a},{b}]",
        f"(-\\infty,{a}] \\cup [{b},\\infty)",
        f"x \\in [{a}, {b})",
        f"{a} \\le x < {b}",
        f"({a}, \\infty)",
    ]


def _sets(r: random.Random) -> Case:
    a, b, c = r.sample(range(-9, 30), 3)
    gold = f"\\{{{a}, {b}, {c}\\}}"
    return gold, [
        f"\\{{{c}, {a}, {b}\\}}",
        f"\\lbrace {a}, {b}, {c} \\rbrace",
        f"{a}, {b}, {c}",
        f"\\{{{a}, {b}\\}}",
        f"\\{{{a}, {b}, {c + 1}\\}}",
        f"\\left\\{{ {b}, {c}, {a} \\right\\}}",
        f"({a}, {b}, {c})",
        f"\\{{{a}, {b}, {c}, {c}\\}}",
    ]


def _matrices(r: random.Random) -> Case:
    a, b, c, d = (r.randint(-9, 9) for _ in range(4))
    env = r.choice(["pmatrix", "bmatrix"])
    gold = f"\\begin{{{env}}} {a} & {b} \\\\ {c} & {d} \\end{{{env}}}"
    return gold, [
        gold.replace(" ", ""),
        f"\\begin{{pmatrix}} {a} & {b} \\\\ {c} & {d} \\end{{pmatrix}}",
        f"\\begin{{bmatrix}}{a}&{b}\\\\{c}&{d}\\end{{bmatrix}}",
        f"\\begin{{{env}}} {b} & {a} \\\\ {c} & {d} \\end{{{env}}}",
        f"\\begin{{{env}}} {a} \\\\ {b} \\end{{{env}}}",
        f"\\begin{{{env}}} {a} & {b} & {c} & {d} \\end{{{env}}}",
        f"\\begin{{{env}}} {a}.0 & {b} \\\\ {c} & {d} \\end{{{env}}}",
    ]


def _thousands(r: random.Random) -> Case:
    n = r.randint(1000, 9_999_999)
    s = f"{n:,}"
    head, _, tail = s.partition(",")
    return str(n), [
        s,
        s.replace(",", "{,}"),
        s.replace(",", ", "),
        s.replace(",", " "),
        s.replace(",", "\\,"),
        s.replace(",", "\\!"),
        head + "," + tail[:2] + tail[3:] if len(tail) > 3 else head + ",0" + tail,
        f"\\${s}",
        f"{s}.00",
        f"{s} \\text{{ dollars}}",
        s.replace(",", "."),
        f"{n + 1:,}",
        f"{head}, {tail}",
    ]


def _decimal_commas(r: random.Random) -> Case:
    d3, d2 = r.randint(100, 999), r.randint(10, 99)
    i = r.randint(1, 99)
    gold = r.choice([f"0.{d3}", f"{i}.{d2}", f"0,{d3}", f"{i}.{d3}"])
    return gold, [
        f"0,{d3}",
        f"0.{d3}",
        f"{i},{d2}",
        f"{i}.{d2}",
        f"{i},{d3}",
        f"{i}.{d3}",
        f"-0,{d3}",
        f"0,{d3}0",
        f"0{{,}}{d3}",
        f".{d3}",
        f"{i}{{,}}{d2}",
    ]


def _scalars(r: random.Random) -> Case:
    k, p, d = r.randint(2, 30), r.randint(1, 99), r.choice([30, 45, 60, 90, 120])
    gold = r.choice([f"{k}\\pi", f"{p}\\%", f"{d}^\\circ", "\\text{(B)}", "\\text{Monday}", f"-\\frac{{1}}{{{k}}}"])
    return gold, [
        f"{k}\\pi",
        f"\\pi {k}",
        f"{k} \\pi",
        f"{k * 3.14159265:.5f}",
        f"{p}",
        f"{p / 100:g}",
        f"{p}\\%",
        f"{d}",
        f"{d}^{{\\circ}}",
        "B",
        "(B)",
        "\\text{B}",
        "C",
        "monday",
        "\\text{Tuesday}",
        f"-{1 / k:.6f}",
        f"\\frac{{-1}}{{{k}}}",
        f"-\\dfrac1{k}" if k < 10 else f"\\frac{{1}}{{{k}}}",
    ]


def _functions(r: random.Random) -> Case:
    b, a = r.sample([2, 3, 5, 7, 10], 2)
    k = r.randint(2, 9)
    gold = r.choice(
        [
            f"\\log_{{{b}}} {a}",
            f"\\log_{b} {b**k}",
            f"\\sin {k}x",
            f"\\ln {k}x",
            "\\cos 2\\pi",
            f"{k}\\ln 2",
            "\\sin(x)",
        ]
    )
    return gold, [
        f"\\frac{{\\ln {a}}}{{\\ln {b}}}",
        f"\\log_{{{a}}} {b}",
        f"\\log_{b} {a}",
        f"\\log_{b}({a})",
        str(k),
        f"\\log_{b} {b**k}",
        f"x\\sin {k}",
        f"\\sin({k}x)",
        f"\\sin {k} x",
        f"\\ln({k}x)",
        f"x \\ln {k}",
        "1",
        f"\\ln {2**k}",
        f"\\ln 2^{k}",
        "\\sin x",
        "\\sin(x)^2",
        "\\sin x \\cos x",
        f"\\log_10 {10**k}",
        f"{k}\\log_2 2",
        f"\\log_2 {2**k}x",
    ]


GENERATORS: dict[str, Callable[[random.Random], Case]] = {
    "numbers": _numbers,
    "fractions": _fractions,
    "radicals": _radicals,
    "variables": _variables,
    "implicit products": _implicit_products,
    "units": _units,
    "lists": _lists,
    "tuples": _tuples,
    "intervals": _intervals,
    "sets": _sets,
    "matrices": _matrices,
    "thousands": _thousands,
    "decimal commas": _decimal_commas,
    "scalars": _scalars,
    "functions": _functions,
}
_REASONING = ["Let $x$ be the unknown. ", "Then $a^2+b^2=c^2$, so $c=5$. ", "We simplify $\\frac{6}{8}=\\frac34$. "]


def _response(r: random.Random, answer: str) -> str:
    """The answer boxed at the end of some reasoning; a list may be split over boxes."""
    steps = "".join(r.choice(_REASONING) for _ in range(r.randint(1, 3)))
    roll = r.random()
    if roll < 0.1 and "," in answer and "\\" not in answer and "(" not in answer and "[" not in answer:
        joiner = r.choice([", ", " and ", "$, $", " , ", "\\text{ and }"])
        return steps + "So $" + joiner.join(f"\\boxed{{{part.strip()}}}" for part in answer.split(",")) + "$."
    if roll < 0.15:
        return steps + f"First \\boxed{{0}}, but then the answer is $\\boxed{{{answer}}}$."
    return steps + f"The final answer is $\\boxed{{{answer}}}$."


def build_corpus(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` generated (kind, response, gold) items plus the fixed math-verify and Hendrycks cases."""
    r = random.Random(seed)
    kinds = list(GENERATORS)
    items = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        gold, answers = GENERATORS[kind](r)
        items.append((kind, _response(r, r.choice(answers)), gold))
    for kind, cases in (("math-verify tests", MATH_VERIFY_CASES), ("hendrycks tests", HENDRYCKS_CASES)):
        for gold, answer in cases:
            items.append((kind, f"The answer is $\\boxed{{{answer}}}$.", gold))
            items.append((kind, f"The answer is $\\boxed{{{gold}}}$.", answer))
    return items
