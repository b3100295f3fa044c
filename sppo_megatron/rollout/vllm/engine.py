"""vLLM rollout engine (`rollout.engine: vllm`): an offline `vllm.LLM` colocated on the training
ranks, inside their processes, one per rollout group of `rollout.tp` consecutive ranks: every
member runs one TP rank of it (vLLM's external launcher over the trainer's default process group;
a single process without a process group runs it alone). There are no engine processes.

Life cycle (see docs/rollout.md; the asleep/awake and weights-valid rules are RolloutEngine's):
- start once with the HF config and `load_format="dummy"` (random weights), token ids in and out,
  per-request seeds; what the start does to the process is undone by process.HostedEngine;
- every step: `update_weights(stream)` hands the bridge's stream of (HF name, full tensor), cast
  to `rollout.dtype`, to the model runner's in-place `reload_weights` on every member (each TP rank
  loads its shard), checks that every parameter was filled, then resets the prefix cache (KV
  computed with the old weights would be reused otherwise);
- `generate` runs on every member with the same prompts and per-request seeds (so the TP ranks
  agree); the host's samples are gathered to every rank in order;
- `sleep` / `wake`: vLLM's sleep mode on a GPU (level 2: the weights are discarded, the next sync
  refills them, as with SGLang; wake restores the KV cache); no-ops on CPU, where vLLM has no
  sleep mode and the weights stay.
Every LLM call goes through `_call`, against contract.LLM_CALLS; a failure is a RuntimeError of
one line naming the call and the rank.
"""

from __future__ import annotations

import atexit
import gc
import logging
from dataclasses import replace
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist

from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import share_outcomes
from sppo_megatron.rollout.base import (
    CPU_KV_CACHE_MB,
    EngineCapabilities,
    EngineGroups,
    RolloutEngine,
    RolloutSample,
    SamplingParams,
    resolve_eos_token_ids,
)
from sppo_megatron.rollout.vllm.contract import (
    LLM_CALLS,
    SLEEP_LEVEL,
    WAKE_TAGS,
    VllmAPI,
    engine_args,
    parse_request_output,
    request_seed,
    sampling_kwargs,
)
from sppo_megatron.rollout.vllm.process import HostedEngine, MissingWeights, first_line

logger = logging.getLogger(__name__)


