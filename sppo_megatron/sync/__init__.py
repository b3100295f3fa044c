"""Weight sync Megatron -> rollout engine: buckets (and their CUDA-IPC push to SGLang) and
WeightSync (metrics + post-sync check)."""

from sppo_megatron.sync.buckets import bucketize, mb_to_bytes, tensor_nbytes
from sppo_megatron.sync.weight_sync import WeightSync

__all__ = ["WeightSync", "bucketize", "mb_to_bytes", "tensor_nbytes"]
