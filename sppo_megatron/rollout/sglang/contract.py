"""The adapter's contract with SGLang: the pinned version range, every symbol, Engine call,
keyword, sampling key, payload key and memory tag we use (checked against the pinned source by
tests/test_sglang_contract.py), and the pure translations both ways: our sampling parameters and
engine settings -> SGLang's arguments, SGLang's results and outputs -> ours.

sglang is imported lazily (SglangAPI): this module imports on a CPU-only machine without sglang.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sppo_megatron.errors import UserError
from sppo_megatron.platform import sglang_cpu
from sppo_megatron.platform.dtypes import torch_dtype_name
from sppo_megatron.rollout.base import FINISH_LENGTH, FINISH_STOP, RolloutSample, SamplingParams
from sppo_megatron.rollout.sglang.seeding import RESEED_LOADER

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
SAMPLING_KEYS: Tuple[str, ...] = ("max_new_tokens", "temperature", "top_p", "top_k", "stop_token_ids")

#: keys of the flattened-bucket payload the scheduler reads
FLATTENED_PAYLOAD_KEYS: Tuple[str, ...] = ("flattened_tensor", "metadata")

#: environment switch under which the requests of one generate call reach the scheduler together
#: (SGLang's input blocker for colocated batch generation; read by the scheduler and tokenizer manager)
COLOCATED_BATCH_ENV = "SGLANG_ENABLE_COLOCATED_BATCH_GEN"

#: the CPU cores of each TP rank of an SGLang engine on the CPU ("0-3|4-7"); without it SGLang wants
#: a NUMA node per rank
THREADS_BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"


def cpu_threads_binding(tp: int, cpus: Sequence[int]) -> str:
    """THREADS_BIND_ENV's value: `cpus` split into `tp` contiguous shares (a core shared when
    there are fewer cores than ranks)."""
    cpus = sorted(cpus)
    shares = []
    for r in range(tp):
        share = cpus[r * len(cpus) // tp : (r + 1) * len(cpus) // tp] or [cpus[r % len(cpus)]]
        shares.append(str(share[0]) if len(share) == 1 else f"{share[0]}-{share[-1]}")
    return "|".join(shares)


#: memory tags of release/resume_memory_occupation
MEMORY_TAGS: Tuple[str, ...] = ("weights", "kv_cache", "cuda_graph")


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
        if not torch.cuda.is_available():
            if not sglang_cpu.startup_file_installed():
                raise UserError(
                    "rollout.engine=sglang on the CPU needs SGLang's CPU install: "
                    f"`bash tools/install_cpu_engines.sh --python {sys.executable}`"
                )
            sglang_cpu.enable()  # before sglang is imported
        try:
            import sglang  # noqa: F401
        except ImportError as exc:
            raise UserError(
                f"rollout.engine=sglang but sglang is not importable ({exc}). Install it with "
                "`pip install -e .[sglang]` (GPU machine, CUDA 12) or use the image built from docker/; "
                "on the CPU `bash tools/install_cpu_engines.sh --python PYTHON`."
            ) from exc
        self.version = getattr(sys.modules["sglang"], "__version__", "0")
        check_sglang_version(self.version)
        for name, module in SGLANG_SYMBOLS.items():
            setattr(self, name, getattr(importlib.import_module(module), name))
        self.engine_module = importlib.import_module(SGLANG_SYMBOLS["Engine"])


def sglang_available() -> bool:
    return importlib.util.find_spec("sglang") is not None


def check_result(call: str, result: Any, where: str = "", tolerate_refusal: bool = False) -> Tuple[bool, str]:
    """Normalise an SGLang result and raise RuntimeError on a refusal (unless `tolerate_refusal`).

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
    if not ok and not tolerate_refusal:
        raise RuntimeError(f"SGLang {call}{where} refused: {msg}")
    return ok, msg


def sampling_params_dict(sampling: SamplingParams, stop_ids: Sequence[int]) -> Dict[str, Any]:
    """Our SamplingParams -> the sglang sampling_params dict of one request (keys: SAMPLING_KEYS;
    the engine sends the n samples of a prompt as n requests, see engine.py)."""
    params = {
        "max_new_tokens": int(sampling.max_new_tokens),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k) if sampling.top_k > 0 else -1,
        "stop_token_ids": [int(t) for t in stop_ids],
    }
    assert set(params) == set(SAMPLING_KEYS)
    return params


def server_args(
    hf_dir: str,
    *,
    tp: int,
    device: torch.device,
    mem_fraction: float,
    max_total_tokens: int,
    dtype: torch.dtype,
    seed: int,
    nccl_port: int,
    sigquit_handler: Optional[Callable] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Keyword arguments of sglang.Engine (ServerArgs fields): dummy weights (the first sync fills
    them), token ids in and out, the reseeding loader allowed (seeding.py), no busy wait when idle. On a GPU: the memory
    saver on (sleep frees weights and KV cache), the KV cache sized by `mem_fraction` unless
    `max_total_tokens` is set. On the CPU: SGLang's CPU backend with torch_native attention, no
    CUDA graphs or memory saver, and a KV cache of `max_total_tokens` (required: SGLang would size
    it from the whole machine's free RAM, which moves under other processes)."""
    args: Dict[str, Any] = {
        "model_path": hf_dir,
        "load_format": "dummy",
        "dtype": torch_dtype_name(dtype),
        "tp_size": tp,
        "mem_fraction_static": mem_fraction,
        "skip_tokenizer_init": True,
        "random_seed": seed,
        "nccl_port": nccl_port,
        "log_level": "warning",
        "custom_weight_loader": [RESEED_LOADER],
        # an idle scheduler waits on its sockets instead of spinning: colocated, it idles while the
        # trainer trains, and a spinning one takes a core from it (7x slower updates on 2 CPU cores)
        "sleep_on_idle": True,
    }
    if device.type == "cuda":
        args.update(base_gpu_id=device.index or 0, gpu_id_step=1, enable_memory_saver=True)
        if max_total_tokens:
            args["max_total_tokens"] = max_total_tokens
    else:
        if max_total_tokens < 1:
            raise ValueError("an SGLang engine on the CPU needs max_total_tokens")
        args.update(
            device="cpu",
            attention_backend="torch_native",
            disable_cuda_graph=True,
            enable_memory_saver=False,
            skip_server_warmup=True,
            max_total_tokens=max_total_tokens,
        )
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
