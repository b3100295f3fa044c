"""SGLang rollout engine (`rollout.engine: sglang`): an offline `sglang.Engine` colocated on the
training GPUs, one per rollout group of `rollout.tp` consecutive ranks, hosted by the group's
first rank (tp_size = rollout.tp, base_gpu_id = that rank's GPU; rank host+r sits on GPU
base+r, the GPU of engine TP rank r). Without CUDA the same class runs SGLang's CPU backend
(contract.server_args; platform/sglang_cpu.py): tests and laptops.

Life cycle (see docs/rollout.md; the asleep/awake and weights-valid rules are RolloutEngine's):
- start once, with the HF config and `load_format="dummy"` (random weights), memory saver on
  (GPU), `mem_fraction_static = rollout.mem_fraction`, `skip_tokenizer_init` (we pass token
  ids); what the start does to this process is undone by process.EngineProcesses;
- every step: `update_weights(stream)` resumes the weights (if released), opens a weight-update
  session (`begin_weight_update`), pushes the stream in buckets of `rollout.sync_bucket_mb`
  (weight_push.py: CUDA IPC, or shared memory on the CPU), then `end_weight_update`, `flush_cache`;
- `wake` resumes the KV cache and CUDA graphs; `generate` reseeds the sampler (seeding.py) and
  generates the host's share, and the results are gathered to every rank in order;
- `sleep` releases everything (on a GPU the weights are discarded: the next sync refills them;
  on the CPU release and resume are called all the same and free nothing).
Every (ok, message) result is checked; a refusal raises RuntimeError naming the call. Every
Engine call goes through `_call`, against contract.ENGINE_CALLS.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch

from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import free_port
from sppo_megatron.rollout.base import (
    CPU_KV_CACHE_MB,
    EngineCapabilities,
    EngineGroups,
    RolloutEngine,
    RolloutSample,
    SamplingParams,
    kv_bytes_per_token,
    resolve_eos_token_ids,
    sample_seed,
)
from sppo_megatron.rollout.sglang.contract import (
    COLOCATED_BATCH_ENV,
    ENGINE_CALLS,
    MEMORY_TAGS,
    THREADS_BIND_ENV,
    SglangAPI,
    check_result,
    cpu_threads_binding,
    parse_output,
    sampling_params_dict,
    server_args,
)
from sppo_megatron.rollout.sglang.process import (
    EngineProcesses,
    engine_died_handler,
    remove_loop_signal_handlers,
    wait_memory_settled,
)
from sppo_megatron.rollout.sglang.seeding import RESEED_LOADER, SEED_TENSOR
from sppo_megatron.rollout.sglang.weight_push import LOAD_FORMATS, push_buckets
from sppo_megatron.sync.buckets import mb_to_bytes

logger = logging.getLogger(__name__)


class SglangRolloutEngine(RolloutEngine):
    """Colocated SGLang engine per rollout group (see module docstring)."""

    name = "sglang"
    capabilities = EngineCapabilities(returns_logprobs=True, keeps_weights_asleep=False)

    def __init__(
        self,
        hf_dir: str,
        *,
        tp: int = 1,
        mem_fraction: float = 0.5,
        kv_cache_mb: int = 0,
        dtype: torch.dtype = torch.bfloat16,
        bucket_mb: float = 512,
        placement: Optional[EngineGroups] = None,
        seed: int = 1234,
        eos_token_ids: Optional[Sequence[int]] = None,
        log_dir: Optional[str] = None,
        sync_mode: str = "flattened_bucket",
        engine_kwargs: Optional[Dict[str, Any]] = None,
        local_device: Optional[int] = None,
    ) -> None:
        eos = resolve_eos_token_ids(hf_dir) if eos_token_ids is None else tuple(eos_token_ids)
        kv_cache_mb = kv_cache_mb or (CPU_KV_CACHE_MB if not torch.cuda.is_available() else 0)
        super().__init__(placement, eos, dtype)
        pl = self.placement
        if pl.group_size != tp:
            raise UserError(
                f"rollout.tp={tp} needs {tp} ranks per engine (one GPU each) but the rollout group has "
                f"{pl.group_size}; launch with torchrun --nproc-per-node >= {tp}"
            )
        if sync_mode not in LOAD_FORMATS:
            raise ValueError(f"sync_mode must be one of {sorted(LOAD_FORMATS)}, got {sync_mode}")
        self.api = SglangAPI()
        self.hf_dir = hf_dir
        self.tp = tp
        self.bucket_bytes = mb_to_bytes(bucket_mb)
        self.sync_mode = sync_mode
        self.device = (
            torch.device("cuda", torch.cuda.current_device() if local_device is None else local_device)
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        # without the memory saver (CPU) sleep frees nothing, and the weights stay
        self.capabilities = EngineCapabilities(returns_logprobs=True, keeps_weights_asleep=self.device.type == "cpu")
        self.log_path = os.path.join(log_dir or tempfile.gettempdir(), f"sglang_engine_rank{pl.rank}.log")
        self.processes = EngineProcesses(pl.rank, self.log_path)
        self.engine: Any = None
        self._released: Set[str] = set()
        self._read_supported = True
        self._closed = False
        if self.device.type == "cpu" and tp > 1:
            # Host tensors travel as file descriptors that the engine's scheduler, a child of the
            # host, fetches from each member's multiprocessing resource sharer, which only answers
            # a process holding the same authkey: the members take the host's.
            mp.current_process().authkey = pl.on_host(lambda: bytes(mp.current_process().authkey))
        # the host starts the engine; the group's members learn whether it came up
        pl.on_host(
            lambda: self._start(
                server_args(
                    hf_dir,
                    tp=tp,
                    device=self.device,
                    mem_fraction=mem_fraction,
                    max_total_tokens=kv_cache_mb * 2**20 // kv_bytes_per_token(hf_dir, dtype),
                    dtype=dtype,
                    seed=seed,
                    nccl_port=free_port(),
                    sigquit_handler=engine_died_handler,
                    extra=engine_kwargs,
                )
            )
        )

    def _start(self, kwargs: Dict[str, Any]) -> None:
        os.environ[COLOCATED_BATCH_ENV] = "1"  # read by the scheduler at start, by this process per call
        spawn_env = {}
        if self.device.type == "cpu" and self.tp > 1:
            spawn_env[THREADS_BIND_ENV] = cpu_threads_binding(self.tp, sorted(os.sched_getaffinity(0)))
        with self.processes.hosting(spawn_env):
            with self.processes.stderr_to_log():
                self.engine = self.api.Engine(**kwargs)
            atexit.unregister(self.engine.shutdown)
            atexit.register(self.shutdown)
            # The first request creates the tokenizer manager's event loop, which installs asyncio
            # SIGTERM/SIGQUIT handlers: trigger it now; hosting() takes the signals back.
            self._checked("flush_cache")
            remove_loop_signal_handlers(getattr(getattr(self.engine, "tokenizer_manager", None), "event_loop", None))
            self.processes.track(self._call("get_all_child_pids") or [])
        logger.info(
            "sglang engine up on rank %d (tp=%d, pids %s, log %s)",
            self.placement.rank,
            self.tp,
            sorted(self.processes.pids),
            self.log_path,
        )

    def _call(self, method: str, **kwargs: Any) -> Any:
        """Every Engine call goes through here (contract-checked names and keywords)."""
        allowed = ENGINE_CALLS.get(method)
        if allowed is None or not set(kwargs) <= set(allowed):
            raise AssertionError(f"undeclared SGLang call {method}({sorted(kwargs)}): add it to ENGINE_CALLS")
        self.processes.check_alive()
        try:
            with self.processes.watching(self.engine.loop):
                return getattr(self.engine, method)(**kwargs)
        except Exception as exc:
            self.processes.check_alive()  # a dead engine is named as such, whatever the call saw
            if isinstance(exc, RuntimeError):
                raise
            raise RuntimeError(
                f"SGLang {method} on rank {self.placement.rank} failed: {exc} (log: {self.log_path})"
            ) from exc

    def _checked(self, method: str, **kwargs: Any) -> Tuple[bool, str]:
        return check_result(method, self._call(method, **kwargs), f" (engine on rank {self.placement.rank})")

    # ---- generation ---------------------------------------------------------------------
    def _generate_local(
        self, prompts: List[List[int]], sampling: SamplingParams, n: int, first_prompt_index: int
    ) -> List[RolloutSample]:
        """The n samples of a prompt go as n requests: SGLang's own n > 1 first caches each prompt in a
        round trip of its own and then hands the samples to the scheduler one by one, while requests
        sent in one call reach it together (COLOCATED_BATCH_ENV). With the sampler reseeded first,
        equal calls give equal samples, in a resumed run too."""
        if not sampling.greedy:
            self._reseed(sample_seed(sampling.seed, first_prompt_index * n))
        outs = self._call(
            "generate",
            input_ids=[list(p) for p in prompts for _ in range(n)],
            sampling_params=sampling_params_dict(sampling, self.stop_ids(sampling)),
            return_logprob=True,
        )
        if isinstance(outs, dict):
            outs = [outs]
        if len(outs) != len(prompts) * n:
            raise RuntimeError(f"SGLang returned {len(outs)} results for {len(prompts)} prompts x n={n}")
        return [parse_output(o, first_prompt_index + k // n, k % n) for k, o in enumerate(outs)]

    def _reseed(self, seed: int) -> None:
        """Seed the scheduler's sampler (seeding.py: through the custom weight loader it allows)."""
        self._checked("begin_weight_update")
        try:
            self._checked(
                "update_weights_from_tensor",
                named_tensors=[(SEED_TENSOR, torch.tensor([seed], dtype=torch.int64))],
                load_format=RESEED_LOADER,
                flush_cache=False,
            )
        finally:
            self._checked("end_weight_update")

    # ---- memory -------------------------------------------------------------------------
    def _release_tags(self, tags: Sequence[str]) -> None:
        todo = [t for t in tags if t not in self._released]
        if todo:
            self._checked("release_memory_occupation", tags=todo)
            self._released.update(todo)

    def _resume_tags(self, tags: Sequence[str]) -> None:
        todo = [t for t in MEMORY_TAGS if t in tags and t in self._released]
        if todo:
            self._checked("resume_memory_occupation", tags=todo)
            self._released.difference_update(todo)

    def _wait_idle(self, timeout: float = 60.0) -> None:
        """Until the scheduler is idle: it answers a generate call before it has retired the call's
        last batch, and release_memory_occupation asserts idleness (an assertion that kills the
        scheduler). flush_cache refuses, harmlessly, until then."""
        deadline = time.monotonic() + timeout
        while not check_result("flush_cache", self._call("flush_cache"), tolerate_refusal=True)[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"SGLang engine on rank {self.placement.rank} still busy after {timeout:.0f}s")
            time.sleep(0.01)

    def _release(self) -> None:
        """Release weights, KV cache and CUDA graphs (only what is still held), once idle."""
        self.placement.on_host(lambda: (self._wait_idle(), self._release_tags(MEMORY_TAGS)))
        self._released.update(MEMORY_TAGS)
        wait_memory_settled(self.device)

    def _resume(self) -> None:
        """Resume what is released (the weights only hold data again after the next sync)."""
        self.placement.on_host(lambda: self._resume_tags(MEMORY_TAGS))
        self._released.clear()

    # ---- weights ------------------------------------------------------------------------
    def _load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Push the export stream; collective over the rollout group (every member iterates the
        same stream in lockstep, as the bridge's export is collective)."""
        self.placement.on_host(lambda: self._resume_tags(("weights",)))
        self._released.discard("weights")
        self.placement.on_host(lambda: self._checked("begin_weight_update"))
        load_format = LOAD_FORMATS[self.sync_mode]
        try:
            push_buckets(
                named_tensors,
                api=self.api,
                placement=self.placement,
                mode=self.sync_mode,
                bucket_bytes=self.bucket_bytes,
                dtype=self.dtype,
                device=self.device,
                send=lambda payload: self._checked(
                    "update_weights_from_tensor", named_tensors=payload, load_format=load_format, flush_cache=False
                ),
            )
        except BaseException:
            if self.placement.is_host:
                self._close_session_after_failure()
            raise
        self.placement.on_host(self._finish_update)
        if torch.cuda.is_available():
            torch.cuda.ipc_collect()

    def _close_session_after_failure(self) -> None:
        try:
            self._call("end_weight_update")
        except RuntimeError as exc:  # _call reports every engine failure so; the push's error goes on
            logger.warning("sglang end_weight_update after a failed push on rank %d: %s", self.placement.rank, exc)

    def _finish_update(self) -> None:
        self._checked("end_weight_update")
        if "kv_cache" not in self._released:
            self._checked("flush_cache")

    def read_weight(self, name: str, rows: int = 4) -> Optional[torch.Tensor]:
        """get_weights_by_name on the host (first `rows` rows); None where unsupported (Qwen2/3
        in 0.5.23) or on non-host ranks."""
        if not self.placement.is_host or not self._read_supported or not self.weights_valid:
            return None
        try:
            value = self._call("get_weights_by_name", name=name, truncate_size=rows)
        except RuntimeError as exc:
            logger.warning("sglang get_weights_by_name(%s) failed (%s); post-sync check disabled", name, exc)
            value = None
        if value is None:
            self._read_supported = False
            return None
        return torch.as_tensor(value, dtype=torch.float32)

    # ---- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the engine, killing only the engine's own processes (SGLang's shutdown would
        SIGKILL every child of the trainer)."""
        if self._closed:
            return
        self._closed = True
        if self.engine is None:
            return
        try:
            self.processes.shutdown(self.engine.shutdown, self.api.engine_module)
        finally:
            self.engine = None
            atexit.unregister(self.shutdown)
