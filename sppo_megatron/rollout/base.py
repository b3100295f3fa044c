"""The rollout-engine contract shared by the SGLang, vLLM and Hugging Face engines.

Every rank of the job calls the same methods with the same arguments (SPMD, like the rest of the
trainer): `generate` splits the prompts across the job's engines, each engine samples its share,
and the samples are gathered back, in prompt order, to every rank. Engines are placed in
*rollout groups* of consecutive ranks: a group of `rollout.tp` ranks shares one SGLang engine
hosted by its first rank; a vLLM engine spans its group too, one TP rank in each member's process;
the HF engine uses groups of one (every rank holds a full copy of the model and samples its own
share of prompts: data-parallel rollouts).

Log-probs: engines report, per response token, the log-prob of the sampled token under the
temperature-scaled FULL distribution, log_softmax(logits / T), before top-k / top-p filtering
(temperature 0 = greedy reports log_softmax(logits), i.e. T = 1). This is what the trainer
recomputes (`actor.log_probs(batch, temperature=T)`) and what SGLang returns by default. vLLM
reports the log-probs of the distribution it samples from: the same unless top-k / top-p filter
it (then renormalised over the kept tokens).
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import broadcast_object, share_outcomes
from sppo_megatron.platform.parallel_dims import split_evenly

logger = logging.getLogger(__name__)

T = TypeVar("T")

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature` 0 = greedy; `top_k` -1 (or 0) = off; `top_p` 1 = off.

    `max_new_tokens` is data.max_response_length for training. Generation also stops at the
    model's EOS ids (from the HF config / generation_config) and at `stop_token_ids`; the stop
    token is kept as the last response token. `seed` makes the HF engine exactly reproducible
    (per sample, independent of batching and of how prompts are split across ranks); None = a
    seed drawn from torch's default generator on rank 0. SGLang ignores it (its sampling is
    seeded once per engine by `random_seed`).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 512
    stop_token_ids: Tuple[int, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RolloutSample:
    """One generated response. `prompt_index` is the index in the `generate` call's prompt list,
    `sample_index` in 0..n-1. `logprobs` has one entry per response token (None if the engine
    cannot report them)."""

    prompt_index: int
    sample_index: int
    response_ids: List[int]
    finish_reason: str  # "stop" | "length"
    logprobs: Optional[List[float]] = None


_SEED_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, global_sample_index: int) -> int:
    """Per-sample generator seed from the call seed and the sample's global index (the HF engine
    seeds every sample with it; SGLang reseeds its sampler per call with it)."""
    x = (int(seed) * 1_000_003 + int(global_sample_index) * _SEED_MIX + 0x632BE59BD9B4E019) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & ((1 << 63) - 1)


@dataclass
class EngineGroups:
    """Where this rank sits among the rollout engines.

    Ranks are grouped in consecutive blocks of `group_size`; block g hosts engine g on its first
    rank. `object_group` is a gloo group over all ranks used for the result gather,
    `rollout_group` a gloo group over this rank's block (IPC-handle gathers, `on_host`)."""

    rank: int = 0
    world_size: int = 1
    group_size: int = 1
    object_group: Any = None
    rollout_group: Any = None
    group_ranks: List[int] = field(default_factory=lambda: [0])

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def num_engines(self) -> int:
        return self.world_size // self.group_size

    @property
    def engine_index(self) -> int:
        return self.rank // self.group_size

    @property
    def host_rank(self) -> int:
        return self.engine_index * self.group_size

    @property
    def is_host(self) -> bool:
        return self.rank == self.host_rank

    def on_host(self, fn: Callable[[], T]) -> Optional[T]:
        """fn() run on this group's host, its outcome shared with the group: the host's result on
        every member, or its exception raised on every member (collective over the group)."""
        if self.group_size == 1:
            return fn()
        return share_outcomes(fn if self.is_host else None, group=self.rollout_group)[0]


