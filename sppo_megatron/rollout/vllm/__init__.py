"""vLLM rollout engine, by concern: `contract` (what we use of vLLM's API and the pure translations
to and from it), `process` (what hosting the engine in the trainer's process does to it, and
undoing it), `engine` (VllmRolloutEngine).

vllm itself is imported lazily: this package imports on machines without it.
"""

from sppo_megatron.rollout.vllm.contract import vllm_available
from sppo_megatron.rollout.vllm.engine import VllmRolloutEngine

__all__ = ["VllmRolloutEngine", "vllm_available"]
