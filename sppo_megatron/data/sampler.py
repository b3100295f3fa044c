"""Deterministic, resumable order of prompts across epochs.

Epoch e visits the items in the permutation drawn by torch.Generator seeded with seed + e, so
the order depends only on (seed, epoch) and a checkpoint needs only the epoch and the position
inside it to continue exactly where an uninterrupted run would be. Every prompt drawn counts,
trained on or not: dynamic sampling (trainer/generation.py) draws more than one batch a step, and
a resumed run must draw what the uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from sppo_megatron.errors import DataError


class PromptSampler:
    """Batches of item indices; `next_batch` moves on to the next epoch by itself.

    batch_size is the largest draw (and the default one); `next_batch(size)` draws fewer.
    drop_last=True skips an epoch's final partial batch (every batch has the size asked for);
    drop_last=False returns it short.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True):
        if num_items < 1:
            raise DataError("the prompt dataset is empty")
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if batch_size > num_items:
            raise DataError(
                f"batch size {batch_size} is larger than the dataset ({num_items} prompts); "
                "lower data.train_batch_size (or data.oversample_factor) or add prompts"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def next_batch(self, size: Optional[int] = None) -> List[int]:
        """The next `size` (default batch_size, at most batch_size) item indices."""
        size = self.batch_size if size is None else int(size)
        if not 1 <= size <= self.batch_size:
            raise ValueError(f"cannot draw {size} items: draws are 1..{self.batch_size}")
        remaining = self.num_items - self.position
        if remaining == 0 or (self.drop_last and remaining < size):
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_order(self.epoch)
        end = min(self.position + size, self.num_items)
        batch = self._order[self.position : end].tolist()
        self.position = end
        return batch

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serialisable position: epoch, items consumed in it, and what fixes the order."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from `state`. The order must be the same: same dataset size, seed and shuffle.

        The batch size may differ from the saved run's (the position counts items, not batches).
        """
        for key in ("num_items", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"cannot resume the data order: saved {key}={state[key]!r} but now "
                    f"{getattr(self, key)!r} (the prompt files or trainer.seed changed)"
                )
        if not 0 <= state["position"] <= self.num_items or state["epoch"] < 0:
            raise DataError(f"invalid saved data position: epoch {state['epoch']}, position {state['position']}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._epoch_order(self.epoch)
