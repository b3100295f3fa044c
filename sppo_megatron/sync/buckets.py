"""Group a stream of (hf_name, tensor) into size-capped, single-dtype buckets.

The bridge's `export_hf_weights(model)` yields full HF-named tensors one at a time; the rollout
engines take them in buckets (SGLang: one `FlattenedTensorBucket` per bucket, one IPC round per
bucket). Buckets never mix dtypes (a flattened bucket is one contiguous byte buffer that is
viewed back per tensor, and mixing itemsizes would misalign the views). A tensor larger than the
cap forms a bucket of its own. Order inside a dtype is the stream order.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Tuple

import torch

NamedTensor = Tuple[str, torch.Tensor]


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def bucketize(named_tensors: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[List[NamedTensor]]:
    """Yield lists of (name, tensor), each of one dtype and at most `bucket_bytes` (unless a
    single tensor is larger). A bucket is yielded as soon as it is full, so at most one pending
    bucket per dtype is held: memory stays O(bucket_bytes x dtypes)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    pending: Dict[torch.dtype, List[NamedTensor]] = {}
    sizes: Dict[torch.dtype, int] = {}
    for name, tensor in named_tensors:
        nbytes = tensor_nbytes(tensor)
        dtype = tensor.dtype
        if dtype in pending and sizes[dtype] + nbytes > bucket_bytes:
            yield pending.pop(dtype)
            sizes.pop(dtype)
        pending.setdefault(dtype, []).append((name, tensor))
        sizes[dtype] = sizes.get(dtype, 0) + nbytes
        if sizes[dtype] >= bucket_bytes:
            yield pending.pop(dtype)
            sizes.pop(dtype)
    for dtype in list(pending):
        yield pending.pop(dtype)


def mb_to_bytes(mb: float) -> int:
    return max(1, int(mb * 1024 * 1024))
