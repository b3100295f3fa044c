"""What can be known about an oracle before anything is built: its config.json (or llm-blender's
ranker config) says whether reward.model_path is the kind of model reward.source needs
(preflight, one line per problem)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from sppo_megatron.errors import ConfigError

#: the architecture name of the llm-blender PairRM checkpoint (llm-blender/PairRM-hf's config.json)
PAIRRM_ARCH = "DebertaV2PairRM"
#: llm-blender's own layout (llm-blender/PairRM): a RankerConfig in one of these files (older
#: llm-blender wrote ranker_config.json, newer config.json), the CrossCompareReranker state dict
#: in one of BLENDER_WEIGHTS (llm_blender/blender/blender_utils.py load_ranker)
BLENDER_CONFIGS = ("ranker_config.json", "config.json")
BLENDER_WEIGHTS = ("pytorch_model.bin", "model.safetensors")


def read_model_config(path: str, name: str = "config.json") -> Dict[str, Any]:
    """reward.model_path's config.json (or `name`), or a ConfigError naming the key."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise ConfigError(f"reward.model_path: {path} has no config.json (not a Hugging Face model directory)")
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ConfigError(f"reward.model_path: cannot read {file}: {e}") from None


def blender_ranker_config(path: str) -> Optional[Dict[str, Any]]:
    """The llm-blender RankerConfig of `path` (a JSON object with `ranker_type`), or None when
    `path` is not in llm-blender's layout."""
    for name in BLENDER_CONFIGS:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            config = read_model_config(path, name)
            if "ranker_type" in config:
                return config
    return None


def blender_problems(path: str, ranker: Dict[str, Any]) -> List[str]:
    """What stops an llm-blender layout from loading as PairRM (a pair ranker on DeBERTa)."""
    if ranker.get("ranker_type") != "pairranker" or not str(ranker.get("model_type") or "").startswith("deberta"):
        return [
            f"reward.model_path: {path} is an llm-blender ranker of ranker_type {ranker.get('ranker_type')!r}, "
            f"model_type {ranker.get('model_type')!r}; reward.source=pairwise loads ranker_type 'pairranker' "
            "on a 'deberta' model_type (PairRM)"
        ]
    if not any(os.path.isfile(os.path.join(path, w)) for w in BLENDER_WEIGHTS):
        return [f"reward.model_path: {path} (llm-blender layout) has neither {' nor '.join(BLENDER_WEIGHTS)}"]
    if not ranker.get("model_name"):
        return [
            f"reward.model_path: {path} (llm-blender layout): its ranker config has no model_name (the "
            "DeBERTa backbone whose config it uses)"
        ]
    return []


def num_labels(config: Dict[str, Any]) -> int:
    """transformers' rule: id2label when present, else num_labels, else 2."""
    return len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))


def model_problems(source: str, path: str) -> List[str]:
    """Problems with reward.model_path for reward.source (reward_model, pairwise or judge)."""
    try:
        ranker = blender_ranker_config(path) if source == "pairwise" and os.path.isdir(path) else None
        if ranker is not None:
            return blender_problems(path, ranker)
        config = read_model_config(path)
    except ConfigError as e:
        return [str(e)]
    archs = list(config.get("architectures") or [])
    auto_map = config.get("auto_map") or {}
    named = ", ".join(archs) or config.get("model_type", "a model without architectures")
    if source == "reward_model":
        if (
            not any(a.endswith("ForSequenceClassification") for a in archs)
            and "AutoModelForSequenceClassification" not in auto_map
        ):
            return [
                f"reward.model_path: {path} is {named}, not a sequence classifier (reward.source=reward_model "
                "needs an AutoModelForSequenceClassification checkpoint with one label)"
            ]
        if num_labels(config) != 1:
            return [
                f"reward.model_path: {path} is a classifier with {num_labels(config)} labels; a reward model "
                "has exactly one (a scalar score)"
            ]
    elif source == "pairwise" and PAIRRM_ARCH not in archs:
        return [
            f"reward.model_path: {path} is {named}, not a PairRM checkpoint (reward.source=pairwise loads the "
            f"llm-blender/PairRM-hf format, architectures [{PAIRRM_ARCH}], or llm-blender/PairRM's: "
            f"{' or '.join(BLENDER_CONFIGS)} with ranker_type pairranker)"
        ]
    elif (
        source == "judge"
        and not any(a.endswith("ForCausalLM") for a in archs)
        and "AutoModelForCausalLM" not in auto_map
    ):
        return [f"reward.model_path: {path} is {named}, not a causal LM (reward.source=judge needs one)"]
    return []


def oracle_problems(reward: Any) -> List[str]:
    """Preflight for the `reward` group: the oracle model's kind (the rules check the keys)."""
    if (
        reward.source in ("reward_model", "pairwise", "judge")
        and reward.model_path
        and os.path.isdir(reward.model_path)
    ):
        return model_problems(reward.source, reward.model_path)
    return []
