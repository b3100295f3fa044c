"""Seeding SGLang's sampler before each generate call, so that a call's samples depend on its
seed (and the batch), not on everything the engine sampled since it started.

SGLang seeds its scheduler's RNG once, at start (`random_seed`); per-request seeds exist only
with deterministic inference, which 0.5.23 offers for GPU attention backends alone. Without a
reseed, a resumed run (a new engine) samples differently from the uninterrupted run (an engine
that has been sampling since step 1). SGLang's extension point for code in its scheduler is a
custom weight loader (`custom_weight_loader` server arg, then `update_weights_from_tensor` with
that `load_format`): `reseed` is one, loaded with a single tensor holding the seed, and seeds the
scheduler's RNGs the way SGLang's own `set_random_seed` does. The engine reseeds right before each
sampled generate call, whose requests the scheduler takes as one batch (see
`SglangRolloutEngine._generate_local`), so equal calls give equal samples.

This module is imported inside SGLang's scheduler process: keep it light.
"""

from __future__ import annotations

import random
from typing import Iterable, Tuple

import torch

#: what the engine passes as load_format, and the server args allow
RESEED_LOADER = f"{__name__}.reseed"
#: the name of the one tensor the loader receives
SEED_TENSOR = "sppo_megatron.sampling_seed"


def reseed(model: torch.nn.Module, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
    """Custom weight loader: seed python's, torch's (and CUDA's) RNGs from SEED_TENSOR."""
    (name, value), *rest = list(named_tensors)
    if name != SEED_TENSOR or rest:
        raise ValueError(f"reseed takes exactly one tensor named {SEED_TENSOR}, got {[name] + [n for n, _ in rest]}")
    seed = int(value.reshape(-1)[0].item())
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
