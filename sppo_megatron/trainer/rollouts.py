"""Where generation runs (rollout.placement) and how the weights get there: one interface for the
loop, `RolloutManager`, and one implementation per placement.

- `ColocatedRollouts`: the engine shares the training ranks. Every generation is one hand-over
  (`_generate`): sync the weights, hand the accelerator to the engine, generate, hand it back.
- `SeparateRollouts`: the engine lives on the rollout ranks (rollout/remote.py); the weights are
  broadcast there in buckets and the samples come back. Same samples and losses as colocated.
  With rollout.off_policy_steps=1, at step t the rollout ranks generate batch t+1 with the
  weights of step t while the training ranks train on batch t. The old log-probs of a batch are
  recomputed under the weights that generated it (a snapshot kept on the training ranks: the SPPO
  target is defined against that policy); `rollout/policy_lag` says how many updates behind it is.

Checkpoints of an off-policy run hold the in-flight batch's prompt indices (`state_dict`, in
trainer_state.json) and the policy that generated it (`save`: `generating_policy/`): a resumed run
regenerates the batch, seeded, with those weights, so it neither loses nor repeats prompts and
trains on the same samples.

`timeline.jsonl` (separate placement): per rank and step, when it generated (rollout ranks) and
when it trained (training ranks: from receiving the batch to asking for the next one), unix seconds.
"""

from __future__ import annotations

import abc
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sppo_megatron.actor import LogProbs, MegatronActor, SequenceBatch
from sppo_megatron.config.schema import Config
from sppo_megatron.data import PromptDataset, PromptItem, PromptSampler
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import is_rank0, rank, share_outcomes
from sppo_megatron.platform.files import append_text
from sppo_megatron.platform.memory import MemoryLedger
from sppo_megatron.rollout import RolloutEngine, SamplingParams, create_rollout_engine
from sppo_megatron.rollout.remote import RemoteRolloutEngine, serve
from sppo_megatron.sync import WeightSync
from sppo_megatron.trainer.metrics import Timer
from sppo_megatron.trainer.samples import RolloutBatch, Tokenizer, decode, generate, train_sampling

#: checkpoint subdirectory holding the weights that generated the in-flight batch
GENERATING_POLICY = "generating_policy"
TIMELINE_FILE = "timeline.jsonl"

Weights = List[torch.Tensor]


@dataclass
class RoundStats:
    """One generation round: its weight syncs' metrics (WeightSync's; None: no sync was needed),
    the seconds the loop waited for the samples, and with separate placement how many updates
    behind the generating weights were and how long the rollout ranks were busy."""

    gen_s: float
    sync: Optional[Dict[str, float]] = None
    policy_lag: Optional[float] = None
    gen_busy_s: Optional[float] = None

    @property
    def sync_s(self) -> float:
        return self.sync["timing/sync_s"] if self.sync is not None else 0.0

    def metrics(self) -> Dict[str, float]:
        out = dict(self.sync or {})
        out["timing/gen_s"] = self.gen_s
        if self.policy_lag is not None:
            out["rollout/policy_lag"] = self.policy_lag
        if self.gen_busy_s is not None:
            out["timing/gen_busy_s"] = self.gen_busy_s
        return out


class RolloutManager(abc.ABC):
    """The rollout half of a step for the loop (see the module docstring). Collective: every
    training rank calls every method alike. Its trainer_state.json entry is the batch in flight."""

    def __init__(
        self,
        cfg: Config,
        actor: MegatronActor,
        weight_sync: WeightSync,
        sampler: PromptSampler,
        train_data: PromptDataset,
        tokenizer: Tokenizer,
        ledger: Optional[MemoryLedger] = None,
    ) -> None:
        self.cfg, self.actor, self.weight_sync = cfg, actor, weight_sync
        self.sampler, self.train_data, self.tokenizer = sampler, train_data, tokenizer
        self.ledger = ledger if ledger is not None else MemoryLedger()  # the run's: sync and gen phases

    @abc.abstractmethod
    def generate_round(self, step: int, extra_round: int, size: int) -> Tuple[RolloutBatch, RoundStats]:
        """Round `extra_round` of step `step`: 0 is the step's batch; a later one, dynamic
        sampling's refill, is `size` more prompts generated with the weights that generated the
        batch (on-policy only: off-policy runs do not refill)."""

    @abc.abstractmethod
    def generate(
        self, items: Sequence[PromptItem], sampling: SamplingParams, n: int, batch_size: Optional[int]
    ) -> Tuple[RolloutBatch, float]:
        """Samples of `items` under the actor's current weights (validation), `batch_size` prompts
        per engine call, and the seconds the weight sync before them took."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The engine and where it runs, for the start-up line."""

    @abc.abstractmethod
    def close(self) -> None:
        """Shut the engine down (separate: stop the rollout ranks)."""

    def old_log_probs(self, batch: SequenceBatch) -> LogProbs:
        """The actor's log-probs of `batch` under the weights that generated it (pi_t), with the
        entropies of the same pass (`policy/entropy`)."""
        with self.ledger.phase("old_logp"), self.actor.weights(self.generating_weights()):
            return self.actor.log_probs(batch, temperature=self.cfg.rollout.temperature, with_entropy=True)

    def generating_weights(self) -> Optional[Weights]:
        """The weights that generated the batch being trained on (None: the actor's own)."""
        return None

    # ---- checkpoints: the batch in flight ---------------------------------------------------
    def state_dict(self) -> Optional[Dict[str, Any]]:
        """The in-flight batch (step, prompt indices) for trainer_state.json; None without one."""
        return None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        """Take back what `state_dict` returned; its weights come with `load`."""
        if state:
            raise UserError(
                f"it holds the batch of step {state['step']} in flight (an off-policy run): "
                "resume it with rollout.placement=separate"
            )

    def save(self, ckpt_dir: str) -> None:
        """Write the policy behind the in-flight batch next to the checkpoint (collective)."""

    def load(self, ckpt_dir: str) -> None:
        """Restart the in-flight batch `load_state_dict` took, with the weights `save` wrote (call
        after the actor's checkpoint is loaded; collective)."""

    def _items(self, indices: Sequence[int]) -> List[PromptItem]:
        return [self.train_data[i] for i in indices]

    def _sync(self) -> Dict[str, float]:
        """Push the actor's weights into the engine; returns WeightSync's metrics."""
        with self.ledger.phase("sync"):
            return self.weight_sync.sync(self.actor.export_hf_weights())


