"""The run stops itself when steps keep going wrong, counted by one helper (`Streak`):

- `RewardGuard` (`reward.max_bad_steps`): reward failures are loud. A reward function that raises,
  returns a non-number, kills its worker or runs past `reward.timeout_s` scores 0.0, and a run
  where that happens to every sample trains on nothing while looking healthy; so a step where more
  than `reward.max_error_frac` of the samples failed is a console warning quoting the first error,
  and `reward.max_bad_steps` such steps in a row stop the run (exit 1, one line quoting it).
- `DivergenceGuard` (`trainer.max_bad_steps`): a step whose loss or gradient is not finite is
  skipped by the actor; `trainer.max_bad_steps` such steps in a row stop the run (exit 1).

Both counts are checkpointed (trainer_state.json `bad_reward_steps` and `bad_steps`), so a
resumed run goes on counting.
"""

from __future__ import annotations

from typing import Optional

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.errors import RunStopped, TrainingDiverged
from sppo_megatron.platform.console import say
from sppo_megatron.reward import ScoreStats
from sppo_megatron.trainer import PROG


class Streak:
    """Bad steps in a row: a good step resets the count. Its trainer_state.json entry is the count."""

    def __init__(self) -> None:
        self.count = 0

    def update(self, bad: bool) -> int:
        self.count = self.count + 1 if bad else 0
        return self.count

    def state_dict(self) -> int:
        return self.count

    def load_state_dict(self, state: Optional[int]) -> None:
        """The saved count (None: a checkpoint without one, 0)."""
        self.count = int(state or 0)


class RewardGuard(Streak):
    """Counts consecutive steps whose rewards mostly failed (`reward.*`, see the module docstring)."""

    def __init__(self, cfg: RewardConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def check(self, step: int, stats: ScoreStats, num_samples: int) -> None:
        """Judge one step's scoring (the same on every rank, so every rank agrees)."""
        failed = stats.errors + stats.timeouts
        if not self.update(failed > self.cfg.max_error_frac * num_samples):
            return
        first = " ".join((stats.first_error or "").split())
        what = (
            f"{failed} of {num_samples} reward samples failed ({stats.errors} errors, "
            f"{stats.timeouts} timeouts; reward.max_error_frac={self.cfg.max_error_frac:g}); "
            f"first error: {first}"
        )
        if self.count >= self.cfg.max_bad_steps:
            raise RunStopped(
                f"stopping at step {step}: {self.count} steps in a row with failing rewards "
                f"(reward.max_bad_steps={self.cfg.max_bad_steps}); last: {what}"
            )
        say(
            PROG,
            f"WARNING: step {step}: {what} ({self.count} of reward.max_bad_steps={self.cfg.max_bad_steps} in a row)",
            stderr=True,
        )


class DivergenceGuard(Streak):
    """Counts consecutive steps the actor skipped for a non-finite loss or gradient
    (`trainer.max_bad_steps`, see the module docstring)."""

    def __init__(self, max_bad_steps: int) -> None:
        super().__init__()
        self.max_bad_steps = max_bad_steps

    def check(self, step: int) -> None:
        """Stop the run (after the step is logged and checkpointed) once the streak is long enough."""
        if self.count >= self.max_bad_steps:
            raise TrainingDiverged(
                f"stopping at step {step}: {self.count} steps in a row had a non-finite loss or gradient "
                f"(trainer.max_bad_steps={self.max_bad_steps}); lower optim.lr or check the data and rewards"
            )
