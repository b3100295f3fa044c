"""GSM8K and arith scoring, dispatch by data_source, and reward.custom_fn loading."""

import textwrap

import pytest

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.errors import UserError
from sppo_megatron.reward import RewardScorer, check_data_sources, default_compute_score, gsm8k, scorer_kind
from sppo_megatron.reward.custom import CustomScorer, load_custom_fn

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "response,truth,expected",
    [
        ("She pays 3 * 4 = 12 dollars.\n#### 12", "12", 1.0),
        ("#### 1,234", "1234", 1.0),
        ("#### $18.", "18", 1.0),
        ("#### -5", "-5", 1.0),
        ("#### 2.50", "2.5", 1.0),
        ("First 10, then 20 #### 30 and some trailing 99", "30", 1.0),
        ("No marker: 3 apples plus 4 apples is 7.", "7", 1.0),
        ("No marker, the total is $1,000.", "1000", 1.0),
        ("#### 13", "12", 0.0),
        ("No numbers at all", "1", 0.0),
        ("#### 12", "#### 12", 1.0),
        ("The answer is 72", "72.0", 1.0),
    ],
)
def test_gsm8k(response, truth, expected):
    assert gsm8k.compute_score(response, truth) == expected


@pytest.mark.parametrize(
    "response,truth,expected",
    [
        ("12+30=\\boxed{42}", "42", 1.0),
        ("12+30=42", "42", 1.0),
        ("\\boxed{41} or maybe 42", "42", 0.0),
        ("12+30=\\boxed{forty-two}", "42", 0.0),
        ("", "42", 0.0),
    ],
)
def test_arith(response, truth, expected):
    assert gsm8k.compute_arith_score(response, truth) == expected


@pytest.mark.parametrize(
    "source,kind",
    [
        ("gsm8k", "gsm8k"),
        ("openai/gsm8k", "gsm8k"),
        ("arith", "arith"),
        ("math", "math"),
        ("DigitalLearningGmbH/MATH-lighteval", "math"),
        ("lighteval/MATH", "math"),
        ("hendrycks/competition_math", "math"),
        ("math_dapo", "math"),
        ("my_MATH_subset", "math"),
    ],
)
def test_dispatch_by_data_source(source, kind):
    assert scorer_kind(source) == kind


def test_default_compute_score_uses_the_source_scorer():
    response = "We get \\boxed{\\frac{1}{2}}.\n#### 7"
    assert default_compute_score("math", response, "0.5") == 1.0
    assert default_compute_score("gsm8k", response, "7") == 1.0
    assert default_compute_score("openai/gsm8k", response, "0.5") == 0.0


def test_unknown_source_is_a_user_error_listing_known_ones():
    with pytest.raises(UserError, match="unknown data_source 'trivia_qa'.*gsm8k.*arith.*math"):
        check_data_sources(["gsm8k", "trivia_qa"])
    with RewardScorer(RewardConfig(custom_fn=None, timeout_s=1.0, num_workers=1)) as scorer:
        with pytest.raises(UserError, match="trivia_qa"):
            scorer.score(["math", "trivia_qa"], ["\\boxed{1}", "1"], ["1", "1"])
        assert scorer.pool._workers == [], "raised before any work started"


def test_scorer_mixes_sources_in_one_batch():
    with RewardScorer(RewardConfig(custom_fn=None, timeout_s=1.0, num_workers=1)) as scorer:
        scores, stats = scorer.score(
            ["gsm8k", "math", "arith", "math"],
            ["#### 5", "\\boxed{0.5}", "\\boxed{9}", "no box"],
            ["5", "\\frac12", "8", "1"],
        )
    assert scores == [1.0, 1.0, 0.0, 0.0]
    assert stats.timeouts == 0 and stats.slow_path == 0 and stats.seconds >= 0


def _write(tmp_path, body):
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_custom_fn_with_and_without_keywords(tmp_path):
    path = _write(
        tmp_path,
        """
        def plain(solution_str, ground_truth):
            return float(ground_truth in solution_str)

        def keyed(solution_str, ground_truth, data_source=None):
            return 0.5 if data_source == "half" else 1.0

        def anything(solution_str, ground_truth, **kwargs):
            return float(kwargs["extra_info"]["bonus"])
    """,
    )
    assert CustomScorer(f"{path}:plain")("src", "the answer is 4", "4", None) == (1.0, {})
    assert CustomScorer(f"{path}:keyed")("half", "x", "y", None) == (0.5, {})
    assert CustomScorer(f"{path}:anything")("src", "x", "y", {"bonus": 2}) == (2.0, {})


def test_custom_fn_runs_in_workers(tmp_path):
    path = _write(
        tmp_path,
        """
        def score(solution_str, ground_truth, data_source, extra_info):
            return len(solution_str) + (extra_info or {}).get("bonus", 0) + (data_source == "anything")
    """,
    )
    cfg = RewardConfig(custom_fn=f"{path}:score", timeout_s=5.0, num_workers=2)
    with RewardScorer(cfg) as scorer:
        scores, stats = scorer.score(["anything", "other"], ["ab", "abc"], ["", ""], [{"bonus": 10}, None])
    assert scores == [13.0, 3.0]
    assert stats.slow_path == 2 and stats.errors == 0


@pytest.mark.parametrize(
    "spec,message",
    [
        ("missing.py:score", "file not found: missing.py"),
        ("no_colon_here", "expected 'path/to/file.py:function'"),
        ("{path}:nope", "no function 'nope' in"),
        ("{path}:VALUE", "no function 'VALUE' in"),
        ("{broken}:score", "importing .* failed: ZeroDivisionError"),
    ],
)
def test_custom_fn_errors_are_one_line_user_errors(tmp_path, spec, message):
    path = _write(tmp_path, "VALUE = 3\n\ndef score(solution_str, ground_truth):\n    return 1.0\n")
    broken = tmp_path / "broken.py"
    broken.write_text("1 / 0\n")
    spec = spec.format(path=path, broken=broken)
    with pytest.raises(UserError, match=message) as info:
        load_custom_fn(spec)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError):
        RewardScorer(RewardConfig(custom_fn=spec, timeout_s=1.0, num_workers=1))
