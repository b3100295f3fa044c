"""The one place that knows megatron-core assumes CUDA: make it run on CPU (gloo).

megatron-core uses `torch.cuda.current_device()` as a device, `device="cuda"` and `.cuda()`
literals, CUDA tensor type strings, streams/events and the CUDA RNG helpers on the paths we
need (GPTModel, pipeline schedules, DDP, distributed optimizer, dist_checkpointing). Without a
GPU we redirect all of that to the CPU:

* a TorchFunctionMode rewrites CUDA devices (``"cuda"``, ``"cuda:0"``, ints) to CPU in tensor
  factories and ``.to()``, makes ``.cuda()`` the identity and reports CUDA type strings from
  ``Tensor.type()`` (megatron compares ``param.type()`` with ``'torch.cuda.FloatTensor'``);
* ``torch.cuda`` functions megatron calls get CPU stand-ins (a dummy Stream *class*:
  transformers evaluates ``torch.cuda.Stream | None`` at import time);
* the CUDA RNG state helpers map to the CPU generator, and ``torch.cuda.manual_seed`` seeds it,
  so megatron's RNG tracker keeps distinct, seeded states per name;
* two copies megatron makes on CPU for nothing, each skipped only where it is exactly an
  identity: the distributed optimizer's grad reduce-scatter and param all-gather over a
  one-rank group (DP = 1) with the output aliasing the input (gloo copies the buffer onto
  itself: 2 x 77 MB per step on a 19 M-parameter model), and the no-apex fallback of
  `multi_tensor_scale` that gradient clipping calls with src = dst (`dst.copy_(src * scale)`
  allocates and page-faults a temporary per tensor; an in-place multiply gives the same bits).
* backward passes run under the same redirection (a mode is off inside its own handler);
* the MoE path: ``te_general_gemm`` defined without TE, all-to-all split sizes as numpy, and
  gloo stand-ins for the uneven all-gather / reduce-scatter of the expert-TP token dispatch.

`enable()` is a no-op when CUDA is available: nothing here may change GPU behaviour.
`torch.cuda.is_available()` keeps returning False so every other library still sees a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from typing import Any

import torch
import torch.autograd as autograd
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

# megatron-core is imported inside the functions that use it: the console scripts import this
# module before they silence megatron's import-time warnings (cpu_compat.silence_cpu_noise).

_enabled = False
_lock = threading.Lock()

_CUDA_TYPE = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}
_CPU = torch.device("cpu")


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _fix(value: Any) -> Any:
    return _CPU if _is_cuda_device(value) else value


class _CudaToCpuMode(TorchFunctionMode):
    """Redirect CUDA device requests to the CPU for every torch call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and "dtype" not in kwargs:
            return _CUDA_TYPE.get(args[0].dtype, func(*args, **kwargs))
        if "device" in kwargs:
            kwargs["device"] = _fix(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _fix(args[1])) + tuple(args[2:])
        return func(*args, **kwargs)


def _patch_uneven_collectives() -> None:
    """gloo has no uneven all-gather (a list of differently sized tensors) and no reduce-scatter;
    megatron's MoE dispatch under expert TP uses both (`_gather_along_first_dim` /
    `_reduce_scatter_along_first_dim` with split sizes). Uneven all-gather: pad to the largest,
    gather, cut. Reduce-scatter: all-reduce the concatenation, keep this rank's part (the same
    sums; more traffic, irrelevant at CPU-test sizes). Even all-gathers are untouched."""
    all_gather = dist.all_gather

    def uneven_all_gather(tensor_list, tensor, group=None, async_op=False):
        if async_op or len({tuple(t.shape) for t in tensor_list} | {tuple(tensor.shape)}) == 1:
            return all_gather(tensor_list, tensor, group=group, async_op=async_op)
        rows = max(t.shape[0] for t in tensor_list)
        padded = tensor.new_zeros((rows,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in tensor_list]
        all_gather(gathered, padded, group=group)
        for out, got in zip(tensor_list, gathered):
            out.copy_(got[: out.shape[0]])
        return None

    def reduce_scatter(output, input_list, op=dist.ReduceOp.SUM, group=None, async_op=False):
        full = torch.cat([t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1) for t in input_list])
        dist.all_reduce(full, op=op, group=group)
        mine = torch.split(full, [t.shape[0] if t.dim() else 1 for t in input_list])[dist.get_rank(group)]
        output.copy_(mine.reshape(output.shape))
        return None

    dist.all_gather = uneven_all_gather
    dist.reduce_scatter = reduce_scatter


def _patch_backward() -> None:
    """Run the autograd engine under the mode. `Tensor.backward` / `autograd.backward` pass
    through the mode's handler, where the mode is switched off, and the engine runs the whole
    backward pass with the thread-local state of that moment: without this, backward code that
    allocates on "cuda" (megatron's all-to-all, sequence-parallel gathers) fails."""
    engine = autograd._engine_run_backward

    def run_backward(*args: Any, **kwargs: Any) -> Any:
        with _CudaToCpuMode():
            return engine(*args, **kwargs)

    autograd._engine_run_backward = run_backward


