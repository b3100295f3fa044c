"""Build everything a run needs from the config, in the order colocation wants: tokenizer and
data (cheap, and where most input errors are found), the rollout engine (before the actor's
optimizer state fills the GPU), the actor, then the reward scorer and the preference oracle."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from transformers import AutoTokenizer

from sppo_megatron.actor import MegatronActor
from sppo_megatron.config.schema import Config
from sppo_megatron.data import PromptDataset, PromptSampler, load_prompt_dataset
from sppo_megatron.errors import DataError, UserError
from sppo_megatron.models.hf_io import load_hf_config, write_hf_dir
from sppo_megatron.platform.distributed import is_rank0
from sppo_megatron.platform.dtypes import DTYPE_NAMES
from sppo_megatron.platform.files import atomic_output_dir
from sppo_megatron.platform.memory import MemoryLedger
from sppo_megatron.reward import RewardScorer, Scorer, check_data_sources
from sppo_megatron.reward.oracles import build_oracle
from sppo_megatron.rollout import create_rollout_engine
from sppo_megatron.rollout.remote import RemoteRolloutEngine
from sppo_megatron.sync import WeightSync
from sppo_megatron.trainer.rollouts import ColocatedRollouts, RolloutManager, SeparateRollouts
from sppo_megatron.trainer.samples import Tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def load_tokenizer(hf_dir: str) -> Any:
    """The tokenizer of `hf_dir`; a file of it that does not load (truncated JSON, ...) is one
    line naming the file rather than transformers' traceback."""
    try:
        return AutoTokenizer.from_pretrained(hf_dir)
    except Exception as e:  # noqa: BLE001 - which file is broken is found below
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        for name in TOKENIZER_FILES:
            path = os.path.join(hf_dir, name)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    json.load(fh)
            except (OSError, ValueError) as bad:
                raise UserError(f"{path}: unreadable tokenizer file ({bad})") from None
        raise UserError(f"{hf_dir}: cannot load the tokenizer ({type(e).__name__}: {reason})") from None


def check_sources(dataset: PromptDataset, custom_fn: Optional[str]) -> None:
    """Rule-based scoring needs a ground truth in every row and, unless a custom reward function
    scores all, a rule-based scorer for every data_source."""
    missing = next((item for item in dataset.items if item.ground_truth is None), None)
    if missing is not None:
        raise DataError(
            f"{', '.join(dataset.files)}: prompt row {missing.index} has no reward_model.ground_truth; "
            "rule-based scoring (reward.source=rule, and validation accuracy) needs one in every row; "
            "train such prompts with a preference oracle (reward.source=reward_model | pairwise | judge | "
            "remote) and leave them out of data.val_files"
        )
    if custom_fn:
        return
    try:
        check_data_sources(sorted({item.data_source for item in dataset.items}))
    except UserError as e:
        raise DataError(f"{', '.join(dataset.files)}: {e}") from None


def load_data(cfg: Config, tokenizer: Any) -> tuple[PromptDataset, Optional[PromptDataset]]:
    """Training prompts (checked for rule-based scoring when reward.source=rule) and validation
    prompts (always checked: validation reports rule-based accuracy)."""
    train = load_prompt_dataset(list(cfg.data.train_files), tokenizer, cfg.data)
    if cfg.reward.source == "rule":
        check_sources(train, cfg.reward.custom_fn)
    val = None
    if cfg.data.val_files:
        val = load_prompt_dataset(list(cfg.data.val_files), tokenizer, cfg.data)
        check_sources(val, cfg.reward.custom_fn)
    return train, val


