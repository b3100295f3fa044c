"""Run-directory checkpoints: `checkpoints/step_N/`, written atomically, `latest` updated last.

A checkpoint is written into `checkpoints/.tmp-step_N/` by every rank (the actor's dist
checkpoint: model, optimizer, scheduler, per-rank RNG) plus `trainer_state.json` (step, data
position, counters) from rank 0; only when all ranks are done does rank 0 rename it to `step_N`
and then replace `latest`. A job killed at any moment therefore leaves `latest` naming a
complete checkpoint; leftovers of an interrupted write are removed at the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import barrier, rank
from sppo_megatron.platform.files import atomic_write_text

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _step_of(path: str) -> int:
    return int(os.path.basename(path)[len("step_"):])


@dataclass(frozen=True)
class RunStart:
    """How a run starts: from the checkpoint `resume_from`, or fresh (None), first removing the
    checkpoints already in output_dir when `clear` (trainer.resume=none, trainer.overwrite=true)."""

    resume_from: Optional[str] = None
    clear: bool = False


class CheckpointManager:
    """Owns `output_dir/checkpoints`: saving, rotation, and deciding how a run starts."""

    def __init__(self, output_dir: str, keep_last: int) -> None:
        self.root = os.path.join(output_dir, "checkpoints")
        self.keep_last = keep_last

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

    def save(self, step: int, trainer_state: Dict[str, Any], save_actor: Callable[[str], None]) -> str:
        """Write step_N atomically. `save_actor(dir)` is called on every rank (collective).

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
        save_actor(tmp)
        barrier()
        if rank() == 0:
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
        barrier()
        return final

    def clear(self) -> None:
        """Remove every checkpoint (a fresh run with trainer.overwrite=true). Rank 0 deletes."""
        if rank() == 0:
            shutil.rmtree(self.root, ignore_errors=True)
        barrier()

    def decide_start(self, resume: str, overwrite: bool) -> "RunStart":
        """What this run does for `trainer.resume` (auto | none | PATH) and `trainer.overwrite`:
        resume from a checkpoint, start fresh (clearing another run's checkpoints only with
        overwrite=true), or refuse (UserError), so a typo never clobbers a run."""
        if resume == "auto":
            return RunStart(resume_from=self.latest())
        if resume == "none":
            if self.step_dirs() and not overwrite:
                raise UserError(
                    f"trainer.output_dir already holds checkpoints ({self.root}); use trainer.resume=auto to "
                    "continue that run, another trainer.output_dir, or trainer.overwrite=true to replace it"
                )
            return RunStart(clear=bool(self.step_dirs()))
        if not os.path.isfile(os.path.join(resume, STATE_FILE)):
            raise UserError(f"trainer.resume: {resume} is not a complete checkpoint directory (no {STATE_FILE})")
        return RunStart(resume_from=resume)

    @staticmethod
    def read_state(ckpt_dir: str) -> Dict[str, Any]:
        with open(os.path.join(ckpt_dir, STATE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
