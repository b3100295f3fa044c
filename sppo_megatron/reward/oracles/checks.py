"""What can be known about an oracle before anything is built: its config.json says whether
reward.model_path is the kind of model reward.source needs (preflight, one line per problem)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from sppo_megatron.errors import ConfigError

#: the architecture name of the llm-blender PairRM checkpoint (llm-blender/PairRM-hf's config.json)
PAIRRM_ARCH = "DebertaV2PairRM"


def read_model_config(path: str) -> Dict[str, Any]:
    """reward.model_path's config.json, or a ConfigError naming the key."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise ConfigError(f"reward.model_path: {path} has no config.json (not a Hugging Face model directory)")
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ConfigError(f"reward.model_path: cannot read {file}: {e}") from None


def num_labels(config: Dict[str, Any]) -> int:
    """transformers' rule: id2label when present, else num_labels, else 2."""
    return len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))


def model_problems(source: str, path: str) -> List[str]:
    """Problems with reward.model_path for reward.source (reward_model, pairwise or judge)."""
    try:
        config = read_model_config(path)
    except ConfigError as e:
        return [str(e)]
    archs = list(config.get("architectures") or [])
    auto_map = config.get("auto_map") or {}
    named = ", ".join(archs) or config.get("model_type", "a model without architectures")
    if source == "reward_model":
        if not any(a.endswith("ForSequenceClassification") for a in archs) and "AutoModelForSequenceClassification" not in auto_map:
            return [f"reward.model_path: {path} is {named}, not a sequence classifier (reward.source=reward_model "
                    "needs an AutoModelForSequenceClassification checkpoint with one label)"]
        if num_labels(config) != 1:
            return [f"reward.model_path: {path} is a classifier with {num_labels(config)} labels; a reward model "
                    "has exactly one (a scalar score)"]
    elif source == "pairwise" and PAIRRM_ARCH not in archs:
        return [f"reward.model_path: {path} is {named}, not a PairRM checkpoint (reward.source=pairwise loads the "
                f"llm-blender/PairRM-hf format: architectures [{PAIRRM_ARCH}])"]
    elif source == "judge" and not any(a.endswith("ForCausalLM") for a in archs) and "AutoModelForCausalLM" not in auto_map:
        return [f"reward.model_path: {path} is {named}, not a causal LM (reward.source=judge needs one)"]
    return []


def oracle_problems(reward: Any) -> List[str]:
    """Preflight for the `reward` group: the oracle model's kind (the rules check the keys)."""
    if reward.source in ("reward_model", "pairwise", "judge") and reward.model_path and os.path.isdir(reward.model_path):
        return model_problems(reward.source, reward.model_path)
    return []
