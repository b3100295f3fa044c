"""SGLang rollout engine (`rollout.engine: sglang`): an offline `sglang.Engine` colocated on the
training GPUs, one per rollout group of `rollout.tp` consecutive ranks, hosted by the group's
first rank (tp_size = rollout.tp, base_gpu_id = that rank's GPU; rank host+r sits on GPU
base+r, the GPU of engine TP rank r).

Life cycle (see docs/rollout.md):
- start once, with the HF config and `load_format="dummy"` (random weights), memory saver on,
  `mem_fraction_static = rollout.mem_fraction`, `skip_tokenizer_init` (we pass token ids);
- every step: `update_weights(stream)` resumes the weights (if released), opens a weight-update
  session (`begin_weight_update`), pushes the stream in flattened single-dtype buckets of
  `rollout.sync_bucket_mb` (`FlattenedTensorBucket`, `load_format="flattened_bucket"`): each
  rank of the group serializes its own GPU copy of the bucket (CUDA IPC handle, after
  `monkey_patch_torch_reductions()`), the host gathers the handles (`gather_object` on the
  group's gloo group) and sends one payload per engine TP rank; every rank keeps its bucket alive
  until the host reports the call done, then `torch.cuda.ipc_collect()`. Then
  `end_weight_update`, `flush_cache`;
- `generate` resumes the KV cache / CUDA graphs, generates the host's share, and the results
  are gathered to every rank in order;
- `sleep` releases everything (weights are discarded: the next sync refills them).
Every (ok, message) result is checked; a refusal raises RuntimeError naming the call.

What the constructor does to the calling process, and what we do about it:
- sets CUDA_DEVICE_MAX_CONNECTIONS=8, NCCL_CUMEM_ENABLE/NCCL_NVLS_ENABLE (if unset): restored;
- forces the multiprocessing start method to spawn: restored;
- registers `atexit(engine.shutdown)`, whose `kill_process_tree(os.getpid())` SIGKILLs EVERY
  child of the trainer (reward workers, checkpoint writers): unregistered; our `shutdown()` runs
  SGLang's shutdown with `kill_process_tree` narrowed to the engine's own processes;
- installs SIGQUIT (child died -> kill the whole tree) and, on the first request, asyncio
  SIGTERM/SIGQUIT handlers (which would swallow the trainer's preemption SIGTERM): we force the
  first request at start, remove them, restore the previous SIGTERM/SIGINT handlers and install
  a SIGQUIT handler that raises "engine died" naming the rank and log file;
- `expandable_segments` is removed from PYTORCH_CUDA_ALLOC_CONF while the engine processes are
  spawned (the memory saver cannot pause such allocations), then restored for the trainer;
- the engine processes' stderr goes to `<log_dir>/sglang_engine_rank<R>.log`.

sglang is imported lazily: this module imports on a CPU-only machine without sglang.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist

from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import free_port
from sppo_megatron.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutEngine,
    RolloutPlacement,
    RolloutSample,
    SamplingParams,
    resolve_eos_token_ids,
)
from sppo_megatron.sync.buckets import bucketize, mb_to_bytes

logger = logging.getLogger(__name__)

# ---- the adapter's contract with SGLang (checked against the pinned source by the tests) ----

#: sglang versions this adapter was written against: [min, max)
SUPPORTED_SGLANG_MIN = (0, 5, 23)
SUPPORTED_SGLANG_MAX = (0, 5, 24)
SUPPORTED_SGLANG_RANGE = ">=0.5.23,<0.5.24"
SKIP_VERSION_CHECK_ENV = "SPPO_SGLANG_SKIP_VERSION_CHECK"

#: module paths of the symbols we import
SGLANG_SYMBOLS: Dict[str, str] = {
    "Engine": "sglang.srt.entrypoints.engine",
    "FlattenedTensorBucket": "sglang.srt.weight_sync.tensor_bucket",
    "MultiprocessingSerializer": "sglang.srt.utils.common",
    "monkey_patch_torch_reductions": "sglang.srt.utils.patch_torch",
    "LocalSerializedTensor": "sglang.srt.model_executor.model_runner_components.weight_updater",
}

#: module-level name of the engine module that shutdown() narrows to the engine's own processes
ENGINE_MODULE_PATCHED = "kill_process_tree"

#: Engine methods we call and the keyword arguments we pass to each
ENGINE_CALLS: Dict[str, Tuple[str, ...]] = {
    "generate": ("input_ids", "sampling_params", "return_logprob"),
    "begin_weight_update": (),
    "end_weight_update": (),
    "update_weights_from_tensor": ("named_tensors", "load_format", "flush_cache"),
    "flush_cache": (),
    "release_memory_occupation": ("tags",),
    "resume_memory_occupation": ("tags",),
    "get_weights_by_name": ("name", "truncate_size"),
    "get_all_child_pids": (),
    "shutdown": (),
}

#: sampling_params keys we send
SAMPLING_KEYS: Tuple[str, ...] = ("max_new_tokens", "temperature", "top_p", "top_k", "n", "stop_token_ids")

#: keys of the flattened-bucket payload the scheduler reads
FLATTENED_PAYLOAD_KEYS: Tuple[str, ...] = ("flattened_tensor", "metadata")

#: memory tags of release/resume_memory_occupation
MEMORY_TAGS: Tuple[str, ...] = ("weights", "kv_cache", "cuda_graph")

#: environment variables the Engine constructor sets in the calling process
_ENV_RESTORED = ("CUDA_DEVICE_MAX_CONNECTIONS", "NCCL_CUMEM_ENABLE", "NCCL_NVLS_ENABLE", "NCCL_GRAPH_MIXING_SUPPORT")


def parse_version(text: str) -> Tuple[int, ...]:
    parts: List[int] = []
    for piece in str(text).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_sglang_version(version: str) -> None:
    """UserError unless SUPPORTED_SGLANG_MIN <= version < SUPPORTED_SGLANG_MAX (or the env
    override is set)."""
    if os.environ.get(SKIP_VERSION_CHECK_ENV) == "1":
        return
    v = parse_version(version)
    if not (SUPPORTED_SGLANG_MIN <= v < SUPPORTED_SGLANG_MAX):
        raise UserError(
            f"sglang {version} is not supported by the rollout adapter (needs sglang{SUPPORTED_SGLANG_RANGE}, "
            "the version its API contract was checked against). Install it with `pip install -e .[sglang]` "
            f"or use the image in docker/; set {SKIP_VERSION_CHECK_ENV}=1 to try anyway."
        )


class SglangAPI:
    """The sglang symbols the adapter uses, imported lazily (tests substitute a fake)."""

    def __init__(self) -> None:
        try:
            import sglang  # noqa: F401
        except ImportError as exc:
            raise UserError(
                f"rollout.engine=sglang but sglang is not importable ({exc}). Install it with "
                "`pip install -e .[sglang]` (GPU machine, CUDA 12) or use the image built from docker/."
            ) from exc
        import importlib

        self.version = getattr(sys.modules["sglang"], "__version__", "0")
        check_sglang_version(self.version)
        for name, module in SGLANG_SYMBOLS.items():
            setattr(self, name, getattr(importlib.import_module(module), name))
        self.engine_module = importlib.import_module(SGLANG_SYMBOLS["Engine"])


def sglang_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang") is not None


def check_result(call: str, result: Any, where: str = "") -> Tuple[bool, str]:
    """Normalise an SGLang result and raise RuntimeError on a refusal.

    Accepted shapes: (ok, message) tuples/lists, objects with .success/.message (e.g.
    FlushCacheReqOutput), bools, and None (release/resume_memory_occupation return None in
    0.5.23: they raise in the scheduler instead)."""
    if result is None:
        return True, ""
    if isinstance(result, bool):
        ok, msg = result, ""
    elif isinstance(result, (tuple, list)) and len(result) >= 1 and isinstance(result[0], bool):
        ok, msg = result[0], str(result[1]) if len(result) > 1 else ""
    elif hasattr(result, "success"):
        ok, msg = bool(result.success), str(getattr(result, "message", ""))
    else:
        raise RuntimeError(f"SGLang {call}{where}: unexpected result {result!r}")
    if not ok:
        raise RuntimeError(f"SGLang {call}{where} refused: {msg}")
    return ok, msg


def strip_expandable_segments(conf: Optional[str]) -> Optional[str]:
    """PYTORCH_CUDA_ALLOC_CONF without expandable_segments (None when nothing is left)."""
    if not conf:
        return conf
    kept = [p for p in conf.split(",") if p.strip() and not p.strip().startswith("expandable_segments")]
    return ",".join(kept) or None


def sampling_params_dict(sampling: SamplingParams, n: int, stop_ids: Sequence[int]) -> Dict[str, Any]:
    """Our SamplingParams -> the sglang sampling_params dict (keys: SAMPLING_KEYS)."""
    params = {
        "max_new_tokens": int(sampling.max_new_tokens),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k) if sampling.top_k > 0 else -1,
        "n": int(n),
        "stop_token_ids": [int(t) for t in stop_ids],
    }
    assert set(params) == set(SAMPLING_KEYS)
    return params


def server_args(
    hf_dir: str, *, tp: int, base_gpu_id: int, mem_fraction: float, dtype: torch.dtype, seed: int,
    nccl_port: int, sigquit_handler: Optional[Callable] = None, extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Keyword arguments of sglang.Engine (ServerArgs fields)."""
    args: Dict[str, Any] = {
        "model_path": hf_dir,
        "load_format": "dummy",
        "dtype": {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype],
        "tp_size": tp,
        "base_gpu_id": base_gpu_id,
        "gpu_id_step": 1,
        "mem_fraction_static": mem_fraction,
        "enable_memory_saver": True,
        "skip_tokenizer_init": True,
        "random_seed": seed,
        "nccl_port": nccl_port,
        "log_level": "warning",
    }
    if sigquit_handler is not None:
        args["custom_sigquit_handler"] = sigquit_handler
    args.update(extra or {})
    return args


