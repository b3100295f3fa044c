"""Run-directory checkpoints: `checkpoints/step_N/`, written atomically, `latest` updated last.

A checkpoint is written into `checkpoints/.tmp-step_N/` by every rank (the actor's dist
checkpoint: model, optimizer, scheduler, per-rank RNG) plus `trainer_state.json` (step, data
position, counters) from rank 0; only when all ranks are done does rank 0 rename it to `step_N`
and then replace `latest`. A job killed at any moment therefore leaves `latest` naming a
complete checkpoint; leftovers of an interrupted write are removed at the next save.

A checkpoint that is there but broken (garbage state file, truncated shard) is reported in one
line naming the file; trainer.resume=auto then resumes from the newest intact one and says so.

Each checkpoint also holds the resolved config it was trained with (`config.yaml`), which a
resume compares with its own (config/resume.py).

trainer_state.json holds the step and, under its own key, the state of each `Stateful` component
(`trainer_state` / `restore_trainer_state`): each saves and restores its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple

from sppo_megatron.actor.checkpoint import check_actor_files
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import barrier, rank, share_outcomes
from sppo_megatron.platform.files import atomic_write_text, remove_dir, reporting_full_disk

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class Stateful(Protocol):
    """A component whose state goes into trainer_state.json, under the key it is registered with."""

    def state_dict(self) -> Any:
        """A JSON value; None: nothing to save (the key is left out)."""

    def load_state_dict(self, state: Any) -> None:
        """Take back what state_dict returned (None when the checkpoint has no entry for it)."""


def trainer_state(components: Mapping[str, Stateful]) -> Dict[str, Any]:
    """Each component's state under its key (those without one left out)."""
    states = {key: component.state_dict() for key, component in components.items()}
    return {key: state for key, state in states.items() if state is not None}


def restore_trainer_state(ckpt_dir: str, state: Mapping[str, Any], components: Mapping[str, Stateful]) -> None:
    """Hand each component its entry of `state` (read from `ckpt_dir`); a component that refuses
    its state is one line naming the checkpoint."""
    for key, component in components.items():
        try:
            component.load_state_dict(state.get(key))
        except UserError as e:
            raise type(e)(f"checkpoint {ckpt_dir}: {e}") from None


def _link_tree(src: str, dst: str) -> None:
    """Hard-link every file of `src` into the new directory `dst` (same file system; no data is
    copied). OSError when `src` changes under it (a file or directory gone)."""

    def fail(e: OSError) -> None:
        raise e

    for here, _, files in os.walk(src, onerror=fail):
        target = os.path.join(dst, os.path.relpath(here, src))
        os.makedirs(target, exist_ok=True)
        for name in files:
            os.link(os.path.join(here, name), os.path.join(target, name))


def _step_of(path: str) -> int:
    return int(os.path.basename(path)[len("step_") :])


@dataclass(frozen=True)
class RunStart:
    """How a run starts: from the checkpoint `resume_from`, or fresh (None), first removing the
    checkpoints already in output_dir when `clear` (trainer.resume=none, trainer.overwrite=true)."""

    resume_from: Optional[str] = None
    clear: bool = False
    #: the newer checkpoints trainer.resume=auto passed over, one line each (why they are broken)
    skipped: Tuple[str, ...] = ()


def _check_actor_files(ckpt_dir: str) -> None:
    check_actor_files(ckpt_dir)


