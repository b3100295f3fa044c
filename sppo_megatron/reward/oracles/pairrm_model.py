"""PairRM's network and its loading from either checkpoint layout, on transformers >= 5.

The llm-blender package no longer imports with transformers 5, so its DebertaV2PairRM head
(llm_blender/pair_ranker/pairrm.py) is rebuilt here with the same module names, hence the same
checkpoint keys. Two layouts load into it:
- PairRM-hf (llm-blender/PairRM-hf): config.json with architectures [DebertaV2PairRM] and the
  prefix token ids, HF weights, the tokenizer beside them;
- llm-blender's own (llm-blender/PairRM, what uclaml/SPPO's scripts/rank.py loads): a
  RankerConfig and the CrossCompareReranker state dict, whose keys are the same
  `pretrained_model.*` / `head_layer.*`; the DeBERTa config and, when the directory has none, the
  tokenizer come from its model_name; the vocabulary size from the resized embeddings; the prefix
  ids from the tokenizer after llm-blender's add_tokens (llm_blender/blender/blender_utils.py
  load_ranker, pair_ranker/collator.py CrossCompareCollator).
Either tokenizer gets its sentencepiece normaliser back (spm_tokenizer.py).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

from sppo_megatron.errors import ConfigError
from sppo_megatron.platform.distributed import current_device
from sppo_megatron.platform.dtypes import resolve_dtype
from sppo_megatron.reward.oracles.checks import BLENDER_WEIGHTS, PAIRRM_ARCH, blender_ranker_config, model_problems
from sppo_megatron.reward.oracles.spm_tokenizer import load_spm_tokenizer

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
#: llm-blender's collator encodes candidates after this prefix and swaps it for CAND1 / CAND2
CAND_PREFIX = "<|candidate|>"
#: llm-blender adds them in this order (CrossCompareCollator.__init__), which fixes their ids
PREFIXES = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)
#: the config keys of the prefix ids (PairRM-hf's config.json)
PREFIX_ID_KEYS = ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id", "cand_prefix_id")
#: the two layouts, as `load_pairrm` names them
BLENDER, PAIRRM_HF = "llm-blender", "pairrm-hf"


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


def _blender_state(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """The CrossCompareReranker state dict of an llm-blender directory, and its file."""
    file = next(os.path.join(path, w) for w in BLENDER_WEIGHTS if os.path.isfile(os.path.join(path, w)))
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: name it
        raise ConfigError(f"reward.model_path: cannot read {file}: {e}") from None
    # position_ids: a buffer older transformers saved
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}, file


def _load_blender(cfg: Any, ranker: Dict[str, Any]) -> Tuple[nn.Module, Any]:
    """(DebertaV2PairRM, tokenizer) from an llm-blender directory, as load_ranker builds them."""
    from transformers import AutoConfig

    path = cfg.model_path
    state, file = _blender_state(path)
    has_tokenizer = os.path.isfile(os.path.join(path, "tokenizer_config.json"))
    tokenizer = load_spm_tokenizer(path if has_tokenizer else ranker["model_name"], cfg.trust_remote_code)
    tokenizer.add_tokens(list(PREFIXES))
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
            **{key: tokenizer.convert_tokens_to_ids(token) for key, token in zip(PREFIX_ID_KEYS, PREFIXES)},
        )
    )
    model = DebertaV2PairRM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"reward.model_path: {file} does not fit PairRM on {ranker['model_name']}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return model, tokenizer


def _check_prefix_ids(path: str, config: Any, tokenizer: Any) -> None:
    """The tokenizer must map PairRM's source and candidate prefixes to the ids its head reads."""
    vocab = tokenizer.get_vocab()
    for key, token in zip(PREFIX_ID_KEYS[:3], PREFIXES[:3]):
        if vocab.get(token) != getattr(config, key):
            raise ConfigError(
                f"reward.model_path: {path}: its tokenizer maps {token} to {vocab.get(token)}, its config.json "
                f"{key} is {getattr(config, key)} (the tokenizer is not the checkpoint's own)"
            )


def load_pairrm(cfg: Any) -> Tuple[nn.Module, Any, str]:
    """(DebertaV2PairRM in eval mode on the host in reward.dtype, its tokenizer, the layout:
    BLENDER or PAIRRM_HF) from reward.model_path."""
    path = cfg.model_path
    problems = model_problems("pairwise", path)
    if problems:
        raise ConfigError(problems[0])
    ranker = blender_ranker_config(path) if os.path.isdir(path) else None
    if ranker is not None:
        (model, tokenizer), layout = _load_blender(cfg, ranker), BLENDER
    else:
        tokenizer = load_spm_tokenizer(path, cfg.trust_remote_code)
        model, layout = DebertaV2PairRM.from_pretrained(path), PAIRRM_HF
    _check_prefix_ids(path, model.config, tokenizer)
    return model.to(resolve_dtype(cfg.dtype, current_device())).eval(), tokenizer, layout
