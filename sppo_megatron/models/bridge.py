"""HF <-> Megatron bridge: TransformerConfig, layer spec, model construction, weight load/export.

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
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from sppo_megatron.errors import UserError
from sppo_megatron.models.arch import Architecture, Param, get_architecture
from sppo_megatron.models.dist_ckpt import unwrap_model
from sppo_megatron.platform.distributed import current_device

VOCAB_MULTIPLE = 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# megatron-core's RotaryEmbedding._apply_scaling hard-codes these llama3 parameters
_MEGATRON_LLAMA3 = (1.0, 4.0, 8192)


def resolve_dtype(name: Optional[str]) -> torch.dtype:
    """'auto' -> bf16 with CUDA, fp32 without; else bf16 / fp16 / fp32."""
    if name in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"dtype {name!r}: expected auto, bf16, fp16 or fp32")
    return DTYPES[name]


def _get(cfg: Any, name: str, default: Any) -> Any:
    """cfg.name (dataclass, OmegaConf node, namespace) or cfg[name] (dict); default when unset/None."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class Rope:
    theta: float
    kind: str  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def rope_settings(hf_config: Any) -> Rope:
    """RoPE base and scaling from transformers 5 `rope_parameters` (or 4.x `rope_theta`/`rope_scaling`)."""
    params: Dict[str, Any] = {}
    legacy = getattr(hf_config, "rope_scaling", None)
    if isinstance(legacy, dict):
        params.update(legacy)
    new = getattr(hf_config, "rope_parameters", None)
    if isinstance(new, dict):
        if new and all(isinstance(v, dict) for v in new.values()):
            raise UserError("per-layer-type rope_parameters are not supported")
        params.update(new)
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    theta = 10000.0 if theta is None else float(theta)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    partial = getattr(hf_config, "partial_rotary_factor", None) or params.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        raise UserError(f"partial_rotary_factor={partial} is not supported")
    if kind == "default":
        return Rope(theta, "default")
    if kind == "linear":
        return Rope(theta, "linear", factor=float(params["factor"]))
    if kind == "llama3":
        return Rope(
            theta,
            "llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
        )
    raise UserError(f"rope_type {kind!r} is not supported (supported: default, linear, llama3)")


