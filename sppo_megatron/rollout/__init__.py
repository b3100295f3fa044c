"""Rollout engines: one protocol (`RolloutEngine`), an SGLang engine (GPU) and a Hugging Face
transformers engine (CPU / fallback), chosen by `create_rollout_engine(cfg.rollout, hf_dir, ...)`, and
the rollout/actor log-prob parity metric.

sglang is imported lazily: this package imports on machines without it.
"""

from sppo_megatron.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    EngineGroups,
    RolloutEngine,
    RolloutSample,
    SamplingParams,
    make_engine_groups,
    resolve_eos_token_ids,
)
from sppo_megatron.rollout.factory import choose_engine, create_rollout_engine
from sppo_megatron.rollout.logprobs import logp_abs_diff, samples_logprobs

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "RolloutEngine",
    "EngineGroups",
    "RolloutSample",
    "SamplingParams",
    "choose_engine",
    "create_rollout_engine",
    "logp_abs_diff",
    "make_engine_groups",
    "resolve_eos_token_ids",
    "samples_logprobs",
]
