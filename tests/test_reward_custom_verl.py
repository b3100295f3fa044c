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
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "verl_reward.py"
    path.write_text(textwrap.dedent(VERL_STYLE))
    return path


def test_verl_signature_in_process(reward_file):
    score = CustomScorer(f"{reward_file}:compute_score")
    assert score("math", "4", "4", None) == 1.0
    assert score("double", "4", "4", {"bonus": 10}) == 12.0
    assert score("math", "5", "4") == 0.0


def test_fewer_keywords_in_any_order(reward_file):
    assert CustomScorer(f"{reward_file}:reordered")("src", "7", "7") == 1.0
    assert CustomScorer(f"{reward_file}:reordered")("src", "7", "8") == 0.0
    assert CustomScorer(f"{reward_file}:keyword_only")("x", "anything", "gold") == 2.0
    assert CustomScorer(f"{reward_file}:optional_extra")("src", "a", "a") == 3.0


def test_verl_signature_through_the_worker_pool(reward_file):
    cfg = SimpleNamespace(custom_fn=f"{reward_file}:compute_score", timeout_s=10.0, num_workers=1)
    with RewardScorer(cfg) as scorer:
        scores, stats = scorer.score(
            ["math", "double", "math"], ["4", "4", "3"], ["4", "4", "4"], [None, {"bonus": 1}, None]
        )
    assert stats.errors == 0, stats.first_error
    assert scores == [1.0, 3.0, 0.0]


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
