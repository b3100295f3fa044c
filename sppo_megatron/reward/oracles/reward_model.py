"""reward.source=reward_model: a scalar Bradley-Terry reward model (any Hugging Face
AutoModelForSequenceClassification with one label, e.g. Skywork-Reward-V2), reading the
(prompt messages, response) conversation in its own tokenizer and chat template."""

from __future__ import annotations

from typing import Any, List

import torch
from transformers import AutoModelForSequenceClassification

from sppo_megatron.reward.oracles.base import Oracle, render_conversation
from sppo_megatron.reward.oracles.hf import batches, load_oracle_model


class RewardModelOracle(Oracle):
    """One score per sample; win rates come from algorithm.preference (bradley_terry: uclaml's
    sigmoid of score differences)."""

    def __init__(self, cfg: Any):
        self.model, self.tokenizer = load_oracle_model(cfg, AutoModelForSequenceClassification)
        self.tokenizer.truncation_side = "left"  # it scores at the last token: keep the response's end
        self.batch_size, self.max_length = cfg.batch_size, cfg.max_length
        # a template that starts with the BOS token already has it; plain text gets the tokenizer's own
        self.add_special_tokens = not getattr(self.tokenizer, "chat_template", None)

    def encode(self, messages: Any, response: str) -> List[int]:
        """The token ids the reward model reads for one sample (the last max_length kept)."""
        text = render_conversation(self.tokenizer, messages, response)
        return self.tokenizer(
            text, add_special_tokens=self.add_special_tokens, truncation=True, max_length=self.max_length
        )["input_ids"]

    @torch.no_grad()
    def compute(self, units: List[Any]) -> List[float]:
        scores: List[float] = []
        for batch in batches(units, self.batch_size):
            encoded = self.tokenizer.pad({"input_ids": [self.encode(m, r) for m, r in batch]}, return_tensors="pt")
            logits = self.model(
                input_ids=encoded["input_ids"].to(self.device), attention_mask=encoded["attention_mask"].to(self.device)
            ).logits
            scores += logits[:, 0].float().tolist()
        return scores
