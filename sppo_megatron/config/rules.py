"""Cross-field rules, one function per config group (the group whose key the message names first).

Each rule returns its problems as one line each; `problems` runs them all so every problem is
reported at once. The rules need only the world size, so they run before any process group.
"""

from __future__ import annotations

import os
from typing import Callable, List

from sppo_megatron.config.schema import Config
from sppo_megatron.platform.parallel_dims import ParallelDims

Rule = Callable[[Config, int, bool], List[str]]


def filters_no_signal(cfg: Config) -> bool:
    """algorithm.filter_no_signal resolved: auto = on for reward.source=rule, except with
    preference=batch_softmean, whose baseline is the whole batch (a prompt whose samples tie still
    has targets)."""
    setting = cfg.algorithm.filter_no_signal
    if setting == "auto":
        return cfg.reward.source == "rule" and cfg.algorithm.preference != "batch_softmean"
    return bool(setting)


def training_world_size(cfg: Config, world_size: int) -> int:
    """The ranks that train: all of them, less the rollout ranks of placement=separate."""
    return world_size - cfg.rollout.num_ranks if cfg.rollout.placement == "separate" else world_size


def _world_words(cfg: Config, world_size: int) -> str:
    if cfg.rollout.placement != "separate":
        return f"the world size {world_size}"
    return (
        f"the {training_world_size(cfg, world_size)} training ranks (world size {world_size} - "
        f"rollout.num_ranks={cfg.rollout.num_ranks})"
    )


def model_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    m = cfg.model
    problems = []
    if m.path is None:
        problems.append("model.path: required (a Hugging Face model directory with config.json and tokenizer)")
    elif check_paths and os.path.isfile(m.path):
        problems.append(f"model.path: {m.path} is a file; expected a Hugging Face model directory")
    elif check_paths and os.path.isdir(m.path) and not os.path.exists(os.path.join(m.path, "config.json")):
        problems.append(f"model.path: {m.path} has no config.json (not a Hugging Face model directory)")
    if m.dtype == "fp16":
        problems.append("model.dtype=fp16: fp16 training (loss scaling) is not supported; use bf16 (or auto)")
    if m.fp8 is not None and m.transformer_impl == "local":
        problems.append("model.fp8: needs Transformer Engine (model.transformer_impl=auto or transformer_engine)")
    if m.lora.rank > 0 and not m.lora.target_modules and not m.lora.experts:
        problems.append(
            "model.lora.target_modules: empty, so LoRA would adapt nothing; list linear layers (e.g. "
            "[linear_qkv, linear_proj, linear_fc1, linear_fc2]) or set model.lora.experts=true"
        )
    if m.lora.rank > 0 and m.lora.alpha == 0:
        problems.append("model.lora.alpha=0: the adapters' output would be scaled to nothing (e.g. 2 x rank)")
    return problems


def parallel_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    p = cfg.parallel
    problems = []
    train_world = training_world_size(cfg, world_size)
    if train_world >= 1 and ParallelDims.for_world(train_world, p.tp, p.pp) is None:
        problems.append(
            f"parallel.tp={p.tp} x parallel.pp={p.pp} = {p.tp * p.pp} does not divide {_world_words(cfg, world_size)}"
        )
    elif ParallelDims.for_world(world_size, p.tp, p.pp, p.ep, p.etp) is None:
        problems.append(
            f"parallel.ep={p.ep} x parallel.etp={p.etp} = {p.ep * p.etp} does not divide the {world_size // p.pp} "
            f"ranks of a pipeline stage (world size {world_size} / parallel.pp={p.pp})"
        )
    if p.sequence_parallel and p.tp == 1:
        problems.append("parallel.sequence_parallel: needs parallel.tp > 1")
    return problems


def data_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    d = cfg.data
    problems = []
    if not d.train_files:
        problems.append("data.train_files: required (one or more parquet files)")
    if d.train_batch_size % cfg.train.mini_batch_size:
        problems.append(
            f"data.train_batch_size={d.train_batch_size} is not divisible by train.mini_batch_size={cfg.train.mini_batch_size}"
        )
    if d.oversample_factor > 1 and not filters_no_signal(cfg):
        problems.append(
            f"data.oversample_factor={d.oversample_factor:g}: oversampling refills prompts dropped by "
            "algorithm.filter_no_signal, which is off here; set algorithm.filter_no_signal=true or leave it at 1"
        )
    return problems


