"""Benchmark of the rule-based math reward: answers/second, timeouts, accuracy vs known labels.

    python tools/bench_reward.py [--n 10000] [--workers 2] [--timeout 1.0] [--hostile 0.1]
                                 [--bombs 0.0] [--baseline 300] [--agreement 3000] [--seed 0]

Builds a MATH-style mix: reasoning text ending in a boxed answer written in an equivalent or a
wrong form (fractions, radicals, pi, units, tuples, intervals, sets, polynomials, text, matrices,
several boxes, no box), plus a --hostile fraction of adversarial responses (power towers,
deeply nested or unbalanced braces, megabyte strings, over-long boxes, huge literals); --bombs
is the share of those replaced by an expression that gets past the cheap checks and makes SymPy
hang, so each costs one full time limit. Every item has an expected score. --baseline N also
times math-verify alone (one process, no fast path) on N non-hostile items; --agreement N
checks N verdicts of the fast path against math-verify and reports false positives (fast path
1, math-verify 0: a reward for a wrong answer) and false negatives (fast path 0, math-verify 1).
"""

import argparse
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sppo_megatron.config.schema import RewardConfig  # noqa: E402
from sppo_megatron.reward import RewardScorer  # noqa: E402
from sppo_megatron.reward.math import fast_score, final_answer, symbolic_check  # noqa: E402

# math-verify reads 7.8e3 as 7.8 * e * 3; the fast path reads scientific notation (docs/reward.md).
SCIENTIFIC = re.compile(r"\d[eE][-+]?\d")


def _integer(r: random.Random):
    n = r.randint(2, 2000)
    return (
        str(n),
        [str(n), f"{n}.0", f"\\${n}", f"{n} \\text{{ dollars}}", f"x = {n}", f"{n:,}"],
        [str(n + 1), str(-n), str(10 * n)],
    )


def _fraction(r: random.Random):
    a, b = r.randint(1, 9), r.choice([2, 4, 5, 8])
    if a % b == 0:
        a += 1
    right = [f"\\dfrac{{{a}}}{{{b}}}", f"{a / b:g}", f"{a}/{b}", f"\\tfrac{a}{b}", f"\\frac{{{2 * a}}}{{{2 * b}}}"]
    return f"\\frac{{{a}}}{{{b}}}", right, [f"\\frac{{{b}}}{{{a}}}", f"{a / b + 0.1:g}"]


def _radical(r: random.Random):
    k, m = r.randint(2, 9), r.choice([2, 3, 5, 6, 7])
    right = [f"\\sqrt{{{k * k * m}}}", f"{k}\\sqrt{m}", f"\\sqrt{{{m}}} \\cdot {k}"]
    return f"{k}\\sqrt{{{m}}}", right, [f"{k + 1}\\sqrt{{{m}}}", f"\\sqrt{{{k * m}}}"]


def _pi(r: random.Random):
    k = r.randint(2, 50)
    return f"{k}\\pi", [f"{k} \\pi", f"\\pi \\cdot {k}", f"\\frac{{{2 * k}\\pi}}{{2}}"], [f"{k + 1}\\pi", str(k)]


def _negative(r: random.Random):
    b = r.choice([2, 4, 5, 8])
    return (
        f"-\\frac{{1}}{{{b}}}",
        [f"{-1 / b:g}", f"-\\dfrac1{b}", f"\\frac{{-1}}{{{b}}}"],
        [f"\\frac{{1}}{{{b}}}", f"-{b}"],
    )


def _tuple(r: random.Random):
    a, b = r.randint(-9, 9), r.randint(10, 19)
    return f"({a},{b})", [f"\\left( {a}, {b} \\right)", f"({a}, {b})"], [f"({b}, {a})", f"({a}, {b + 1})"]


def _interval(r: random.Random):
    a = r.randint(-20, 20)
    return (
        f"(-\\infty,{a}]",
        [f"(-\\infty, {a}]", f"\\left(-\\infty, {a}\\right]"],
        [f"(-\\infty, {a})", f"[{a}, \\infty)"],
    )


def _solutions(r: random.Random):
    a, b = r.randint(-9, 0), r.randint(1, 9)
    return f"{a}, {b}", [f"{b}, {a}", f"\\{{{a}, {b}\\}}", f"x = {a}, {b}"], [f"{a}, {b + 1}", str(a)]


def _polynomial(r: random.Random):
    a = r.randint(1, 9)
    return f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"{a * a} + {2 * a}x + x^2"], [f"x^2+{a * a}", f"(x-{a})^2"]


def _radical_fraction(r: random.Random):
    m = r.choice([2, 3, 5, 7])
    right = [f"\\frac{{1}}{{\\sqrt{{{m}}}}}", f"\\frac{{\\sqrt{m}}}{{{m}}}"]
    return f"\\frac{{\\sqrt{{{m}}}}}{{{m}}}", right, [f"\\sqrt{{{m}}}", f"\\frac{{1}}{{{m}}}"]


