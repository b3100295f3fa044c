"""MegatronActor: the SPPO policy on megatron-core (log-probs, update, checkpoints, offload).

Collective: every method must be called on every rank with the same arguments (the rollout
batch, targets and old log-probs are identical on all ranks).

    actor = MegatronActor(cfg.model, cfg.parallel, cfg.optim, cfg.train, total_optimizer_steps=...)
    old = actor.log_probs(batch, temperature=T)              # LogProbs, on every rank
    metrics = actor.update(batch, targets, old, sample_mask)  # one optimizer step per mini-batch
    actor.save_checkpoint(dir); actor.load_checkpoint(dir)
    actor.offload(); ...rollouts...; actor.onload()

Loss normalisation. The SPPO loss of a mini-batch is the MEAN over its selected samples of
(log pi_theta(y|x) - log pi_t(y|x) - target)^2. Megatron's `calculate_per_token_loss` mode
(enabled in setup.py) is used with "tokens" meaning selected samples: each micro-batch's loss
function returns (sum of squared errors, number of selected samples); the schedule neither
divides by the micro-batch count nor does DDP divide by the DP size, and
`finalize_model_grads` divides the reduced gradients by the number of selected samples summed
over all micro-batches and DP ranks (0.16.1 and 0.19.2 alike). The gradient is therefore that
of the mini-batch mean whatever the DP size and micro-batching. The loss statistics are summed
on the device micro-batch by micro-batch (float64) and read by the host once per optimizer step.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import partial
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

from sppo_megatron.actor import setup
from sppo_megatron.actor.batch import LogProbs, MicroBatch, SequenceBatch, collate
from sppo_megatron.actor.batch_plan import micro_batch_sizes, mini_batches, plan_micro_batches
from sppo_megatron.actor.checkpoint import load_actor, load_policy_weights, save_actor, save_policy_weights
from sppo_megatron.actor.logprobs import token_log_probs, token_log_probs_and_entropy
from sppo_megatron.actor.memory import offload, onload
from sppo_megatron.actor.moe_metrics import router_losses
from sppo_megatron.algorithm import sppo_loss
from sppo_megatron.config.schema import ModelConfig, OptimConfig, ParallelConfig, TrainConfig
from sppo_megatron.models import get_bridge, resolve_dtype
from sppo_megatron.platform.distributed import current_device, init_distributed
from sppo_megatron.platform.parallel_dims import ParallelDims

# megatron-core is imported inside the functions that use it: the trainer and the tests import
# the actor's batch types without paying for it.

OldLogProbs = Union[LogProbs, torch.Tensor, Sequence[float]]


def _as_1d(values: Any, n: int, name: str, dtype=torch.float64) -> torch.Tensor:
    t = torch.as_tensor(values).detach().to("cpu")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values (one per sample), got shape {tuple(t.shape)}")
    return t.to(dtype)


def _sequence_logp(old: OldLogProbs, n: int) -> torch.Tensor:
    """old log pi_t(y|x) per sample from a LogProbs, a zero-padded [N, R] tensor or [N] sums."""
    if isinstance(old, LogProbs):
        return _as_1d(old.sequence_logp(), n, "old_logp")
    t = torch.as_tensor(old).detach().to("cpu", torch.float64)
    if t.dim() == 2:
        t = t.sum(dim=1)
    return _as_1d(t, n, "old_logp")


def _token_logp(old: OldLogProbs) -> Optional[torch.Tensor]:
    """old log pi_t per response token [N, R] (zero-padded), or None when only sums were given."""
    if isinstance(old, LogProbs):
        return old.logp.detach().to("cpu", torch.float32)
    t = torch.as_tensor(old)
    return t.detach().to("cpu", torch.float32) if t.dim() == 2 else None


class MegatronActor:
    """The policy, its optimizer and LR schedule on this rank (see the module docstring)."""

    def __init__(
        self,
        model: ModelConfig,
        parallel: ParallelConfig,
        optim: OptimConfig,
        train: TrainConfig,
        *,
        total_optimizer_steps: int,
        group_size: int = 1,
        temperature: float = 1.0,
        seed: int = 1234,
        hf_config: Any = None,
        bridge: Any = None,
        load_weights: bool = True,
    ) -> None:
        """The config groups it runs on; `total_optimizer_steps` sizes the LR schedule,
        `group_size` (rollout.n) and `temperature` (rollout.temperature) are update's and
        log_probs' defaults, `seed` seeds the RNGs when torch.distributed / megatron parallel state
        are initialised here (when not done yet). hf_config: the transformers config (None = read
        model.path). load_weights=False skips model.megatron_ckpt / model.path (the weights come
        from a checkpoint restored next, or stay random: benchmarks; a LoRA policy still loads its
        frozen base, see setup.build_policy)."""
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            init_distributed(
                parallel.tp, parallel.pp, seed, parallel.distributed_timeout_minutes, ep=parallel.ep, etp=parallel.etp
            )
        self.parallel_dims = ParallelDims.current()
        got = (self.parallel_dims.tp, self.parallel_dims.pp, self.parallel_dims.ep, self.parallel_dims.etp)
        if got != (parallel.tp, parallel.pp, parallel.ep, parallel.etp):
            raise RuntimeError(
                f"megatron parallel state is TP={got[0]} PP={got[1]} EP={got[2]} ETP={got[3]} but the config "
                f"asks for TP={parallel.tp} PP={parallel.pp} EP={parallel.ep} ETP={parallel.etp}"
            )
        self.parallel = parallel
        self.train_cfg = train
        self.group_size = int(group_size)
        self.hf_config = hf_config
        self.bridge = bridge if bridge is not None else get_bridge(hf_config if hf_config is not None else model.path)
        self.vocab_size: Optional[int] = getattr(self.bridge, "vocab_size", None)
        self.dtype = resolve_dtype(model.dtype)
        self.model_cfg = model
        self.model, self.ddp = setup.build_policy(model, parallel, self.bridge, load_weights=load_weights, seed=seed)
        self.transformer_config = self.model.config
        self.optimizer = setup.build_optimizer(optim, parallel, self.ddp, self.dtype)
        self.scheduler = setup.build_scheduler(optim, total_optimizer_steps, self.optimizer)
        self.clip_grad = float(optim.clip_grad)
        self.device = current_device()
        self.pad_multiple = setup.sequence_pad_multiple(model, self.transformer_config)
        self.default_temperature = float(temperature)
        self._offloaded: Any = None  # actor.memory's handle on what offload() moved
        self.last_steps: List[Dict[str, float]] = []  # per-optimizer-step metrics of the last update

    # ------------------------------------------------------------------ helpers
    @property
    def num_optimizer_steps(self) -> int:
        """Successful optimizer steps so far (= the LR scheduler's step count = Adam's step)."""
        return int(self.scheduler.num_steps)

    def _plan(self, batch: SequenceBatch, indices: Sequence[int], forward_only: bool = False) -> List[MicroBatch]:
        from megatron.core import parallel_state as ps

        plan = plan_micro_batches(
            indices, batch.input_lengths, self.parallel_dims.dp, **micro_batch_sizes(self.train_cfg, forward_only)
        )
        return [collate(batch, idx, self.pad_multiple) for idx in plan[ps.get_data_parallel_rank()]]

    def _run_schedule(self, micro: List[MicroBatch], forward_step, forward_only: bool):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro),
            model=[self.ddp],
            num_microbatches=len(micro),
            seq_length=max(m.seq_length for m in micro),
            micro_batch_size=max(m.size for m in micro),
            forward_only=forward_only,
        )

    def _forward(self, model, mb: MicroBatch):
        tokens = mb.tokens.to(self.device, non_blocking=True)
        position_ids = torch.arange(mb.seq_length, device=self.device).unsqueeze(0).expand_as(tokens)
        return model(tokens, position_ids, None)

    # ------------------------------------------------------------------ log-probs
    def log_probs(
        self, batch: SequenceBatch, temperature: Optional[float] = None, with_entropy: bool = False
    ) -> LogProbs:
        """Per-token log-probs (and entropies) of the response tokens under the current policy.

        temperature: logits are divided by it (None = rollout.temperature from the config).
        Returns a LogProbs with [N, max_response_len] tensors, identical on every rank.
        """
        from megatron.core import parallel_state as ps

        temperature = self.default_temperature if temperature is None else float(temperature)
        n, width = len(batch), max(batch.max_response_length, 1)
        out = torch.zeros(2 if with_entropy else 1, n, width, dtype=torch.float32, device=self.device)
        micro = self._plan(batch, list(range(n)), forward_only=True)

        flat_out = out.view(out.shape[0], -1)

        def loss_func(mb: MicroBatch, logits: torch.Tensor):
            lp, ent = token_log_probs_and_entropy(
                logits, mb.labels.to(logits.device, non_blocking=True), temperature, self.vocab_size, with_entropy
            )
            src, sample, col = (t.to(logits.device, non_blocking=True) for t in mb.response_index())
            values = (lp, ent) if ent is not None else (lp,)
            flat_out.index_copy_(
                1, sample * width + col, torch.stack(values).view(len(values), -1).index_select(1, src)
            )
            zero = torch.zeros((), device=logits.device)
            return zero, torch.zeros((), dtype=torch.int, device=logits.device), {}

        def forward_step(data_iterator, model):
            mb = next(data_iterator)
            return self._forward(model, mb), partial(loss_func, mb)

        was_training = self.ddp.training
        self.ddp.eval()
        try:
            with torch.no_grad():
                self._run_schedule(micro, forward_step, forward_only=True)
        finally:
            self.ddp.train(was_training)
        if self.parallel_dims.dp > 1:
            dist.all_reduce(out, group=ps.get_data_parallel_group())
        if self.parallel_dims.pp > 1:
            dist.all_reduce(out, group=ps.get_pipeline_model_parallel_group())
        mask = torch.arange(width).unsqueeze(0) < torch.tensor(batch.response_lengths, dtype=torch.long).view(n, 1)
        out = out.cpu()
        return LogProbs(out[0], mask, out[1] if with_entropy else None, temperature)

    # ------------------------------------------------------------------ update
    def update(
        self,
        batch: SequenceBatch,
        targets: Any,
        old_logp: OldLogProbs,
        sample_mask: Optional[Any] = None,
        temperature: Optional[float] = None,
        group_size: Optional[int] = None,
    ) -> Dict[str, float]:
        """The SPPO update on one rollout batch; returns metrics averaged over optimizer steps.

        The N = B x K samples (K = group_size, default rollout.n; a prompt's samples consecutive)
        are cut into mini-batches of train.mini_batch_size prompts, each one optimizer step,
        the whole pass repeated train.epochs_per_rollout times. `old_logp` is the LogProbs from
        `log_probs` (or per-token [N, R] zero-padded, or per-sample sums [N]); `targets` [N];
        `sample_mask` [N] bool selects the samples in the loss (all when None). `temperature`
        divides the logits as in `log_probs` (None: old_logp's own, else rollout.temperature).
        A step whose loss or gradient is not finite is skipped (weights untouched) and counted
        in `train/skipped`. `policy/kl_old` is KL(pi_t || pi_theta) per response token (the k3
        estimator on the selected samples, from per-token old log-probs), as each mini-batch's
        forward pass sees it: 0 for the first mini-batch of an on-policy step.
        """
        n = len(batch)
        k = int(group_size or self.group_size)
        if temperature is None:  # the temperature old_logp was computed with, else rollout.temperature
            temperature = old_logp.temperature if isinstance(old_logp, LogProbs) else self.default_temperature
        temperature = float(temperature)
        targets_t = _as_1d(targets, n, "targets")
        old_t = _sequence_logp(old_logp, n)
        old_tokens = _token_logp(old_logp)
        mask_t = (
            torch.ones(n, dtype=torch.bool)
            if sample_mask is None
            else _as_1d(sample_mask, n, "sample_mask", torch.bool)
        )
        lengths = batch.input_lengths
        steps: List[Dict[str, float]] = []
        start = time.perf_counter()
        self.ddp.train()
        for _ in range(int(self.train_cfg.epochs_per_rollout)):
            for indices in mini_batches(n, k, int(self.train_cfg.mini_batch_size)):
                metrics = self._train_step(batch, indices, targets_t, old_t, old_tokens, mask_t, temperature)
                metrics["train/tokens"] = float(sum(lengths[i] for i in indices))
                steps.append(metrics)
        self.last_steps = steps
        return self._summarise(steps, time.perf_counter() - start)

    def _train_step(self, batch, indices, targets, old, old_tokens, mask, temperature) -> Dict[str, float]:
        from megatron.core import parallel_state as ps

        micro = self._plan(batch, indices)
        # sum sq err, n selected, sum log-ratio, sum per-token KL to pi_t, tokens it covers
        stats = torch.zeros(5, dtype=torch.float64, device=self.device)

        def loss_func(mb: MicroBatch, logits: torch.Tensor):
            # nothing here waits for the device: inputs go up asynchronously, the mask stays on the
            # CPU (sppo_loss selects there), the statistics are summed on the device and read once
            # per optimizer step
            dev = logits.device
            lp = token_log_probs(logits, mb.labels.to(dev, non_blocking=True), temperature, self.vocab_size)
            resp = mb.response_mask.to(dev, non_blocking=True)
            # float64 sums: the loss is a difference of two long sums (see LogProbs.sequence_logp)
            seq_logp = torch.where(resp, lp.double(), torch.zeros((), dtype=torch.float64, device=dev)).sum(dim=1)
            rows, real = mb.sample_rows()
            selected = mask[rows] & real
            loss, m = sppo_loss(
                seq_logp,
                old[rows].to(dev, non_blocking=True),
                targets[rows].to(dev, non_blocking=True),
                selected,
                denominator=1.0,
            )
            count = m["num_selected"]
            stats[0].add_(m["loss"])
            stats[1].add_(count)
            stats[2].add_(m["log_ratio_mean"] * count)
            if old_tokens is not None:
                self._add_kl(stats, lp, mb, old_tokens, mask)
            return loss, torch.full((), count, dtype=torch.int, device=dev), {}

        def forward_step(data_iterator, model):
            mb = next(data_iterator)
            return self._forward(model, mb), partial(loss_func, mb)

        lr = setup.current_lr(self.optimizer)
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._run_schedule(micro, forward_step, forward_only=False)

        if self.parallel_dims.dp > 1:
            dist.all_reduce(stats, group=ps.get_data_parallel_group())
        if self.parallel_dims.pp > 1:
            dist.all_reduce(stats, group=ps.get_pipeline_model_parallel_group())
        sum_sq, count, sum_ratio, sum_kl, kl_tokens = (float(v) for v in stats.cpu())
        loss = sum_sq / max(count, 1.0)

        finite = math.isfinite(loss) and self._grads_finite()
        grad_norm = float("nan")
        skipped = 1.0
        if finite:
            ok, norm, _ = self.optimizer.step()  # clips to optim.clip_grad
            if ok:
                if norm is None:
                    norm = self.optimizer.get_grad_norm()
                grad_norm = float(norm)
                self.scheduler.step(increment=1)
                skipped = 0.0
        metrics = {
            "train/loss": loss,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/grad_clipped": float(0.0 < self.clip_grad < grad_norm),
            "sppo/log_ratio_mean": sum_ratio / count if count else 0.0,
            "train/skipped": skipped,
            "train/num_selected": count,
            **router_losses(len(micro), self.transformer_config),
        }
        if old_tokens is not None and kl_tokens:
            metrics["policy/kl_old"] = sum_kl / kl_tokens
        return metrics

    @staticmethod
    def _add_kl(
        stats: torch.Tensor, lp: torch.Tensor, mb: MicroBatch, old_tokens: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """Add the k3 estimate of KL(pi_t || pi_theta) over mb's selected response tokens to
        stats[3] and their count to stats[4]: exp(r) - 1 - r, r = log pi_theta - log pi_t per token
        (unbiased for samples of pi_t, never negative). A gather on the response tokens: nothing
        waits for the device."""
        src, sample, col = mb.response_index()
        keep = mask[sample]
        src, sample, col = src[keep], sample[keep], col[keep]
        dev = lp.device
        new = lp.detach().reshape(-1).index_select(0, src.to(dev, non_blocking=True)).double()
        r = new - old_tokens[sample, col].to(dev, non_blocking=True).double()
        stats[3].add_((torch.expm1(r) - r).sum())
        stats[4].add_(float(src.numel()))

    def _grads_finite(self) -> bool:
        """True when every rank's gradient buffers are finite: one sum per buffer (not finite iff an
        element is not, or the sum overflows, which only diverged gradients do) and one
        all-reduced flag, instead of an elementwise pass."""
        buffers = list(self.ddp.buffers) + list(getattr(self.ddp, "expert_parallel_buffers", []))
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for buffer in buffers:
            total += buffer.grad_data.sum()
        bad = (~torch.isfinite(total)).to(torch.float32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item() == 0)

    @staticmethod
    def _summarise(steps: List[Dict[str, float]], seconds: float) -> Dict[str, float]:
        out: Dict[str, float] = {}
        if not steps:
            return {"train/num_optimizer_steps": 0.0, "train/skipped": 0.0, "train/tokens": 0.0}
        for key in ("train/loss", "train/grad_norm", "train/lr", "sppo/log_ratio_mean"):
            vals = [s[key] for s in steps if not (key == "train/grad_norm" and s["train/skipped"])]
            out[key] = sum(vals) / len(vals) if vals else float("nan")
        taken = [s for s in steps if not s["train/skipped"]]
        out["train/grad_clip_frac"] = sum(s["train/grad_clipped"] for s in taken) / len(taken) if taken else 0.0
        kls = [s["policy/kl_old"] for s in steps if "policy/kl_old" in s]
        if kls:
            out["policy/kl_old"] = sum(kls) / len(kls)
        out["train/skipped"] = float(sum(s["train/skipped"] for s in steps))
        out["train/num_optimizer_steps"] = float(len(steps) - out["train/skipped"])
        out["train/tokens"] = float(sum(s["train/tokens"] for s in steps))
        out["timing/train_step_s"] = seconds / len(steps)
        for key in sorted({k for s in steps for k in s if k.startswith("moe/")}):  # router losses, when on
            out[key] = sum(s[key] for s in steps) / len(steps)
        return out

    # ------------------------------------------------------------------ checkpoints, memory
    def save_checkpoint(self, ckpt_dir: str) -> None:
        save_actor(self, ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str, load_optimizer: bool = True) -> None:
        load_actor(self, ckpt_dir, load_optimizer=load_optimizer)

    def _trained_params(self) -> List[torch.nn.Parameter]:
        """The parameters the optimizer changes (all of them, or the LoRA adapters)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def snapshot_weights(self) -> List[torch.Tensor]:
        """A copy of this rank's trained parameters (the policy behind an off-policy batch in
        flight; a frozen base never changes)."""
        return [p.detach().clone() for p in self._trained_params()]

    @contextmanager
    def weights(self, snapshot: Optional[List[torch.Tensor]]) -> Iterator[None]:
        """Run the block with `snapshot`'s parameters, then restore the current ones exactly (the
        optimizer's state is not touched). None: the current weights."""
        if snapshot is None:
            yield
            return
        params = self._trained_params()
        current = self.snapshot_weights()
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(params, current):
                    p.copy_(c)

    def save_weights(self, ckpt_dir: str) -> None:
        """The model weights alone (collective; see actor.checkpoint.save_policy_weights)."""
        save_policy_weights(self, ckpt_dir)

    def load_weights(self, ckpt_dir: str) -> None:
        load_policy_weights(self, ckpt_dir)

    def offload(self) -> None:
        """Move params, grad buffers and optimizer state to pinned CPU memory (GPU; no-op on CPU).

        Call before rollouts; `onload()` before the next log_probs/update. Idempotent."""
        if self._offloaded is None:
            self._offloaded = offload(self) or False

    def onload(self) -> None:
        """Bring back what `offload()` moved (no-op if nothing is offloaded)."""
        if self._offloaded:
            onload(self, self._offloaded)
        self._offloaded = None

    def export_hf_weights(self):
        """The policy's (hf_name, full tensor) pairs through the bridge, LoRA adapters merged: an
        iterable streaming them (collective), whose `changed_only()` streams only those training
        can change (see models.export.WeightExport)."""
        from sppo_megatron.models.export import WeightExport

        return WeightExport(self.bridge, self.model)
