"""SGLang rollout engine, by concern: `contract` (what we use of SGLang's API and the pure
translations to and from it), `process` (what hosting the engine does to the trainer's process,
and undoing it), `engine` (SglangRolloutEngine), `weight_push` (buckets by reference: CUDA IPC on a
GPU, shared memory on the CPU), `seeding` (the sampler reseed run inside SGLang's scheduler).

sglang itself is imported lazily: this package imports on machines without it.
"""

from sppo_megatron.rollout.sglang.contract import sglang_available
from sppo_megatron.rollout.sglang.engine import SglangRolloutEngine

__all__ = ["SglangRolloutEngine", "sglang_available"]