def _degrees(r: random.Random):
    d = r.choice([15, 30, 45, 60, 75, 120])
    return f"{d}^\\circ", [str(d), f"{d}^{{\\circ}}"], [f"{d + 15}^\\circ", "\\frac{\\pi}{6}"]


def _scientific(r: random.Random):
    m = r.randint(11, 99)
    return (
        str(m * 100),
        [f"{m / 10:g} \\times 10^3", f"{m / 10:g}e3", f"{m * 100:,}".replace(",", "{,}")],
        [str(m * 10), str(m * 1000)],
    )


def _units(r: random.Random):
    n = r.randint(2, 99)
    return f"{n}\\text{{ cm}}^2", [str(n), f"{n} \\text{{ cm}}^2"], [str(n * n)]


def _choice(r: random.Random):
    c = r.choice("ABCDE")
    return f"\\text{{({c})}}", [c, f"({c})", f"\\text{{{c}}}"], [chr((ord(c) - 64) % 5 + 65)]


def _word(r: random.Random):
    day = r.choice(["Monday", "Tuesday", "Friday"])
    return f"\\text{{{day}}}", [day, f"\\text{{{day.lower()}}}"], ["Sunday"]


def _line(r: random.Random):
    a, b = r.randint(2, 9), r.randint(1, 9)
    return f"y = {a}x + {b}", [f"{a}x+{b}", f"y={b}+{a}x"], [f"{a}x-{b}"]


def _matrix(r: random.Random):
    a, b = r.randint(-9, 9), r.randint(10, 19)
    g = f"\\begin{{pmatrix}} {a} \\\\ {b} \\end{{pmatrix}}"
    return g, [g.replace(" ", ""), g], [f"\\begin{{pmatrix}} {b} \\\\ {a} \\end{{pmatrix}}"]


def _logarithm(r: random.Random):
    b, a = r.sample([2, 3, 5, 7, 11, 13], 2)
    return f"\\log_{{{b}}} {a}", [f"\\frac{{\\ln {a}}}{{\\ln {b}}}"], [f"\\log_{{{a}}} {b}"]


def _mixed_number(r: random.Random):
    n, b = r.randint(1, 9), r.choice([2, 4, 5])
    return f"{n}\\frac{{1}}{{{b}}}", [f"{n + 1 / b:g}", f"\\frac{{{n * b + 1}}}{{{b}}}"], [str(n)]


def _percent(r: random.Random):
    p = r.randint(1, 99)
    return f"{p}\\%", [str(p), f"{p / 100:g}", f"{p}\\%"], [f"{p + 1}"]


PROBLEMS = [
    _integer,
    _fraction,
    _radical,
    _pi,
    _negative,
    _tuple,
    _interval,
    _solutions,
    _polynomial,
    _radical_fraction,
    _degrees,
    _scientific,
    _units,
    _choice,
    _word,
    _line,
    _matrix,
    _logarithm,
    _mixed_number,
    _percent,
]

REASONING = [
    "We need to find the value asked for. Let $x$ be the unknown quantity. ",
    "Substituting $a = 3$ and $b = 4$ into $a^2 + b^2 = c^2$ gives $c^2 = 25$. ",
    "By the quadratic formula, $x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$. ",
    "Simplifying $\\frac{6}{8}$ we get $\\frac{3}{4}$, and multiplying by $2\\sqrt{3}$ does not change the sign. ",
    "Checking the boundary case $x = 3$, the inequality holds with equality. ",
    "Hence the area is $\\pi r^2 = 4\\pi$ when $r = 2$, and the angle is $30^\\circ$. ",
]

MEGABYTE_TEXT = "The answer keeps going " * 45000
HOSTILE = [
    ("power tower", lambda gold: "So the answer is $\\boxed{9^{9^{9^{9}}}}$."),
    ("python power", lambda gold: "Therefore \\boxed{10**10**10}"),
    ("bare tower", lambda gold: "\\boxed{9^9^9^9}"),
    ("tower in symbols", lambda gold: "\\boxed{\\lfloor 9^{9^{9}} \\rfloor + x}"),
    ("deep nesting", lambda gold: "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"),
    ("unbalanced", lambda gold: "The final answer is \\boxed{\\frac{1}{2" + "{" * 2000),
    ("megabyte, no box", lambda gold: MEGABYTE_TEXT),
    ("megabyte, unbalanced", lambda gold: "\\boxed{" + MEGABYTE_TEXT),
    ("long box", lambda gold: "\\boxed{" + "x+" * 5000 + "1}"),
    ("many boxes", lambda gold: "\\boxed{" * 20000),
    ("huge literal", lambda gold: "\\boxed{" + "9" * 450 + "}"),
]
SYMPY_BOMB = ("sympy bomb", lambda gold: "\\boxed{\\binom{9^{99}}{9^{9}}}")


