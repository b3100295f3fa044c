"""The SPPO loop. Every training rank runs it; each phase is one call into the component that owns it.

for step:
    rollout, rewards, stats = collect_rollout(run.rollouts, run.scorer, cfg, step)   trainer/generation.py
        per round:  run.rollouts.generate_round()     trainer/rollouts.py (colocated | separate):
                        prompts = sampler.next_batch()     data/
                        sync the actor's weights           sync/, models/ (bridge)
                        samples = engine.generate()        rollout/
                    scorer.score_samples(samples)     reward/ (rule scorer or oracle, one interface)
                    drop prompts whose samples tie    dynamic sampling: bounded refill rounds
    reward_guard.check(stats.score)                   trainer/guards.py
    targets = compute_targets(rewards)                algorithm/
    old_lp  = run.rollouts.old_log_probs(batch)       actor/, under the weights that sampled it
    update  = run.actor.update(batch, targets, old_lp)
    validate (run.rollouts.generate + evaluate), checkpoint (Stateful components), log (StepRecord)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from sppo_megatron.algorithm import compute_targets
from sppo_megatron.config.loader import config_yaml
from sppo_megatron.config.resume import diff_record
from sppo_megatron.config.schema import Config
from sppo_megatron.data import PromptDataset
from sppo_megatron.platform.console import say
from sppo_megatron.platform.distributed import is_rank0, is_rollout_rank, share_outcomes
from sppo_megatron.rollout import logp_abs_diff
from sppo_megatron.trainer import PROG
from sppo_megatron.trainer.checkpointing import CheckpointManager, Stateful, restore_trainer_state, trainer_state
from sppo_megatron.trainer.evaluation import evaluate
from sppo_megatron.trainer.generation import RolloutStats, collect_rollout
from sppo_megatron.trainer.guards import DivergenceGuard, RewardGuard
from sppo_megatron.trainer.metrics import MetricsLogger, Timer
from sppo_megatron.trainer.preemption import PreemptionFlag
from sppo_megatron.trainer.rollouts import serve_rollouts
from sppo_megatron.trainer.run_config import record_launch, resume_changes
from sppo_megatron.trainer.run_lock import RunLock
from sppo_megatron.trainer.samples import sample_records, val_sampling
from sppo_megatron.trainer.setup import RunComponents, build_components


@dataclass
class Validation:
    """One validation pass: the `val/*` metrics (trainer/evaluation.py), the seconds of its weight
    sync and of the whole phase (sync, hand-over, generation, scoring)."""

    accuracy: Dict[str, float]
    sync_s: float
    seconds: float

    def metrics(self) -> Dict[str, float]:
        """`val/*`, `timing/val_sync_s` and `timing/val_s` (the phase less its sync)."""
        return {"timing/val_sync_s": self.sync_s, **self.accuracy, "timing/val_s": self.seconds - self.sync_s}


#: the update of a step that kept no prompt
_NO_UPDATE = {"train/skipped": 0.0, "train/num_optimizer_steps": 0.0, "train/tokens": 0.0}


@dataclass
class StepRecord:
    """One training step, by phase; `metrics()` is its metrics.jsonl record. `algorithm` and
    `update` are named by their owners (algorithm/targets.py, the actor); the rest here."""

    rollout: RolloutStats
    algorithm: Dict[str, float] = field(default_factory=dict)
    update: Dict[str, float] = field(default_factory=lambda: dict(_NO_UPDATE))
    old_logp_s: Optional[float] = None
    update_s: Optional[float] = None
    logp_abs_diff: Optional[float] = None
    entropy: Optional[float] = None  # pi_t's, per response token
    samples: List[Dict[str, Any]] = field(default_factory=list)  # for samples.jsonl
    bad_steps: int = 0
    validation: Optional[Validation] = None
    save_s: Optional[float] = None
    step_s: float = 0.0
    memory: Dict[str, float] = field(default_factory=dict)  # MemoryLedger's `memory/*`

    @property
    def skipped(self) -> bool:
        """The update was skipped for a non-finite loss or gradient."""
        return bool(self.update["train/skipped"])

    def metrics(self) -> Dict[str, Any]:
        """Flat: the rollout's no_signal_frac (of all drawn prompts) wins over the algorithm's (of the
        kept ones), the update's keys over both. perf/tokens_per_s is the rollout + training
        throughput: validation (its sync included) and checkpoint time left out."""
        out: Dict[str, Any] = {**self.algorithm, **self.rollout.metrics()}
        if self.old_logp_s is not None and self.update_s is not None:
            out["timing/old_logp_s"] = self.old_logp_s
            out["timing/update_s"] = self.update_s
        out.update(self.update)
        if self.logp_abs_diff is not None:
            out["rollout/logp_abs_diff"] = self.logp_abs_diff
        if self.entropy is not None:
            out["policy/entropy"] = self.entropy
        out["train/bad_steps"] = self.bad_steps
        if self.validation is not None:
            out.update(self.validation.metrics())
        if self.save_s is not None:
            out["timing/save_s"] = self.save_s
        out["timing/step_s"] = self.step_s
        out.update(self.memory)
        busy = self.step_s - (self.validation.seconds if self.validation else 0.0) - (self.save_s or 0.0)
        out["perf/tokens_per_s"] = self.update["train/tokens"] / max(busy, 1e-9)
        return out


def validate(run: RunComponents, cfg: Config, val_data: PromptDataset) -> Validation:
    """val/accuracy of the current weights on the validation set (the weights synced first)."""
    with Timer() as phase, run.ledger.phase("val"):
        rollout, sync_s = run.rollouts.generate(
            val_data.items, val_sampling(cfg), cfg.rollout.val_n, cfg.data.val_batch_size
        )
        accuracy, _ = evaluate(run.val_scorer, rollout, max_error_frac=cfg.reward.max_error_frac)
    return Validation(accuracy, sync_s, phase.seconds)


def train_step(run: RunComponents, cfg: Config, step: int, reward_guard: RewardGuard) -> StepRecord:
    """One SPPO step on the next batch of prompts."""
    rollout, rewards, stats = collect_rollout(
        run.rollouts, run.scorer, cfg, step
    )  # refills what dynamic sampling drops
    reward_guard.check(step, stats.score, stats.drawn_prompts * cfg.rollout.n)
    if not rollout.items:  # no prompt with a reward signal within rollout.max_extra_rounds: nothing to train
        return StepRecord(stats)
    targets, sample_mask, algo_metrics = compute_targets(rewards, cfg.rollout.n, cfg.algorithm)
    batch = rollout.batch
    with Timer() as old_logp_time:
        old_logp = run.rollouts.old_log_probs(batch)  # under the weights that generated the batch
    with Timer() as update_time, run.ledger.phase("update"):
        update_metrics = run.actor.update(batch, targets, old_logp, sample_mask)
    rollout_logp, _ = rollout.logprobs(old_logp.logp.shape[1])
    logged = cfg.trainer.log_samples_freq and step % cfg.trainer.log_samples_freq == 0
    return StepRecord(
        stats,
        algorithm=algo_metrics,
        update=update_metrics,
        old_logp_s=old_logp_time.seconds,
        update_s=update_time.seconds,
        logp_abs_diff=logp_abs_diff(rollout_logp, old_logp.logp, old_logp.mask),
        entropy=old_logp.mean_entropy(),
        samples=sample_records(rollout, rewards, cfg.algorithm) if logged else [],
    )


def resume(
    run: RunComponents, ckpts: CheckpointManager, resume_from: Optional[str], stateful: Mapping[str, Stateful]
) -> int:
    """Load the checkpoint the run resumes from (if any): the actor, then each component's entry of
    trainer_state.json, then the files beside them. Returns the step to start after."""
    if resume_from is None:
        return 0
    state = ckpts.read_state(resume_from)
    run.actor.load_checkpoint(resume_from)
    restore_trainer_state(resume_from, state, stateful)
    run.rollouts.load(resume_from)
    return int(state["step"])


def train(cfg: Config) -> Dict[str, Any]:
    """Run SPPO as configured; returns the last step's metrics. Collective: call on every rank.

    The run holds output_dir's lock throughout: a second run there stops at once (UserError).
    Rollout ranks (rollout.placement=separate) serve the training ranks' generation instead."""
    if is_rollout_rank():
        serve_rollouts(cfg)
        return {}
    lock = RunLock(cfg.trainer.output_dir)
    try:
        notice = share_outcomes(lock.acquire if is_rank0() else None)[0]
        if notice:
            say(PROG, notice)
        return _train(cfg)
    finally:
        lock.release()


