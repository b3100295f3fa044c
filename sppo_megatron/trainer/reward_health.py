"""Reward failures are loud. A reward function that raises, returns a non-number, kills its
worker or runs past `reward.timeout_s` scores 0.0, and a run where that happens to every sample
trains on nothing while looking healthy; so a step where more than `reward.max_error_frac` of
the samples failed is a console warning quoting the first error, and `reward.max_bad_steps`
such steps in a row stop the run (exit 1, one line quoting the first error).
"""

from __future__ import annotations

import sys
from typing import Any, Dict

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.errors import RunStopped
from sppo_megatron.platform.distributed import is_rank0


class RewardGuard:
    """Counts consecutive steps whose rewards mostly failed; `bad_steps` is checkpointed."""

    def __init__(self, cfg: RewardConfig, bad_steps: int = 0) -> None:
        self.cfg = cfg
        self.bad_steps = bad_steps

    def check(self, step: int, metrics: Dict[str, Any], num_samples: int) -> None:
        """Judge one step's `reward/*` metrics (the same on every rank, so every rank agrees)."""
        failed = int(metrics["reward/errors"] + metrics["reward/timeouts"])
        if failed <= self.cfg.max_error_frac * num_samples:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        first = " ".join(str(metrics.get("reward/first_error", "")).split())
        what = (
            f"{failed} of {num_samples} reward samples failed ({int(metrics['reward/errors'])} errors, "
            f"{int(metrics['reward/timeouts'])} timeouts; reward.max_error_frac={self.cfg.max_error_frac:g}); "
            f"first error: {first}"
        )
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise RunStopped(
                f"stopping at step {step}: {self.bad_steps} steps in a row with failing rewards "
                f"(reward.max_bad_steps={self.cfg.max_bad_steps}); last: {what}"
            )
        if is_rank0():
            print(
                f"sppo-train: WARNING: step {step}: {what} ({self.bad_steps} of reward.max_bad_steps="
                f"{self.cfg.max_bad_steps} in a row)",
                file=sys.stderr,
                flush=True,
            )
