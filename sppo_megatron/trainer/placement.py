"""`Rollouts`: where generation runs (rollout.placement), how the weights get there, and the batch
in flight (rollout.off_policy_steps).

- colocated: the engine shares the training ranks; per step: sync the weights, hand the
  accelerator to the engine, generate, hand it back.
- separate: the engine lives on the rollout ranks (rollout/remote.py); the weights are broadcast
  there in buckets and the samples come back. Same samples and losses as colocated.
- separate + off_policy_steps=1: at step t the rollout ranks generate batch t+1 with the weights of
  step t while the training ranks train on batch t. The old log-probs of a batch are recomputed
  under the weights that generated it (a snapshot kept on the training ranks: the SPPO target is
  defined against that policy); `rollout/policy_lag` says how many updates behind it is.

Checkpoints of an off-policy run hold the in-flight batch's prompt indices and the policy that
generated it (`generating_policy/`): a resumed run regenerates the batch, seeded, with those
weights, so it neither loses nor repeats prompts and trains on the same samples.

`timeline.jsonl` (separate placement): per rank and step, when it generated (rollout ranks) and
when it trained (training ranks: from receiving the batch to asking for the next one), unix seconds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from sppo_megatron.config.schema import Config
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import is_rank0, rank, share_outcomes
from sppo_megatron.trainer.generation import RolloutBatch, decode, generate, train_sampling
from sppo_megatron.trainer.metrics import timed

#: checkpoint subdirectory holding the weights that generated the in-flight batch
GENERATING_POLICY = "generating_policy"
TIMELINE_FILE = "timeline.jsonl"


@dataclass
class _Batch:
    """A batch handed to the rollout ranks: its step, prompts, and the weights that generate it
    (None: the actor's weights when it was launched and still now)."""

    step: int
    indices: List[int]
    weights: Optional[List[Any]] = None
    ticket: int = 0
    extra_round: int = 0  # dynamic sampling's refills of the step's batch: 1, 2, ...


class Rollouts:
    """Owns the rollout half of a step for the loop (see the module docstring)."""

    def __init__(
        self, cfg: Config, engine: Any, actor: Any, weight_sync: Any, sampler: Any, train_data: Any, tokenizer: Any
    ) -> None:
        self.cfg, self.engine, self.actor, self.weight_sync = cfg, engine, actor, weight_sync
        self.sampler, self.train_data, self.tokenizer = sampler, train_data, tokenizer
        self.separate = cfg.rollout.placement == "separate"
        self.off_policy = cfg.rollout.off_policy_steps
        self._in_flight: Optional[_Batch] = None  # launched, not collected
        self._batch: Optional[_Batch] = None  # being trained on
        self._trained_since: Optional[float] = None

    # ---- weights and accelerator hand-over --------------------------------------------------
    def sync_weights(self) -> Dict[str, float]:
        """Push the actor's weights to the rollout engine. Every time: an engine may drop its
        weights when put to sleep (SGLang's memory saver does)."""
        return self.weight_sync.sync(self.actor.export_hf_weights())

    def to_rollout(self) -> None:
        """Hand the accelerator to the rollout engine (colocated GPUs; nothing to do otherwise)."""
        if not self.separate:
            self.actor.offload()
            self.engine.wake()

    def to_training(self) -> None:
        """Hand the accelerator back to the actor."""
        if not self.separate:
            self.engine.sleep()
            self.actor.onload()

    # ---- batches ------------------------------------------------------------------------------
    def _items(self, indices: List[int]) -> List[Any]:
        return [self.train_data[i] for i in indices]

    def generate_round(self, step: int, extra_round: int, size: int) -> Tuple[RolloutBatch, Dict[str, Any]]:
        """Round `extra_round` of step `step`: 0 is the step's batch (`next_batch`); a later one,
        dynamic sampling's refill, is `size` more prompts generated with the weights that
        generated the batch (on-policy only: off-policy runs do not refill)."""
        if extra_round == 0:
            return self.next_batch(step)
        metrics: Dict[str, Any] = {}
        indices = self.sampler.next_batch(size)
        if self.separate:
            batch = self._launch(_Batch(step, indices, extra_round=extra_round), metrics)
            with timed(metrics, "timing/gen_s"):
                samples, _ = self.engine.collect(batch.ticket)
            return decode(self.tokenizer, self._items(indices), samples, self.cfg.rollout.n), metrics
        if not self.engine.weights_valid:  # an engine that drops its weights asleep (SGLang)
            metrics.update(self.sync_weights())
        return self._generate_here(step, extra_round, indices, metrics), metrics

    def _generate_here(self, step: int, extra_round: int, indices: List[int], metrics: Dict[str, Any]) -> RolloutBatch:
        """Colocated: hand the accelerator to the engine, generate, hand it back."""
        self.to_rollout()
        with timed(metrics, "timing/gen_s"):
            rollout = generate(
                self.engine,
                self.tokenizer,
                self._items(indices),
                train_sampling(self.cfg, step, extra_round),
                self.cfg.rollout.n,
            )
        self.to_training()
        return rollout

    def next_batch(self, step: int) -> Tuple[RolloutBatch, Dict[str, Any]]:
        """The samples of step `step`'s batch and the rollout metrics (weight sync, generation time)."""
        metrics: Dict[str, Any] = {}
        if not self.separate:
            indices = self.sampler.next_batch()
            metrics.update(self.sync_weights())
            return self._generate_here(step, 0, indices, metrics), metrics
        self._log_training()
        batch = self._in_flight if self._in_flight is not None and self._in_flight.step == step else None
        if batch is None:  # on-policy, the first step, or the batch a resumed run regenerates
            batch = self._launch(_Batch(step, self.sampler.next_batch()), metrics)
        with timed(metrics, "timing/gen_s"):
            samples, timings = self.engine.collect(batch.ticket)
        self._in_flight, self._batch = None, batch
        if self.off_policy and step < self.cfg.trainer.total_steps:
            self._in_flight = self._launch(
                _Batch(step + 1, self.sampler.next_batch(), self.actor.snapshot_weights()), metrics, current=True
            )
        self._log(step, "generate", timings)
        metrics["rollout/policy_lag"] = float(batch.weights is not None)
        metrics["timing/gen_busy_s"] = max(t["end"] for t in timings) - min(t["start"] for t in timings)
        self._trained_since = time.time()
        return decode(self.tokenizer, self._items(batch.indices), samples, self.cfg.rollout.n), metrics

    def _launch(self, batch: _Batch, metrics: Dict[str, Any], current: bool = False) -> _Batch:
        """Push the weights that generate `batch` and start it on the rollout ranks. current=True:
        batch.weights is a snapshot of the actor as it is (no swap needed)."""
        with self.actor.weights(None if current else batch.weights):
            metrics.update(self.sync_weights())
        batch.ticket = self.engine.submit(
            [it.prompt_ids for it in self._items(batch.indices)],
            train_sampling(self.cfg, batch.step, batch.extra_round),
            self.cfg.rollout.n,
        )
        return batch

    def old_log_probs(self, batch: Any) -> Any:
        """The actor's log-probs of `batch` under the weights that generated it (pi_t)."""
        weights = self._batch.weights if self._batch is not None else None
        with self.actor.weights(weights):
            return self.actor.log_probs(batch, temperature=self.cfg.rollout.temperature)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The in-flight batch, for trainer_state.json (nothing without one)."""
        if self._in_flight is None:
            return {}
        return {"in_flight": {"step": self._in_flight.step, "indices": list(self._in_flight.indices)}}

    def save(self, ckpt_dir: str) -> None:
        """The policy that generates the in-flight batch (collective over the training ranks)."""
        if self._in_flight is not None:
            with self.actor.weights(self._in_flight.weights):
                self.actor.save_weights(os.path.join(ckpt_dir, GENERATING_POLICY))

    def load_state_dict(self, state: Dict[str, Any], ckpt_dir: str) -> None:
        """Restore the in-flight batch of `state` (call after the actor's checkpoint is loaded): it
        is regenerated by the next `next_batch` with the weights saved next to it."""
        flight = state.get("in_flight")
        if not flight:
            return
        if not self.separate:
            raise UserError(
                f"{ckpt_dir} holds the batch of step {flight['step']} in flight (an off-policy run): "
                "resume it with rollout.placement=separate"
            )
        with self.actor.weights(self.actor.snapshot_weights()):  # restores the resumed weights after the block
            self.actor.load_weights(os.path.join(ckpt_dir, GENERATING_POLICY))
            weights = self.actor.snapshot_weights()
        self._in_flight = self._launch(_Batch(int(flight["step"]), [int(i) for i in flight["indices"]], weights), {})

    # ---- timeline ----------------------------------------------------------------------------
    def _log_training(self) -> None:
        """Record every training rank's interval since it received the last batch."""
        if self._trained_since is None or self._batch is None:
            return
        mine = {"rank": rank(), "start": self._trained_since, "end": time.time()}
        self._log(self._batch.step, "train", share_outcomes(lambda: mine))

    def _log(self, step: int, phase: str, timings: List[Dict[str, float]]) -> None:
        if not is_rank0():
            return
        with open(os.path.join(self.cfg.trainer.output_dir, TIMELINE_FILE), "a", encoding="utf-8") as fh:
            for t in timings:
                fh.write(json.dumps({"step": step, "phase": phase, **t}) + "\n")


def serve_rollouts(cfg: Config) -> Dict[str, Any]:
    """A rollout rank's whole run: host the engine (one per rollout group, over the rollout ranks)
    and serve training rank 0's commands until the training ranks stop. Collective over the
    rollout ranks."""
    from sppo_megatron.rollout import create_rollout_engine
    from sppo_megatron.rollout.remote import serve

    engine = create_rollout_engine(
        cfg.rollout, str(cfg.model.path), seed=cfg.trainer.seed, log_dir=os.path.join(cfg.trainer.output_dir, "logs")
    )
    try:
        serve(engine)
    finally:
        engine.shutdown()
    return {}
