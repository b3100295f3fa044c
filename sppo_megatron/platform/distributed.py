"""Distributed start-up from the launcher's environment: torchrun, srun (Slurm), or none.

`detect_launch()` only reads the environment (config validation needs the world size before any
process group exists); `init_distributed()` creates the process group (NCCL with CUDA, gloo
without), megatron's parallel state and seeds every RNG.

With rollout ranks (rollout.placement=separate) the job splits in two: the first world - R ranks
train (the default process group and megatron's parallel state span only them, so everything
training does is unchanged), the last R ranks host the rollout engine (their own default group).
A `Channel` (gloo) joins training rank 0 and the rollout ranks: requests and weight buckets are
broadcast from it, results come back point to point.
"""

from __future__ import annotations

import datetime
import os
import pickle
import random
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from sppo_megatron.errors import UserError
from sppo_megatron.platform import cpu_compat

# megatron-core is imported inside the functions that use it: the console scripts import this
# module before they silence megatron's import-time warnings (cpu_compat.silence_cpu_noise).

T = TypeVar("T")


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in the job, as told by the launcher."""

    launcher: str  # "torchrun" | "slurm" | "single"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise UserError(f"cannot parse SLURM_NODELIST={nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _slurm_tasks_on_first_node(value: str) -> int:
    """SLURM_TASKS_PER_NODE looks like '8(x2),4'; the count on this kind of node is the first."""
    match = re.match(r"\d+", value)
    if match is None:
        raise UserError(f"cannot parse SLURM_TASKS_PER_NODE={value!r}")
    return int(match.group(0))


def detect_launch(environ: Optional[Mapping[str, str]] = None) -> LaunchInfo:
    """Read rank/world/master from torchrun variables, else an srun step, else single process.

    torchrun wins when both are present (srun + torchrun rendezvous). A Slurm *batch* script
    running python directly is a single process: only srun steps set SLURM_STEP_NUM_TASKS.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchInfo(
            launcher="torchrun",
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST", "127.0.0.1")
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
        return LaunchInfo(
            launcher="slurm",
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_STEP_NUM_TASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=_slurm_tasks_on_first_node(tasks_per_node),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            master_port=int(env.get("MASTER_PORT") or 20000 + job_id % 20000),
        )
    return LaunchInfo("single", 0, 1, 0, 1, env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 0) or 0))


def default_cpu_threads(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """One torch thread per process on a CPU-only machine when OMP_NUM_THREADS is unset, as
    torchrun gives each of several ranks: torch's default (a thread per core) contends with the
    reward workers and the rollout engine of the same job, which made a single process's demo steps
    4-12 s instead of 0.2-0.6 s on 2 cores. Returns the line saying so, None when it changed nothing."""
    env = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in env or torch.cuda.is_available() or torch.get_num_threads() == 1:
        return None
    torch.set_num_threads(1)
    return "OMP_NUM_THREADS is unset: one torch thread per process, as torchrun gives each rank (set it to override)"


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and (when initialised) megatron's model-parallel RNG tracker."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if parallel_state.model_parallel_is_initialized():
        model_parallel_cuda_manual_seed(seed)


def _bytes_tensor(payload: bytes) -> torch.Tensor:
    """A uint8 tensor owning a copy of `payload` (frombuffer would not keep the bytes alive)."""
    return torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())