def make_engine_groups(group_size: int = 1) -> EngineGroups:
    """Build the placement (collective when torch.distributed is initialised: every rank must
    call it, in the same order as its other group creations)."""
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else 1
    if world % group_size:
        raise UserError(
            f"rollout.tp={group_size} must divide the number of ranks ({world}): each SGLang engine "
            "spans rollout.tp ranks (one GPU each) and takes their CUDA IPC weight handles"
        )
    if world == 1:
        return EngineGroups(0, 1, 1, None, None, [0])
    rank = dist.get_rank()
    gloo_world = dist.get_backend() == "gloo"
    object_group = None if gloo_world else dist.new_group(backend="gloo")
    rollout_group, mine = None, [rank]
    for g in range(world // group_size):
        ranks = list(range(g * group_size, (g + 1) * group_size))
        grp = dist.new_group(ranks=ranks, backend="gloo") if group_size > 1 else None
        if rank in ranks:
            rollout_group, mine = grp, ranks
    return EngineGroups(rank, world, group_size, object_group, rollout_group, mine)


#: KV cache of an engine on the CPU when rollout.kv_cache_mb is 0 (the engines would size it from the
#: whole machine's free RAM, which other processes move)
CPU_KV_CACHE_MB = 256


def kv_bytes_per_token(hf_dir: str, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in a model of the HF directory `hf_dir` (keys and values of
    every layer), for turning rollout.kv_cache_mb into an engine's token capacity."""
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * itemsize


def resolve_eos_token_ids(hf_dir: str) -> Tuple[int, ...]:
    """EOS ids of a HF model directory: generation_config.json and config.json eos_token_id."""
    ids: List[int] = []
    for fname in ("generation_config.json", "config.json"):
        path = os.path.join(hf_dir, fname)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("eos_token_id")
        if value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return tuple(ids)


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do, declared by each engine class (callers read these, not its name)."""

    #: RolloutSample.logprobs is filled (see the module docstring for what they are)
    returns_logprobs: bool
    #: sleep() keeps the weights; if not, the next update_weights must refill them
    keeps_weights_asleep: bool
    #: every rank of a rollout group drives its own part of the engine (vLLM's external launcher:
    #: one engine per TP rank, in the trainer's process), so `_generate_local` runs on all of them
    #: with the same prompts; the host's samples are the group's
    group_generates: bool = False
    #: update_weights(..., partial=True) takes some of the tensors and keeps the others as they are
    partial_updates: bool = False


class RolloutEngine(abc.ABC):
    """One rollout engine per rollout group; all methods are collective (call on every rank).

    The base owns the life cycle, so that every engine follows the same rules: it starts awake
    without valid weights; `update_weights` makes them valid (asleep or awake); `sleep` frees the
    accelerator for training (and invalidates the weights unless the engine keeps them);
    `generate` needs valid weights and an awake engine (`wake`). Subclasses implement only the
    hooks: `_generate_local` (sample this engine's share), `_load_weights`, `_release`, `_resume`.
    `generate` does the split across engines and the in-order gather.
    """

    name: str = "base"
    capabilities: EngineCapabilities = EngineCapabilities(returns_logprobs=False, keeps_weights_asleep=True)

    def __init__(
        self,
        placement: Optional[EngineGroups] = None,
        eos_token_ids: Sequence[int] = (),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.placement = placement or EngineGroups()
        self.eos_token_ids: Tuple[int, ...] = tuple(int(t) for t in eos_token_ids)
        #: the dtype the engine holds its weights in (streamed tensors are cast to it)
        self.dtype = dtype
        self._asleep = False
        self._weights_valid = False

    @property
    def weights_valid(self) -> bool:
        """Whether the engine holds weights it was given by `update_weights` (and still has them)."""
        return self._weights_valid

    # ---- generation -------------------------------------------------------------------
    def generate(self, prompt_token_ids: List[List[int]], sampling: SamplingParams, n: int) -> List[RolloutSample]:
        """Sample `n` responses per prompt. Returns len(prompts) * n samples in order (the n
        samples of prompt 0, then prompt 1, ...), the same list on every rank."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        for i, p in enumerate(prompt_token_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty")
        if not self._weights_valid:
            raise RuntimeError(
                f"{self.name} rollout engine: generate before a weight sync (its weights were never "
                "loaded, or sleep() discarded them): call update_weights first"
            )
        if self._asleep:
            raise RuntimeError(f"{self.name} rollout engine: generate while asleep: call wake() first")
        pl = self.placement
        if sampling.seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            if pl.distributed:
                seed = broadcast_object(seed, src=0, group=pl.object_group)
            sampling = replace(sampling, seed=seed)
        start, end = split_evenly(len(prompt_token_ids), pl.num_engines)[pl.engine_index]

        def local() -> List[RolloutSample]:
            samples = self._generate_local(prompt_token_ids[start:end], sampling, n, start)
            if len(samples) != (end - start) * n:
                raise RuntimeError(
                    f"{self.name} engine returned {len(samples)} samples for {end - start} prompts x n={n}"
                )
            return samples

        def member() -> None:
            local()  # the host's samples are the group's

        runs = end > start and (pl.is_host or self.capabilities.group_generates)
        parts = share_outcomes((local if pl.is_host else member) if runs else None, group=pl.object_group)
        out = [sample for part in parts if part for sample in part]
        if len(out) != len(prompt_token_ids) * n:
            raise RuntimeError(f"gathered {len(out)} samples, expected {len(prompt_token_ids) * n}")
        return out

    @abc.abstractmethod
    def _generate_local(
        self, prompts: List[List[int]], sampling: SamplingParams, n: int, first_prompt_index: int
    ) -> List[RolloutSample]:
        """Sample this engine's share; prompt indices start at `first_prompt_index`."""

    def stop_ids(self, sampling: SamplingParams) -> Tuple[int, ...]:
        ids = list(self.eos_token_ids)
        ids += [t for t in sampling.stop_token_ids if t not in ids]
        return tuple(ids)

    # ---- weights and memory -------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]], partial: bool = False) -> None:
        """Consume the bridge's stream of (HF name, full tensor); collective. The weights are valid
        once the whole stream was taken (a failure part-way leaves them invalid). partial=True:
        the stream holds only the tensors that changed since the last update, the engine keeps the
        rest (needs `capabilities.partial_updates` and valid weights)."""
        if partial and not (self.capabilities.partial_updates and self._weights_valid):
            raise RuntimeError(
                f"{self.name} rollout engine: a partial weight update needs an engine that takes them "
                f"(partial_updates={self.capabilities.partial_updates}) holding valid weights "
                f"(weights_valid={self._weights_valid})"
            )
        self._weights_valid = False
        if partial:
            self._load_some_weights(named_tensors)
        else:
            self._load_weights(named_tensors)
        self._weights_valid = True

    @abc.abstractmethod
    def _load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Take the whole stream into the engine, asleep or awake."""

    def _load_some_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Take a stream of some of the tensors, keeping the others (engines with partial_updates)."""
        raise NotImplementedError(f"{self.name} rollout engine takes whole weight updates only")

    def read_weight(self, name: str, rows: int = 4) -> Optional[torch.Tensor]:
        """The engine's current value of HF tensor `name` (at least its first `rows` rows), on
        the CPU in fp32, for the post-sync check; None when the engine cannot tell."""
        return None

    def sleep(self) -> None:
        """Free accelerator memory (weights and KV cache) for training."""
        self._release()
        self._asleep = True
        if not self.capabilities.keeps_weights_asleep:
            self._weights_valid = False

    def wake(self) -> None:
        """Restore what `sleep` freed."""
        if self._asleep:
            self._resume()
            self._asleep = False

    def _release(self) -> None:
        """sleep()'s work; called asleep or awake, so it must do only what is still to do."""

    def _resume(self) -> None:
        """wake()'s work (called when asleep)."""

    def shutdown(self) -> None:
        """Release the engine. Safe to call twice."""

    def describe(self) -> str:
        return f"{self.name} x{self.placement.num_engines}"