def _response(rng: random.Random, answer: str) -> str:
    steps = "".join(rng.choice(REASONING) for _ in range(rng.randint(3, 12)))
    return f"{steps}Therefore, the final answer is $\\boxed{{{answer}}}$."


def build_mix(n: int, hostile: float, bombs: float, seed: int) -> list[tuple[str, str, str, float]]:
    """(category, response, gold, expected score) items."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        gold, right, wrong = rng.choice(PROBLEMS)(rng)
        roll = rng.random()
        if roll < hostile:
            name, make = SYMPY_BOMB if rng.random() < bombs else rng.choice(HOSTILE)
            items.append((name, make(gold), gold, 0.0))
        elif roll < hostile + 0.03:
            items.append(("no box", rng.choice(REASONING) + " The answer is " + right[0] + ".", gold, 0.0))
        elif roll < hostile + 0.06:
            items.append(
                ("two boxes", f"First \\boxed{{{rng.choice(wrong)}}}. " + _response(rng, rng.choice(right)), gold, 1.0)
            )
        elif rng.random() < 0.6:
            items.append(("equivalent", _response(rng, rng.choice(right)), gold, 1.0))
        else:
            items.append(("wrong", _response(rng, rng.choice(wrong)), gold, 0.0))
    return items


def _baseline(items: list, count: int) -> float:
    """math-verify alone on the extracted answers: answers/second in this process."""
    plain = [it for it in items if it[0] in ("equivalent", "wrong")][:count]
    start = time.perf_counter()
    for _, response, gold, _ in plain:
        symbolic_check(final_answer(response, gold), gold)
    return len(plain) / (time.perf_counter() - start)


def _agreement(items: list, count: int) -> tuple[int, list, list]:
    """(checked, false positives, false negatives) of fast-path verdicts against math-verify on
    the first `count` non-hostile items the fast path decides."""
    checked, false_pos, false_neg = 0, [], []
    for category, response, gold, _ in items:
        if checked == count or category not in ("equivalent", "wrong", "two boxes"):
            continue
        answer = final_answer(response, gold)
        verdict = None if answer is None else fast_score(answer, gold)
        if verdict is None:
            continue
        checked += 1
        reference = symbolic_check(answer, gold)[0]
        if verdict > reference:
            false_pos.append((gold, answer))
        elif verdict < reference:
            false_neg.append((gold, answer))
    return checked, false_pos, false_neg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--hostile", type=float, default=0.1)
    parser.add_argument("--bombs", type=float, default=0.0, help="share of hostile items that reach SymPy and hang")
    parser.add_argument("--baseline", type=int, default=0)
    parser.add_argument("--agreement", type=int, default=0, help="compare N fast-path verdicts with math-verify")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    items = build_mix(args.n, args.hostile, args.bombs, args.seed)
    cfg = RewardConfig(custom_fn=None, timeout_s=args.timeout, num_workers=args.workers)
    with RewardScorer(cfg) as scorer:
        start = time.perf_counter()
        scorer.score(["math"], ["\\boxed{\\log_2 8}"], ["3"])
        startup = time.perf_counter() - start
        scores, stats = scorer.score(["math"] * len(items), [it[1] for it in items], [it[2] for it in items])
    elapsed = stats.seconds
    wrong = {}
    for (category, _, _, expected), got in zip(items, scores):
        if got != expected:
            wrong[category] = wrong.get(category, 0) + 1
    hostile = sum(1 for it in items if it[0] not in ("equivalent", "wrong", "no box", "two boxes"))
    print(f"items: {len(items)} ({hostile} hostile), workers: {args.workers}, timeout: {args.timeout} s")
    print(f"worker startup (first call): {startup:.2f} s")
    print(f"scored in {elapsed:.2f} s: {len(items) / elapsed:.0f} answers/s")
    print(f"sent to math-verify: {stats.slow_path}, timeouts: {stats.timeouts}, errors: {stats.errors}")
    print(f"accuracy vs expected labels: {1 - sum(wrong.values()) / len(items):.4f}  mismatches by category: {wrong}")
    if args.baseline:
        print(f"math-verify alone (1 process, {args.baseline} items): {_baseline(items, args.baseline):.0f} answers/s")
    if args.agreement:
        checked, false_pos, false_neg = _agreement(items, args.agreement)
        scientific = sum(1 for _, answer in false_pos if SCIENTIFIC.search(answer))
        print(f"fast path vs math-verify: {checked - len(false_pos) - len(false_neg)}/{checked} decided verdicts agree")
        print(
            f"  false positives (fast 1, math-verify 0): {len(false_pos)}, of them scientific notation: {scientific}; "
            f"others: {[c for c in false_pos if not SCIENTIFIC.search(c[1])][:10]}"
        )
        print(f"  false negatives (fast 0, math-verify 1): {len(false_neg)}: {false_neg[:10]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
