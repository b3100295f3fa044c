"""Checkpoint writes without a whole-model copy in host memory.

megatron-core's torch_dist writer (`filesystem_async.FileSystemWriterAsync.prepare_write_data`,
0.16.1 and 0.19.2) clones every CPU tensor that is a view of a larger storage before any byte is
written, because `torch.save` of a view would write the whole storage. On the CPU every parameter
is such a view (of DDP's contiguous parameter buffer; SwiGLU's `linear_fc1` halves of a fused
weight), so a save held a second copy of the model, and of the optimizer's views, at once: the
transient that ran a 0.63B fp32 model out of memory at its checkpoint.

`streaming_writes()` swaps in `StreamingWriter`, which plans the same buckets without the clones,
and wraps the item writer so a view is copied (by numpy: the writers are forked processes) just
before it is written and dropped after: the
transient is one tensor (per writer process), not the model. Same files, same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Iterator, List

import torch

# megatron-core is imported inside the functions that use it (see dist_ckpt.py).


def _is_cpu_view(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.untyped_storage().nbytes() != tensor.numel() * tensor.itemsize


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a contiguous CPU tensor made by numpy, byte for byte: the writer runs in a forked
    process, where torch's intra-op thread pool (inherited mid-state from the trainer) can
    deadlock a `clone`."""
    if tensor.dim() == 0 or not tensor.is_contiguous():
        return tensor.clone()
    data = tensor.view(torch.uint8).numpy().copy()
    return torch.from_numpy(data).view(tensor.dtype).view(tensor.shape)


def _writer_class() -> Any:
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
    from torch.distributed.checkpoint.planner import WriteItemType

    class StreamingWriter(fsa.FileSystemWriterAsync):
        """megatron's writer, planning its buckets with every tensor as it is (no clone)."""

        def prepare_write_data(self, plan: Any, planner: Any) -> None:
            prefix = plan.storage_data.prefix
            bins = self.thread_count // 2 if self.separation_hint is not None else self.thread_count
            buckets = fsa._split_by_separation_hint(fsa._split_by_size_and_type(bins, plan.items), self.separation_hint)
            self.write_buckets: List[Any] = []
            for group_name, group_buckets in buckets.items():
                for bucket in group_buckets:
                    bytes_data = [(it, planner.resolve_data(it)) for it in bucket if it.type == WriteItemType.BYTE_IO]
                    tensor_data = [
                        (it, planner.resolve_data(it).detach()) for it in bucket if it.type != WriteItemType.BYTE_IO
                    ]
                    if bytes_data or tensor_data:
                        name = f"{group_name}{prefix}{len(self.write_buckets)}{fsa.DEFAULT_SUFFIX}"
                        path = os.path.join(self.checkpoint_dir, name)
                        self.write_buckets.append((path, name, (bytes_data, tensor_data)))
            self.results_queue = fsa._get_write_results_queue() if self.write_buckets else None

    return StreamingWriter


@contextlib.contextmanager
def streaming_writes() -> Iterator[None]:
    """Within the block, megatron's torch_dist saves stream views tensor by tensor (see above)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
    from megatron.core.dist_checkpointing.strategies import torch as torch_strategy

    write_item = fsa._write_item

    @functools.wraps(write_item)  # megatron reads its signature (serialization_format)
    def write_one(*args: Any, **kwargs: Any) -> Any:
        # (transforms..., stream, data, write_item, storage_key): data is the third from the end
        items = list(args)
        if isinstance(items[-3], torch.Tensor) and _is_cpu_view(items[-3]):
            items[-3] = _copy(items[-3])
        return write_item(*items, **kwargs)

    writer = torch_strategy.FileSystemWriterAsync
    torch_strategy.FileSystemWriterAsync, fsa._write_item = _writer_class(), write_one
    try:
        yield
    finally:
        torch_strategy.FileSystemWriterAsync, fsa._write_item = writer, write_item
