"""MATH answer checking: equivalent forms score 1, different answers 0, the last box counts."""

import pytest

from sppo_megatron.reward.math import compute_score, extract_answer, fast_score

pytestmark = pytest.mark.timeout(60)

EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac{1}{2}", "\\tfrac{1}{2}"),
    ("\\frac{1}{2}", "\\frac12"),
    ("\\frac{1}{2}", "1/2"),
    ("\\frac{3}{4}", "\\frac{6}{8}"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("2\\sqrt{2}", "2\\sqrt2"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("\\sqrt[3]{8}", "2"),
    ("30^\\circ", "30"),
    ("30", "30^{\\circ}"),
    ("5", "\\$5"),
    ("25\\%", "25"),
    ("25\\%", "0.25"),
    ("5\\text{ cm}", "5"),
    ("12", "12 \\text{ dollars}"),
    ("\\text{(B)}", "B"),
    ("\\text{Tuesday}", "tuesday"),
    ("(1,2)", "\\left(1, 2\\right)"),
    ("1000000", "1,000,000"),
    ("1000", "1{,}000"),
    ("1000", "1\\,000"),
    ("3", "x = 3"),
    ("y = 2x + 3", "2x+3"),
    ("(1,2]", "(1, 2]"),
    ("(-\\infty, 3)", "\\left(-\\infty,3\\right)"),
    ("\\{1, 2\\}", "2, 1"),
    ("1, 2", "\\{2, 1\\}"),
    ("x = 1, y = 2", "1, 2"),
    ("\\pi", "3.14159265358979"),
    ("4\\pi", "\\pi \\cdot 4"),
    ("-\\frac{1}{2}", "-0.5"),
    ("-3", "-3.0"),
    ("1500", "1.5 \\times 10^3"),
    ("1500", "1.5e3"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{x}{2}", "0.5x"),
    ("2\\frac{1}{2}", "2.5"),
    ("5!", "120"),
    ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\-2\\end{pmatrix}"),
    ("\\log_2 3", "\\frac{\\ln 3}{\\ln 2}"),
]

DIFFERENT = [
    ("(1,2]", "(1,2)"),
    ("[1,2]", "(1,2)"),
    ("(-\\infty, 3)", "(-\\infty, 3]"),
    ("(1,2)", "(2,1)"),
    ("\\frac{1}{2}", "\\frac{2}{1}"),
    ("4", "5"),
    ("-3", "3"),
    ("2\\sqrt{2}", "\\sqrt{2}"),
    ("\\pi", "3.14"),
    ("x^2+1", "(x+1)^2"),
    ("2x", "2"),
    ("x", "y"),
    ("3", "3, 4"),
    ("1, 2", "1, 3"),
    ("\\frac{1}{3}", "0.333"),
    ("\\text{Monday}", "Tuesday"),
    ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "\\begin{pmatrix} -2 \\\\ 1 \\end{pmatrix}"),
    ("\\log_2 3", "\\log_3 2"),
]


@pytest.mark.parametrize("gold,answer", EQUIVALENT)
def test_equivalent_forms_score_one(gold, answer):
    assert compute_score(f"Some reasoning. The answer is $\\boxed{{{answer}}}$.", gold) == 1.0


@pytest.mark.parametrize("gold,answer", DIFFERENT)
def test_different_answers_score_zero(gold, answer):
    assert compute_score(f"So the answer is \\boxed{{{answer}}}.", gold) == 0.0


def test_enough_cases():
    assert len(EQUIVALENT) + len(DIFFERENT) >= 40


def test_last_box_counts():
    assert compute_score("First \\boxed{3}, then corrected: \\boxed{4}", "4") == 1.0
    assert compute_score("First \\boxed{4}, then changed to \\boxed{3}", "4") == 0.0


def test_fbox_and_nested_braces():
    assert compute_score("\\fbox{\\frac{1}{2}}", "0.5") == 1.0
    assert extract_answer("\\boxed{4} then \\fbox{3}") == "4", "\\fbox only when there is no \\boxed"
    assert extract_answer("x \\boxed{\\frac{a}{\\sqrt{b}}} y") == "\\frac{a}{\\sqrt{b}}"


def test_no_box_scores_zero():
    assert compute_score("The answer is 4.", "4") == 0.0
    assert compute_score("", "4") == 0.0
    assert compute_score("\\boxed{}", "4") == 0.0


def test_ground_truth_may_be_a_boxed_solution():
    assert compute_score("\\boxed{0.5}", "so we get \\boxed{\\frac12}") == 1.0


def test_fast_path_decides_common_forms_without_math_verify():
    assert fast_score("0.5", "\\frac{1}{2}") == 1.0
    assert fast_score("(1,2)", "(1,2]") == 0.0
    assert fast_score("\\log_2 3", "\\frac{\\ln 3}{\\ln 2}") is None