class CheckpointManager:
    """Owns `output_dir/checkpoints`: saving, rotation, and deciding how a run starts.

    `check_actor(dir)` raises a UserError naming the file when the actor's part of a checkpoint
    is broken (default: the dist checkpoint's files, `actor.checkpoint.check_actor_files`)."""

    def __init__(
        self, output_dir: str, keep_last: int, check_actor: Callable[[str], None] = _check_actor_files
    ) -> None:
        self.root = os.path.join(output_dir, "checkpoints")
        self.keep_last = keep_last
        self.check_actor = check_actor

    def step_dirs(self) -> List[str]:
        """Complete checkpoints, oldest first."""
        if not os.path.isdir(self.root):
            return []
        steps = sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(self.root)) if m)
        return [os.path.join(self.root, f"step_{s}") for s in steps]

    def latest(self) -> Optional[str]:
        """The checkpoint `latest` names; if that is missing or incomplete (deleted by hand), the
        newest complete one; None when there is none."""
        path = os.path.join(self.root, LATEST_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                named = os.path.join(self.root, fh.read().strip())
            if os.path.isfile(os.path.join(named, STATE_FILE)):
                return named
        complete = [d for d in self.step_dirs() if os.path.isfile(os.path.join(d, STATE_FILE))]
        return complete[-1] if complete else None

    def save(
        self, step: int, trainer_state: Dict[str, Any], save_actor: Callable[[str], None], config_yaml: str
    ) -> str:
        """Write step_N atomically, with `config_yaml` (the run's resolved config) beside the state.
        `save_actor(dir)` is called on every rank (collective).

        Checkpoints of later steps (left by an earlier attempt that this run, resumed from an
        older checkpoint, has replaced) are removed; then the newest `keep_last` are kept."""
        final = os.path.join(self.root, f"step_{step}")
        tmp = os.path.join(self.root, f".tmp-step_{step}")
        if rank() == 0:
            os.makedirs(self.root, exist_ok=True)
            for name in os.listdir(self.root):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
            os.makedirs(tmp)
        barrier()
        try:
            with reporting_full_disk(tmp):
                save_actor(tmp)
                share_outcomes(
                    lambda: self._commit(tmp, final, step, trainer_state, config_yaml) if rank() == 0 else None
                )
        except BaseException:
            if rank() == 0:
                remove_dir(tmp)  # frees the space; `latest` still names the previous checkpoint
            raise
        return final

    def _commit(self, tmp: str, final: str, step: int, trainer_state: Dict[str, Any], config_yaml: str) -> None:
        """Rank 0, after every rank wrote its part: the config and state files, the rename, `latest`, rotation."""
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as fh:
            fh.write(config_yaml)
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as fh:
            json.dump({"step": step, **trainer_state}, fh, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(os.path.join(self.root, LATEST_FILE), f"step_{step}\n")
        for other in self.step_dirs():
            if _step_of(other) > step:
                shutil.rmtree(other, ignore_errors=True)
        for old in self.step_dirs()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        """Remove every checkpoint (a fresh run with trainer.overwrite=true). Rank 0 deletes."""
        if rank() == 0:
            shutil.rmtree(self.root, ignore_errors=True)
        barrier()

    def check(self, ckpt_dir: str) -> Dict[str, Any]:
        """The trainer state of an intact checkpoint; UserError naming the broken file otherwise."""
        state = self.read_state(ckpt_dir)
        self.check_actor(ckpt_dir)
        return state

    def newest_intact(self) -> Tuple[Optional[str], List[str]]:
        """The newest checkpoint that passes `check` (the one `latest` names first), and one line
        for each newer one that does not."""
        candidates = [self.latest()] + self.step_dirs()[::-1]
        problems: List[str] = []
        for ckpt in dict.fromkeys(c for c in candidates if c is not None):
            try:
                self.check(ckpt)
                return ckpt, problems
            except UserError as e:
                problems.append(str(e))
        return None, problems

    def decide_start(self, resume: str, overwrite: bool) -> "RunStart":
        """What this run does for `trainer.resume` (auto | none | PATH) and `trainer.overwrite`:
        resume from a checkpoint (auto: the newest intact one), start fresh (clearing another
        run's checkpoints only with overwrite=true), or refuse (UserError), so a typo or a broken
        checkpoint never clobbers a run."""
        if resume == "auto":
            ckpt, problems = self.newest_intact()
            if ckpt is None and problems:
                raise UserError(
                    f"{problems[0]}; trainer.resume=auto found no intact checkpoint in {self.root} "
                    "to fall back to (trainer.resume=none trainer.overwrite=true starts over)"
                )
            return RunStart(resume_from=ckpt, skipped=tuple(problems))
        if resume == "none":
            if self.step_dirs() and not overwrite:
                raise UserError(
                    f"trainer.output_dir already holds checkpoints ({self.root}); use trainer.resume=auto to "
                    "continue that run, another trainer.output_dir, or trainer.overwrite=true to replace it"
                )
            return RunStart(clear=bool(self.step_dirs()))
        if not os.path.isfile(os.path.join(resume, STATE_FILE)):
            raise UserError(f"trainer.resume: {resume} is not a complete checkpoint directory (no {STATE_FILE})")
        self.check(resume)
        return RunStart(resume_from=resume)

    @contextlib.contextmanager
    def pinned_latest(self, attempts: int = 5) -> Iterator[str]:
        """The latest complete checkpoint, hard-linked into a hidden directory of the run
        (`.pinned-XXXX/step_N`, removed on exit) so that the running training's rotation cannot
        delete its files while a reader (sppo-eval) loads them. A checkpoint rotated away while it
        is being linked is replaced by the then latest one (UserError after `attempts`)."""
        run_dir = os.path.dirname(self.root)
        for _ in range(attempts):
            ckpt = self.latest()
            if ckpt is None:
                raise UserError(f"{run_dir} has no complete checkpoint (checkpoints/{LATEST_FILE})")
            pin = tempfile.mkdtemp(prefix=".pinned-", dir=run_dir)
            pinned = os.path.join(pin, os.path.basename(ckpt))
            try:
                _link_tree(ckpt, pinned)
                self.check(pinned)  # every file there, none cut short by a rotation under way
            except (OSError, UserError):
                shutil.rmtree(pin, ignore_errors=True)
                if self.latest() == ckpt:  # not rotated (a newer one is named before the old is removed)
                    raise
                continue
            try:
                yield pinned
            finally:
                shutil.rmtree(pin, ignore_errors=True)
            return
        raise UserError(f"{self.root}: the running training rotated {attempts} checkpoints away while they were read")

    @staticmethod
    def read_state(ckpt_dir: str) -> Dict[str, Any]:
        """trainer_state.json, checked: UserError naming it when it is missing or garbage."""
        path = os.path.join(ckpt_dir, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError) as e:
            raise UserError(f"checkpoint {ckpt_dir}: {STATE_FILE} is unreadable ({e})") from None
        if not (
            isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("sampler"), dict)
        ):
            raise UserError(f"checkpoint {ckpt_dir}: {STATE_FILE} lacks an integer 'step' and a 'sampler' state")
        return state