def rollout_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    r = cfg.rollout
    problems = []
    if r.placement == "separate":
        if r.num_ranks < 1:
            problems.append("rollout.num_ranks: placement=separate needs >= 1 rollout rank (e.g. rollout.num_ranks=2)")
        elif r.num_ranks >= world_size:
            problems.append(f"rollout.num_ranks={r.num_ranks} leaves no training rank in a world of {world_size} ranks")
        elif r.num_ranks % r.tp and r.engine != "hf":
            problems.append(f"rollout.tp={r.tp} does not divide rollout.num_ranks={r.num_ranks}")
    else:
        if r.num_ranks:
            problems.append(
                f"rollout.num_ranks={r.num_ranks}: only with rollout.placement=separate (colocated "
                "engines run on every rank)"
            )
        if r.off_policy_steps:
            problems.append(
                f"rollout.off_policy_steps={r.off_policy_steps}: needs rollout.placement=separate "
                "(colocated generation and training take turns on the same ranks)"
            )
        if world_size % r.tp and r.engine != "hf":
            problems.append(f"rollout.tp={r.tp} does not divide the world size {world_size}")
    if cfg.algorithm.preference != "batch_softmean" and r.n < 2:
        problems.append(
            f"rollout.n={r.n}: SPPO win rates need >= 2 samples per prompt (or algorithm.preference=batch_softmean)"
        )
    for key in ("top_p", "val_top_p"):
        if getattr(r, key) == 0:
            problems.append(f"rollout.{key}=0: must be > 0 (1.0 = off)")
    if r.temperature == 0:
        problems.append(
            "rollout.temperature=0: greedy rollouts give K identical samples and nothing to prefer; "
            "SPPO needs sampling (e.g. 1.0)"
        )
    return problems


def algorithm_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    a = cfg.algorithm
    problems = []
    if a.preference == "batch_softmean" and a.loss != "soft":
        problems.append(f"algorithm.loss={a.loss}: batch_softmean targets work only with algorithm.loss=soft")
    if a.preference == "batch_softmean" and a.filter_no_signal is True:
        problems.append(
            "algorithm.filter_no_signal=true: batch_softmean compares each sample with the whole batch, "
            "so a prompt whose samples tie still has targets; use false (or auto)"
        )
    return problems


#: algorithm.preference values each reward.source can feed: scalar scores become win rates through
#: pairwise / bradley_terry / batch_softmean, preference oracles hand over their K x K matrix
SCALAR_PREFERENCES = ("pairwise", "bradley_terry", "batch_softmean")
SOURCE_PREFERENCES = {
    "rule": SCALAR_PREFERENCES,
    "reward_model": SCALAR_PREFERENCES,
    "pairwise": ("matrix",),
    "judge": ("matrix",),
    "remote": SCALAR_PREFERENCES + ("matrix",),
}
_MODEL_SOURCES = ("reward_model", "pairwise", "judge")


def reward_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    r, preference = cfg.reward, cfg.algorithm.preference
    problems = []
    if preference not in SOURCE_PREFERENCES[r.source]:
        valid = "; ".join(f"{source} -> {' | '.join(prefs)}" for source, prefs in SOURCE_PREFERENCES.items())
        problems.append(
            f"algorithm.preference={preference} does not fit reward.source={r.source}; valid combinations: {valid}"
        )
    if r.source in _MODEL_SOURCES and r.model_path is None:
        problems.append(f"reward.model_path: required for reward.source={r.source} (a Hugging Face model directory)")
    if r.source == "remote" and not r.url:
        problems.append("reward.url: required for reward.source=remote (an http:// or https:// endpoint)")
    elif r.url and not r.url.startswith(("http://", "https://")):
        problems.append(f"reward.url={r.url}: must start with http:// or https://")
    if r.source != "rule" and r.custom_fn:
        problems.append(f"reward.custom_fn: applies to reward.source=rule only (reward.source={r.source})")
    if len(r.judge_choices) != 2 or len(set(r.judge_choices)) != 2:
        problems.append(f"reward.judge_choices={list(r.judge_choices)}: needs two different verdict words")
    return problems


def optim_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    o = cfg.optim
    if o.min_lr > o.lr:
        return [f"optim.min_lr={o.min_lr} must not exceed optim.lr={o.lr}"]
    return []


def train_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    t, n = cfg.train, cfg.rollout.n
    train_world = training_world_size(cfg, world_size)
    dims = ParallelDims.for_world(train_world, cfg.parallel.tp, cfg.parallel.pp) if train_world >= 1 else None
    if dims is None:
        return []  # reported by parallel_rules; a data-parallel rule would only repeat it
    samples = t.mini_batch_size * n
    if samples % dims.dp:
        return [
            f"train.mini_batch_size={t.mini_batch_size} x rollout.n={n} = {samples} samples do not split across "
            f"{dims.dp} data-parallel ranks"
        ]
    if t.max_tokens_per_micro_batch is None and (samples // dims.dp) % t.micro_batch_size:
        return [
            f"train.micro_batch_size={t.micro_batch_size} does not divide the {samples // dims.dp} samples per "
            f"data-parallel rank of a mini-batch (train.mini_batch_size x rollout.n / dp)"
        ]
    return []


def trainer_rules(cfg: Config, world_size: int, check_paths: bool) -> List[str]:
    resume = cfg.trainer.resume
    if check_paths and resume not in ("auto", "none") and not os.path.exists(resume):
        return [f"trainer.resume: checkpoint path does not exist: {resume} (or use auto | none)"]
    return []


RULES: List[Rule] = [
    model_rules,
    parallel_rules,
    data_rules,
    rollout_rules,
    algorithm_rules,
    reward_rules,
    optim_rules,
    train_rules,
    trainer_rules,
]


def problems(cfg: Config, world_size: int, check_paths: bool = True) -> List[str]:
    """Every cross-field problem of `cfg` for a job of `world_size` ranks, in schema group order."""
    return [line for rule in RULES for line in rule(cfg, world_size, check_paths)]
