"""MATH answer checking: equivalent forms score 1, different answers 0, the last box counts."""

from types import SimpleNamespace

import pytest

from sppo_megatron.reward import RewardScorer
from sppo_megatron.reward.math import compute_score, extract_answer, fast_score, final_answer, symbolic_check

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


# Each of these was accepted by an earlier fast path although math-verify (rightly) rejects it
# (issue 13): letters after a number are variables, not units; "10, 200" is a list.
NOT_EQUAL_ANY_MORE = [
    ("5", "5 x"),
    ("5 x", "5"),
    ("5", "5 x^2"),
    ("3", "3 n"),
    ("x+2", "x + 2 y"),
    ("10200", "10, 200"),
    ("32349", "32, 349"),
    ("12", "1{,}2"),
    ("2852", "2852."),
    ("12", "\\frac612"),
    ("389\\text{ mg}", "389\\ mg"),
    ("61 \\text{cm^2}", "61cm^2"),
    ("\\{1,2\\}", "\\lbrace 1, 2 \\rbrace"),
    ("4\\,n", "4~n"),
    ("x = 3", "y = 3"),
    ("512", "2^3^2"),
    ("1", "0.9999999999"),
    ("1", "0.99999999999999999"),
    ("x\\%", "x"),
    ("12.5\\%", "12.5"),
    ("\\sin 2x", "x\\sin 2"),
    ("\\ln 3x", "x\\ln 3"),
    ("\\sin x y", "y \\sin x"),
    ("\\sin \\pi x", "x\\sin\\pi"),
    ("\\log_{2} 3x", "x\\log_2 3"),
]
# ... and these were rejected although they are equal (math-verify agrees).
EQUAL_NOW = [
    ("2 x", "2x"),
    ("2 x", "2\\,x"),
    ("5 x^2", "5x^2"),
    ("0,111", "0.111"),
    ("0.111", "0,111"),
    ("5x", "5 \\cdot x"),
    ("1000", "1{,}000"),
    ("3, 17", "3 \\text{ or } 17"),
    ("\\sin 2x", "\\sin(2x)"),
    ("1", "\\cos 2\\pi"),
    ("3", "\\log_2 8"),
    ("\\log_{10} 1000", "3"),
]


@pytest.mark.parametrize("gold,answer", NOT_EQUAL_ANY_MORE)
def test_no_false_positives_of_issue_13(gold, answer):
    assert fast_score(answer, gold) != 1.0
    assert compute_score(f"\\boxed{{{answer}}}", gold) == 0.0


@pytest.mark.parametrize("gold,answer", EQUAL_NOW)
def test_equal_forms_of_issue_13(gold, answer):
    assert compute_score(f"\\boxed{{{answer}}}", gold) == 1.0


@pytest.mark.parametrize(
    "answer", ["5 cm", "5 meters", "5\\text{ apples}", "5 \\mbox{kg}", "5 square units", "5 \\text{ cm}^2", "5 inches"]
)
def test_unit_words_are_dropped(answer):
    assert fast_score(answer, "5") == 1.0


@pytest.mark.parametrize("answer", ["5 m", "5 s", "5 t", "1\\,000", "1 000", "-0,111", "5 dollars"])
def test_spellings_math_verify_reads_its_own_way_are_left_to_it(answer):
    """ "5 m": math-verify strips one-letter units; digits split by spaces; a negative decimal comma."""
    gold = "1000" if "0" in answer else "5"
    assert fast_score(answer, gold) is None


def test_thousands_separators_are_strict():
    assert fast_score("1,234,567", "1234567") == 1.0
    assert fast_score("1,234.5", "1234.5") == 1.0
    assert fast_score("1,23", "123") == 0.0, "a list of 1 and 23"
    assert fast_score("12,3456", "123456") == 0.0
    assert fast_score("0,5", "0.5") == 0.0, "math-verify reads 0,5 as the list 0, 5"


def test_boxes_ending_a_response_form_one_list_when_the_gold_is_a_list():
    assert final_answer("So $\\boxed{1}, \\boxed{2}$.", "1, 2") == "1, 2"
    assert compute_score("So $\\boxed{1}, \\boxed{2}$.", "1, 2") == 1.0
    assert compute_score("The pairs are \\boxed{(2, 2)} and \\boxed{(6, 2)}.", "(2,2), (6,2)") == 1.0
    assert compute_score("$x = \\boxed{-3}$ or $x = \\boxed{4}$", "\\{4, -3\\}") == 0.0, "words other than a separator"
    assert compute_score("$\\boxed{-3}$ or $\\boxed{4}$", "\\{4, -3\\}") == 1.0
    assert compute_score("\\boxed{1}\\text{ and }\\boxed{3}", "1, 2") == 0.0


def test_otherwise_the_last_box_rules():
    assert final_answer("So $\\boxed{1}, \\boxed{2}$.", "2") == "2"
    assert compute_score("So $\\boxed{1}, \\boxed{2}$.", "2") == 1.0
    assert compute_score("So $\\boxed{1}, \\boxed{2}$.", "(1, 2)") == 0.0, "a tuple is one answer"
    assert final_answer("First \\boxed{1}, then corrected: \\boxed{2}", "1, 2") == "2"


def test_math_verify_exceptions_are_reported_with_its_own_score(monkeypatch):
    import math_verify

    calls = []

    def verify(gold, pred, **kwargs):
        calls.append(kwargs["raise_on_error"])
        if len(calls) == 1:
            raise TypeError("boom")
        return True

    monkeypatch.setattr(math_verify, "verify", verify)
    monkeypatch.setattr(math_verify, "parse", lambda s, **kwargs: ["a", "b"])
    assert symbolic_check("1", "1") == (1.0, "math-verify: TypeError: boom"), "the second candidate pair matched"
    monkeypatch.setattr(math_verify, "parse", lambda s, **kwargs: (_ for _ in ()).throw(ValueError("bad")))
    assert symbolic_check("1", "1") == (0.0, "math-verify: ValueError: bad")
    assert calls == [True, True]


def test_math_verify_exceptions_count_in_reward_errors(tmp_path, monkeypatch):
    """Through the real workers: a stand-in math_verify (first on PYTHONPATH) raises for one answer."""
    fake = tmp_path / "math_verify"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "def parse(s, **kwargs):\n    return [s]\n\n\n"
        "def verify(gold, pred, **kwargs):\n    if 'boom' in pred:\n        raise RuntimeError('boom')\n    return True\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with RewardScorer(SimpleNamespace(custom_fn=None, timeout_s=30.0, num_workers=1)) as scorer:
        scores, stats = scorer.score(
            ["math"] * 3, ["\\boxed{\\boom}", "\\boxed{\\sin^2 x}", "\\boxed{4}"], ["1", "1 - \\cos^2 x", "4"]
        )
    assert scores == [0.0, 1.0, 1.0]
    assert stats.errors == 1 and stats.slow_path == 2
    assert stats.first_error == "math-verify: RuntimeError: boom"