class ColocatedRollouts(RolloutManager):
    """The engine on the training ranks; generation and training take turns on the accelerator."""

    def __init__(
        self,
        cfg: Config,
        engine: RolloutEngine,
        actor: MegatronActor,
        weight_sync: WeightSync,
        sampler: PromptSampler,
        train_data: PromptDataset,
        tokenizer: Tokenizer,
        ledger: Optional[MemoryLedger] = None,
    ) -> None:
        super().__init__(cfg, actor, weight_sync, sampler, train_data, tokenizer, ledger)
        self.engine = engine

    def generate_round(self, step: int, extra_round: int, size: int) -> Tuple[RolloutBatch, RoundStats]:
        indices = self.sampler.next_batch(size if extra_round else None)
        sampling = train_sampling(self.cfg, step, extra_round)
        # a refill reuses the weights the engine holds, unless it dropped them asleep
        return self._generate(self._items(indices), sampling, self.cfg.rollout.n, None, sync=extra_round == 0)

    def generate(
        self, items: Sequence[PromptItem], sampling: SamplingParams, n: int, batch_size: Optional[int]
    ) -> Tuple[RolloutBatch, float]:
        batch, stats = self._generate(items, sampling, n, batch_size, sync=True)
        return batch, stats.sync_s

    def _generate(
        self, items: Sequence[PromptItem], sampling: SamplingParams, n: int, batch_size: Optional[int], sync: bool
    ) -> Tuple[RolloutBatch, RoundStats]:
        """The hand-over: sync the weights (always when `sync`, else only if the engine lost them),
        the accelerator to the engine, generate, the accelerator back to the actor."""
        synced = self._sync() if sync or not self.engine.weights_valid else None
        self.actor.offload()
        self.engine.wake()
        with Timer() as gen, self.ledger.phase("gen"):
            batch = generate(self.engine, self.tokenizer, items, sampling, n, batch_size)
        self.engine.sleep()
        self.actor.onload()
        return batch, RoundStats(gen.seconds, synced)

    def describe(self) -> str:
        return self.engine.describe()

    def close(self) -> None:
        self.engine.shutdown()


@dataclass
class _Batch:
    """A batch handed to the rollout ranks: its step, prompts, and the weights that generate it
    (None: the actor's weights when it was launched and still now)."""

    step: int
    indices: List[int]
    weights: Optional[Weights] = None
    ticket: int = 0
    extra_round: int = 0  # dynamic sampling's refills of the step's batch: 1, 2, ...


