"""Loading an oracle's Hugging Face model and tokenizer on the host, in reward.dtype."""

from __future__ import annotations

from typing import Any, Tuple

import torch
from transformers import AutoTokenizer

from sppo_megatron.errors import ConfigError
from sppo_megatron.platform.distributed import current_device
from sppo_megatron.platform.dtypes import resolve_dtype
from sppo_megatron.reward.oracles.checks import model_problems


def load_oracle_model(cfg: Any, auto_class: Any) -> Tuple[torch.nn.Module, Any]:
    """(model in eval mode on the host, tokenizer) from reward.model_path; the checks of preflight
    run again here, so a direct caller gets the same one-line errors."""
    problems = model_problems(cfg.source, cfg.model_path)
    if problems:
        raise ConfigError(problems[0])
    dtype = resolve_dtype(cfg.dtype, current_device())
    model = auto_class.from_pretrained(cfg.model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def batches(items: list, size: int):
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