def parse_output(out: Dict[str, Any], prompt_index: int, sample_index: int) -> RolloutSample:
    """One sglang generate() result dict -> RolloutSample (stop token kept, like verl)."""
    meta = out.get("meta_info", {})
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type") if isinstance(reason, dict) else str(reason)
    if kind == "abort":
        raise RuntimeError(f"SGLang aborted the request of prompt {prompt_index}: {reason.get('message', reason)}")
    ids = [int(t) for t in out.get("output_ids", [])]
    matched = reason.get("matched") if isinstance(reason, dict) else None
    if kind == "stop" and isinstance(matched, int) and (not ids or ids[-1] != matched):
        raise RuntimeError(f"SGLang stopped on token {matched} but output_ids do not end with it (trimmed?)")
    logprobs = None
    entries = meta.get("output_token_logprobs")
    if entries is not None:
        if len(entries) != len(ids) or any(int(e[1]) != t for e, t in zip(entries, ids)):
            raise RuntimeError("SGLang output_token_logprobs do not line up with output_ids")
        logprobs = [float(e[0]) for e in entries]
    return RolloutSample(prompt_index, sample_index, ids, FINISH_STOP if kind == "stop" else FINISH_LENGTH, logprobs)


#: who hosts the engine of this process (for the message of engine_died_handler)
_HOST = {"rank": 0, "log": "?"}