class SeparateRollouts(RolloutManager):
    """The engine on the rollout ranks, driven over the channel; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        engine: RemoteRolloutEngine,
        actor: MegatronActor,
        weight_sync: WeightSync,
        sampler: PromptSampler,
        train_data: PromptDataset,
        tokenizer: Tokenizer,
        ledger: Optional[MemoryLedger] = None,
    ) -> None:
        super().__init__(cfg, actor, weight_sync, sampler, train_data, tokenizer, ledger)
        self.engine = engine
        self.off_policy = cfg.rollout.off_policy_steps
        self._in_flight: Optional[_Batch] = None  # launched, not collected
        self._batch: Optional[_Batch] = None  # being trained on
        self._trained_since: Optional[float] = None
        self._resumed: Optional[_Batch] = None  # the in-flight batch of the checkpoint resumed from

    def generate_round(self, step: int, extra_round: int, size: int) -> Tuple[RolloutBatch, RoundStats]:
        if extra_round:
            stats = RoundStats(0.0)
            batch = self._launch(_Batch(step, self.sampler.next_batch(size), extra_round=extra_round), stats)
            with Timer() as gen, self.ledger.phase("gen"):
                samples, _ = self.engine.collect(batch.ticket)
            stats.gen_s = gen.seconds
            return self._decode(batch, samples), stats
        return self._next_batch(step)

    def _next_batch(self, step: int) -> Tuple[RolloutBatch, RoundStats]:
        """The step's batch: the one in flight for it, else launched now; with off_policy_steps=1
        the next step's batch is launched before this one is returned."""
        stats = RoundStats(0.0)
        self._log_training()
        batch = self._in_flight if self._in_flight is not None and self._in_flight.step == step else None
        if batch is None:  # on-policy, the first step, or the batch a resumed run regenerates
            batch = self._launch(_Batch(step, self.sampler.next_batch()), stats)
        with Timer() as gen, self.ledger.phase("gen"):
            samples, timings = self.engine.collect(batch.ticket)
        stats.gen_s = gen.seconds
        self._in_flight, self._batch = None, batch
        if self.off_policy and step < self.cfg.trainer.total_steps:
            self._in_flight = self._launch(
                _Batch(step + 1, self.sampler.next_batch(), self.actor.snapshot_weights()), stats, current=True
            )
        self._log(step, "generate", timings)
        stats.policy_lag = float(batch.weights is not None)
        stats.gen_busy_s = max(t["end"] for t in timings) - min(t["start"] for t in timings)
        self._trained_since = time.time()
        return self._decode(batch, samples), stats

    def generate(
        self, items: Sequence[PromptItem], sampling: SamplingParams, n: int, batch_size: Optional[int]
    ) -> Tuple[RolloutBatch, float]:
        synced = self._sync()  # a batch still in flight is collected first (RemoteRolloutEngine)
        return generate(self.engine, self.tokenizer, items, sampling, n, batch_size), synced["timing/sync_s"]

    def _launch(self, batch: _Batch, stats: RoundStats, current: bool = False) -> _Batch:
        """Push the weights that generate `batch` and start it on the rollout ranks. current=True:
        batch.weights is a snapshot of the actor as it is (no swap needed)."""
        with self.actor.weights(None if current else batch.weights):
            stats.sync = self._sync()
        batch.ticket = self.engine.submit(
            [it.prompt_ids for it in self._items(batch.indices)],
            train_sampling(self.cfg, batch.step, batch.extra_round),
            self.cfg.rollout.n,
        )
        return batch

    def _decode(self, batch: _Batch, samples: List[Any]) -> RolloutBatch:
        return decode(self.tokenizer, self._items(batch.indices), samples, self.cfg.rollout.n)

    def generating_weights(self) -> Optional[Weights]:
        return self._batch.weights if self._batch is not None else None

    def describe(self) -> str:
        return self.engine.describe()

    def close(self) -> None:
        self.engine.shutdown()

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> Optional[Dict[str, Any]]:
        if self._in_flight is None:
            return None
        return {"step": self._in_flight.step, "indices": list(self._in_flight.indices)}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        self._resumed = _Batch(int(state["step"]), [int(i) for i in state["indices"]]) if state else None

    def save(self, ckpt_dir: str) -> None:
        if self._in_flight is not None:
            with self.actor.weights(self._in_flight.weights):
                self.actor.save_weights(os.path.join(ckpt_dir, GENERATING_POLICY))

    def load(self, ckpt_dir: str) -> None:
        batch, self._resumed = self._resumed, None
        if batch is None:
            return
        with self.actor.weights(self.actor.snapshot_weights()):  # restores the resumed weights after the block
            self.actor.load_weights(os.path.join(ckpt_dir, GENERATING_POLICY))
            batch.weights = self.actor.snapshot_weights()
        self._in_flight = self._launch(batch, RoundStats(0.0))

    # ---- timeline ----------------------------------------------------------------------------
    def _log_training(self) -> None:
        """Record every training rank's interval since it received the last batch."""
        if self._trained_since is None or self._batch is None:
            return
        mine = {"rank": rank(), "start": self._trained_since, "end": time.time()}
        self._log(self._batch.step, "train", share_outcomes(lambda: mine))

    def _log(self, step: int, phase: str, timings: Sequence[Optional[Dict[str, float]]]) -> None:
        if not is_rank0():
            return
        lines = "".join(json.dumps({"step": step, "phase": phase, **(t or {})}) + "\n" for t in timings)
        append_text(os.path.join(self.cfg.trainer.output_dir, TIMELINE_FILE), lines)


def serve_rollouts(cfg: Config) -> None:
    """A rollout rank's whole run: host the engine (one per rollout group, over the rollout ranks)
    and serve training rank 0's commands until the training ranks stop. Collective over the
    rollout ranks."""
    engine = create_rollout_engine(
        cfg.rollout, str(cfg.model.path), seed=cfg.trainer.seed, log_dir=os.path.join(cfg.trainer.output_dir, "logs")
    )
    try:
        serve(engine)
    finally:
        engine.shutdown()
