"""Reward failures are loud. A reward function that raises, returns a non-number, kills its
worker or runs past `reward.timeout_s` scores 0.0, and a run where that happens to every sample
trains on nothing while looking healthy; so a step where more than `reward.max_error_frac` of
the samples failed is a console warning quoting the first error, and `reward.max_bad_steps`
such steps in a row stop the run (exit 1, one line quoting the first error).
"""

from __future__ import annotations

import sys

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.errors import RunStopped
from sppo_megatron.platform.distributed import is_rank0
from sppo_megatron.reward import ScoreStats


class RewardGuard:
    """Counts consecutive steps whose rewards mostly failed; `bad_steps` is checkpointed."""

    def __init__(self, cfg: RewardConfig, bad_steps: int = 0) -> None:
        self.cfg = cfg
        self.bad_steps = bad_steps

    def check(self, step: int, stats: ScoreStats, num_samples: int) -> None:
        """Judge one step's scoring (the same on every rank, so every rank agrees)."""
        failed = stats.errors + stats.timeouts
        if failed <= self.cfg.max_error_frac * num_samples:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        first = " ".join((stats.first_error or "").split())
        what = (
            f"{failed} of {num_samples} reward samples failed ({stats.errors} errors, "
            f"{stats.timeouts} timeouts; reward.max_error_frac={self.cfg.max_error_frac:g}); "
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
