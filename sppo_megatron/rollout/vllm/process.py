"""The vLLM engine inside the trainer's process: what importing and starting it does to the process,
and undoing it.

The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set by contract.VllmAPI): no child
process. What vLLM does to the process, and what we do:
- importing vllm and starting the engine rewrite environment variables, some of the trainer's
  (LOCAL_WORLD_SIZE, LD_PRELOAD, LD_LIBRARY_PATH, TORCHINDUCTOR_*): every variable outside
  vLLM's own VLLM_* namespace is restored after the start;
- the CPU worker replaces `torch.set_num_threads` with a function that refuses, and the engine
  drops torch to one thread "for serving": the function and the thread count are restored after
  the start and after every call;
- the worker reseeds `random`, numpy and torch (`set_random_seed`): their states are restored,
  so the trainer's random streams do not depend on the engine;
- the external launcher reads the rank from RANK: on the rollout ranks of a split job (their own
  default group) RANK is set to the rank in that group while the engine starts;
- the engine core's teardown ends in `destroy_distributed_environment`, which destroys torch's
  default process group, the trainer's: `shutdown()` runs it with that function narrowed to
  vLLM's own groups when the default group existed before the engine (vLLM's own one, created
  when there was none, goes with it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Any, Callable, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from sppo_megatron.rollout.vllm.contract import RELOAD_LOGGER, RELOAD_MISSING_MESSAGE

logger = logging.getLogger(__name__)

_OWN_ENV_PREFIX = "VLLM_"


class _ThreadState:
    """torch's thread count and its `set_num_threads` function."""

    def __init__(self) -> None:
        self.set_num_threads = torch.set_num_threads
        self.threads = torch.get_num_threads()

    def restore(self) -> None:
        torch.set_num_threads = self.set_num_threads
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


class HostedEngine:
    """The process state around the engine's start and calls (see module docstring)."""

    def __init__(self) -> None:
        #: whether torch's default process group existed before the engine (the trainer's)
        self.owns_default_group = False

    @contextlib.contextmanager
    def starting(self, group_rank: Optional[int]) -> Iterator[None]:
        """Start the engine inside this block; on the way out, however it ends, the environment
        (but VLLM_*), torch's threads and the random states are as they were."""
        env, threads = dict(os.environ), _ThreadState()
        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.owns_default_group = not dist.is_initialized()
        if group_rank is not None:
            os.environ["RANK"] = str(group_rank)
        try:
            yield
        finally:
            for key in [k for k in os.environ if k not in env and not k.startswith(_OWN_ENV_PREFIX)]:
                del os.environ[key]
            for key, value in env.items():
                if os.environ.get(key) != value and not key.startswith(_OWN_ENV_PREFIX):
                    os.environ[key] = value
            threads.restore()
            random.setstate(rng[0])
            np.random.set_state(rng[1])
            torch.set_rng_state(rng[2])
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Around every engine call: torch's threads come back afterwards."""
        threads = _ThreadState()
        try:
            yield
        finally:
            threads.restore()

    def shutdown(self, engine_shutdown: Callable[[], None], parallel_state: Any) -> None:
        """Run the engine core's teardown; unless the engine created the default process group,
        `destroy_distributed_environment` is narrowed to vLLM's own world group."""
        original = parallel_state.destroy_distributed_environment

        def destroy_vllm_world_only() -> None:
            world = parallel_state._WORLD
            if world is not None:
                world.destroy()
            parallel_state._WORLD = None
            parallel_state._NODE_COUNT = None

        if not self.owns_default_group:
            parallel_state.destroy_distributed_environment = destroy_vllm_world_only
        try:
            with self.calling():
                engine_shutdown()
        finally:
            parallel_state.destroy_distributed_environment = original


class MissingWeights(logging.Handler):
    """Collects the parameters vLLM's in-place reload reports as not filled by the stream (it only
    logs them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if RELOAD_MISSING_MESSAGE in message:
            self.messages.append(message)

    @contextlib.contextmanager
    def watching(self) -> Iterator["MissingWeights"]:
        reload_logger = logging.getLogger(RELOAD_LOGGER)
        reload_logger.addHandler(self)
        try:
            yield self
        finally:
            reload_logger.removeHandler(self)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
