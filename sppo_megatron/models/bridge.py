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
from sppo_megatron.models.build import build_gpt_model
from sppo_megatron.models.dist_ckpt import unwrap_model
from sppo_megatron.models.hf_io import SafetensorsReader, load_hf_config
from sppo_megatron.models.rope import Rope, rope_settings
from sppo_megatron.models.specs import layer_spec
from sppo_megatron.models.transformer_config import transformer_config_kwargs

# megatron-core is imported inside the functions that use it: the console scripts import this
# package before they silence megatron's import-time warnings, and `--help` stays quick.

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
        self.num_experts: int = (
            int(getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None) or 0)
            if self.arch.moe
            else 0
        )
        self.moe_layers: List[bool] = [self.arch.moe and _is_moe_layer(cfg, i) for i in range(self.num_layers)]
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

    def check_parallel(self, parallel: ParallelConfig) -> None:
        """UserError unless the parallel layout fits this model (heads, widths, experts)."""
        self.check_tp(parallel.tp)
        if not self.arch.moe:
            if parallel.ep > 1 or parallel.etp > 1:
                raise UserError(
                    f"parallel.ep={parallel.ep} parallel.etp={parallel.etp}: this {self.model_type} model "
                    "has no experts (expert parallelism needs a mixture-of-experts model)"
                )
            return
        if self.num_experts % parallel.ep:
            raise UserError(
                f"parallel.ep={parallel.ep} must divide the {self.num_experts} experts of this {self.model_type} model"
            )
        moe_ffn = int(getattr(self.hf_config, "moe_intermediate_size", None) or self.ffn_hidden_size)
        if moe_ffn % parallel.etp:
            raise UserError(f"parallel.etp={parallel.etp} must divide the expert width {moe_ffn}")

    def check_tp(self, tp: int) -> None:
        """UserError unless `tp` divides the heads and the MLP width."""
        if self.num_attention_heads % tp or self.num_kv_heads % tp:
            raise UserError(
                f"parallel.tp={tp} must divide num_attention_heads={self.num_attention_heads} and "
                f"num_key_value_heads={self.num_kv_heads} of this {self.model_type} model"
            )
        if self.ffn_hidden_size % tp:
            raise UserError(f"parallel.tp={tp} must divide intermediate_size={self.ffn_hidden_size}")

    def transformer_config(
        self, model_cfg: Optional[ModelConfig] = None, parallel_cfg: Optional[ParallelConfig] = None
    ):
        """megatron-core TransformerConfig for this model under `model_cfg` / `parallel_cfg`
        (None = the schema defaults: auto dtype, tp = pp = 1)."""
        from megatron.core.transformer import TransformerConfig

        return TransformerConfig(**self.transformer_config_kwargs(model_cfg, parallel_cfg))

    def transformer_config_kwargs(
        self, model_cfg: Optional[ModelConfig] = None, parallel_cfg: Optional[ParallelConfig] = None
    ) -> Dict[str, Any]:
        """The keyword arguments of `transformer_config` (all TransformerConfig fields we set)."""
        return transformer_config_kwargs(self, model_cfg, parallel_cfg)

    def layer_spec(self, model_cfg: Optional[ModelConfig] = None, config: Any = None):
        """TE layer spec (transformer_impl=transformer_engine, or auto with TE) or local + SDPA;
        for MoE models the block spec of `config` (the TransformerConfig)."""
        return layer_spec(
            ModelConfig() if model_cfg is None else model_cfg, qk_layernorm=self.arch.qk_norm, config=config
        )

    # ------------------------------------------------------------------ model
    def build_model(
        self,
        model_cfg: Optional[ModelConfig] = None,
        parallel_cfg: Optional[ParallelConfig] = None,
        *,
        perform_initialization: bool = True,
        padded_vocab_size: Optional[int] = None,
    ):
        """GPTModel for this rank's pipeline stage (needs `init_distributed(tp, pp)` first).

        perform_initialization=False skips the random init (the weights are loaded next); the
        padded vocabulary rows are zeroed either way. padded_vocab_size None = our rule
        (`padded_vocab_size(tp)`); a checkpoint's own size (Megatron-LM's rule) is passed here.
        """
        return build_gpt_model(
            self,
            model_cfg,
            parallel_cfg,
            perform_initialization=perform_initialization,
            padded_vocab_size=padded_vocab_size,
        )

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
        return [h.format(layer=layer, expert=expert) for layer, expert, row in self._plan() for h in row.hf]

    def _in_layer(self, row: Param, layer: int) -> bool:
        return row.mlp is None or (row.mlp == "moe") == self.moe_layers[layer]

    def _plan(self) -> List[Tuple[Optional[int], Optional[int], Param]]:
        """(global layer or None, global expert or None, row) in export order: embeddings,
        layers 0..L-1 (each expert row once per expert), final norm, head."""
        rows = self._params()
        plan: List[Tuple[Optional[int], Optional[int], Param]] = [
            (None, None, r) for r in rows if not r.per_layer and r.layout is layouts.EMBEDDING
        ]
        for i in range(self.num_layers):
            for r in rows:
                if r.per_layer and self._in_layer(r, i):
                    plan.extend((i, e, r) for e in (range(self.num_experts) if r.per_expert else [None]))
        plan.extend((None, None, r) for r in rows if not r.per_layer and r.layout is not layouts.EMBEDDING)
        return plan

    @staticmethod
    def _local_layers(module: Any) -> Dict[int, int]:
        """global layer index -> local index in this stage's decoder.layers."""
        decoder = getattr(module, "decoder", None)
        if decoder is None:
            return {}
        return {layer.layer_number - 1: j for j, layer in enumerate(decoder.layers)}

    def _local_params(
        self, module: Any
    ) -> List[Tuple[Optional[int], Optional[int], Param, str, torch.nn.Parameter, Tuple[str, ...]]]:
        """(global layer, global expert, row, megatron name, parameter, HF names) for every table
        row on this rank (expert rows: the experts of this expert-parallel rank)."""
        from sppo_megatron.models.groups import local_expert_range

        params = dict(module.named_parameters())
        local = self._local_layers(module)
        first_expert, num_local = local_expert_range(self.num_experts)
        out = []
        for layer, expert, row in self._plan():
            if row.per_layer:
                if layer not in local:
                    continue
                if expert is not None and not first_expert <= expert < first_expert + num_local:
                    continue
                local_expert = None if expert is None else expert - first_expert
                candidates = [m.format(layer=local[layer], expert=local_expert) for m in row.megatron]
                found = [c for c in candidates if c in params]
                if not found:
                    raise RuntimeError(
                        f"{self.model_type} table row {row.hf[0]} has no parameter in the model (tried {candidates})"
                    )
            else:
                found = [m for m in row.megatron if m in params]
                if not found:
                    continue
            hf = tuple(h.format(layer=layer, expert=expert) for h in row.hf)
            out.append((layer, expert, row, found[0], params[found[0]], hf))
        if self.tied and "output_layer.weight" in params:
            # tied embeddings with PP > 1: the last stage keeps its own copy of the embedding
            embed = next(r for r in self.arch.params if r.layout is layouts.EMBEDDING)
            out.append(
                (
                    None,
                    None,
                    Param(("output_layer.weight",), embed.hf, layouts.OUTPUT),
                    "output_layer.weight",
                    params["output_layer.weight"],
                    embed.hf,
                )
            )
        return out

    # ------------------------------------------------------------------ HF -> megatron
    def load_hf_weights(self, model: Any, hf_dir: str) -> None:
        """Fill this rank's shards from an HF safetensors directory, reading only what it needs.

        Each tensor is read as the row/column slice this TP rank (expert rows: this
        expert-tensor-parallel rank, only this expert-parallel rank's experts) holds
        (safetensors `get_slice`), so memory stays bounded by the largest local shard plus one
        HF tensor slice.
        """
        from sppo_megatron.models.groups import TensorGroups

        module = unwrap_model(model)
        groups = TensorGroups()
        reader = SafetensorsReader(hf_dir)
        loaded = set()
        try:
            with torch.no_grad():
                for _, _, row, mname, param, hf_names in self._local_params(module):
                    tp, r = groups.split(row)
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
    def export_hf_weights(self, model: Any, trainable_only: bool = False) -> Iterator[Tuple[str, torch.Tensor]]:
        """Yield (HF name, full tensor) for the whole model, one parameter at a time.

        Collective: every rank of the model-parallel group must iterate it to the end, in step.
        Every rank receives every tensor (gathered across TP -- expert rows across expert TP --,
        broadcast from the expert-parallel rank holding the expert and from the owning pipeline
        stage), in the deterministic order of `hf_names()`; padded vocabulary rows are stripped
        and `lm_head.weight` is omitted when embeddings are tied. A weight with a LoRA adapter is
        exported merged (W + alpha / rank * B A, in W's dtype). Tensors have the model's
        parameter dtype and may be views of the model's parameters (TP=PP=EP=1 and replicated
        tensors without an adapter: no copy where the layout allows, see `Layout.assemble`):
        they are valid while the model is unchanged, and a consumer that keeps one past that (or
        writes to it) must copy it. At most one parameter's full tensors are alive at a time
        inside the generator. trainable_only: only the tensors training can change (with LoRA,
        the adapted ones: the rest of the base is frozen).
        """
        from sppo_megatron.models import export

        for _, names, tensors in export.stream(self, model, export.weight_pieces(trainable_only)):
            yield from zip(names, tensors)

    def export_lora_factors(self, model: Any) -> Iterator[Tuple[str, str, torch.Tensor]]:
        """Yield (HF name of an adapted weight, "lora_A" | "lora_B", full factor) in the HF
        layout: A is rank x in_features and B out_features x rank of that HF tensor, so
        W_hf + alpha / rank * B A is its merged weight (a fused megatron weight's factors are
        split like the weight: q/k/v and gate/up share A). Collective, like `export_hf_weights`."""
        from sppo_megatron.models import export

        for tag, names, tensors in export.stream(self, model, export.factor_pieces):
            if tag is None:
                raise RuntimeError(f"{names[0]}: a LoRA factor without its lora_A / lora_B tag")
            for name, t in zip(names, tensors):
                yield name, tag, t


def _is_moe_layer(cfg: Any, layer: int) -> bool:
    """HF's rule (Qwen2/3-MoE): experts unless listed in mlp_only_layers, every
    decoder_sparse_step-th layer (1-based); Mixtral has neither key: every layer."""
    if layer in (getattr(cfg, "mlp_only_layers", None) or []):
        return False
    step = int(getattr(cfg, "decoder_sparse_step", None) or 1)
    return (layer + 1) % step == 0


def get_bridge(hf_config: Any) -> Bridge:
    """The bridge for a transformers PretrainedConfig (or an HF directory path)."""
    if isinstance(hf_config, str):
        hf_config = load_hf_config(hf_config, "model")
    return Bridge(hf_config)