@dataclass
class RunComponents:
    """What the loop drives, on every training rank. `rollouts` owns the rollout engine and where it
    runs; `scorer` scores the training samples (the rule scorer or the reward.source oracle),
    `val_scorer` is the rule scorer behind validation accuracy (the same object for source=rule)."""

    hf_dir: str
    tokenizer: Tokenizer
    train_data: PromptDataset
    val_data: Optional[PromptDataset]
    sampler: PromptSampler
    actor: MegatronActor
    rollouts: RolloutManager
    scorer: Scorer
    val_scorer: Scorer
    ledger: MemoryLedger = field(default_factory=MemoryLedger)  # per-phase memory peaks, `memory/*`

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """The actor's state and the policy behind an in-flight batch (collective)."""
        self.actor.save_checkpoint(ckpt_dir)
        self.rollouts.save(ckpt_dir)

    def export_hf(self, out_dir: str) -> None:
        """Write the policy as an HF checkpoint in the training dtype (collective; atomic: written
        next to `out_dir` and renamed over it)."""
        with atomic_output_dir(out_dir) as tmp:
            write_hf_dir(
                self.actor.export_hf_weights(),
                self.hf_dir,
                tmp,
                DTYPE_NAMES[self.actor.dtype],
                self.actor.bridge.arch.hf_class,
                write=is_rank0(),
            )

    def describe(self) -> str:
        val = f", {len(self.val_data)} validation prompts" if self.val_data is not None else ""
        filtered = f" ({self.train_data.num_filtered} overlong filtered)" if self.train_data.num_filtered else ""
        return (
            f"{self.actor.parallel_dims.describe()}, rollout {self.rollouts.describe()}, "
            f"{len(self.train_data)} train prompts{filtered}{val}"
        )

    def close(self) -> None:
        for scorer in dict.fromkeys((self.scorer, self.val_scorer)):
            scorer.close()
        self.rollouts.close()


def total_optimizer_steps(cfg: Config) -> int:
    """trainer.total_steps x (data.train_batch_size / train.mini_batch_size, rounded up) x epochs_per_rollout."""
    per_rollout = math.ceil(cfg.data.train_batch_size / cfg.train.mini_batch_size)
    return max(1, cfg.trainer.total_steps * per_rollout * cfg.train.epochs_per_rollout)


def build_actor(cfg: Config, hf_config: Any = None, load_weights: bool = True) -> MegatronActor:
    """The MegatronActor of this run: its groups plus the run facts it needs (LR schedule length,
    rollout.n, rollout.temperature, trainer.seed)."""
    return MegatronActor(
        cfg.model,
        cfg.parallel,
        cfg.optim,
        cfg.train,
        total_optimizer_steps=total_optimizer_steps(cfg),
        group_size=cfg.rollout.n,
        temperature=cfg.rollout.temperature,
        seed=cfg.trainer.seed,
        hf_config=hf_config,
        load_weights=load_weights,
    )


def build_components(
    cfg: Config, load_weights: bool = True, interrupted: Optional[Callable[[], bool]] = None
) -> RunComponents:
    """Collective: every rank builds its share (call after init_distributed). load_weights=False
    leaves the actor's initial weights unloaded (a checkpoint is about to be restored);
    `interrupted` (a preemption signal arrived) cuts reward scoring short."""
    hf_dir = str(cfg.model.path)  # config and tokenizer (weights come from the checkpoint or here)
    tokenizer = load_tokenizer(hf_dir)
    train, val = load_data(cfg, tokenizer)
    # the largest draw: dynamic sampling's first round (trainer/generation.py: collect_rollout)
    sampler = PromptSampler(
        len(train),
        math.ceil(cfg.data.train_batch_size * cfg.data.oversample_factor - 1e-9),
        cfg.trainer.seed,
        shuffle=cfg.data.shuffle,
        drop_last=True,
    )
    rollouts: RolloutManager
    ledger = MemoryLedger()
    if cfg.rollout.placement == "separate":
        remote = RemoteRolloutEngine(cfg.rollout.sync_bucket_mb)  # the engine itself is on the rollout ranks
        actor = build_actor(cfg, load_hf_config(hf_dir, "model.path"), load_weights=load_weights)
        rollouts = SeparateRollouts(cfg, remote, actor, WeightSync(remote), sampler, train, tokenizer, ledger)
    else:
        engine = create_rollout_engine(
            cfg.rollout, hf_dir, seed=cfg.trainer.seed, log_dir=os.path.join(cfg.trainer.output_dir, "logs")
        )
        engine.sleep()  # free its GPU memory while the actor and its optimizer state are allocated
        actor = build_actor(cfg, load_hf_config(hf_dir, "model.path"), load_weights=load_weights)
        rollouts = ColocatedRollouts(cfg, engine, actor, WeightSync(engine), sampler, train, tokenizer, ledger)
    val_scorer = RewardScorer(cfg.reward, interrupted)
    scorer = val_scorer if cfg.reward.source == "rule" else build_oracle(cfg.reward, cfg.algorithm.preference)
    return RunComponents(hf_dir, tokenizer, train, val, sampler, actor, rollouts, scorer, val_scorer, ledger)