def _train(cfg: Config) -> Dict[str, Any]:
    """Start (resume or fresh), then the steps; `train` holds the lock around it."""
    t = cfg.trainer
    preemption = PreemptionFlag()  # before the slow start-up: a signal then still ends in a clean exit
    ckpts = CheckpointManager(t.output_dir, t.keep_last)
    start = ckpts.decide_start(t.resume, t.overwrite)  # refuses (UserError) rather than clobber a run
    for problem in start.skipped:
        say(PROG, f"{problem}: falling back to {start.resume_from}")
    if start.clear:
        ckpts.clear()
    resume_from = start.resume_from
    changed = resume_changes(cfg, resume_from) if resume_from else []  # refuses a must-match change
    run = build_components(cfg, load_weights=resume_from is None, interrupted=preemption.requested)
    reward_guard, divergence = RewardGuard(cfg.reward), DivergenceGuard(t.max_bad_steps)
    # what trainer_state.json holds, each under its key
    stateful: Dict[str, Stateful] = {
        "sampler": run.sampler,
        "bad_steps": divergence,
        "bad_reward_steps": reward_guard,
        "in_flight": run.rollouts,
    }
    start_step = resume(run, ckpts, resume_from, stateful)
    if is_rank0():  # only now: a run that cannot start leaves the directory's configs as they were
        record_launch(cfg, t.output_dir)
    logger = MetricsLogger(
        t.output_dir,
        list(t.logger),
        t.total_steps,
        t.experiment_name,
        t.project_name,
        asdict(cfg),
        enabled=is_rank0(),
        keep_up_to_step=start_step if resume_from else -1,
    )
    if resume_from:
        logger.event(start_step, "resumed", {"from": resume_from, "changed": diff_record(changed)})
        for c in changed:
            say(PROG, f"resumed with {c.key} changed: {c.old!r} -> {c.new!r} ({c.kind.replace('_', ' ')})")
    say(
        PROG,
        f"{run.describe()}; steps {start_step + 1}..{t.total_steps}"
        + (f", resumed from {resume_from}" if resume_from else ""),
    )

    metrics: Dict[str, Any] = {}
    config_text = config_yaml(cfg)  # stored in every checkpoint
    step = start_step
    try:
        if start_step == 0 and t.val_before_train and run.val_data is not None:
            metrics = {**validate(run, cfg, run.val_data).metrics(), **run.ledger.metrics()}
            logger.log(0, metrics)
        for step in range(start_step + 1, t.total_steps + 1):
            with Timer() as step_time:
                record = train_step(run, cfg, step, reward_guard)
                record.bad_steps = divergence.update(record.skipped)
                if run.val_data is not None and ((t.test_freq and step % t.test_freq == 0) or step == t.total_steps):
                    record.validation = validate(run, cfg, run.val_data)
                stop = preemption.should_stop()
                if stop or step == t.total_steps or (t.save_freq and step % t.save_freq == 0):
                    with Timer() as save, run.ledger.phase("save"):
                        ckpts.save(step, trainer_state(stateful), run.save_checkpoint, config_text)
                    record.save_s = save.seconds
            record.step_s = step_time.seconds
            record.memory = run.ledger.metrics()
            metrics = record.metrics()
            logger.log_samples(step, record.samples)
            logger.log(step, metrics)
            divergence.check(step)
            if stop:
                say(PROG, f"preemption signal received: checkpointed step {step}, exiting")
                break
        if step == t.total_steps and t.export_hf:
            out = os.path.join(t.output_dir, "hf")
            run.export_hf(out)
            say(PROG, f"exported the Hugging Face checkpoint to {out}")
    finally:
        preemption.restore()
        logger.close()
        run.close()
    return {"step": step, **metrics}
