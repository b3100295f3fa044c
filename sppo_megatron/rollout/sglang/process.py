"""The SGLang engine's processes, seen from the trainer that hosts them.

What the Engine constructor and its first request do to the calling process, and what we do:
- set CUDA_DEVICE_MAX_CONNECTIONS=8, NCCL_CUMEM_ENABLE/NCCL_NVLS_ENABLE (if unset): restored;
- its processes must not inherit the launcher's rendezvous variables: under torchrun,
  TORCHELASTIC_USE_AGENT_STORE makes the scheduler's own process group a client of a store no one
  hosts, and it waits forever. They are removed while the engine processes are spawned;
- force the multiprocessing start method to spawn: restored;
- install SIGQUIT (child died -> kill the whole tree) and, on the first request, asyncio
  SIGTERM/SIGQUIT handlers (which would swallow the trainer's preemption SIGTERM): the engine
  sends its first request inside `hosting()`, the loop's handlers are removed, and on the way out
  the previous SIGTERM/SIGINT handlers come back unconditionally (a lost SIGTERM handler breaks
  preemption) and SIGQUIT gets `engine_died_handler`;
- `expandable_segments` is removed from PYTORCH_CUDA_ALLOC_CONF while the engine processes are
  spawned (the memory saver cannot pause such allocations), then restored for the trainer;
- the engine processes' stderr goes to `<log_dir>/sglang_engine_rank<R>.log`;
- SGLang's atexit shutdown runs `kill_process_tree(os.getpid())`, which SIGKILLs EVERY child of
  the trainer (reward workers, checkpoint writers): `shutdown()` runs it with that function
  narrowed to the engine's own processes (tracked from the start).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Set

import torch

from sppo_megatron.errors import RolloutEngineDied
from sppo_megatron.rollout.sglang.contract import ENGINE_MODULE_PATCHED

logger = logging.getLogger(__name__)

#: environment variables the Engine constructor sets in the calling process
_ENV_RESTORED = ("CUDA_DEVICE_MAX_CONNECTIONS", "NCCL_CUMEM_ENABLE", "NCCL_NVLS_ENABLE", "NCCL_GRAPH_MIXING_SUPPORT")
_ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: what torchrun (and srun's launch through platform.distributed) sets for the trainer's own rendezvous
_LAUNCHER_ENV = (
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
)

#: who hosts the engine of this process (for the message of engine_died_handler)
_HOST = {"rank": 0, "log": "?"}


def engine_died_handler(signum=None, frame=None) -> None:  # noqa: ARG001 - signal handler
    """SIGQUIT handler: SGLang signals its host when one of its processes fails, and its own handler
    would kill the whole process tree, trainer included. This one only says so: the next engine
    call, or the one waiting (`EngineProcesses.watching`), fails with RolloutEngineDied. Raising
    here would not do: under the engine's event loop the signal runs inside a loop callback, and
    the loop only logs an exception raised there. Module-level so that it pickles by reference:
    ServerArgs, which carries it, is pickled to the schedulers."""
    logger.warning(
        "the SGLang engine hosted by rank %d reported a failed process (SIGQUIT); see its log %s",
        _HOST["rank"],
        _HOST["log"],
    )


def strip_expandable_segments(conf: Optional[str]) -> Optional[str]:
    """PYTORCH_CUDA_ALLOC_CONF without expandable_segments (None when nothing is left)."""
    if not conf:
        return conf
    kept = [p for p in conf.split(",") if p.strip() and not p.strip().startswith("expandable_segments")]
    return ",".join(kept) or None


def _set_env(key: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _children_pids() -> Set[int]:
    """Direct children of this process, except multiprocessing's shared resource tracker."""
    import psutil

    out = set()
    for proc in psutil.Process().children(recursive=False):
        try:
            if "resource_tracker" in " ".join(proc.cmdline()):
                continue
        except psutil.Error:  # gone, or not ours to read: still a child we may have to kill
            pass
        out.add(proc.pid)
    return out


def _kill_pids(pids: Set[int], wait_timeout: Optional[float]) -> None:
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs.extend(proc.children(recursive=True))
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    if wait_timeout:
        psutil.wait_procs(procs, timeout=wait_timeout)


def _zmq_contexts() -> Set[Any]:
    """The live pyzmq contexts of this process (SGLang's engine and tokenizer manager make theirs)."""
    import zmq

    return {obj for obj in gc.get_objects() if issubclass(type(obj), zmq.Context) and not obj.closed}


def _abandon(pids: Set[int], contexts: Set[Any]) -> None:
    """What a failed start leaves: the processes it spawned (a detokenizer outlives a scheduler that
    failed) and its zmq contexts, closed without lingering (collected later, they would wait
    forever to deliver to a peer that is gone, and so would this process at exit)."""
    _kill_pids(pids, 30)
    for context in contexts:
        context.destroy(linger=0)


def wait_memory_settled(device: torch.device, timeout: float = 5.0) -> None:
    """release_memory_occupation may return before the memory is free: poll until the free
    memory of this GPU stops growing."""
    if device.type != "cuda":
        return
    deadline = time.monotonic() + timeout
    last = torch.cuda.mem_get_info(device)[0]
    while time.monotonic() < deadline:
        time.sleep(0.05)
        free = torch.cuda.mem_get_info(device)[0]
        if free <= last:
            return
        last = free


