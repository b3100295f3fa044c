"""Which rule-based scorer a sample gets, from its `data_source` column."""

from typing import Callable, Optional

from sppo_megatron.errors import UserError
from sppo_megatron.reward import gsm8k
from sppo_megatron.reward import math as math_reward

GSM8K_SOURCES = ("gsm8k", "openai/gsm8k")
ARITH_SOURCES = ("arith",)
MATH_SOURCES = (
    "math",
    "DigitalLearningGmbH/MATH-lighteval",
    "lighteval/MATH",
    "hendrycks/competition_math",
    "math_dapo",
)

RuleFn = Callable[[str, str], float]


def scorer_kind(data_source: str) -> str:
    """'gsm8k', 'arith' or 'math'; UserError naming the known sources for anything else.

    Any source whose name contains "math" (case-insensitive) is scored as MATH.
    """
    if data_source in GSM8K_SOURCES:
        return "gsm8k"
    if data_source in ARITH_SOURCES:
        return "arith"
    if data_source in MATH_SOURCES or "math" in str(data_source).lower():
        return "math"
    known = ", ".join(GSM8K_SOURCES + ARITH_SOURCES + MATH_SOURCES)
    raise UserError(
        f"reward: unknown data_source {data_source!r}; known: {known} (or any name containing 'math'); "
        "set reward.custom_fn to score other sources"
    )


def check_data_sources(data_sources: list[str]) -> None:
    """Raise UserError for the first unknown source, before any scoring starts."""
    for source in dict.fromkeys(data_sources):
        scorer_kind(source)


RULE_SCORERS: dict[str, RuleFn] = {
    "gsm8k": gsm8k.compute_score,
    "arith": gsm8k.compute_arith_score,
    "math": math_reward.compute_score,
}


def default_compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: Optional[dict] = None
) -> float:
    """Score one response in-process with the scorer for its data source (no time limit)."""
    return RULE_SCORERS[scorer_kind(data_source)](solution_str, ground_truth)