class _DummyStream:
    """Stands in for torch.cuda.Stream / Event: CPU work is synchronous."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def record_event(self, *args: Any) -> "_DummyStream":
        return _DummyStream()

    def record(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0

    def __enter__(self) -> "_DummyStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _cpu_get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _noop_fn():
    # A distinct function object per patched name: torch._dynamo builds a rule map keyed by the
    # objects behind torch.cuda.* names and asserts when one object carries different rules.
    return lambda *args, **kwargs: None


def _zero_fn():
    return lambda *args, **kwargs: 0


def _patch_torch_cuda() -> None:
    cuda: Any = torch.cuda  # patched on purpose: its functions get CPU stand-ins
    cuda.current_device = _zero_fn()
    cuda.device_count = lambda: 1
    cuda.set_device = _noop_fn()
    cuda.synchronize = _noop_fn()
    cuda.empty_cache = _noop_fn()
    cuda.ipc_collect = _noop_fn()
    cuda.Stream = _DummyStream
    cuda.Event = _DummyStream
    cuda.current_stream = lambda *a, **k: _DummyStream()
    cuda.default_stream = lambda *a, **k: _DummyStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = _cpu_get_rng_state
    cuda.set_rng_state = _cpu_set_rng_state
    cuda.random.get_rng_state = _cpu_get_rng_state
    cuda.random.set_rng_state = _cpu_set_rng_state
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = cuda.manual_seed
    cuda.memory_allocated = _zero_fn()
    cuda.max_memory_allocated = _zero_fn()
    cuda.memory_reserved = _zero_fn()
    cuda.max_memory_reserved = _zero_fn()
    cuda.reset_peak_memory_stats = _noop_fn()
    cuda.memory_stats = lambda *a, **k: {}
    cuda.nvtx.range_push = _noop_fn()
    cuda.nvtx.range_pop = _noop_fn()
    cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state


def _aliases(output: torch.Tensor, input: torch.Tensor) -> bool:
    return (
        output.data_ptr() == input.data_ptr()
        and output.numel() == input.numel()
        and output.dtype == input.dtype
        and output.is_contiguous()
        and input.is_contiguous()
    )


def _single_rank_identity(collective):
    """`collective(output, input, ..., group=G)` (megatron passes group and async_op by keyword)
    that returns at once when G has one rank, the call is synchronous and output is input: the
    result is already in place."""

    @functools.wraps(collective)
    def call(output, input, *args, **kwargs):
        if (
            "group" in kwargs
            and not kwargs.get("async_op", False)
            and _aliases(output, input)
            and torch.distributed.get_world_size(kwargs["group"]) == 1
        ):
            return None
        return collective(output, input, *args, **kwargs)

    return call


def _scale_in_place(chunk_size, noop_flag, tensor_lists, scale):
    """megatron's local multi_tensor_scale, without a temporary where src is dst."""
    for src, dst in zip(tensor_lists[0], tensor_lists[1]):
        if src is dst:
            dst.mul_(scale)
        else:
            dst.copy_(src * scale)


def _patch_megatron_copies() -> None:
    from megatron.core.distributed import param_and_grad_buffer as buffers
    from megatron.core.optimizer import clip_grads

    buffers.dist_reduce_scatter_func = _single_rank_identity(buffers.dist_reduce_scatter_func)
    buffers.dist_all_gather_func = _single_rank_identity(buffers.dist_all_gather_func)
    if getattr(clip_grads, "multi_tensor_scale_impl", None) is getattr(clip_grads, "local_multi_tensor_scale", 0):
        clip_grads.multi_tensor_scale_impl = _scale_in_place


def _cpu_tensor_to_cpu(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
    """moe_utils.maybe_move_tensor_to_cpu for CPU tensors: the token dispatcher expects the
    all-to-all split sizes back as numpy (it only converts CUDA tensors; gloo's
    all_to_all_single rejects tensor split sizes)."""
    if as_numpy and torch.is_tensor(tensor):
        return tensor.numpy()
    return tensor


def _patch_megatron_moe() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    # 0.16.1 defines te_general_gemm only when Transformer Engine imports (0.19 sets it to None)
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    token_dispatcher.maybe_move_tensor_to_cpu = _cpu_tensor_to_cpu


def enable() -> bool:
    """Install the CPU compatibility layer (idempotent). Returns True if it is active."""
    global _enabled
    if torch.cuda.is_available():
        return False
    with _lock:
        if not _enabled:
            _patch_torch_cuda()
            _patch_megatron_rng()
            _patch_megatron_copies()
            _patch_megatron_moe()
            _patch_backward()
            _patch_uneven_collectives()
            _CudaToCpuMode().__enter__()
            _enabled = True
    return True


#: warnings megatron-core and torch emit on every CPU run that tell the user nothing actionable
#: (no TE/apex on CPU, CUDA-only tuning hints, deprecations inside megatron-core's own calls)
CPU_NOISE = (
    (UserWarning, r".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed.*"),
    (UserWarning, r".*CUDA_DEVICE_MAX_CONNECTIONS.*"),
    (UserWarning, r".*full scope is deprecated.*"),
    (UserWarning, r".*\.grad attribute of a Tensor that is not a leaf Tensor.*"),
    (
        FutureWarning,
        r".*(reduce_scatter_tensor|all_gather_into_tensor|_all_gather_base|_reduce_scatter_base)` is deprecated.*",
    ),
    (FutureWarning, r".*`load_state_dict` is deprecated.*"),
    (FutureWarning, r".*Please use DTensor instead.*"),
)


def silence_cpu_noise() -> None:
    """Filter CPU_NOISE when there is no GPU (console scripts call this first thing)."""
    if torch.cuda.is_available():
        return

    for category, pattern in CPU_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)