class EngineProcesses:
    """The engine processes started by this rank: the process state around their start, their
    liveness, and a shutdown that kills only them (see module docstring)."""

    def __init__(self, rank: int, log_path: str) -> None:
        self.rank = rank
        self.log_path = log_path
        self.pids: Set[int] = set()

    @contextlib.contextmanager
    def hosting(self, spawn_env: Optional[Dict[str, str]] = None) -> Iterator[None]:
        """Start the engine and send its first request inside this block (without the launcher's
        rendezvous variables, with `spawn_env`; if it fails, what it spawned is killed). On the way out, however it ends, the environment, start method and
        signal handlers are as they were, except that
        SIGQUIT reports the engine's death once it started; the engine's new children are tracked."""
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        _HOST.update(rank=self.rank, log=self.log_path)
        spawn_env = spawn_env or {}
        env = {k: os.environ.get(k) for k in _ENV_RESTORED + _LAUNCHER_ENV + (_ALLOC_CONF,) + tuple(spawn_env)}
        method = mp.get_start_method(allow_none=True)
        handlers = {s: signal.getsignal(s) for s in _SIGNALS}
        before, contexts = _children_pids(), _zmq_contexts()
        _set_env(_ALLOC_CONF, strip_expandable_segments(env[_ALLOC_CONF]))
        for key in _LAUNCHER_ENV:
            os.environ.pop(key, None)
        os.environ.update(spawn_env)
        started = False
        try:
            yield
            self.pids |= _children_pids() - before
            started = True
        except BaseException:
            _abandon(_children_pids() - before, _zmq_contexts() - contexts)
            raise
        finally:
            try:
                for key, value in env.items():
                    _set_env(key, value)
                if mp.get_start_method(allow_none=True) != method:
                    mp.set_start_method(method, force=True)  # None resets to the platform default
            finally:  # the signals above all: a lost SIGTERM handler breaks preemption
                handlers[signal.SIGQUIT] = engine_died_handler if started else handlers[signal.SIGQUIT]
                for sig, handler in handlers.items():
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def stderr_to_log(self) -> Iterator[None]:
        """Point fd 2 at the log while the engine processes are spawned (they inherit it); a
        failure names the log."""
        sys.stderr.flush()
        saved = os.dup(2)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(fd, 2)
            yield
        except Exception as exc:
            raise RuntimeError(
                f"starting the SGLang engine on rank {self.rank} failed: {exc} (log: {self.log_path})"
            ) from exc
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(fd)

    def track(self, pids: Iterable[int]) -> None:
        """Add the processes the engine reports as its own."""
        self.pids |= set(pids)

    def _dead_pid(self) -> Optional[int]:
        import psutil

        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                pass
            return pid
        return None

    def check_alive(self) -> None:
        """RolloutEngineDied naming the rank and log if one of the engine's processes is gone."""
        pid = self._dead_pid()
        if pid is not None:
            raise RolloutEngineDied(
                f"the SGLang engine hosted by rank {self.rank} died: engine process {pid} "
                f"exited; see its log {self.log_path}"
            )

    @contextlib.contextmanager
    def watching(self, loop: Any, interval: float = 0.5) -> Iterator[None]:
        """While an engine call waits on the engine's event loop `loop`, stop that loop if an engine
        process dies: the call then fails instead of waiting forever for an answer. (The SIGQUIT
        a dying scheduler sends cannot be relied on here: raised inside an event-loop callback,
        asyncio logs the exception and keeps waiting.)"""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(interval):
                if self._dead_pid() is not None:
                    loop.call_soon_threadsafe(loop.stop)
                    return

        watcher = threading.Thread(target=watch, name="sglang-engine-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()

    def shutdown(self, engine_shutdown: Callable[[], None], engine_module: Any) -> None:
        """Run SGLang's shutdown with `kill_process_tree(<this process>)` narrowed to the engine's
        own processes (other parents pass through); if it fails, kill them directly."""
        original = getattr(engine_module, ENGINE_MODULE_PATCHED, None) if engine_module is not None else None
        own = set(self.pids)

        def kill_engine_only(parent_pid, include_parent=True, skip_pid=None, wait_timeout=60):
            if parent_pid in (None, os.getpid()):
                _kill_pids(own, wait_timeout)
            elif original is not None:
                original(parent_pid, include_parent=include_parent, skip_pid=skip_pid, wait_timeout=wait_timeout)

        if original is not None:
            setattr(engine_module, ENGINE_MODULE_PATCHED, kill_engine_only)
        try:
            engine_shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down; report and go on
            logger.warning("sglang engine shutdown on rank %d: %s", self.rank, exc)
            _kill_pids(own, 30)
        finally:
            if original is not None:
                setattr(engine_module, ENGINE_MODULE_PATCHED, original)


def remove_loop_signal_handlers(loop: Any) -> None:
    """Remove the asyncio SIGTERM/SIGQUIT handlers the engine's event loop installed (None: no
    loop yet). `hosting()` puts the trainer's handlers back whether this works or not: a loop
    that refuses (ValueError off the main thread, RuntimeError when closed) only keeps a stale
    record of a handler that is no longer installed."""
    if loop is None:
        return
    for sig in (signal.SIGTERM, signal.SIGQUIT):
        try:
            loop.remove_signal_handler(sig)
        except (ValueError, RuntimeError) as exc:
            logger.warning(
                "sglang engine loop kept its %s handler record (%s); the trainer's handler is restored all the same",
                signal.Signals(sig).name,
                exc,
            )
