"""Push a weight stream into an SGLang engine in buckets, by reference rather than by copy.

The stream is cast to the engine's dtype on this rank's device and cut into single-dtype buckets
(`bucketize`). Per bucket, every rank of the rollout group serializes its own copy with torch's
multiprocessing reductions: CUDA IPC handles on a GPU (after SGLang's
`monkey_patch_torch_reductions()`, which rewrites the device index of CUDA tensors), shared-memory
host tensors on the CPU (the file descriptor travels, not the bytes). `flattened_bucket` mode packs the bucket
into one `FlattenedTensorBucket`, `tensor` mode sends one handle per tensor
(`LocalSerializedTensor`). The group's host gathers the handles (`gather_object` on the group's
gloo group) and hands one payload per engine TP rank to `send`; every rank keeps its bucket
alive until the host reports `send` done (`EngineGroups.on_host`), then the next bucket
follows.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist

from sppo_megatron.rollout.sglang.contract import FLATTENED_PAYLOAD_KEYS
from sppo_megatron.sync.buckets import NamedTensor, bucketize

#: sync modes (how a bucket travels) and SGLang's load_format for each
LOAD_FORMATS: Dict[str, Optional[str]] = {"flattened_bucket": "flattened_bucket", "tensor": None}


def _on_device(named_tensors: Iterable[NamedTensor], dtype: torch.dtype, device: torch.device) -> Iterator[NamedTensor]:
    for name, tensor in named_tensors:
        t = tensor.detach()
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        if t.device != device:
            t = t.to(device)
        yield name, t.contiguous()


def push_buckets(
    named_tensors: Iterable[NamedTensor],
    *,
    api: Any,
    placement: Any,
    mode: str,
    bucket_bytes: int,
    dtype: torch.dtype,
    device: torch.device,
    send: Callable[[Any], None],
) -> None:
    """Push the whole stream (see module docstring); collective over the rollout group of
    `placement`. `api` provides the sglang symbols, `send(payload)` runs on the host only; `mode`
    is one of LOAD_FORMATS."""
    for bucket in bucketize(_on_device(named_tensors, dtype, device), bucket_bytes):
        _push_bucket(bucket, api, placement, mode, device, send)


def _serialize(api: Any, obj: Any, device: torch.device) -> Any:
    if device.type == "cuda":  # the patch indexes CUDA reductions' arguments; host tensors have fewer
        api.monkey_patch_torch_reductions()
    return api.MultiprocessingSerializer.serialize(obj)


def _push_bucket(
    bucket: List[NamedTensor], api: Any, pl: Any, mode: str, device: torch.device, send: Callable[[Any], None]
) -> None:
    keep_alive: List[Any] = []
    if mode == "flattened_bucket":
        flat = api.FlattenedTensorBucket(named_tensors=bucket)
        keep_alive.append(flat)
        mine = _serialize(
            api, dict(zip(FLATTENED_PAYLOAD_KEYS, (flat.get_flattened_tensor(), flat.get_metadata()))), device
        )
    else:
        if device.type == "cpu":  # serializing moves a host storage into shared memory in place: never the caller's
            bucket = [(name, t.clone()) for name, t in bucket]
        keep_alive.append(bucket)
        mine = [(name, _serialize(api, t, device)) for name, t in bucket]
    per_rank: List[Any] = [mine]
    if pl.group_size > 1:
        gathered: Optional[List[Any]] = [None] * pl.group_size if pl.is_host else None
        dist.gather_object(mine, gathered, dst=pl.host_rank, group=pl.rollout_group)
        per_rank = gathered or []

    def host_send() -> None:
        if mode == "flattened_bucket":
            send(per_rank)
        else:
            send(
                [
                    (name, api.LocalSerializedTensor(values=[handles[i][1] for handles in per_rank]))
                    for i, (name, _) in enumerate(bucket)
                ]
            )

    # on_host's shared outcome is the "host is done" signal: members keep their bucket alive
    # (keep_alive) until it arrives
    pl.on_host(host_send)
    del keep_alive, mine
