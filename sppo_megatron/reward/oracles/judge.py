"""reward.source=judge: a generative LLM judge (any Hugging Face causal LM).

The judge reads reward.judge_template (the prompt and two responses) as a user turn in its chat
template and is asked for its verdict; P(A > B) is its next-token probability of the first
verdict word renormalised over the two (reward.judge_choices). Every pair is asked in both
orders and the answers averaged, P(y_i > y_j) = (p(i as A) + 1 - p(j as A)) / 2, which cancels
position bias and makes P(y_i > y_j) + P(y_j > y_i) = 1.
"""

from __future__ import annotations

from typing import Any, List

import torch
from transformers import AutoModelForCausalLM

from sppo_megatron.errors import ConfigError
from sppo_megatron.reward.oracles.base import PairOracle, render_conversation
from sppo_megatron.reward.oracles.hf import batches, load_oracle_model
from sppo_megatron.reward.oracles.pairwise import source_text

DEFAULT_JUDGE_TEMPLATE = (
    "You are a careful, impartial judge. Compare two responses to the user's request and decide which one "
    "is more helpful, correct and clear. Ignore the order of the responses and their length.\n\n"
    "[User request]\n{prompt}\n\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}\n\n"
    "Which response is better? Answer with a single letter, A or B."
)


class JudgeOracle(PairOracle):
    def __init__(self, cfg: Any):
        self.model, self.tokenizer = load_oracle_model(cfg, AutoModelForCausalLM)
        self.tokenizer.truncation_side = "left"  # the verdict question is at the end
        self.tokenizer.padding_side = "left"  # the next token is read at the last position of every row
        self.template = cfg.judge_template or DEFAULT_JUDGE_TEMPLATE
        try:
            self.template.format(prompt="", response_a="", response_b="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"reward.judge_template: only {{prompt}}, {{response_a}} and {{response_b}} may be "
                f"filled in ({type(e).__name__}: {e}); double literal braces"
            ) from None
        self.choice_ids = [self.verdict_token(word) for word in cfg.judge_choices]
        if self.choice_ids[0] == self.choice_ids[1]:
            raise ConfigError(f"reward.judge_choices={list(cfg.judge_choices)}: both start with the same token")
        self.batch_size, self.max_length = cfg.batch_size, cfg.max_length

    def verdict_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if not ids:
            raise ConfigError(f"reward.judge_choices: {word!r} encodes to no token in {self.tokenizer.name_or_path}")
        return ids[0]

    def judge_text(self, messages: Any, first: str, second: str) -> str:
        question = self.template.format(prompt=source_text(messages), response_a=first, response_b=second)
        return render_conversation(self.tokenizer, [{"role": "user", "content": question}])

    @torch.no_grad()
    def compute(self, units: List[Any]) -> List[float]:
        """P(A > B) per (messages, A, B)."""
        out: List[float] = []
        special = not getattr(self.tokenizer, "chat_template", None)
        for batch in batches(units, self.batch_size):
            encoded = self.tokenizer(
                [self.judge_text(*u) for u in batch],
                add_special_tokens=special,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            mask = encoded["attention_mask"]
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = self.model(
                input_ids=encoded["input_ids"].to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
            ).logits[:, -1, :]
            out += torch.softmax(logits[:, self.choice_ids].float(), dim=-1)[:, 0].tolist()
        return out

    def combine(self, q_ij: float, q_ji: float) -> float:
        return (q_ij + 1.0 - q_ji) / 2