def engine_died_handler(signum=None, frame=None) -> None:  # noqa: ARG001 - signal handler
    """SIGQUIT handler (SGLang's children send SIGQUIT to the parent when they fail). Module-level
    so that it pickles by reference: ServerArgs, which carries it, is pickled to the schedulers."""
    raise RuntimeError(
        f"the SGLang engine hosted by rank {_HOST['rank']} died: a child process reported a failure "
        f"(SIGQUIT); see its log {_HOST['log']}"
    )


def _children_pids() -> Set[int]:
    """Direct children of this process, except multiprocessing's shared resource tracker."""
    import psutil

    out = set()
    try:
        for proc in psutil.Process().children(recursive=False):
            try:
                if "resource_tracker" in " ".join(proc.cmdline()):
                    continue
            except psutil.Error:
                pass
            out.add(proc.pid)
    except Exception:  # noqa: BLE001 - best effort
        pass
    return out


@contextlib.contextmanager
def _stderr_to(path: Optional[str]):
    """Point fd 2 at `path` while child processes are spawned (they inherit it)."""
    if not path:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


class SglangRolloutEngine(RolloutEngine):
    """Colocated SGLang engine per rollout group (see module docstring)."""

    name = "sglang"
    supports_logprobs = True

    def __init__(
        self,
        hf_dir: str,
        *,
        tp: int = 1,
        mem_fraction: float = 0.5,
        dtype: torch.dtype = torch.bfloat16,
        bucket_mb: float = 512,
        placement: Optional[RolloutPlacement] = None,
        seed: int = 1234,
        eos_token_ids: Optional[Sequence[int]] = None,
        log_dir: Optional[str] = None,
        sync_mode: str = "flattened_bucket",
        api: Any = None,
        engine_kwargs: Optional[Dict[str, Any]] = None,
        local_device: Optional[int] = None,
    ) -> None:
        eos = resolve_eos_token_ids(hf_dir) if eos_token_ids is None else tuple(eos_token_ids)
        super().__init__(placement, eos)
        pl = self.placement
        if pl.group_size != tp:
            raise UserError(
                f"rollout.tp={tp} needs {tp} ranks per engine (one GPU each) but the rollout group has "
                f"{pl.group_size}; launch with torchrun --nproc-per-node >= {tp}"
            )
        if sync_mode not in ("flattened_bucket", "tensor"):
            raise ValueError(f"sync_mode must be flattened_bucket or tensor, got {sync_mode}")
        self.api = api if api is not None else SglangAPI()
        self.hf_dir = hf_dir
        self.tp = tp
        self.dtype = dtype
        self.bucket_bytes = mb_to_bytes(bucket_mb)
        self.sync_mode = sync_mode
        self.device = torch.device("cuda", torch.cuda.current_device() if local_device is None else local_device) \
            if torch.cuda.is_available() else torch.device("cpu")
        self.log_path = os.path.join(log_dir or tempfile.gettempdir(), f"sglang_engine_rank{pl.rank}.log")
        self.engine: Any = None
        self._engine_pids: Set[int] = set()
        self._released: Set[str] = set()
        self._weights_valid = False
        self._read_supported = True
        self._closed = False
        # the host starts the engine; the group's members learn whether it came up
        self._host_do(lambda: self._start(server_args(
            hf_dir, tp=tp, base_gpu_id=self.device.index or 0, mem_fraction=mem_fraction, dtype=dtype,
            seed=seed, nccl_port=free_port(), sigquit_handler=engine_died_handler, extra=engine_kwargs,
        )))

    # ---- process hygiene ----------------------------------------------------------------
    def _start(self, kwargs: Dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        _HOST.update(rank=self.placement.rank, log=self.log_path)
        env_saved = {k: os.environ.get(k) for k in _ENV_RESTORED + ("PYTORCH_CUDA_ALLOC_CONF",)}
        method = mp.get_start_method(allow_none=True)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
        before = _children_pids()
        alloc = strip_expandable_segments(os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
        if alloc is None:
            os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        else:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = alloc
        try:
            with _stderr_to(self.log_path):
                try:
                    self.engine = self.api.Engine(**kwargs)
                except Exception as exc:
                    raise RuntimeError(
                        f"starting the SGLang engine on rank {self.placement.rank} failed: {exc} (log: {self.log_path})"
                    ) from exc
            with contextlib.suppress(Exception):
                atexit.unregister(self.engine.shutdown)
            atexit.register(self.shutdown)
            # The first request creates the tokenizer manager's event loop, which installs asyncio
            # SIGTERM/SIGQUIT handlers: trigger it now and take the signals back.
            self._checked("flush_cache")
            self._restore_signals(handlers)
            self._engine_pids = (_children_pids() - before) | set(self._call("get_all_child_pids") or [])
        finally:
            for key, value in env_saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if mp.get_start_method(allow_none=True) != method:
                mp.set_start_method(method, force=True)  # None resets to the platform default
        logger.info("sglang engine up on rank %d (tp=%d, pids %s, log %s)", self.placement.rank, self.tp,
                    sorted(self._engine_pids), self.log_path)

    def _restore_signals(self, handlers: Dict[int, Any]) -> None:
        loop = getattr(getattr(self.engine, "tokenizer_manager", None), "event_loop", None)
        for sig in (signal.SIGTERM, signal.SIGQUIT):
            with contextlib.suppress(Exception):
                if loop is not None:
                    loop.remove_signal_handler(sig)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                signal.signal(sig, handlers[sig] if handlers[sig] is not None else signal.SIG_DFL)
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGQUIT, engine_died_handler)

    def _died_message(self, what: str) -> str:
        return (f"the SGLang engine hosted by rank {self.placement.rank} died: {what}; "
                f"see its log {self.log_path}")

    def _check_alive(self) -> None:
        if not self._engine_pids:
            return
        import psutil

        for pid in self._engine_pids:
            try:
                proc = psutil.Process(pid)
                alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                alive = False
            if not alive:
                raise RuntimeError(self._died_message(f"engine process {pid} exited"))

    def _call(self, method: str, **kwargs: Any) -> Any:
        """Every Engine call goes through here (contract-checked names and keywords)."""
        allowed = ENGINE_CALLS.get(method)
        if allowed is None or not set(kwargs) <= set(allowed):
            raise AssertionError(f"undeclared SGLang call {method}({sorted(kwargs)}): add it to ENGINE_CALLS")
        self._check_alive()
        try:
            return getattr(self.engine, method)(**kwargs)
        except RuntimeError:
            raise
        except Exception as exc:
            self._check_alive()
            raise RuntimeError(f"SGLang {method} on rank {self.placement.rank} failed: {exc} (log: {self.log_path})") from exc

    def _checked(self, method: str, **kwargs: Any) -> Tuple[bool, str]:
        return check_result(method, self._call(method, **kwargs), f" (engine on rank {self.placement.rank})")

    # ---- group collectives ----------------------------------------------------------------
    def _group_status(self, status: Optional[str]) -> Optional[str]:
        """Host -> group: None = ok, else the error message (everyone raises it)."""
        if self.placement.group_size > 1:
            box = [status]
            dist.broadcast_object_list(box, src=self.placement.host_rank, group=self.placement.rollout_group)
            status = box[0]
        return status

    def _host_do(self, fn: Callable[[], None]) -> None:
        """Run fn on the host, share success/failure with the group."""
        error = None
        if self.placement.is_host:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = f"{type(exc).__name__}: {exc}"
                if self.placement.group_size == 1:
                    raise
        error = self._group_status(error)
        if error is not None:
            raise RuntimeError(error)

    # ---- generation ---------------------------------------------------------------------
    def _generate_local(self, prompts: List[List[int]], sampling: SamplingParams, n: int, first_prompt_index: int) -> List[RolloutSample]:
        if not self._weights_valid:
            raise RuntimeError("SGLang generate before a weight sync (the engine starts with dummy weights and "
                               "sleep() discards them): call update_weights first")
        self._resume([t for t in MEMORY_TAGS if t != "weights"])
        outs = self._call(
            "generate", input_ids=[list(p) for p in prompts],
            sampling_params=sampling_params_dict(sampling, n, self.stop_ids(sampling)), return_logprob=True,
        )
        if isinstance(outs, dict):
            outs = [outs]
        if len(outs) != len(prompts) * n:
            raise RuntimeError(f"SGLang returned {len(outs)} results for {len(prompts)} prompts x n={n}")
        return [parse_output(o, first_prompt_index + k // n, k % n) for k, o in enumerate(outs)]

    # ---- memory -------------------------------------------------------------------------
    def _release(self, tags: Sequence[str]) -> None:
        todo = [t for t in tags if t not in self._released]
        if todo:
            self._checked("release_memory_occupation", tags=todo)
            self._released.update(todo)
            if "weights" in todo:
                self._weights_valid = False

    def _resume(self, tags: Sequence[str]) -> None:
        todo = [t for t in MEMORY_TAGS if t in tags and t in self._released]
        if todo:
            self._checked("resume_memory_occupation", tags=todo)
            self._released.difference_update(todo)

    def sleep(self) -> None:
        """Release weights, KV cache and CUDA graphs (collective over the rollout group)."""
        self._host_do(lambda: self._release(MEMORY_TAGS))
        self._released.update(MEMORY_TAGS)
        self._weights_valid = False
        _wait_memory_settled(self.device)

    def wake(self, tags: Optional[Sequence[str]] = None) -> None:
        """Resume `tags` (None = all). Resuming the weights leaves them invalid until the next
        update_weights (they were discarded)."""
        tags = tuple(MEMORY_TAGS if tags is None else tags)
        self._host_do(lambda: self._resume(tags))
        self._released.difference_update(tags)

    # ---- weights ------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Push the export stream; collective over the rollout group (every member iterates the
        same stream in lockstep, as the bridge's export is collective)."""
        pl = self.placement
        self.wake(("weights",))
        self._host_do(lambda: self._checked("begin_weight_update"))
        try:
            for bucket in bucketize(self._converted(named_tensors), self.bucket_bytes):
                self._push_bucket(bucket)
        except BaseException:
            if pl.is_host:
                with contextlib.suppress(Exception):
                    self._call("end_weight_update")
            raise
        self._host_do(lambda: self._finish_update())
        self._weights_valid = True
        if torch.cuda.is_available():
            torch.cuda.ipc_collect()

    def _finish_update(self) -> None:
        self._checked("end_weight_update")
        if "kv_cache" not in self._released:
            self._checked("flush_cache")

    def _converted(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]):
        for name, tensor in named_tensors:
            t = tensor.detach()
            if t.is_floating_point() and t.dtype != self.dtype:
                t = t.to(self.dtype)
            if t.device != self.device:
                t = t.to(self.device)
            yield name, t.contiguous()

    def _serialize(self, obj: Any) -> Any:
        self.api.monkey_patch_torch_reductions()
        return self.api.MultiprocessingSerializer.serialize(obj)

    def _push_bucket(self, bucket: List[Tuple[str, torch.Tensor]]) -> None:
        pl = self.placement
        keep_alive: List[Any] = []
        if self.sync_mode == "flattened_bucket":
            flat = self.api.FlattenedTensorBucket(named_tensors=bucket)
            keep_alive.append(flat)
            mine = self._serialize(dict(zip(FLATTENED_PAYLOAD_KEYS, (flat.get_flattened_tensor(), flat.get_metadata()))))
        else:
            keep_alive.append(bucket)
            mine = [(name, self._serialize(t)) for name, t in bucket]
        per_rank: List[Any] = [mine]
        if pl.group_size > 1:
            gathered: Optional[List[Any]] = [None] * pl.group_size if pl.is_host else None
            dist.gather_object(mine, gathered, dst=pl.host_rank, group=pl.rollout_group)
            per_rank = gathered or []

        def push() -> None:
            if self.sync_mode == "flattened_bucket":
                payload = per_rank
            else:
                payload = [
                    (name, self.api.LocalSerializedTensor(values=[per_rank[r][i][1] for r in range(len(per_rank))]))
                    for i, (name, _) in enumerate(bucket)
                ]
            self._checked("update_weights_from_tensor", named_tensors=payload, load_format=(
                "flattened_bucket" if self.sync_mode == "flattened_bucket" else None), flush_cache=False)

        # _host_do's broadcast is the "host is done" signal: members keep their bucket alive
        # (keep_alive) until it arrives.
        self._host_do(push)
        del keep_alive, mine

    def read_weight(self, name: str, rows: int = 4) -> Optional[torch.Tensor]:
        """get_weights_by_name on the host (first `rows` rows); None where unsupported (Qwen2/3
        in 0.5.23) or on non-host ranks."""
        if not self.placement.is_host or not self._read_supported or not self._weights_valid:
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
        module = getattr(self.api, "engine_module", None)
        original = getattr(module, ENGINE_MODULE_PATCHED, None) if module is not None else None
        own = set(self._engine_pids)

        def kill_engine_only(parent_pid, include_parent=True, skip_pid=None, wait_timeout=60):
            if parent_pid in (None, os.getpid()):
                _kill_pids(own, wait_timeout)
            elif original is not None:
                original(parent_pid, include_parent=include_parent, skip_pid=skip_pid, wait_timeout=wait_timeout)

        if module is not None and original is not None:
            setattr(module, ENGINE_MODULE_PATCHED, kill_engine_only)
        try:
            self.engine.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down; report and go on
            logger.warning("sglang engine shutdown on rank %d: %s", self.placement.rank, exc)
            _kill_pids(own, 30)
        finally:
            if module is not None and original is not None:
                setattr(module, ENGINE_MODULE_PATCHED, original)
            self.engine = None
            with contextlib.suppress(Exception):
                atexit.unregister(self.shutdown)


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


def _wait_memory_settled(device: torch.device, timeout: float = 5.0) -> None:
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