class VllmRolloutEngine(RolloutEngine):
    """Colocated in-process vLLM engine per rollout group (see module docstring)."""

    name = "vllm"
    capabilities = EngineCapabilities(returns_logprobs=True, keeps_weights_asleep=True, group_generates=True)

    def __init__(
        self,
        hf_dir: str,
        *,
        tp: int = 1,
        mem_fraction: float = 0.5,
        kv_cache_mb: int = 0,
        dtype: torch.dtype = torch.bfloat16,
        placement: Optional[EngineGroups] = None,
        seed: int = 1234,
        eos_token_ids: Optional[Sequence[int]] = None,
        engine_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        eos = resolve_eos_token_ids(hf_dir) if eos_token_ids is None else tuple(eos_token_ids)
        super().__init__(placement, eos, dtype)
        pl = self.placement
        if pl.group_size != tp:
            raise UserError(
                f"rollout.tp={tp} needs {tp} ranks per vLLM engine (one TP rank each) but the rollout group has "
                f"{pl.group_size}; launch with torchrun --nproc-per-node >= {tp}"
            )
        self.on_gpu = torch.cuda.is_available()
        if self.on_gpu:  # sleep mode discards the weights
            self.capabilities = replace(self.capabilities, keeps_weights_asleep=False)
        self.tp = tp
        self.hosted = HostedEngine()
        self.api: Any = None
        self.llm: Any = None
        self._released: Set[str] = set()
        self._closed = False
        external_launcher = dist.is_available() and dist.is_initialized()
        if tp > 1 and not external_launcher:
            raise UserError(
                f"rollout.tp={tp} with rollout.engine=vllm needs a launch by torchrun (one rank per TP rank)"
            )
        kv_mb = kv_cache_mb or (0 if self.on_gpu else CPU_KV_CACHE_MB)
        kwargs = engine_args(
            hf_dir,
            tp=tp,
            dtype=dtype,
            seed=seed,
            on_gpu=self.on_gpu,
            mem_fraction=mem_fraction,
            kv_cache_bytes=int(kv_mb) << 20,
            external_launcher=external_launcher,
            extra=engine_kwargs,
        )
        # every member starts its TP rank (vLLM's group creation is collective); all learn the outcome
        share_outcomes(lambda: self._start(kwargs, dist.get_rank() if external_launcher else None), pl.object_group)

    def _start(self, kwargs: Dict[str, Any], group_rank: Optional[int]) -> None:
        with self.hosted.starting(group_rank):
            self.api = VllmAPI()
            try:
                self.llm = self.api.LLM(**kwargs)
            except Exception as exc:
                raise RuntimeError(
                    f"starting the vLLM engine on rank {self.placement.rank} failed: {first_line(exc)}"
                ) from exc
        atexit.register(self.shutdown)
        logger.info("vllm %s engine up on rank %d (tp=%d)", self.api.version, self.placement.rank, self.tp)

    def _call(self, method: str, **kwargs: Any) -> Any:
        """Every LLM call goes through here (contract-checked names and keywords)."""
        if method not in LLM_CALLS or not set(kwargs) <= set(LLM_CALLS[method]):
            raise AssertionError(f"undeclared vLLM call {method}({sorted(kwargs)})")
        self._live()
        try:
            with self.hosted.calling():
                return getattr(self.llm, method)(**kwargs)
        except Exception as exc:
            raise RuntimeError(
                f"vLLM {method} (engine on rank {self.placement.rank}) failed: {first_line(exc)}"
            ) from exc

    def _live(self) -> None:
        if self.llm is None:
            raise RuntimeError(f"the vLLM engine on rank {self.placement.rank} is shut down")

    def _runner(self) -> Any:
        """The model runner of this rank's worker (in-process: contract.RUNNER_PATH)."""
        self._live()
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner

    # ---- generation ---------------------------------------------------------------------
    def _generate_local(
        self, prompts: List[List[int]], sampling: SamplingParams, n: int, first_prompt_index: int
    ) -> List[RolloutSample]:
        stop_ids = self.stop_ids(sampling)
        params = [
            self.api.SamplingParams(
                **sampling_kwargs(sampling, n, stop_ids, request_seed(sampling.seed, first_prompt_index + i))
            )
            for i in range(len(prompts))
        ]
        outs = self._call(
            "generate",
            prompts=[self.api.TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            sampling_params=params,
            use_tqdm=False,
        )
        if len(outs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outs)} results for {len(prompts)} prompts")
        return [s for i, out in enumerate(outs) for s in parse_request_output(out, first_prompt_index + i, n, stop_ids)]

    # ---- memory -------------------------------------------------------------------------
    def _release(self) -> None:
        """GPU: sleep mode level 2 (weights and KV cache freed); CPU: nothing to free."""
        if self.on_gpu and not self._released:
            self._call("sleep", level=SLEEP_LEVEL)
            self._released.update(WAKE_TAGS)

    def _resume(self) -> None:
        """Bring back what is still released (the weights only hold data after the next sync) and
        start from an empty prefix cache."""
        self._wake(WAKE_TAGS)

    def _wake(self, tags: Sequence[str]) -> None:
        todo = [t for t in WAKE_TAGS if t in tags and t in self._released]
        if todo:
            self._call("wake_up", tags=todo)
            self._released.difference_update(todo)
        if "kv_cache" in todo:
            self._call("reset_prefix_cache")

    # ---- weights ------------------------------------------------------------------------
    def _load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Every member reloads from its own copy of the stream (the export is collective: a member
        that fails still drains it, then every rank raises)."""
        self._wake(("weights",))
        share_outcomes(lambda: self._reload(iter(named_tensors)), self.placement.object_group)

    def _reload(self, stream: Iterator[Tuple[str, torch.Tensor]]) -> None:
        rank = self.placement.rank
        try:
            with MissingWeights().watching() as missing, self.hosted.calling():
                self._runner().reload_weights(weights_iterator=self._cast(stream))
            if missing.messages:
                raise RuntimeError(missing.messages[0])
            self._refresh_cpu_kernels()
        except Exception as exc:
            for _ in stream:  # the other ranks' export gathers need this rank's part
                pass
            raise RuntimeError(f"vLLM reload_weights (engine on rank {rank}) failed: {first_line(exc)}") from exc
        if "kv_cache" not in self._released:
            self._call("reset_prefix_cache")

    def _cast(self, stream: Iterator[Tuple[str, torch.Tensor]]) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in stream:
            yield name, tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _refresh_cpu_kernels(self) -> None:
        """vLLM 0.32.0's CPU kernels keep their own copy of some weights, made after the first load,
        which its in-place reload does not remake (stale outputs, log-probs off by nats): the MoE
        experts' prepacked weights, and the LM head's GEMM handle when the head is tied to the
        embeddings (the reload fills the embeddings only). Remake them."""
        if self.on_gpu:
            return
        model = self._runner().get_model()
        for module in model.modules():
            kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
            if kernel is not None and isinstance(kernel.fused_experts, self.api.CPUUnquantizedExperts):
                kernel.fused_experts.process_weights_after_loading(module)
        head = getattr(model, "lm_head", None)
        if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and head is not None:
            head.quant_method.process_weights_after_loading(head)

    def read_weight(self, name: str, rows: int = 4) -> Optional[torch.Tensor]:
        """The first `rows` rows of HF tensor `name` from the host's TP shard, where they are the
        full tensor's first rows (a q/k/v or gate/up weight is read from its fused parameter); None
        where the name has no such parameter, or where its values are not kept as a tensor."""
        if not self.placement.is_host or self.llm is None or not self.weights_valid:
            return None
        model = self._runner().get_model()
        module, _, leaf = name.rpartition(".")
        parent, _, sub = module.rpartition(".")
        for fused, parts in getattr(model, "packed_modules_mapping", {}).items():
            if parts and sub == parts[0]:
                sub = fused
        try:
            param = model.get_parameter(f"{parent}.{sub}.{leaf}")
        except AttributeError:
            return None
        if param.numel() == 0:  # on CPU, linear weights live in the GEMM kernels' packed layout
            return None
        return param.detach()[:rows].to("cpu", torch.float32).clone()

    # ---- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Tear the engine down, keeping the trainer's default process group (process.py)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        if self.llm is None:
            return
        try:
            self.hosted.shutdown(self.llm.llm_engine.engine_core.shutdown, self.api.parallel_state)
        except Exception as exc:  # noqa: BLE001 - shutting down; report and go on
            logger.warning("vllm engine shutdown on rank %d: %s", self.placement.rank, first_line(exc))
        finally:
            self.llm = None
            gc.collect()
