"""reward.custom_fn is called by keyword with verl's names, so verl reward files work unchanged."""

import textwrap
from types import SimpleNamespace

import pytest

from sppo_megatron.errors import UserError
from sppo_megatron.reward import RewardScorer
from sppo_megatron.reward.custom import CustomScorer, load_custom_fn

VERL_STYLE = """
    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        bonus = (extra_info or {}).get("bonus", 0)
        return float(solution_str.strip() == ground_truth) + bonus + (data_source == "double")

    def reordered(ground_truth, solution_str):
        return float(solution_str == ground_truth)

    def keyword_only(*, solution_str, data_source="none"):
        return 2.0 if data_source == "x" else 0.0

    def positional(solution_str, ground_truth, /):
        return 1.0

    def foreign(response, answer):
        return 1.0

    def no_response(data_source, ground_truth):
        return 1.0

    def optional_extra(solution_str, ground_truth, scale=3.0):
        return scale * (solution_str == ground_truth)

    def verl_dict(solution_str, ground_truth):
        right = solution_str == ground_truth
        return {"score": 2.0 if right else -1.0, "acc": right, "pred": solution_str, "length": len(solution_str)}

    def as_string(solution_str, ground_truth):
        return "1.0"

    def as_none(solution_str, ground_truth):
        return None

    def as_bool(solution_str, ground_truth):
        return solution_str == ground_truth

    def dict_without_score(solution_str, ground_truth):
        return {"reward": 1.0}
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "verl_reward.py"
    path.write_text(textwrap.dedent(VERL_STYLE))
    return path


def test_verl_signature_in_process(reward_file):
    score = CustomScorer(f"{reward_file}:compute_score")
    assert score("math", "4", "4", None) == (1.0, {})
    assert score("double", "4", "4", {"bonus": 10}) == (12.0, {})
    assert score("math", "5", "4") == (0.0, {})


def test_fewer_keywords_in_any_order(reward_file):
    assert CustomScorer(f"{reward_file}:reordered")("src", "7", "7")[0] == 1.0
    assert CustomScorer(f"{reward_file}:reordered")("src", "7", "8")[0] == 0.0
    assert CustomScorer(f"{reward_file}:keyword_only")("x", "anything", "gold")[0] == 2.0
    assert CustomScorer(f"{reward_file}:optional_extra")("src", "a", "a")[0] == 3.0


def test_verl_signature_through_the_worker_pool(reward_file):
    cfg = SimpleNamespace(custom_fn=f"{reward_file}:compute_score", timeout_s=10.0, num_workers=1)
    with RewardScorer(cfg) as scorer:
        scores, stats = scorer.score(
            ["math", "double", "math"], ["4", "4", "3"], ["4", "4", "4"], [None, {"bonus": 1}, None]
        )
    assert stats.errors == 0, stats.first_error
    assert scores == [1.0, 3.0, 0.0]


def test_verl_dict_is_scored_by_its_score_and_the_rest_logged(reward_file):
    cfg = SimpleNamespace(custom_fn=f"{reward_file}:verl_dict", timeout_s=10.0, num_workers=1)
    with RewardScorer(cfg) as scorer:
        scores, stats = scorer.score(["a", "a", "a"], ["4", "4", "35"], ["4", "5", "35"])
    assert stats.errors == 0, stats.first_error
    assert scores == [2.0, -1.0, 2.0]
    # numeric extras averaged over the samples (a bool counts as 0 / 1); the string `pred` left out
    assert stats.metrics()["reward/extra/acc"] == pytest.approx(2 / 3)
    assert stats.metrics()["reward/extra/length"] == pytest.approx(4 / 3)
    assert not any("pred" in key for key in stats.metrics())


@pytest.mark.parametrize(
    "name,shown",
    [
        ("as_string", "returned '1.0' (str), not a number"),
        ("as_none", "returned None (NoneType), not a number"),
        ("dict_without_score", "returned a dict without a 'score' key (keys: ['reward'])"),
    ],
)
def test_values_that_are_no_number_are_errors_naming_the_function(reward_file, name, shown):
    spec = f"{reward_file}:{name}"
    with pytest.raises(TypeError) as info:
        CustomScorer(spec)("a", "4", "4")
    assert str(info.value) == f"reward.custom_fn {spec} {shown}"
    cfg = SimpleNamespace(custom_fn=spec, timeout_s=10.0, num_workers=1)
    with RewardScorer(cfg) as scorer:
        scores, stats = scorer.score(["a"], ["4"], ["4"])
    assert scores == [0.0] and stats.errors == 1 and spec in stats.first_error and shown in stats.first_error


def test_a_bool_counts_as_0_or_1_as_in_verl(reward_file):
    score = CustomScorer(f"{reward_file}:as_bool")
    assert score("a", "4", "4") == (1.0, {}) and score("a", "4", "5") == (0.0, {})


@pytest.mark.parametrize(
    "name,message",
    [
        ("positional", "'solution_str' is positional-only"),
        ("foreign", "'response' is not one of verl's compute_score keywords"),
        ("no_response", "takes no solution_str"),
    ],
)
def test_signatures_verl_cannot_fill_are_refused_when_loading(reward_file, name, message):
    with pytest.raises(UserError, match=message) as info:
        load_custom_fn(f"{reward_file}:{name}")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=message):
        RewardScorer(SimpleNamespace(custom_fn=f"{reward_file}:{name}", timeout_s=1.0, num_workers=1))
