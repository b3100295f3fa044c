"""Rollout batches as the actor sees them, and the per-token log-prob result.

A `SequenceBatch` is N samples, each a prompt and a response as token-id lists; every rank holds
the same batch. For SPPO, N = B prompts x K samples with the K samples of a prompt consecutive.

Sequences are prompt + response, RIGHT-padded: megatron's GPTModel applies RoPE at positions
0..S-1 whatever `position_ids` say, so left padding would shift every position. The model reads
`tokens[:-1]` and predicts `tokens[1:]`; response token j of sample i (at absolute position
P_i + j) is predicted at input position P_i + j - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch


@dataclass
class SequenceBatch:
    """N (prompt, response) pairs of token ids; identical on every rank."""

    prompt_ids: List[List[int]]
    response_ids: List[List[int]]

    def __post_init__(self) -> None:
        self.prompt_ids = [list(map(int, p)) for p in self.prompt_ids]
        self.response_ids = [list(map(int, r)) for r in self.response_ids]
        if len(self.prompt_ids) != len(self.response_ids):
            raise ValueError(f"{len(self.prompt_ids)} prompts but {len(self.response_ids)} responses")
        for i, p in enumerate(self.prompt_ids):
            if not p:
                raise ValueError(f"sample {i}: empty prompt (the first response token needs a context)")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def response_lengths(self) -> List[int]:
        return [len(r) for r in self.response_ids]

    @property
    def input_lengths(self) -> List[int]:
        """Tokens the model reads per sample: prompt + response minus the last token."""
        return [len(p) + len(r) - 1 for p, r in zip(self.prompt_ids, self.response_ids)]

    @property
    def max_response_length(self) -> int:
        return max(self.response_lengths, default=0)

    def select(self, indices: Sequence[int]) -> "SequenceBatch":
        return SequenceBatch([self.prompt_ids[i] for i in indices], [self.response_ids[i] for i in indices])


@dataclass
class LogProbs:
    """Per-token log-probs of the response tokens, identical on every rank.

    logp:    float32 [N, R] (R = longest response), zero beyond each response
    mask:    bool    [N, R], True on response tokens
    entropy: float32 [N, R] or None, the policy's entropy at each response position
    """

    logp: torch.Tensor
    mask: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    temperature: float = 1.0

    def sequence_logp(self) -> torch.Tensor:
        """log pi(y|x) per sample: the sum over response tokens, accumulated in float64 [N].

        SPPO's loss takes the difference of two such sums (hundreds of tokens, magnitudes in
        the hundreds): float64 keeps that difference free of the sums' own rounding."""
        return torch.where(self.mask, self.logp.double(), torch.zeros((), dtype=torch.float64)).sum(dim=1)

    def mean_entropy(self) -> Optional[float]:
        """The policy's entropy per response token, averaged over every response token (None
        without entropies)."""
        if self.entropy is None or not bool(self.mask.any()):
            return None
        return float(self.entropy.double()[self.mask].mean())

    def __len__(self) -> int:
        return self.logp.shape[0]


@dataclass
class MicroBatch:
    """Model inputs for one micro-batch (b samples padded to length S), built identically on every rank.

    tokens/labels: int64 [b, S]; response_mask: bool [b, S] marks the positions whose label is a
    response token. `sample_index` maps rows to the batch (-1 for a padding row of an empty
    micro-batch, whose `weight` is False so that it contributes nothing).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    response_mask: torch.Tensor
    sample_index: List[int]
    num_tokens: int = 0  # real (unpadded) input tokens
    extras: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_length(self) -> int:
        return self.tokens.shape[1]

    def sample_rows(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(batch index per row, 0 for padding rows; True on real rows), CPU tensors."""
        index = torch.tensor(self.sample_index, dtype=torch.long)
        return index.clamp(min=0), index >= 0

    def response_index(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per response token, in row-major order: its flat position in [size x seq_length], its
        sample's batch index and its position j in the response (CPU tensors)."""
        flat = self.response_mask.reshape(-1).nonzero().squeeze(1)
        row = flat // self.seq_length
        first = self.response_mask.to(torch.int8).argmax(dim=1)  # first response position per row
        return flat, self.sample_rows()[0][row], flat % self.seq_length - first[row]


def collate(batch: SequenceBatch, indices: Sequence[int], pad_to_multiple: int = 1, pad_id: int = 0) -> MicroBatch:
    """Right-padded inputs for the samples `indices` of `batch`; [] gives one dummy row (2 tokens,
    or `pad_to_multiple`). Built with a few whole-tensor operations, not per row."""
    if not indices:
        width = max(2, pad_to_multiple)
        tokens = torch.full((1, width), pad_id, dtype=torch.long)
        return MicroBatch(tokens, tokens.clone(), torch.zeros(1, width, dtype=torch.bool), [-1], 0)
    seqs = [batch.prompt_ids[i] + batch.response_ids[i] for i in indices]
    inputs = torch.tensor([len(s) - 1 for s in seqs])
    length = max(int(inputs.max()), 1)
    if pad_to_multiple > 1:
        length = -(-length // pad_to_multiple) * pad_to_multiple
    positions = torch.arange(length).unsqueeze(0)
    real = positions < inputs.unsqueeze(1)
    tokens = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    tokens[real] = torch.tensor([t for s in seqs for t in s[:-1]], dtype=torch.long)
    labels[real] = torch.tensor([t for s in seqs for t in s[1:]], dtype=torch.long)
    first = torch.tensor([len(batch.prompt_ids[i]) - 1 for i in indices]).unsqueeze(1)
    mask = real & (positions >= first)
    return MicroBatch(tokens, labels, mask, list(indices), int(inputs.sum()))
