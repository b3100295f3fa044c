"""Weight sync Megatron -> rollout engine: buckets, WeightSync (metrics + post-sync check), and
the rollout/actor log-prob parity metric."""

from sppo_megatron.sync.buckets import bucketize, mb_to_bytes, tensor_nbytes
from sppo_megatron.sync.weight_sync import WeightSync, logp_abs_diff, samples_logprobs

__all__ = ["WeightSync", "bucketize", "logp_abs_diff", "mb_to_bytes", "samples_logprobs", "tensor_nbytes"]
