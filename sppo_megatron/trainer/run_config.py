"""The run directory's record of its configs and the check of a resumed run's config.

`config.yaml` is the config of the latest launch; `config_history/NNNN.yaml` keeps every
launch's, numbered (a `config.yaml` written before the history existed is filed first). A
resumed run's config is compared with the one its checkpoint was trained with
(config/resume.py); the differences go into metrics.jsonl as the `resumed` event.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from sppo_megatron.config.loader import config_yaml
from sppo_megatron.config.resume import Change, changes, check_changes, flatten
from sppo_megatron.config.schema import Config
from sppo_megatron.errors import UserError
from sppo_megatron.platform.files import atomic_write_text
from sppo_megatron.trainer.checkpointing import CONFIG_FILE

HISTORY_DIR = "config_history"


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # OSError, a YAML error: either way the file cannot be compared with
        raise UserError(f"{path}: unreadable config ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a config (a YAML mapping)")
    return {str(k): v for k, v in data.items()}


def stored_config_path(ckpt_dir: str) -> Optional[str]:
    """The config `ckpt_dir` was trained with: its own config.yaml, or for a checkpoint written
    before checkpoints held one, its run directory's config.yaml; None when neither exists."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))
    for path in (os.path.join(ckpt_dir, CONFIG_FILE), os.path.join(run_dir, CONFIG_FILE)):
        if os.path.isfile(path):
            return path
    return None


def resume_changes(cfg: Config, ckpt_dir: str) -> List[Change]:
    """The keys this run changes against the config `ckpt_dir` was trained with (none when no
    config of it is kept); ConfigError, one line per key, when a key that must match changed and
    trainer.resume_accept does not name it."""
    path = stored_config_path(ckpt_dir)
    if path is None:
        return []
    new = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(new, dict)
    found = changes(_read_yaml(path), new)
    check_changes(found, cfg.trainer.resume_accept, ckpt_dir, flatten(new))
    return found


def record_launch(cfg: Config, output_dir: str) -> str:
    """Write this launch's config as config.yaml and as the next file of config_history/ (rank 0);
    returns the history file."""
    text = config_yaml(cfg)
    history = os.path.join(output_dir, HISTORY_DIR)
    os.makedirs(history, exist_ok=True)
    numbers = sorted(int(n[:-5]) for n in os.listdir(history) if n.endswith(".yaml") and n[:-5].isdigit())
    last = numbers[-1] if numbers else 0
    current = os.path.join(output_dir, CONFIG_FILE)
    if not numbers and os.path.isfile(current):  # written by a launch before the history existed
        last = 1
        with open(current, encoding="utf-8") as fh:
            atomic_write_text(os.path.join(history, f"{last:04d}.yaml"), fh.read())
    path = os.path.join(history, f"{last + 1:04d}.yaml")
    atomic_write_text(path, text)
    atomic_write_text(current, text)
    return path
