"""Hugging Face transformers rollout engine (`rollout.engine: hf`): the CPU path, and a slow
but exact fallback on GPU.

A `AutoModelForCausalLM` on the local device runs our own sampling loop with a KV cache
(`model(..., past_key_values=cache)`) rather than `model.generate`, because we need, exactly and
controllably: per-token log-probs of the sampled tokens, a seeded generator per sample (results
independent of batch composition, padding and of how prompts are split across ranks), and the
same stop semantics as the SGLang path.

Batching: prompts (each repeated n times) are LEFT-padded with an attention mask and explicit
position ids (cumsum of the mask), so a padded row computes what the row would compute alone
(up to float rounding of the different matmul shapes).

Sampling per step, logits in fp32: temperature 0 -> argmax (log-prob from log_softmax(logits));
otherwise z = logits / T, the reported log-prob is log_softmax(z)[token] (the full,
temperature-scaled distribution: what the trainer recomputes), and the token is drawn from
softmax(z) restricted to top-k then top-p (nucleus, keeping at least one token) by inverse-CDF
with a uniform from the sample's own torch.Generator seeded with (seed, global sample index).

Placement on a multi-rank job: every rank hosts one HF engine (a full model copy) and samples a
contiguous share of the prompts (data-parallel rollouts); the samples are all-gathered in order.
Weights: every rank receives the full HF tensors from the bridge's export stream and copies them
in place (`param.copy_`); names are checked both ways (unknown name = error; parameter not
received = error, except in a partial update, which the engine takes: the tensors not sent keep
their values; lm_head may be absent when embeddings are tied). Mixture-of-experts weights
arrive per expert and fill transformers' fused expert tensors (hf_experts.py).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from sppo_megatron.platform.distributed import current_device
from sppo_megatron.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    EngineCapabilities,
    EngineGroups,
    RolloutEngine,
    RolloutSample,
    SamplingParams,
    resolve_eos_token_ids,
    sample_seed,
)
from sppo_megatron.rollout.hf_experts import ExpertSlots

logger = logging.getLogger(__name__)


def filter_logits(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside top-k and then outside the top-p nucleus of z [B, V]."""
    vocab = z.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False  # keep at least the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def sample_tokens(
    logits: torch.Tensor, sampling: SamplingParams, generators: Sequence[torch.Generator]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of logits [B, V]; return (tokens [B], log-probs [B])."""
    logits = logits.float()
    if sampling.greedy:
        tokens = torch.argmax(logits, dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
        return tokens, logp.gather(-1, tokens[:, None])[:, 0]
    z = logits / sampling.temperature
    logp = torch.log_softmax(z, dim=-1)
    probs = torch.softmax(filter_logits(z, sampling.top_k, sampling.top_p), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(cdf.device)
    target = (u * cdf[:, -1].double()).to(cdf.dtype)[:, None]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


class HFRolloutEngine(RolloutEngine):
    """transformers AutoModelForCausalLM with its own sampling loop (see module docstring)."""

    name = "hf"
    capabilities = EngineCapabilities(returns_logprobs=True, keeps_weights_asleep=True, partial_updates=True)

    def __init__(
        self,
        hf_dir: str,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        placement: Optional[EngineGroups] = None,
        eos_token_ids: Optional[Sequence[int]] = None,
        max_batch_size: int = 64,
        attn_implementation: str = "sdpa",
    ) -> None:
        eos = resolve_eos_token_ids(hf_dir) if eos_token_ids is None else tuple(eos_token_ids)
        super().__init__(placement, eos, dtype)
        self.hf_dir = hf_dir
        self.device = torch.device(device) if device is not None else current_device()
        self.max_batch_size = max_batch_size
        has_weights = bool(glob.glob(os.path.join(hf_dir, "*.safetensors")) or glob.glob(os.path.join(hf_dir, "*.bin")))
        if has_weights:
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation=attn_implementation)
        else:
            # Config only (the weights come from a Megatron checkpoint): random init, replaced
            # by the first update_weights.
            config = AutoConfig.from_pretrained(hf_dir)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
            logger.info("hf rollout engine: %s has no weight files; waiting for the first weight sync", hf_dir)
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)
        cfg = self.model.config
        pad = getattr(cfg, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        self._params: Dict[str, torch.nn.Parameter] = dict(self.model.named_parameters(remove_duplicate=False))
        unique = {id(p): n for n, p in self.model.named_parameters()}  # first name per tensor
        self._required: Set[str] = set(unique.values())
        # names that alias a required parameter (tied lm_head): optional in the stream
        self._aliases: Dict[str, str] = {n: unique[id(p)] for n, p in self._params.items() if unique[id(p)] != n}

    # ---- generation -------------------------------------------------------------------
    @torch.no_grad()
    def _generate_local(
        self, prompts: List[List[int]], sampling: SamplingParams, n: int, first_prompt_index: int
    ) -> List[RolloutSample]:
        rows = [(first_prompt_index + i, j, p) for i, p in enumerate(prompts) for j in range(n)]
        out: List[RolloutSample] = []
        for start in range(0, len(rows), self.max_batch_size):
            out.extend(self._generate_rows(rows[start : start + self.max_batch_size], sampling, n))
        return out

    def _generate_rows(self, rows, sampling: SamplingParams, n: int) -> List[RolloutSample]:
        device = self.device
        batch = len(rows)
        width = max(len(p) for _, _, p in rows)
        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for r, (_, _, p) in enumerate(rows):
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        generators = [torch.Generator().manual_seed(sample_seed(sampling.seed, pi * n + j)) for pi, j, _ in rows]
        stop = torch.tensor(self.stop_ids(sampling) or [-1], dtype=torch.long, device=device)

        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        last_pos = positions[:, -1]
        tokens_out: List[List[int]] = [[] for _ in range(batch)]
        logps_out: List[List[float]] = [[] for _ in range(batch)]
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        reasons = [FINISH_LENGTH] * batch
        for step in range(sampling.max_new_tokens):
            tokens, logps = sample_tokens(logits, sampling, generators)
            tokens = torch.where(finished, torch.full_like(tokens, self.pad_token_id), tokens)
            hit_stop = torch.isin(tokens, stop) & ~finished
            tok_list, lp_list, fin_list, stop_list = (
                tokens.tolist(),
                logps.tolist(),
                finished.tolist(),
                hit_stop.tolist(),
            )
            for r in range(batch):
                if not fin_list[r]:
                    tokens_out[r].append(tok_list[r])
                    logps_out[r].append(lp_list[r])
                    if stop_list[r]:
                        reasons[r] = FINISH_STOP
            finished |= hit_stop
            if bool(finished.all()) or step == sampling.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            logits = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1, :]
        return [RolloutSample(pi, j, tokens_out[r], reasons[r], logps_out[r]) for r, (pi, j, _) in enumerate(rows)]

    # ---- weights ------------------------------------------------------------------------
    def _load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        self._copy_in(named_tensors, complete=True)

    def _load_some_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        self._copy_in(named_tensors, complete=False)

    @torch.no_grad()
    def _copy_in(self, named_tensors: Iterable[Tuple[str, torch.Tensor]], complete: bool) -> None:
        """In-place copies (into the CPU copy while asleep on a GPU), names checked both ways
        (`complete`: every parameter must arrive; else the others keep their values)."""
        seen: Set[str] = set()
        unknown: List[str] = []
        experts = ExpertSlots(self._params)
        for name, tensor in named_tensors:
            param = self._params.get(name)
            fused = None
            if param is None:
                slot = experts.resolve(name)
                if slot is None:
                    unknown.append(name)
                    continue
                fused, param = slot
            if tuple(param.shape) != tuple(tensor.shape):
                raise RuntimeError(
                    f"weight sync: {name} has shape {tuple(tensor.shape)} in the stream but "
                    f"{tuple(param.shape)} in the rollout model"
                )
            param.copy_(tensor)
            if fused is None:
                seen.add(self._aliases.get(name, name))
            elif experts.complete(fused):
                seen.add(fused)
        if unknown:
            raise RuntimeError(
                f"weight sync: {len(unknown)} tensor name(s) unknown to the rollout model "
                f"({type(self.model).__name__}), e.g. {unknown[:5]}"
            )
        missing = sorted(self._required - seen) if complete else []
        if missing:
            raise RuntimeError(
                f"weight sync: {len(missing)} parameter(s) of the rollout model were not in the "
                f"stream, e.g. {missing[:5]}"
            )

    def read_weight(self, name: str, rows: int = 4) -> Optional[torch.Tensor]:
        param = self._params.get(name)
        if param is None:
            return None
        return param.detach()[:rows].to("cpu", torch.float32).clone()

    # ---- memory -------------------------------------------------------------------------
    def _release(self) -> None:
        """On GPU: move the model to the CPU and empty the cache. On CPU: nothing to free."""
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def _resume(self) -> None:
        self.model.to(self.device)

    def shutdown(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._params = {}
