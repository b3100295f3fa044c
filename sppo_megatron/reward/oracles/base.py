"""What every preference oracle shares: the work is split evenly across ALL ranks, gathered back
in order, and the model sits on the accelerator only while it scores.

An oracle is a `Scorer` (reward/scoring.py): it turns the K samples of each prompt into either one
scalar score per sample (`matrix = False`: reward models, remote scores; win rates then come from
algorithm.preference=pairwise | bradley_terry) or the prompt's K x K preference matrix
(`matrix = True`: pairwise models, judges, remote matrices; algorithm.preference=matrix). A
subclass says what one unit of work is (`units`), scores a list of units on this rank
(`compute`), and assembles the gathered results (`assemble`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from sppo_megatron.platform.distributed import current_device, share_outcomes
from sppo_megatron.platform.parallel_dims import split_evenly
from sppo_megatron.reward.scoring import ScoredPrompt, Scorer, ScoreStats

Messages = List[Dict[str, str]]


def rank_slice(count: int) -> slice:
    """This rank's contiguous share of `count` work units: sizes differ by at most one, in rank order."""
    world, me = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    return slice(*split_evenly(count, world)[me])


def render_conversation(tokenizer: Any, messages: Messages, response: Optional[str] = None) -> str:
    """The prompt messages (plus the response as the assistant turn) in the oracle's own chat
    template, or joined by newlines when its tokenizer has none."""
    turns = list(messages) + ([{"role": "assistant", "content": response}] if response is not None else [])
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=response is None)
    return "\n".join(m["content"] for m in turns)


class Oracle(Scorer):
    """Base of every reward.source other than rule. `model` (a torch module, or None for a
    remote oracle) is kept on the host between scoring phases."""

    model: Optional[torch.nn.Module] = None

    def units(self, messages: Sequence[Messages], responses: Sequence[str], n: int) -> List[Any]:
        """One unit per sample: (messages, response)."""
        return list(zip(messages, responses))

    def compute(self, units: List[Any]) -> List[Any]:
        raise NotImplementedError

    def assemble(self, results: List[Any], num_samples: int, n: int) -> List[Any]:
        """Scalar oracles: the results are the scores."""
        return results

    def score_samples(
        self, prompts: Sequence[ScoredPrompt], responses: Sequence[str], n: int
    ) -> Tuple[List[Any], ScoreStats]:
        """The `Scorer` interface: `score_groups` on the prompts' messages."""
        return self.score_groups([p.messages for p in prompts], responses, n)

    def score_groups(
        self, messages: Sequence[Messages], responses: Sequence[str], n: int
    ) -> Tuple[List[Any], ScoreStats]:
        """Per sample, its score (scalar oracles) or its row P(y_i > y_j) over its prompt's n samples
        (matrix oracles), the same on every rank; and the call's stats, with the scores' mean and
        spread for a scalar oracle (collective: call on every rank with the same inputs)."""
        start = time.monotonic()
        units = self.units(messages, responses, n)
        mine = units[rank_slice(len(units))]
        parts = share_outcomes(lambda: self._compute_resident(mine))
        results = [value for part in parts for value in part]
        values = self.assemble(results, len(responses), n)
        return values, ScoreStats(seconds=time.monotonic() - start, oracle=self.metrics(results, values, n))

    def metrics(self, results: List[Any], values: List[Any], n: int) -> Dict[str, float]:
        """This oracle's own `reward/*` metrics of one scoring call, from the gathered `results`
        and the assembled `values` (the same on every rank): a scalar oracle's score mean and std."""
        if self.matrix:
            return {}
        scores = torch.tensor(values, dtype=torch.float64)
        return {"reward/score_mean": float(scores.mean()), "reward/score_std": float(scores.std(unbiased=False))}

    def _compute_resident(self, units: List[Any]) -> List[Any]:
        if not units:
            return []
        with self.resident():
            return self.compute(units)

    @contextmanager
    def resident(self) -> Iterator[None]:
        """The model on this rank's accelerator for the duration, back on the host after, so that
        training and the rollout engine keep their memory (no memory moves on CPU)."""
        device = current_device()
        if self.model is None or device.type == "cpu":
            yield
            return
        self.model.to(device)
        try:
            yield
        finally:
            self.model.to("cpu")
            torch.cuda.empty_cache()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def close(self) -> None:
        self.model = None


class PairOracle(Oracle):
    """A preference oracle that compares two responses at a time: every ordered pair (i, j), i != j,
    of a prompt's samples is one unit; `preferences` turns a prompt's K x K results into its
    P(y_i > y_j), by default `combine(q_ij, q_ji)` per pair, so that P(y_i > y_j) + P(y_j > y_i) = 1
    and position bias cancels."""

    matrix = True

    def units(self, messages: Sequence[Messages], responses: Sequence[str], n: int) -> List[Any]:
        return [
            (messages[g * n], responses[g * n + i], responses[g * n + j])
            for g in range(len(responses) // n)
            for i in range(n)
            for j in range(n)
            if i != j
        ]

    def combine(self, q_ij: float, q_ji: float) -> float:
        raise NotImplementedError

    def preferences(self, raw: List[List[float]]) -> List[List[float]]:
        """A prompt's K x K P from its results (raw[i][j] for the order (i, j); 0 on the diagonal)."""
        k = len(raw)
        return [[0.5 if i == j else self.combine(raw[i][j], raw[j][i]) for j in range(k)] for i in range(k)]

    def assemble(self, results: List[Any], num_samples: int, n: int) -> List[Any]:
        rows: List[List[float]] = []
        per_group = n * (n - 1)
        for g in range(num_samples // n):
            q = iter(results[g * per_group : (g + 1) * per_group])
            rows += self.preferences([[0.0 if i == j else next(q) for j in range(n)] for i in range(n)])
        return rows
