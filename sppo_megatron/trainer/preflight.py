"""Checks that need the installed packages, the GPU or the files named in the config, run right
after the config loads and before any process group, model or engine exists, so a run that
cannot work fails in seconds with one line per problem (exit 2) instead of a traceback minutes in.

When the config itself has problems (`ConfigError.candidate`), the checks of the groups those
problems leave alone still run, so one attempt reports the config, data and model mistakes together.

What only the built job can check (the README lists it) stays where it happens: a checkpoint's
shapes against the model, resuming a checkpoint of another parallel layout, rows of the prompt
files, prompt lengths and data_source scorers (need the tokenizer and data), SGLang starting on the
GPU, the weight-sync read-back.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Callable, List, Optional, Set, Tuple

from sppo_megatron.data.dataset import check_prompt_file
from sppo_megatron.errors import ConfigError, UserError
from sppo_megatron.models import check_fp8_support, get_bridge, resolve_transformer_impl
from sppo_megatron.models.converted import check_meta_matches, read_checkpoint_meta
from sppo_megatron.models.dist_ckpt import check_checkpoint_dir
from sppo_megatron.models.hf_io import SafetensorsReader, load_hf_config
from sppo_megatron.models.rope import context_length
from sppo_megatron.platform.files import check_writable_dir
from sppo_megatron.reward.oracles.checks import oracle_problems
from sppo_megatron.rollout import choose_engine
from sppo_megatron.trainer.checkpointing import CheckpointManager
from sppo_megatron.trainer.run_config import resume_changes
from sppo_megatron.trainer.run_lock import RunLock

LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _logger_problems(loggers: List[str]) -> List[str]:
    return [
        f"trainer.logger={name}: the {package} package is not installed "
        f"(pip install {package}, or pip install -e '.[logging]'; or drop it from trainer.logger)"
        for name, package in LOGGER_PACKAGES.items()
        if name in loggers and importlib.util.find_spec(package) is None
    ]


def _collect(problems: List[str], check: Callable[..., Any], *args: Any) -> Any:
    """Run one check; its UserError becomes a line of `problems` (None returned)."""
    try:
        return check(*args)
    except UserError as e:
        problems.append(str(e))
        return None


def _model_problems(model: Any, parallel: Any, need_weights: bool) -> List[str]:
    """model.path must be an HF directory of a supported architecture whose sizes fit the parallel
    layout (heads, widths, experts), model.megatron_ckpt a dist checkpoint written for that
    model; without a checkpoint, model.path must hold the weights."""
    problems: List[str] = []
    _collect(problems, resolve_transformer_impl, model)
    _collect(problems, check_fp8_support, model)
    bridge = _collect(problems, get_bridge, model.path) if model.path else None
    if bridge is not None:
        _collect(problems, bridge.check_parallel, parallel)
    if model.megatron_ckpt:
        before = len(problems)
        _collect(problems, check_checkpoint_dir, model.megatron_ckpt, "model.megatron_ckpt")
        meta = _collect(problems, read_checkpoint_meta, model.megatron_ckpt) if len(problems) == before else None
        if meta is not None and bridge is not None:
            _collect(problems, check_meta_matches, meta, bridge, model.megatron_ckpt, "model.path")
    elif need_weights and bridge is not None:
        _collect(problems, lambda: SafetensorsReader(model.path).close())
    return problems


def _context_problems(cfg: Any) -> List[str]:
    """A prompt and its response must fit the model's positions: past them the rotary embedding
    runs out of range and the run trains on garbage without an error."""
    if not cfg.model.path:
        return []
    try:
        limit = context_length(load_hf_config(cfg.model.path, "model.path"))
    except UserError:  # an unreadable or unsupported model: the model checks name it
        return []
    need = cfg.data.max_prompt_length + cfg.data.max_response_length
    if not limit or need <= limit:
        return []
    return [
        f"data.max_prompt_length + data.max_response_length = {cfg.data.max_prompt_length} + "
        f"{cfg.data.max_response_length} = {need} exceeds the {limit} positions of the model "
        f"({os.path.join(cfg.model.path, 'config.json')}: max_position_embeddings, rope scaling included); "
        "lower them"
    ]


def _engine_problems(requested: str) -> List[str]:
    """An explicit rollout.engine must be usable here (auto always is: it falls back loudly)."""
    problems: List[str] = []
    if requested != "auto":
        _collect(problems, choose_engine, requested)
    return problems


def _resume_problems(cfg: Any) -> Tuple[List[str], Optional[str], Optional[str]]:
    """(problems, checkpoint the run resumes from, notice for a run that is already finished).
    A resumed run's config must keep what the checkpoint's says must match (config/resume.py)."""
    t = cfg.trainer
    problems: List[str] = []
    ckpts = CheckpointManager(t.output_dir, t.keep_last)
    start = _collect(problems, ckpts.decide_start, t.resume, t.overwrite)
    resume_from = start.resume_from if start is not None else None
    if resume_from is None:
        return problems, None, None
    _collect(problems, resume_changes, cfg, resume_from)
    step = int(ckpts.read_state(resume_from)["step"])
    if step < t.total_steps:
        return problems, resume_from, None
    return (
        problems,
        resume_from,
        (
            f"{t.output_dir} already finished step {step} (trainer.total_steps={t.total_steps}): nothing to train. "
            "To start over pass trainer.resume=none trainer.overwrite=true (deletes its checkpoints) or another "
            "output directory; to train longer raise trainer.total_steps"
        ),
    )


def _data_problems(data: Any) -> List[str]:
    problems: List[str] = []
    for path in [*data.train_files, *data.val_files]:
        _collect(problems, check_prompt_file, path, data.prompt_key)
    return problems


def preflight(cfg: Any, *, training: bool = True) -> Optional[str]:
    """Raise ConfigError listing every problem found; returns a notice to print, or None.

    training=False (sppo-eval) checks only the rollout engine: sppo-eval checks its --model
    itself and has no run directory or loggers.
    """
    if training:
        busy = RunLock(cfg.trainer.output_dir).in_use()  # its checkpoints may be mid-write: say only this
        if busy:
            raise UserError(busy)
    problems, notice = _problems(cfg, training, skip=set())
    if problems:
        raise ConfigError("\n".join(problems))
    return notice


def with_preflight(error: ConfigError) -> ConfigError:
    """`error` (the config's own problems) with the problems preflight finds in the groups that
    `error` does not name: all of a launch's mistakes in one message."""
    if error.candidate is None:
        return error
    message = str(error)
    skip = {m.group(1) for m in re.finditer(r"^([a-z_]+)\.", message, flags=re.M)}
    more, _ = _problems(error.candidate, True, skip)
    return ConfigError("\n".join([message, *more])) if more else error


def _problems(cfg: Any, training: bool, skip: Set[str]) -> Tuple[List[str], Optional[str]]:
    """Every check of a config group not in `skip` (groups that have problems of their own)."""
    problems = _engine_problems(cfg.rollout.engine) if "rollout" not in skip else []
    resume_from = notice = None
    if not training:
        return problems, notice
    if "trainer" not in skip:
        problems += _logger_problems(list(cfg.trainer.logger))
        _collect(problems, check_writable_dir, cfg.trainer.output_dir, "trainer.output_dir")
        resume_problems, resume_from, notice = _resume_problems(cfg)
        problems += resume_problems
    if not skip & {"model", "parallel"}:
        problems += _model_problems(cfg.model, cfg.parallel, need_weights=resume_from is None)
    if "data" not in skip:
        problems += _data_problems(cfg.data)
    if not skip & {"model", "data"}:
        problems += _context_problems(cfg)
    if "reward" not in skip:
        problems += oracle_problems(cfg.reward)
    return problems, notice