def llama3_inv_freq(rope: Rope, head_dim: int, device: Any = None) -> torch.Tensor:
    """Llama 3.x scaled inverse frequencies, as transformers' `_compute_llama3_parameters`."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def pipeline_split(num_layers: int, pp: int) -> List[int]:
    """Layers per pipeline stage. Even when divisible; otherwise megatron's uneven split:
    equal middle stages, the remainder shared by the first and last stage (first >= last)."""
    if pp < 1:
        raise UserError(f"parallel.pp={pp} must be >= 1")
    if pp > num_layers:
        raise UserError(f"parallel.pp={pp} exceeds the model's {num_layers} layers")
    if num_layers % pp == 0:
        return [num_layers // pp] * pp
    if pp == 2:
        first = (num_layers + 1) // 2
        return [first, num_layers - first]
    middle = -(-num_layers // pp)
    rest = num_layers - (pp - 2) * middle
    if rest < 2:
        middle = num_layers // pp
        rest = num_layers - (pp - 2) * middle
    first = (rest + 1) // 2
    return [first] + [middle] * (pp - 2) + [rest - first]


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

    def _check_tp(self, tp: int) -> None:
        if self.num_attention_heads % tp or self.num_kv_heads % tp:
            raise UserError(
                f"parallel.tp={tp} must divide num_attention_heads={self.num_attention_heads} and "
                f"num_key_value_heads={self.num_kv_heads} of this {self.model_type} model"
            )
        if self.ffn_hidden_size % tp:
            raise UserError(f"parallel.tp={tp} must divide intermediate_size={self.ffn_hidden_size}")

    def transformer_config(self, model_cfg: Any = None, parallel_cfg: Any = None):
        """megatron-core TransformerConfig for this model under `model_cfg` / `parallel_cfg`.

        model_cfg: ModelConfig-like (dtype, transformer_impl, fp8, fp8_recipe, recompute; None =
        defaults); parallel_cfg: ParallelConfig-like (tp, pp, sequence_parallel; None = 1, 1).
        """
        from megatron.core.transformer import TransformerConfig

        return TransformerConfig(**self.transformer_config_kwargs(model_cfg, parallel_cfg))

    def transformer_config_kwargs(self, model_cfg: Any = None, parallel_cfg: Any = None) -> Dict[str, Any]:
        """The keyword arguments of `transformer_config` (all TransformerConfig fields we set)."""
        from sppo_megatron.models.specs import check_fp8_support

        tp = int(_get(parallel_cfg, "tp", 1))
        pp = int(_get(parallel_cfg, "pp", 1))
        sequence_parallel = bool(_get(parallel_cfg, "sequence_parallel", False)) and tp > 1
        self._check_tp(tp)
        dtype = resolve_dtype(_get(model_cfg, "dtype", "auto"))
        fp8 = _get(model_cfg, "fp8", None)
        if fp8 is not None:
            check_fp8_support(model_cfg)
        kwargs: Dict[str, Any] = dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_kv_heads,
            kv_channels=self.head_dim,
            layernorm_epsilon=self.rms_norm_eps,
            normalization="RMSNorm",
            gated_linear_unit=True,
            activation_func=torch.nn.functional.silu,
            add_bias_linear=False,
            add_qkv_bias=self.arch.qkv_bias,
            qk_layernorm=self.arch.qk_norm,
            rotary_interleaved=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=float(getattr(self.hf_config, "initializer_range", 0.02) or 0.02),
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            sequence_parallel=sequence_parallel,
            params_dtype=dtype,
            pipeline_dtype=dtype,
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            use_cpu_initialization=not torch.cuda.is_available(),
        )
        split = pipeline_split(self.num_layers, pp)
        if len(set(split)) > 1:
            kwargs["num_layers_in_first_pipeline_stage"] = split[0]
            kwargs["num_layers_in_last_pipeline_stage"] = split[-1]
        recompute = _get(model_cfg, "recompute", "none")
        if recompute == "selective":
            kwargs["recompute_granularity"] = "selective"
        elif recompute == "full":
            kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
        elif recompute != "none":
            raise UserError(f"model.recompute={recompute!r}: expected none, selective or full")
        if fp8 is not None:
            kwargs.update(fp8=fp8, fp8_recipe=_get(model_cfg, "fp8_recipe", "delayed"))
        kwargs.update(self.arch.extra_transformer_kwargs(self.hf_config))
        return kwargs

    def layer_spec(self, model_cfg: Any = None):
        """TE layer spec (transformer_impl=transformer_engine, or auto with TE) or local + SDPA."""
        from sppo_megatron.models.specs import layer_spec

        return layer_spec(model_cfg, qk_layernorm=self.arch.qk_norm)

    # ------------------------------------------------------------------ model
    def build_model(self, model_cfg: Any = None, parallel_cfg: Any = None, *, perform_initialization: bool = True):
        """GPTModel for this rank's pipeline stage (needs `init_distributed(tp, pp)` first).

        perform_initialization=False skips the random init (the weights are loaded next); the
        padded vocabulary rows are zeroed either way.
        """
        from megatron.core import parallel_state
        from megatron.core.models.gpt import GPTModel

        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("build_model needs megatron's parallel state: call init_distributed(tp, pp) first")
        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        want_tp, want_pp = int(_get(parallel_cfg, "tp", tp)), int(_get(parallel_cfg, "pp", pp))
        if (want_tp, want_pp) != (tp, pp):
            raise RuntimeError(f"parallel config tp={want_tp} pp={want_pp} but megatron is initialised with tp={tp} pp={pp}")
        config = self.transformer_config(model_cfg, _Parallel(tp, pp, bool(_get(parallel_cfg, "sequence_parallel", False))))
        config.perform_initialization = perform_initialization
        rope = self.rope
        model = GPTModel(
            config=config,
            transformer_layer_spec=self.layer_spec(model_cfg),
            vocab_size=self.padded_vocab_size(tp),
            max_sequence_length=self.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
            parallel_output=True,
            share_embeddings_and_output_weights=self.tied,
            position_embedding_type="rope",
            rotary_percent=1.0,
            rotary_base=rope.theta,
            rope_scaling=rope.kind == "llama3",
            rope_scaling_factor=rope.factor if rope.kind == "llama3" else 8.0,
            seq_len_interpolation_factor=rope.factor if rope.kind == "linear" else None,
        )
        if rope.kind == "llama3" and (
            rope.low_freq_factor,
            rope.high_freq_factor,
            rope.original_max_position_embeddings,
        ) != _MEGATRON_LLAMA3:
            # megatron-core hard-codes low/high freq factors 1/4 and 8192 original positions
            emb = model.rotary_pos_emb
            emb.inv_freq = llama3_inv_freq(rope, self.head_dim, device=emb.inv_freq.device).to(emb.inv_freq.dtype)
        if config.params_dtype != torch.float32:
            # the local spec's torch RMSNorm ignores params_dtype; megatron's Float16Module would
            # cast it later, we do it here so the weights (and checkpoints) are uniformly typed
            model.to(config.params_dtype)
        if not perform_initialization:
            _set_tensor_parallel_attributes(model, config)
        self._zero_vocab_padding(model)
        return model

    def _zero_vocab_padding(self, model: Any) -> None:
        from megatron.core import parallel_state

        r = parallel_state.get_tensor_model_parallel_rank()
        module = unwrap_model(model)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
                    start = r * p.shape[0]
                    keep = max(0, min(p.shape[0], self.vocab_size - start))
                    p[keep:].zero_()

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
        plan: List[Tuple[Optional[int], Param]] = [(None, r) for r in rows if not r.per_layer and r.layout == "embedding"]
        for i in range(self.num_layers):
            plan.extend((i, r) for r in rows if r.per_layer)
        plan.extend((None, r) for r in rows if not r.per_layer and r.layout != "embedding")
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
            embed = next(r for r in self.arch.params if r.layout == "embedding")
            out.append((None, Param(("output_layer.weight",), embed.hf, "output"), "output_layer.weight", params["output_layer.weight"], embed.hf))
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
                    tensor = self._read_shard(reader, row.layout, hf_names, tuple(param.shape), tp, r)
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

    def _read_shard(self, reader: Any, layout: str, names: Tuple[str, ...], shape: Tuple[int, ...], tp: int, r: int) -> torch.Tensor:
        if layout == "replicated":
            return reader.read(names[0])
        if layout in ("embedding", "output"):
            full = reader.shape(names[0])
            if full[0] != self.vocab_size:
                raise UserError(f"{reader.hf_dir}: {names[0]} has {full[0]} rows but config.json says vocab_size={self.vocab_size}")
            start = r * shape[0]
            stop = min(start + shape[0], self.vocab_size)
            out = torch.zeros(shape, dtype=torch.float32)
            if stop > start:
                part = reader.read(names[0], rows=(start, stop))
                out = out.to(part.dtype)
                out[: stop - start] = part
            return out
        if layout == "row":
            n = shape[1]
            return reader.read(names[0], cols=(r * n, (r + 1) * n))
        if layout == "qkv":
            groups = self.num_kv_heads // tp
            per_group_q = (self.num_attention_heads // self.num_kv_heads) * self.head_dim
            hd = self.head_dim
            q = reader.read(names[0], rows=(r * groups * per_group_q, (r + 1) * groups * per_group_q))
            k = reader.read(names[1], rows=(r * groups * hd, (r + 1) * groups * hd))
            v = reader.read(names[2], rows=(r * groups * hd, (r + 1) * groups * hd))
            rest = tuple(q.shape[1:])
            fused = torch.cat(
                [q.reshape(groups, per_group_q, *rest), k.reshape(groups, hd, *rest), v.reshape(groups, hd, *rest)], dim=1
            )
            return fused.reshape(-1, *rest)
        if layout == "gate_up":
            n = shape[0] // 2
            gate = reader.read(names[0], rows=(r * n, (r + 1) * n))
            up = reader.read(names[1], rows=(r * n, (r + 1) * n))
            return torch.cat([gate, up], dim=0)
        raise AssertionError(layout)

    # ------------------------------------------------------------------ megatron -> HF
    def _hf_shapes(self, layout: str, local_shape: Tuple[int, ...], tp: int) -> List[Tuple[int, ...]]:
        if layout == "replicated":
            return [tuple(local_shape)]
        if layout in ("embedding", "output"):
            return [(self.vocab_size,) + tuple(local_shape[1:])]
        if layout == "row":
            return [(local_shape[0], local_shape[1] * tp)]
        rest = tuple(local_shape[1:])
        if layout == "qkv":
            q = self.num_attention_heads * self.head_dim
            kv = self.num_kv_heads * self.head_dim
            return [(q,) + rest, (kv,) + rest, (kv,) + rest]
        if layout == "gate_up":
            n = local_shape[0] * tp // 2
            return [(n,) + rest, (n,) + rest]
        raise AssertionError(layout)

    def _assemble(self, layout: str, shards: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Full HF tensor(s) from the TP shards of one megatron parameter (rank order).

        Each result is written once: the shards are joined into one tensor (with one shard,
        TP=1, that is the parameter itself, not copied), the HF tensors are read from it
        through views and copied into new tensors."""
        if len(shards) == 1 or layout == "replicated":
            shards = shards[:1]
            full = shards[0]
        elif layout == "row":
            full = torch.cat(list(shards), dim=1)
        elif layout == "gate_up":
            halves = [s.chunk(2, dim=0) for s in shards]
            return [torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)]
        else:
            full = torch.cat(list(shards), dim=0)
        joined = len(shards) > 1  # `full` is already a new tensor
        return [view if joined and view is full else _fresh(view, shape) for view, shape in self._views(layout, full)]

    def _views(self, layout: str, full: torch.Tensor) -> List[Tuple[torch.Tensor, Tuple[int, ...]]]:
        """(view of `full`, HF shape) for each HF tensor of one whole megatron parameter."""
        if layout in ("replicated", "row"):
            return [(full, tuple(full.shape))]
        if layout in ("embedding", "output"):
            view = full[: self.vocab_size]
            return [(view, tuple(view.shape))]
        if layout == "qkv":
            hd = self.head_dim
            per_group_q = (self.num_attention_heads // self.num_kv_heads) * hd
            rest = tuple(full.shape[1:])
            grouped = full.reshape(self.num_kv_heads, per_group_q + 2 * hd, *rest)
            return [(v, (self.num_kv_heads * v.shape[1], *rest)) for v in torch.split(grouped, [per_group_q, hd, hd], dim=1)]
        if layout == "gate_up":
            return [(v, tuple(v.shape)) for v in full.chunk(2, dim=0)]
        raise AssertionError(layout)

    def export_hf_weights(self, model: Any) -> Iterator[Tuple[str, torch.Tensor]]:
        """Yield (HF name, full tensor) for the whole model, one parameter at a time.

        Collective: every rank of the model-parallel group must iterate it to the end, in step.
        Every rank receives every tensor (gathered across TP, broadcast from the owning pipeline
        stage), in the deterministic order of `hf_names()`; padded vocabulary rows are stripped
        and `lm_head.weight` is omitted when embeddings are tied. Tensors are new (they do not
        alias model parameters) and have the model's parameter dtype. At most one parameter's
        full tensors are alive at a time inside the generator.
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
            if row.layout == "output" and self.tied:
                continue  # last-stage copy of a tied embedding: exported once, as the embedding
            key = (layer, row.hf)
            local[key] = (row, param)
            meta[key] = (self._hf_shapes(row.layout, tuple(param.shape), tp), param.dtype)
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
                if tp > 1 and row.layout != "replicated":
                    data = data.contiguous()
                    shards = [torch.empty_like(data) for _ in range(tp)]
                    dist.all_gather(shards, data, group=tp_group)
                else:
                    shards = [data]
                tensors = self._assemble(row.layout, shards)
                del shards
            else:
                tensors = [torch.empty(s, dtype=dtype, device=current_device()) for s in shapes]
            if pp > 1:
                for t in tensors:
                    dist.broadcast(t, src=src, group=pp_group)
            for name, t in zip(names, tensors):
                yield name, t
            del tensors


def _set_tensor_parallel_attributes(model: Any, config: Any) -> None:
    """megatron-core sets `tensor_model_parallel` / `partition_dim` / `partition_stride` on TP
    weights only inside its random init; without them the grad-norm treats TP shards as
    duplicates. Set them when the init is skipped (local layers; TE modules set their own)."""
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        set_tensor_model_parallel_attributes,
    )

    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or getattr(weight, "tensor_model_parallel", False):
            continue
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            stride = 2 if name.endswith("linear_fc1") and config.gated_linear_unit else 1
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=0, stride=stride)
        elif isinstance(module, RowParallelLinear):
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=1, stride=1)


@dataclass(frozen=True)
class _Parallel:
    tp: int
    pp: int
    sequence_parallel: bool = False


def _fresh(view: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """A new contiguous tensor of `shape` holding the values of `view` (one copy, never an alias)."""
    out = torch.empty(shape, dtype=view.dtype, device=view.device)
    out.view(view.shape).copy_(view)
    return out


def get_bridge(hf_config: Any) -> Bridge:
    """The bridge for a transformers PretrainedConfig (or an HF directory path)."""
    if isinstance(hf_config, str):
        from sppo_megatron.models.hf_io import load_hf_config

        hf_config = load_hf_config(hf_config, "model")
    return Bridge(hf_config)


def build_model(hf_config: Any, model_cfg: Any = None, parallel_cfg: Any = None, *, perform_initialization: bool = True):
    """GPTModel for this rank's pipeline stage (see `Bridge.build_model`)."""
    return get_bridge(hf_config).build_model(model_cfg, parallel_cfg, perform_initialization=perform_initialization)


def export_hf_weights(model: Any, hf_config: Any) -> Iterator[Tuple[str, torch.Tensor]]:
    """Module-level form of `Bridge.export_hf_weights`."""
    return get_bridge(hf_config).export_hf_weights(model)
