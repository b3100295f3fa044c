"""The one scoring interface the trainer calls, for the rule scorer and every preference oracle,
and the statistics each scoring call reports.

A `Scorer` turns the n samples of each prompt into one score per sample (`matrix = False`: rule
rewards, reward models, remote scores; win rates then come from algorithm.preference) or, per
sample, its row of P(y_i > y_j) over its prompt's n samples (`matrix = True`: pairwise models,
judges, remote matrices). `score_samples` is collective: every rank calls it with the same
samples and gets the same result, whoever did the work (rank 0 for rules, all ranks for an oracle).

Kept free of torch: the reward workers import this package.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple


class ScoredPrompt(Protocol):
    """What a scorer reads about a sample's prompt (`data.PromptItem` is one): the rule scorer its
    data_source, ground truth and extra_info; an oracle its messages."""

    data_source: str
    ground_truth: Optional[str]
    extra_info: Dict[str, Any]
    messages: List[Dict[str, str]]


@dataclass(frozen=True)
class ScoreStats:
    """What one scoring call reports: failed samples, time, and an oracle's own metrics.

    `slow_path`: rule samples sent to the worker processes; `first_error`: the first failure's
    message (the first error's, else the first timeout's) when any sample failed; `oracle`: an
    oracle's own `reward/*` metrics (a scalar oracle's score mean and std, a pairwise model's
    agreement figures), the same on every rank."""

    timeouts: int = 0
    errors: int = 0
    seconds: float = 0.0
    slow_path: int = 0
    first_error: Optional[str] = None
    oracle: Dict[str, float] = field(default_factory=dict)

    @staticmethod
    def merge(parts: Sequence[Tuple[int, "ScoreStats"]]) -> "ScoreStats":
        """(samples, stats) of several scoring calls as one: counts and seconds summed, the first
        error kept, an oracle's own metrics averaged weighted by samples (when every call has them)."""
        total = sum(count for count, _ in parts)
        first = next((stats.first_error for _, stats in parts if stats.first_error), None)
        keys = set(parts[0][1].oracle) if parts else set()
        if any(set(stats.oracle) != keys for _, stats in parts):
            keys = set()
        return ScoreStats(
            timeouts=sum(stats.timeouts for _, stats in parts),
            errors=sum(stats.errors for _, stats in parts),
            seconds=sum(stats.seconds for _, stats in parts),
            slow_path=sum(stats.slow_path for _, stats in parts),
            first_error=first,
            oracle={key: sum(count * stats.oracle[key] for count, stats in parts) / total for key in sorted(keys)},
        )

    def metrics(self) -> Dict[str, Any]:
        """`reward/timeouts`, `reward/errors`, `timing/reward_s`, an oracle's own metrics;
        `reward/first_error` when a sample failed."""
        out: Dict[str, Any] = {
            "reward/timeouts": float(self.timeouts),
            "reward/errors": float(self.errors),
            "timing/reward_s": float(self.seconds),
        }
        out.update(self.oracle)
        if self.first_error:
            out["reward/first_error"] = self.first_error
        return out


class Scorer(abc.ABC):
    """Scores a step's samples (see the module docstring); close() frees workers or the model."""

    #: True: a preference row per sample; False: one scalar score per sample
    matrix: bool = False

    @abc.abstractmethod
    def score_samples(
        self, prompts: Sequence[ScoredPrompt], responses: Sequence[str], n: int
    ) -> Tuple[List[Any], ScoreStats]:
        """Per sample (`prompts[i]` is sample i's prompt, a prompt's n samples consecutive), its score
        or its preference row, the same on every rank, and the call's stats. Collective."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what scoring holds (worker processes, the model)."""
