"""Batched, time-bounded reward scoring for rollouts.

The cheap, provably bounded part (answer extraction, normalisation, numeric comparison, the
gsm8k/arith scorers) runs in the calling process; only the answers it cannot decide go to
worker processes for math-verify, one sample per worker at a time under `reward.timeout_s`.
The parent keeps scoring while workers run, so the two overlap. A custom function
(`reward.custom_fn`) runs entirely in the workers, since user code may hang.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from sppo_megatron.reward.custom import extra_metrics, load_custom_fn
from sppo_megatron.reward.dispatch import RULE_SCORERS, scorer_kind
from sppo_megatron.reward.math import fast_score, final_answer
from sppo_megatron.reward.scoring import ScoredPrompt, Scorer, ScoreStats
from sppo_megatron.reward.workers import WorkerPool

if TYPE_CHECKING:  # worker processes import this package: keep torch and the config loader out
    from sppo_megatron.config.schema import RewardConfig

_POLL_EVERY = 16


class RewardScorer(Scorer):
    """Scores batches of responses with the `reward` config group (custom_fn, timeout_s, num_workers).

    `score` scores on this process; `score_samples` (the `Scorer` interface) scores on rank 0 and
    shares the result with every rank: scoring has time limits, so scoring on every rank could
    disagree. Use as a context manager, or call close(); workers start on first need. Once
    `interrupted()` is true (a preemption signal), samples still being scored count as timeouts.
    """

    def __init__(self, cfg: RewardConfig, interrupted: Optional[Callable[[], bool]] = None):
        self.custom_spec: Optional[str] = cfg.custom_fn
        if self.custom_spec:
            load_custom_fn(self.custom_spec)  # a bad path is a UserError now, not a worker failure later
        self.pool = WorkerPool(cfg.num_workers, cfg.timeout_s, self.custom_spec, interrupted)

    def score(
        self,
        data_sources: Sequence[str],
        responses: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Optional[Sequence[Optional[dict]]] = None,
    ) -> tuple[list[float], ScoreStats]:
        """Scores in {0, 1} (any float for a custom function) and their stats: errors count
        exceptions in workers (math-verify's included), slow_path the samples sent to workers."""
        start = time.monotonic()
        n = len(responses)
        if not len(data_sources) == len(ground_truths) == n or (extra_infos is not None and len(extra_infos) != n):
            raise ValueError("reward: data_sources, responses, ground_truths and extra_infos differ in length")
        extra_infos = list(extra_infos) if extra_infos is not None else [None] * n
        scores = [0.0] * n
        if self.custom_spec:
            for i in range(n):
                self.pool.submit(i, ("custom", data_sources[i], responses[i], ground_truths[i], extra_infos[i]))
        else:
            self._score_rules(data_sources, responses, ground_truths, scores)
        drained = self.pool.drain()
        for i, value in drained.results.items():
            scores[i] = value
        stats = ScoreStats(
            timeouts=drained.timeouts,
            errors=drained.errors,
            seconds=time.monotonic() - start,
            slow_path=len(drained.results),
            first_error=drained.first_error or None,
            oracle=extra_metrics(drained.extras.values(), n),
        )
        return scores, stats

    def score_samples(
        self, prompts: Sequence[ScoredPrompt], responses: Sequence[str], n: int
    ) -> tuple[list[float], ScoreStats]:
        """`score` on rank 0, its outcome (or its exception) on every rank. Collective."""
        # here, not at the top: the reward workers import this module and must not load torch
        from sppo_megatron.platform.distributed import is_rank0, share_outcomes

        def on_rank0() -> tuple[list[float], ScoreStats]:
            return self.score(
                [p.data_source for p in prompts],
                responses,
                [p.ground_truth for p in prompts],
                [p.extra_info for p in prompts],
            )

        outcome = share_outcomes(on_rank0 if is_rank0() else None)[0]
        assert outcome is not None  # rank 0 always scores
        return outcome

    def _score_rules(
        self, data_sources: Sequence[str], responses: Sequence[str], ground_truths: Sequence[Any], scores: list[float]
    ) -> None:
        kinds = {source: scorer_kind(source) for source in dict.fromkeys(data_sources)}
        for i, (source, response, truth) in enumerate(zip(data_sources, responses, ground_truths)):
            kind = kinds[source]
            if kind != "math":
                scores[i] = RULE_SCORERS[kind](response, truth)
                continue
            answer = final_answer(response, str(truth))
            decided = 0.0 if answer is None else fast_score(answer, str(truth))
            if decided is None:
                self.pool.submit(i, ("math", answer, str(truth)))
            else:
                scores[i] = decided
            if i % _POLL_EVERY == 0 and self.pool.pending:
                self.pool.poll(0.0)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