class Channel:
    """A gloo group outside the default one (training rank 0 = channel rank 0, rollout rank i =
    channel rank 1 + i). Objects are pickled into byte tensors; a failed call on the serving side
    travels back as its exception (`send_outcome` / `recv_outcome`), like `share_outcomes`."""

    def __init__(self, pg: Any, rank: int, size: int) -> None:
        self.pg, self.rank, self.size = pg, rank, size
        #: what this rank sent and the peers may not have read yet: gloo's send can complete
        #: before the bytes leave, so the tensors live until this rank next receives something
        #: (the protocol of rollout/remote.py answers every command, so that proves receipt)
        self._sent: List[torch.Tensor] = []

    def broadcast_tensor(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """`tensor` (CPU, contiguous) filled in place from channel rank `src`."""
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        opts.rootTensor = 0
        self.pg.broadcast([tensor], opts).wait()
        if self.rank == src:
            self._sent.append(tensor)
        else:
            self._sent.clear()
        return tensor

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Channel rank `src`'s `obj` on every channel rank."""
        payload = pickle.dumps(obj) if self.rank == src else b""
        size = self.broadcast_tensor(torch.tensor([len(payload)], dtype=torch.int64), src)
        data = _bytes_tensor(payload) if payload else torch.empty(int(size), dtype=torch.uint8)
        self.broadcast_tensor(data, src)
        return pickle.loads(data.numpy().tobytes()) if self.rank != src else obj

    def send_outcome(self, fn: Callable[[], T], dst: int = 0) -> None:
        """Run fn and send its result, or the exception it raised, to channel rank `dst`."""
        try:
            outcome: Tuple[bool, Any] = (True, fn())
        except Exception as e:  # noqa: BLE001 - raised on the receiving side
            outcome = (False, _portable(e))
        data = _bytes_tensor(pickle.dumps(outcome))
        size = torch.tensor([data.numel()], dtype=torch.int64)
        self.pg.send([size], dst, 0).wait()
        self.pg.send([data], dst, 1).wait()
        self._sent += [size, data]

    def recv_outcome(self, src: int = 1) -> Any:
        """What `send_outcome` on channel rank `src` sent: its result, or its exception raised here."""
        size = torch.zeros(1, dtype=torch.int64)
        self.pg.recv([size], src, 0).wait()
        data = torch.empty(int(size), dtype=torch.uint8)
        self.pg.recv([data], src, 1).wait()
        self._sent.clear()
        ok, value = pickle.loads(data.numpy().tobytes())
        if not ok:
            value.add_note(f"(raised on rollout channel rank {src})")
            raise value
        return value


@dataclass
class RoleSplit:
    """Training ranks [0, train_world) and rollout ranks [train_world, world); `channel` on
    training rank 0 and the rollout ranks (None elsewhere)."""

    rank: int
    train_world: int
    rollout_world: int
    channel: Optional[Channel]
    store: Any

    @property
    def is_rollout(self) -> bool:
        return self.rank >= self.train_world


_SPLIT: Optional[RoleSplit] = None


def role_split() -> Optional[RoleSplit]:
    """The job's split into training and rollout ranks (None: every rank trains)."""
    return _SPLIT


def is_rollout_rank() -> bool:
    return _SPLIT is not None and _SPLIT.is_rollout


def _init_split(info: LaunchInfo, rollout_ranks: int, backend: str, timeout: datetime.timedelta) -> None:
    """Two default groups (training ranks, rollout ranks) on one rendezvous store, and the channel."""
    global _SPLIT
    port = info.master_port or free_port()
    store, _, _ = next(
        dist.rendezvous(f"tcp://{info.master_addr}:{port}", rank=info.rank, world_size=info.world_size, timeout=timeout)
    )
    train_world = info.world_size - rollout_ranks
    rollout = info.rank >= train_world
    role_rank = info.rank - train_world if rollout else info.rank
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore("sppo/rollout/" if rollout else "sppo/train/", store),
        rank=role_rank,
        world_size=rollout_ranks if rollout else train_world,
        timeout=timeout,
    )
    channel = None
    if rollout or info.rank == 0:
        size = 1 + rollout_ranks
        crank = 1 + role_rank if rollout else 0
        channel = Channel(
            dist.ProcessGroupGloo(dist.PrefixStore("sppo/channel/", store), crank, size, timeout), crank, size
        )
    _SPLIT = RoleSplit(info.rank, train_world, rollout_ranks, channel, store)


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 30,
    rollout_ranks: int = 0,
    ep: int = 1,
    etp: int = 1,
) -> LaunchInfo:
    """Create the default process group and megatron's TP/PP/DP (and EP/ETP) groups, then seed.

    NCCL on GPUs (one device per local rank), gloo plus the CPU compatibility layer otherwise.
    Idempotent for the process group; megatron's parallel state is rebuilt if the sizes differ.
    `rollout_ranks` > 0 splits the job (module docstring): megatron's state exists on the training
    ranks only.
    """
    from megatron.core import parallel_state

    info = detect_launch()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    else:
        cpu_compat.enable()
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized() and rollout_ranks:
        _init_split(info, rollout_ranks, "nccl" if use_cuda else "gloo", timeout)
    if is_rollout_rank():
        seed_everything(seed)
        return info
    if not dist.is_initialized():
        port = info.master_port or free_port()
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{info.master_addr}:{port}",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timeout,
        )
    if parallel_state.model_parallel_is_initialized():
        if (
            parallel_state.get_tensor_model_parallel_world_size() == tp
            and parallel_state.get_pipeline_model_parallel_world_size() == pp
            and parallel_state.get_expert_model_parallel_world_size() == ep
            and parallel_state.get_expert_tensor_parallel_world_size() == etp
        ):
            seed_everything(seed)
            return info
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp,
        distributed_timeout_minutes=timeout_minutes,
    )
    seed_everything(seed)
    return info


def current_device() -> torch.device:
    """This process's accelerator (the CUDA device set for its local rank), or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def rank() -> int:
    """This process's global rank; before a process group exists, the launcher's (RANK or
    SLURM_PROCID, 0 for a single process), so CLIs can pick the rank that talks to the user.
    Rollout ranks of a split job keep their job rank (their default group is their own)."""
    if _SPLIT is not None:
        return _SPLIT.rank
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    """dist.barrier() when a process group exists; nothing otherwise."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0, group=None):
    """Rank `src`'s `obj` on every rank of `group` (pickled; for small objects). Identity
    without a process group."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def share_outcomes(fn: Optional[Callable[[], T]], group=None) -> List[Optional[T]]:
    """Run `fn` on the ranks that pass one (None: nothing to do here) and return, on every rank of
    `group`, the list of their results in rank order (None for ranks without fn).

    If fn raised anywhere, every rank raises instead, rather than the others waiting in the next
    collective until the timeout. All ranks raise the same exception (the first in rank order),
    carried itself (pickled) so that e.g. a UserError keeps its exit code 2 on every rank; one that
    does not survive pickling arrives as a RuntimeError with its type and message. Copies carry a
    note naming the rank it was raised on. Without a process group (or in a group of one) fn just
    runs."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [fn() if fn is not None else None]
    mine: Tuple[bool, Any] = (True, None)
    raised: Optional[Exception] = None
    if fn is not None:
        try:
            mine = (True, fn())
        except Exception as e:  # noqa: BLE001 - handed to every rank, then raised
            raised, mine = e, (False, _portable(e))
    outcomes: List[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(outcomes, mine, group=group)
    for index, (ok, value) in enumerate(outcomes):
        if ok:
            continue
        if index == dist.get_rank(group) and raised is not None:
            raise raised  # the original, with its traceback
        value.add_note(f"(raised on rank {dist.get_global_rank(group, index) if group is not None else index})")
        raise value
    return [value for _, value in outcomes]


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives a pickle round trip, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - anything pickle cannot take or rebuild
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def destroy_distributed() -> None:
    """Tear down megatron's parallel state and the process group (tests, clean exits)."""
    from megatron.core import parallel_state

    global _SPLIT
    _SPLIT = None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
