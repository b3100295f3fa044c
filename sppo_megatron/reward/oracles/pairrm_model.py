"""reward.source=pairwise: PairRM (llm-blender/PairRM-hf), loaded natively on transformers >= 5.

The llm-blender package no longer imports with transformers 5, so its DebertaV2PairRM head
(llm_blender/pair_ranker/pairrm.py) is rebuilt here with the same module names, hence the same
checkpoint keys, and the same input construction as the checkpoint's model card
(`<|source|>prompt`, `<|candidate1|>A`, `<|candidate2|>B`, each encoded with the tokenizer's
[CLS]/[SEP], the source truncated to its budget and the candidates sharing what is left). The
logit is > 0 when candidate 1 is better. Each pair is compared in both orders and the two logits
averaged, as llm-blender's compare(mode="[A,B]+[B,A]"): P(y_i > y_j) = sigmoid((l_ij - l_ji) / 2).

Two checkpoint layouts load into that one module: PairRM-hf's (config.json with architectures
[DebertaV2PairRM], HF weights) and llm-blender's own (llm-blender/PairRM: a RankerConfig, the
CrossCompareReranker state dict, whose keys are the same `pretrained_model.*` / `head_layer.*`;
the DeBERTa config comes from its model_name, the vocabulary size from the resized embeddings,
the prefix ids from the tokenizer after llm-blender's add_tokens).
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Optional, Tuple

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

from sppo_megatron.errors import ConfigError
from sppo_megatron.platform.distributed import current_device
from sppo_megatron.platform.dtypes import resolve_dtype
from sppo_megatron.reward.oracles.base import PairOracle
from sppo_megatron.reward.oracles.checks import BLENDER_WEIGHTS, PAIRRM_ARCH, blender_ranker_config, model_problems
from sppo_megatron.reward.oracles.hf import batches, load_oracle_model

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"  # llm-blender adds it too (its collator's order), so the ids match
#: PairRM's budget split (source 1224 + 2 x 412 candidate tokens of 2048), scaled to reward.max_length
_CANDIDATE_SHARE = 412 / 2048


class DebertaV2PairRM(DebertaV2PreTrainedModel):
    """PairRM: DeBERTa-v2 encoder; a shared head scores [source; candidate] at the two candidate
    prefix tokens, and the logit is their difference (averaged over n_tasks)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(config.drop_out),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(config.drop_out),
            nn.Linear(hidden, config.n_tasks),
        )
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


def load_blender_pairrm(cfg: Any) -> Tuple[nn.Module, Any]:
    """(DebertaV2PairRM in eval mode on the host, tokenizer) from reward.model_path in llm-blender's
    layout, as llm_blender.blender.blender_utils.load_ranker builds it."""
    from transformers import AutoConfig, AutoTokenizer

    path = cfg.model_path
    problems = model_problems("pairwise", path)
    if problems:
        raise ConfigError(problems[0])
    ranker = blender_ranker_config(path)
    file = next(os.path.join(path, w) for w in BLENDER_WEIGHTS if os.path.isfile(os.path.join(path, w)))
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: name it
        raise ConfigError(f"reward.model_path: cannot read {file}: {e}") from None
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer older transformers saved
    has_tokenizer = os.path.isfile(os.path.join(path, "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(
        path if has_tokenizer else ranker["model_name"], trust_remote_code=cfg.trust_remote_code
    )
    tokenizer.add_tokens([SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX])
    embeddings = state.get("pretrained_model.embeddings.word_embeddings.weight")
    if embeddings is None:
        raise ConfigError(
            f"reward.model_path: {file} has no pretrained_model.embeddings.word_embeddings.weight "
            "(not an llm-blender PairRanker state dict)"
        )
    config = AutoConfig.from_pretrained(ranker["model_name"], trust_remote_code=cfg.trust_remote_code)
    if config.model_type != "deberta-v2":
        raise ConfigError(
            f"reward.model_path: {path}: model_name {ranker['model_name']} is a {config.model_type} "
            "model; PairRM is built on deberta-v2 (DeBERTa-v3)"
        )
    config.update(
        dict(
            vocab_size=embeddings.shape[0],
            n_tasks=ranker.get("n_tasks", 1),
            drop_out=ranker.get("drop_out", 0.05),
            sep_token_id=tokenizer.sep_token_id,
            architectures=[PAIRRM_ARCH],
            **{
                name: tokenizer.convert_tokens_to_ids(token)
                for name, token in (
                    ("source_prefix_id", SOURCE_PREFIX),
                    ("cand1_prefix_id", CAND1_PREFIX),
                    ("cand2_prefix_id", CAND2_PREFIX),
                    ("cand_prefix_id", CAND_PREFIX),
                )
            },
        )
    )
    model = DebertaV2PairRM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"reward.model_path: {file} does not fit PairRM on {ranker['model_name']}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return model.to(resolve_dtype(cfg.dtype, current_device())).eval(), tokenizer


def load_pairrm(cfg: Any) -> Tuple[nn.Module, Any]:
    """PairRM from reward.model_path in either layout (see the module docstring)."""
    if os.path.isdir(cfg.model_path) and blender_ranker_config(cfg.model_path) is not None:
        return load_blender_pairrm(cfg)
    return load_oracle_model(cfg, DebertaV2PairRM)


def source_text(messages: List[dict]) -> str:
    """PairRM reads the instruction as plain text: the message contents, one per line."""
    return "\n".join(m["content"] for m in messages)


class PairRMOracle(PairOracle):
    def __init__(self, cfg: Any, model: Optional[nn.Module] = None, tokenizer: Any = None):
        if model is None:
            model, tokenizer = load_pairrm(cfg)
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
        return (
            source_ids
            + enc(CAND1_PREFIX + first, max_length=budget, truncation=True)
            + enc(CAND2_PREFIX + second, max_length=budget, truncation=True)
        )

    def logits(self, triples: List[tuple]) -> List[float]:
        """PairRM's logit for each (source, candidate1, candidate2)."""
        out: List[float] = []
        for batch in batches(triples, self.batch_size):
            encoded = self.tokenizer.pad({"input_ids": [self.encode(*t) for t in batch]}, return_tensors="pt")
            with torch.no_grad():
                out += (
                    self.model(encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device))
                    .float()
                    .tolist()
                )
        return out

    def compute(self, units: List[Any]) -> List[float]:
        return self.logits([(source_text(messages), a, b) for messages, a, b in units])

    def combine(self, q_ij: float, q_ji: float) -> float:
        return 1.0 / (1.0 + math.exp(-(q_ij - q_ji) / 2))
