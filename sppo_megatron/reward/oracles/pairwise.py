"""reward.source=pairwise: PairRM (llm-blender/PairRM-hf), loaded natively on transformers >= 5.

The llm-blender package no longer imports with transformers 5, so its DebertaV2PairRM head
(llm_blender/pair_ranker/pairrm.py) is rebuilt here with the same module names, hence the same
checkpoint keys, and the same input construction as the checkpoint's model card
(`<|source|>prompt`, `<|candidate1|>A`, `<|candidate2|>B`, each encoded with the tokenizer's
[CLS]/[SEP], the source truncated to its budget and the candidates sharing what is left). The
logit is > 0 when candidate 1 is better. Each pair is compared in both orders and the two logits
averaged, as llm-blender's compare(mode="[A,B]+[B,A]"): P(y_i > y_j) = sigmoid((l_ij - l_ji) / 2).
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

from sppo_megatron.reward.oracles.base import PairOracle
from sppo_megatron.reward.oracles.hf import batches, load_oracle_model

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
#: PairRM's budget split (source 1224 + 2 x 412 candidate tokens of 2048), scaled to reward.max_length
_CANDIDATE_SHARE = 412 / 2048


class DebertaV2PairRM(DebertaV2PreTrainedModel):
    """PairRM: DeBERTa-v2 encoder; a shared head scores [source; candidate] at the two candidate
    prefix tokens, and the logit is their difference (averaged over n_tasks)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(nn.Dropout(config.drop_out), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                        nn.Dropout(config.drop_out), nn.Linear(hidden, config.n_tasks))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.ne(0).any(dim=0)
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        encs = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def at(token_id: int) -> torch.Tensor:
            rows, cols = torch.where(input_ids == token_id)
            if rows.numel() != input_ids.shape[0]:
                raise ValueError(f"PairRM input: token id {token_id} must appear exactly once per row")
            return encs[rows, cols, :]

        source = at(self.config.source_prefix_id)
        left = self.head_layer(torch.cat([source, at(self.config.cand1_prefix_id)], dim=-1))
        right = self.head_layer(torch.cat([source, at(self.config.cand2_prefix_id)], dim=-1))
        return (left - right).mean(dim=-1)


def source_text(messages: List[dict]) -> str:
    """PairRM reads the instruction as plain text: the message contents, one per line."""
    return "\n".join(m["content"] for m in messages)


class PairRMOracle(PairOracle):
    def __init__(self, cfg: Any, model: Optional[nn.Module] = None, tokenizer: Any = None):
        if model is None:
            model, tokenizer = load_oracle_model(cfg, DebertaV2PairRM)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = cfg.batch_size
        self.max_length = cfg.max_length
        self.candidate_max = int(cfg.max_length * _CANDIDATE_SHARE)
        self.source_max = cfg.max_length - 2 * self.candidate_max

    def encode(self, source: str, first: str, second: str) -> List[int]:
        """The model card's tokenize_pair for one (source, candidate1, candidate2)."""
        enc = self.tokenizer.encode
        source_ids = enc(SOURCE_PREFIX + source, max_length=self.source_max, truncation=True)
        budget = (self.max_length - len(source_ids)) // 2
        return (source_ids + enc(CAND1_PREFIX + first, max_length=budget, truncation=True)
                + enc(CAND2_PREFIX + second, max_length=budget, truncation=True))

    def logits(self, triples: List[tuple]) -> List[float]:
        """PairRM's logit for each (source, candidate1, candidate2)."""
        out: List[float] = []
        for batch in batches(triples, self.batch_size):
            encoded = self.tokenizer.pad({"input_ids": [self.encode(*t) for t in batch]}, return_tensors="pt")
            with torch.no_grad():
                out += self.model(encoded["input_ids"].to(self.device),
                                  encoded["attention_mask"].to(self.device)).float().tolist()
        return out

    def compute(self, units: List[Any]) -> List[float]:
        return self.logits([(source_text(messages), a, b) for messages, a, b in units])

    def combine(self, q_ij: float, q_ji: float) -> float:
        return 1.0 / (1.0 + math.exp(-(q_ij - q_ji) / 2))
