"""What a resumed run may change: its config compared key by key with the checkpoint's.

Every checkpoint stores the config it was trained with (`checkpoints/step_N/config.yaml`). On
resume each changed key is one of:

* safe: it says how the run is driven (logging, evaluation and save cadence, total_steps,
  parallel layout, engine memory, worker counts), not what the earlier steps learned from;
* applied: the optimizer and LR-schedule settings (`optim.*`), which reach the optimizer's
  parameter groups from the first resumed step on (actor/setup.py `apply_optim_settings`);
* must match: everything else (model, data, sampling, algorithm, reward, seed, ...). A change is
  refused in one line naming the key, the checkpoint's value and this run's, unless the key (or
  its group) is listed in `trainer.resume_accept`.

A key not in the table must match: a key added to the schema is refused on resume until it is classified here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from sppo_megatron.errors import ConfigError

#: keys whose change a resume takes as it is
SAFE_KEYS: Tuple[str, ...] = (
    "trainer.total_steps",
    "trainer.output_dir",
    "trainer.resume",
    "trainer.resume_accept",
    "trainer.overwrite",
    "trainer.save_freq",
    "trainer.keep_last",
    "trainer.test_freq",
    "trainer.val_before_train",
    "trainer.logger",
    "trainer.project_name",
    "trainer.experiment_name",
    "trainer.log_samples_freq",
    "trainer.max_bad_steps",
    "trainer.export_hf",
    "parallel.tp",
    "parallel.pp",
    "parallel.ep",
    "parallel.etp",
    "parallel.sequence_parallel",
    "parallel.distributed_timeout_minutes",
    "parallel.peer_timeout_s",
    "model.recompute",
    "data.val_files",
    "data.val_batch_size",
    "rollout.engine",
    "rollout.tp",
    "rollout.mem_fraction",
    "rollout.kv_cache_mb",
    "rollout.sync_bucket_mb",
    "rollout.val_temperature",
    "rollout.val_top_p",
    "rollout.val_n",
    "reward.batch_size",
    "reward.num_workers",
    "reward.timeout_s",
    "reward.request_timeout_s",
    "reward.retries",
    "reward.backoff_s",
    "reward.max_error_frac",
    "reward.max_bad_steps",
    "train.micro_batch_size",
    "train.max_tokens_per_micro_batch",
    "train.logprob_micro_batch_size",
    "train.logprob_max_tokens",
)

#: groups whose changes are applied for real from the first resumed step on
APPLIED_GROUPS: Tuple[str, ...] = ("optim",)


def kind_of(key: str) -> str:
    """'safe', 'applied' or 'must_match'."""
    if key in SAFE_KEYS:
        return "safe"
    if key.split(".")[0] in APPLIED_GROUPS:
        return "applied"
    return "must_match"


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """{dotted key: value} of a nested config dict (lists are values)."""
    if not isinstance(node, Mapping):
        return {prefix[:-1]: node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    @property
    def kind(self) -> str:
        return kind_of(self.key)


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[Change]:
    """The keys both configs have whose values differ (a key only one of them knows, from another
    version of the schema, cannot be compared and is left out)."""
    flat_old, flat_new = flatten(old), flatten(new)
    return [Change(k, flat_old[k], flat_new[k]) for k in flat_new if k in flat_old and flat_old[k] != flat_new[k]]


def _accepted(key: str, accept: Iterable[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in accept)


def _known(name: str, keys: Iterable[str]) -> bool:
    return any(_accepted(k, [name]) for k in keys)


def check_changes(found: List[Change], accept: Iterable[str], ckpt_dir: str, known: Iterable[str]) -> None:
    """ConfigError with one line per must-match key that changed and is not accepted (and per
    name in `accept` that is no key or group of `known`)."""
    accept = list(accept)
    problems = [f"trainer.resume_accept: {a!r} is not a config key or group" for a in accept if not _known(a, known)]
    problems += [
        f"trainer.resume: {c.key}={c.new!r} but checkpoint {ckpt_dir} was trained with {c.key}={c.old!r}; "
        f"resume with the same value, or accept the change with trainer.resume_accept=[{c.key}]"
        for c in found
        if c.kind == "must_match" and not _accepted(c.key, accept)
    ]
    if problems:
        raise ConfigError("\n".join(problems))


def diff_record(found: List[Change]) -> Dict[str, Dict[str, Any]]:
    """The `changed` entry of the `resumed` event: {key: {old, new, kind}}."""
    return {c.key: {"old": c.old, "new": c.new, "kind": c.kind} for c in found}
