"""HF <-> Megatron bridge: one model's sizes and its weight load/export through the table (arch.py,
layouts.py); the TransformerConfig (transformer_config.py) and the model (build.py) are built
through it too.

    bridge = get_bridge(hf_config)                    # transformers PretrainedConfig (or a path)
    model = bridge.build_model(model_cfg, parallel_cfg)   # this rank's pipeline stage
    bridge.load_hf_weights(model, hf_dir)             # each rank reads only its slices
    for name, tensor in bridge.export_hf_weights(model):  # every rank gets every tensor
        ...

Vocabulary padding: megatron holds `bridge.padded_vocab_size(tp)` rows (a multiple of
lcm(128, tp), so the same for every power-of-two TP and dist checkpoints load under any TP).
Padded rows are zero in the embedding and the LM head and are stripped on export. The logits
therefore have padded columns (value 0 from a zero LM-head row): consumers of logits must
ignore columns >= `bridge.vocab_size` (`mask_padded_logits_` sets them to the dtype's minimum
on a vocab-parallel shard so softmax / log-probs match the HF model).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models import layouts
from sppo_megatron.models.arch import Architecture, Param, get_architecture
from sppo_megatron.models.dist_ckpt import unwrap_model
from sppo_megatron.models.rope import Rope, rope_settings
from sppo_megatron.platform.distributed import current_device

VOCAB_MULTIPLE = 128


class Bridge:
    """One HF architecture's mapping onto megatron-core GPTModel (see module docstring)."""

    def __init__(self, hf_config: Any) -> None:
        self.hf_config = hf_config
        self.arch: Architecture = get_architecture(getattr(hf_config, "model_type", None))
        self.model_type = self.arch.model_type
        cfg = hf_config
        problems = self.arch.checks(cfg)
        if problems:
            raise UserError(f"{self.model_type}: unsupported configuration: " + "; ".join(problems))
        self.vocab_size: int = int(cfg.vocab_size)
        self.hidden_size: int = int(cfg.hidden_size)
        self.num_layers: int = int(cfg.num_hidden_layers)
        self.num_attention_heads: int = int(cfg.num_attention_heads)
        self.num_kv_heads: int = int(getattr(cfg, "num_key_value_heads", None) or self.num_attention_heads)
        self.head_dim: int = int(getattr(cfg, "head_dim", None) or self.hidden_size // self.num_attention_heads)
        self.ffn_hidden_size: int = int(cfg.intermediate_size)
        self.rms_norm_eps: float = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.max_position_embeddings: int = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
        self.tied: bool = bool(getattr(cfg, "tie_word_embeddings", False))
        self.rope: Rope = rope_settings(cfg)
        if self.num_attention_heads % self.num_kv_heads:
            raise UserError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )

    # ------------------------------------------------------------------ sizes and config
    def padded_vocab_size(self, tp: int = 1) -> int:
        """Vocab rounded up to a multiple of lcm(128, tp): TP-independent for power-of-two TP."""
        multiple = VOCAB_MULTIPLE * tp // math.gcd(VOCAB_MULTIPLE, tp)
        return -(-self.vocab_size // multiple) * multiple

    def check_tp(self, tp: int) -> None:
        """UserError unless `tp` divides the heads and the MLP width."""
        if self.num_attention_heads % tp or self.num_kv_heads % tp:
            raise UserError(
                f"parallel.tp={tp} must divide num_attention_heads={self.num_attention_heads} and "
                f"num_key_value_heads={self.num_kv_heads} of this {self.model_type} model"
            )
        if self.ffn_hidden_size % tp:
            raise UserError(f"parallel.tp={tp} must divide intermediate_size={self.ffn_hidden_size}")

    def transformer_config(self, model_cfg: Optional[ModelConfig] = None, parallel_cfg: Optional[ParallelConfig] = None):
        """megatron-core TransformerConfig for this model under `model_cfg` / `parallel_cfg`
        (None = the schema defaults: auto dtype, tp = pp = 1)."""
        from megatron.core.transformer import TransformerConfig

        return TransformerConfig(**self.transformer_config_kwargs(model_cfg, parallel_cfg))

    def transformer_config_kwargs(self, model_cfg: Optional[ModelConfig] = None,
                                  parallel_cfg: Optional[ParallelConfig] = None) -> Dict[str, Any]:
        """The keyword arguments of `transformer_config` (all TransformerConfig fields we set)."""
        from sppo_megatron.models.transformer_config import transformer_config_kwargs

        return transformer_config_kwargs(self, model_cfg, parallel_cfg)

    def layer_spec(self, model_cfg: Optional[ModelConfig] = None):
        """TE layer spec (transformer_impl=transformer_engine, or auto with TE) or local + SDPA."""
        from sppo_megatron.models.specs import layer_spec

        return layer_spec(ModelConfig() if model_cfg is None else model_cfg, qk_layernorm=self.arch.qk_norm)

    # ------------------------------------------------------------------ model
    def build_model(self, model_cfg: Optional[ModelConfig] = None, parallel_cfg: Optional[ParallelConfig] = None,
                    *, perform_initialization: bool = True, padded_vocab_size: Optional[int] = None):
        """GPTModel for this rank's pipeline stage (needs `init_distributed(tp, pp)` first).

        perform_initialization=False skips the random init (the weights are loaded next); the
        padded vocabulary rows are zeroed either way. padded_vocab_size None = our rule
        (`padded_vocab_size(tp)`); a checkpoint's own size (Megatron-LM's rule) is passed here.
        """
        from sppo_megatron.models.build import build_gpt_model

        return build_gpt_model(self, model_cfg, parallel_cfg, perform_initialization=perform_initialization,
                               padded_vocab_size=padded_vocab_size)

    def mask_padded_logits_(self, logits: torch.Tensor) -> torch.Tensor:
        """In place: set this TP rank's vocab-parallel logit columns >= vocab_size to the dtype minimum."""
        from megatron.core import parallel_state

        width = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * width
        keep = max(0, min(width, self.vocab_size - start))
        if keep < width:
            logits[..., keep:] = torch.finfo(logits.dtype).min
        return logits

    # ------------------------------------------------------------------ table walking
    def _params(self) -> List[Param]:
        return [p for p in self.arch.params if not (p.when == "untied" and self.tied)]

    def hf_names(self) -> List[str]:
        """Every HF tensor name, in the order `export_hf_weights` yields them."""
        names = []
        for layer, row in self._plan():
            names.extend(h.format(layer=layer) for h in row.hf)
        return names

    def _plan(self) -> List[Tuple[Optional[int], Param]]:
        """(global layer or None, row) in export order: embeddings, layers 0..L-1, final norm, head."""
        rows = self._params()
        plan: List[Tuple[Optional[int], Param]] = [(None, r) for r in rows if not r.per_layer and r.layout is layouts.EMBEDDING]
        for i in range(self.num_layers):
            plan.extend((i, r) for r in rows if r.per_layer)
        plan.extend((None, r) for r in rows if not r.per_layer and r.layout is not layouts.EMBEDDING)
        return plan

    @staticmethod
    def _local_layers(module: Any) -> Dict[int, int]:
        """global layer index -> local index in this stage's decoder.layers."""
        decoder = getattr(module, "decoder", None)
        if decoder is None:
            return {}
        return {layer.layer_number - 1: j for j, layer in enumerate(decoder.layers)}

    def _local_params(self, module: Any) -> List[Tuple[Optional[int], Param, str, torch.nn.Parameter, Tuple[str, ...]]]:
        """(global layer, row, megatron name, parameter, HF names) for every table row on this rank."""
        params = dict(module.named_parameters())
        local = self._local_layers(module)
        out = []
        for layer, row in self._plan():
            if row.per_layer:
                if layer not in local:
                    continue
                candidates = [m.format(layer=local[layer]) for m in row.megatron]
                found = [c for c in candidates if c in params]
                if not found:
                    raise RuntimeError(f"{self.model_type} table row {row.hf[0]} has no parameter in the model (tried {candidates})")
            else:
                found = [m for m in row.megatron if m in params]
                if not found:
                    continue
            out.append((layer, row, found[0], params[found[0]], tuple(h.format(layer=layer) for h in row.hf)))
        if self.tied and "output_layer.weight" in params:
            # tied embeddings with PP > 1: the last stage keeps its own copy of the embedding
            embed = next(r for r in self.arch.params if r.layout is layouts.EMBEDDING)
            out.append((None, Param(("output_layer.weight",), embed.hf, layouts.OUTPUT), "output_layer.weight", params["output_layer.weight"], embed.hf))
        return out

    # ------------------------------------------------------------------ HF -> megatron
    def load_hf_weights(self, model: Any, hf_dir: str) -> None:
        """Fill this rank's shards from an HF safetensors directory, reading only what it needs.

        Each tensor is read as the row/column slice this TP rank holds (safetensors
        `get_slice`), so memory stays bounded by the largest local shard plus one HF tensor slice.
        """
        from megatron.core import parallel_state

        from sppo_megatron.models.hf_io import SafetensorsReader

        module = unwrap_model(model)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        r = parallel_state.get_tensor_model_parallel_rank()
        reader = SafetensorsReader(hf_dir)
        loaded = set()
        try:
            with torch.no_grad():
                for _, row, mname, param, hf_names in self._local_params(module):
                    tensor = row.layout.read_shard(reader, hf_names, tuple(param.shape), tp, r, self)
                    if tuple(tensor.shape) != tuple(param.shape):
                        raise UserError(
                            f"{hf_dir}: {hf_names[0]} gives a {tuple(tensor.shape)} shard for megatron "
                            f"{mname} {tuple(param.shape)} (config.json does not match the weights?)"
                        )
                    param.copy_(tensor)
                    loaded.add(mname)
        finally:
            reader.close()
        missing = sorted(set(n for n, _ in module.named_parameters()) - loaded)
        if missing:
            raise RuntimeError(f"{self.model_type}: the bridge table does not cover model parameters {missing[:5]}")

    # ------------------------------------------------------------------ megatron -> HF
    def export_hf_weights(self, model: Any) -> Iterator[Tuple[str, torch.Tensor]]:
        """Yield (HF name, full tensor) for the whole model, one parameter at a time.

        Collective: every rank of the model-parallel group must iterate it to the end, in step.
        Every rank receives every tensor (gathered across TP, broadcast from the owning pipeline
        stage), in the deterministic order of `hf_names()`; padded vocabulary rows are stripped
        and `lm_head.weight` is omitted when embeddings are tied. Tensors have the model's
        parameter dtype and may be views of the model's parameters (TP=PP=1 and replicated
        tensors: no copy where the layout allows, see `Layout.assemble`): they are valid while
        the model is unchanged, and a consumer that keeps one past that (or writes to it) must
        copy it. At most one parameter's full tensors are alive at a time inside the generator.
        """
        import torch.distributed as dist
        from megatron.core import parallel_state

        module = unwrap_model(model)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        tp_group = parallel_state.get_tensor_model_parallel_group()
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        stage = parallel_state.get_pipeline_model_parallel_rank()

        local = {}
        meta = {}
        for layer, row, _, param, hf_names in self._local_params(module):
            if row.layout is layouts.OUTPUT and self.tied:
                continue  # last-stage copy of a tied embedding: exported once, as the embedding
            key = (layer, row.hf)
            local[key] = (row, param)
            meta[key] = (row.layout.hf_shapes(tuple(param.shape), tp, self), param.dtype)
        owners: Dict[Any, Tuple[int, Any]] = {}
        if pp > 1:
            gathered: List[Any] = [None] * pp
            dist.all_gather_object(gathered, meta, group=pp_group)
            pp_ranks = dist.get_process_group_ranks(pp_group)
            for s, m in enumerate(gathered):
                for key, value in m.items():
                    owners.setdefault(key, (pp_ranks[s], value, s))
        else:
            owners = {key: (None, value, stage) for key, value in meta.items()}

        for layer, row in self._plan():
            key = (layer, row.hf)
            names = [h.format(layer=layer) for h in row.hf]
            if key not in owners:
                raise RuntimeError(f"no pipeline stage holds {names[0]}")
            src, (shapes, dtype), owner_stage = owners[key]
            if owner_stage == stage:
                _, param = local[key]
                data = param.detach()
                if tp > 1 and row.layout.tp_sharded and row.layout.rows_sharded:
                    data = data.contiguous()
                    full = torch.empty((tp * data.shape[0],) + tuple(data.shape[1:]), dtype=data.dtype, device=data.device)
                    dist.all_gather_into_tensor(full, data, group=tp_group)
                    shards = [full]  # one allocation and no join copy (the biggest tensors: embedding, qkv)
                    del full
                elif tp > 1 and row.layout.tp_sharded:
                    data = data.contiguous()
                    shards = [torch.empty_like(data) for _ in range(tp)]
                    dist.all_gather(shards, data, group=tp_group)
                else:
                    shards = [data]
                tensors = row.layout.assemble(shards, self)
                del shards
            else:
                tensors = [torch.empty(s, dtype=dtype, device=current_device()) for s in shapes]
            if pp > 1:
                for t in tensors:
                    dist.broadcast(t, src=src, group=pp_group)
            for name, t in zip(names, tensors):
                yield name, t
            del tensors


def get_bridge(hf_config: Any) -> Bridge:
    """The bridge for a transformers PretrainedConfig (or an HF directory path)."""
    if isinstance(hf_config, str):
        from sppo_megatron.models.hf_io import load_hf_config

        hf_config = load_hf_config(hf_config, "model")
    return Bridge(hf_config)


def build_model(hf_config: Any, model_cfg: Optional[ModelConfig] = None, parallel_cfg: Optional[ParallelConfig] = None,
                *, perform_initialization: bool = True):
    """GPTModel for this rank's pipeline stage (see `Bridge.build_model`)."""
    return get_bridge(hf_config).build_model(model_cfg, parallel_cfg, perform_initialization=perform_initialization)


def export_hf_weights(model: Any, hf_config: Any) -> Iterator[Tuple[str, torch.Tensor]]:
    """Module-level form of `Bridge.export_hf_weights`."""
    return get_bridge(hf_config).export_hf_weights(model)
