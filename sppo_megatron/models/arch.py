"""The name/layout tables: one per architecture, the single source of truth for HF <-> Megatron.

Every weight of a supported model is one `Param` row of its architecture's table. A row says
which megatron-core parameter(s) hold it, which Hugging Face tensor(s) it corresponds to and
how the layouts relate. The HF checkpoint loader, the streaming export (used by the converter,
the HF export of a training run and the online weight sync to the rollout engine) all walk the
same table, so a name or a layout lives in exactly one place.

Templates: ``{layer}`` in a megatron name is the LOCAL index of the layer in this pipeline
stage's ``decoder.layers`` list; ``{layer}`` in an HF name is the GLOBAL layer index. Likewise
``{expert}`` (per-expert rows of mixture-of-experts layers): the LOCAL expert index on this
expert-parallel rank in a megatron name, the GLOBAL expert index in an HF name.

Mixture-of-experts models mix two kinds of layers (HF ``mlp_only_layers`` /
``decoder_sparse_step``): a row with ``mlp="dense"`` exists only in dense-MLP layers, one with
``mlp="moe"`` only in expert layers. Expert rows are split across expert-tensor-parallel ranks
(ETP) by their layout, and across expert-parallel ranks (EP) by expert.

Layouts (how a row's tensors are split across tensor-parallel ranks) are objects in layouts.py.

Where the local and the Transformer Engine layer specs name a parameter differently (the
pre-attention / pre-MLP norms are fused into the following linear by TE), ``megatron`` lists
the alternatives; the one present in the model is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from sppo_megatron.errors import UserError
from sppo_megatron.models import layouts
from sppo_megatron.models.layouts import Layout


@dataclass(frozen=True)
class Param:
    """One weight: megatron name alternatives, HF name(s), layout, and when it is present."""

    megatron: Tuple[str, ...]
    hf: Tuple[str, ...]
    layout: Layout
    per_layer: bool = False
    # Present only when this feature of the HF config is on ("untied": lm_head not tied).
    when: Optional[str] = None
    # Layer kind the row belongs to: None = every layer, "dense" / "moe" = MLP / expert layers only.
    mlp: Optional[str] = None
    # One row per routed expert ({expert} in the names); split across ETP, distributed over EP.
    per_expert: bool = False

    def __post_init__(self) -> None:
        assert isinstance(self.layout, Layout), self.layout
        assert len(self.hf) == self.layout.num_hf, (self.hf, self.layout)


def _layer(megatron: Any, hf: Any, layout: Layout, when: Optional[str] = None, mlp: Optional[str] = None) -> Param:
    megatron = (megatron,) if isinstance(megatron, str) else tuple(megatron)
    hf = (hf,) if isinstance(hf, str) else tuple(hf)
    return Param(
        megatron=tuple("decoder.layers.{layer}." + m for m in megatron),
        hf=tuple("model.layers.{layer}." + h for h in hf),
        layout=layout,
        per_layer=True,
        when=when,
        mlp=mlp,
        per_expert="{expert}" in hf[0],
    )


# ---------------------------------------------------------------------------------------------
# Rows shared by the Llama-family tables (each architecture below lists its own rows).
# ---------------------------------------------------------------------------------------------
EMBED = Param(("embedding.word_embeddings.weight",), ("model.embed_tokens.weight",), layouts.EMBEDDING)
INPUT_NORM = _layer(
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),  # local | TE spec
    "input_layernorm.weight",
    layouts.REPLICATED,
)
QKV = _layer(
    "self_attention.linear_qkv.weight",
    ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    layouts.QKV,
)
QKV_BIAS = _layer(
    "self_attention.linear_qkv.bias",
    ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    layouts.QKV,
)
Q_NORM = _layer("self_attention.q_layernorm.weight", "self_attn.q_norm.weight", layouts.REPLICATED)
K_NORM = _layer("self_attention.k_layernorm.weight", "self_attn.k_norm.weight", layouts.REPLICATED)
O_PROJ = _layer("self_attention.linear_proj.weight", "self_attn.o_proj.weight", layouts.ROW)
POST_ATTN_NORM = _layer(
    ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),  # local | TE spec
    "post_attention_layernorm.weight",
    layouts.REPLICATED,
)
GATE_UP = _layer("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), layouts.GATE_UP)
DOWN = _layer("mlp.linear_fc2.weight", "mlp.down_proj.weight", layouts.ROW)
DENSE_GATE_UP = _layer(
    "mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), layouts.GATE_UP, mlp="dense"
)
DENSE_DOWN = _layer("mlp.linear_fc2.weight", "mlp.down_proj.weight", layouts.ROW, mlp="dense")
FINAL_NORM = Param(("decoder.final_layernorm.weight",), ("model.norm.weight",), layouts.REPLICATED)
LM_HEAD = Param(("output_layer.weight",), ("lm_head.weight",), layouts.OUTPUT, when="untied")


# ---------------------------------------------------------------------------------------------
# Mixture-of-experts rows. megatron-core's expert modules: SequentialMLP (local spec, CPU) holds
# local_experts.{e}.linear_fc1/fc2; TE's grouped linear (GPU) holds linear_fc1.weight{e}; both
# are listed, the one present is used, and dist checkpoints of either load into the other.
# ---------------------------------------------------------------------------------------------
def _experts(hf_prefix: str, gate: str, up: str, down: str) -> Tuple[Param, Param]:
    fc1 = ("mlp.experts.local_experts.{expert}.linear_fc1.weight", "mlp.experts.linear_fc1.weight{expert}")
    fc2 = ("mlp.experts.local_experts.{expert}.linear_fc2.weight", "mlp.experts.linear_fc2.weight{expert}")
    expert = hf_prefix + ".experts.{expert}."
    return (
        _layer(fc1, (expert + gate + ".weight", expert + up + ".weight"), layouts.GATE_UP, mlp="moe"),
        _layer(fc2, expert + down + ".weight", layouts.ROW, mlp="moe"),
    )


ROUTER = _layer("mlp.router.weight", "mlp.gate.weight", layouts.REPLICATED, mlp="moe")
EXPERT_GATE_UP, EXPERT_DOWN = _experts("mlp", "gate_proj", "up_proj", "down_proj")
SHARED_GATE_UP = _layer(
    "mlp.shared_experts.linear_fc1.weight",
    ("mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight"),
    layouts.GATE_UP,
    mlp="moe",
)
SHARED_DOWN = _layer(
    "mlp.shared_experts.linear_fc2.weight", "mlp.shared_expert.down_proj.weight", layouts.ROW, mlp="moe"
)
SHARED_GATE = _layer("mlp.shared_experts.gate_weight", "mlp.shared_expert_gate.weight", layouts.REPLICATED, mlp="moe")
MIXTRAL_ROUTER = _layer("mlp.router.weight", "block_sparse_moe.gate.weight", layouts.REPLICATED, mlp="moe")
MIXTRAL_GATE_UP, MIXTRAL_DOWN = _experts("block_sparse_moe", "w1", "w3", "w2")


# ---------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------
def _refused(cfg: Any, *rules: Tuple[str, str]) -> List[str]:
    """The problems of `cfg`: one per (HF config attribute, message) whose attribute is set."""
    return [message for attr, message in rules if float(getattr(cfg, attr, 0) or 0)]


def _common_checks(cfg: Any) -> List[str]:
    act = getattr(cfg, "hidden_act", "silu")
    problems = [] if act in ("silu", "swish") else [f"hidden_act={act!r} (only silu/SwiGLU is supported)"]
    return problems + _refused(cfg, ("mlp_bias", "mlp_bias=True (MLP biases are not supported)"))


def _llama_checks(cfg: Any) -> List[str]:
    return _common_checks(cfg) + _refused(
        cfg, ("attention_bias", "attention_bias=True (q/k/v/o biases are not supported for this architecture)")
    )


def _qwen_checks(cfg: Any) -> List[str]:
    return _common_checks(cfg) + _refused(
        cfg, ("use_sliding_window", "use_sliding_window=True (Qwen sliding-window layers are not supported)")
    )


def _qwen3_checks(cfg: Any) -> List[str]:
    return _qwen_checks(cfg) + _refused(
        cfg, ("attention_bias", "attention_bias=True (Qwen3 with q/k/v/o biases is not supported)")
    )


def _moe_checks(cfg: Any) -> List[str]:
    return _common_checks(cfg) + _refused(
        cfg,
        ("use_sliding_window", "use_sliding_window=True (sliding-window layers are not supported)"),
        ("router_jitter_noise", "router_jitter_noise > 0 (router jitter is not supported)"),
    )


def _qwen3_moe_checks(cfg: Any) -> List[str]:
    return _moe_checks(cfg) + _refused(
        cfg, ("attention_bias", "attention_bias=True (Qwen3-MoE with q/k/v/o biases is not supported)")
    )


def _mixtral_checks(cfg: Any) -> List[str]:
    return _moe_checks(cfg) + _refused(
        cfg, ("sliding_window", "sliding_window set (Mixtral sliding-window attention is not supported)")
    )


def _no_extra(cfg: Any) -> Dict[str, Any]:
    return {}


def _mistral_extra(cfg: Any) -> Dict[str, Any]:
    window = getattr(cfg, "sliding_window", None)
    if window:
        # HF: query i attends keys j with i - window < j <= i; megatron: (left, right) = (window-1, 0)
        return {"window_size": (int(window) - 1, 0)}
    return {}


@dataclass(frozen=True)
class Architecture:
    """Everything the bridge needs to know about one HF `model_type`."""

    model_type: str
    hf_class: str  # transformers class name written into config.json "architectures"
    params: Tuple[Param, ...]
    checks: Callable[[Any], List[str]] = field(default=_common_checks)
    extra_transformer_kwargs: Callable[[Any], Dict[str, Any]] = field(default=_no_extra)
    notes: str = ""

    @property
    def qkv_bias(self) -> bool:
        """q/k/v projections have biases (megatron add_qkv_bias)."""
        return QKV_BIAS in self.params

    @property
    def qk_norm(self) -> bool:
        """Per-head RMSNorm on q and k (megatron qk_layernorm)."""
        return Q_NORM in self.params

    @property
    def moe(self) -> bool:
        """Mixture-of-experts layers (routed experts)."""
        return any(p.per_expert for p in self.params)

    @property
    def shared_expert(self) -> bool:
        """A shared expert next to the routed ones, with a sigmoid gate (Qwen2-MoE)."""
        return SHARED_GATE in self.params


LLAMA = Architecture(
    model_type="llama",
    hf_class="LlamaForCausalLM",
    params=(EMBED, INPUT_NORM, QKV, O_PROJ, POST_ATTN_NORM, GATE_UP, DOWN, FINAL_NORM, LM_HEAD),
    checks=_llama_checks,
    notes="Llama 2, 3, 3.1 (rope_type llama3), 3.2 (tied embeddings)",
)

QWEN2 = Architecture(
    model_type="qwen2",
    hf_class="Qwen2ForCausalLM",
    params=(EMBED, INPUT_NORM, QKV, QKV_BIAS, O_PROJ, POST_ATTN_NORM, GATE_UP, DOWN, FINAL_NORM, LM_HEAD),
    checks=_qwen_checks,
    notes="Qwen2 / Qwen2.5: q/k/v biases; small sizes tie embeddings",
)

QWEN3 = Architecture(
    model_type="qwen3",
    hf_class="Qwen3ForCausalLM",
    params=(EMBED, INPUT_NORM, QKV, Q_NORM, K_NORM, O_PROJ, POST_ATTN_NORM, GATE_UP, DOWN, FINAL_NORM, LM_HEAD),
    checks=_qwen3_checks,
    notes="Qwen3 (dense): per-head RMSNorm on q and k, no biases, head_dim independent of hidden/heads",
)

MISTRAL = Architecture(
    model_type="mistral",
    hf_class="MistralForCausalLM",
    params=(EMBED, INPUT_NORM, QKV, O_PROJ, POST_ATTN_NORM, GATE_UP, DOWN, FINAL_NORM, LM_HEAD),
    checks=_llama_checks,
    extra_transformer_kwargs=_mistral_extra,
    notes="Mistral 7B v0.1-v0.3 (sliding_window honoured)",
)

QWEN3_MOE = Architecture(
    model_type="qwen3_moe",
    hf_class="Qwen3MoeForCausalLM",
    params=(
        EMBED,
        INPUT_NORM,
        QKV,
        Q_NORM,
        K_NORM,
        O_PROJ,
        POST_ATTN_NORM,
        ROUTER,
        EXPERT_GATE_UP,
        EXPERT_DOWN,
        DENSE_GATE_UP,
        DENSE_DOWN,
        FINAL_NORM,
        LM_HEAD,
    ),
    checks=_qwen3_moe_checks,
    notes="Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B): routed experts, softmax top-k router, norm_topk_prob",
)

QWEN2_MOE = Architecture(
    model_type="qwen2_moe",
    hf_class="Qwen2MoeForCausalLM",
    params=(
        EMBED,
        INPUT_NORM,
        QKV,
        QKV_BIAS,
        O_PROJ,
        POST_ATTN_NORM,
        ROUTER,
        EXPERT_GATE_UP,
        EXPERT_DOWN,
        SHARED_GATE_UP,
        SHARED_DOWN,
        SHARED_GATE,
        DENSE_GATE_UP,
        DENSE_DOWN,
        FINAL_NORM,
        LM_HEAD,
    ),
    checks=_moe_checks,
    notes="Qwen1.5-MoE / Qwen2-MoE: routed experts plus a shared expert behind a sigmoid gate",
)

MIXTRAL = Architecture(
    model_type="mixtral",
    hf_class="MixtralForCausalLM",
    params=(
        EMBED,
        INPUT_NORM,
        QKV,
        O_PROJ,
        POST_ATTN_NORM,
        MIXTRAL_ROUTER,
        MIXTRAL_GATE_UP,
        MIXTRAL_DOWN,
        FINAL_NORM,
        LM_HEAD,
    ),
    checks=_mixtral_checks,
    notes="Mixtral 8x7B / 8x22B: every layer routed, top-2 renormalised",
)

ARCHITECTURES: Dict[str, Architecture] = {
    a.model_type: a for a in (LLAMA, QWEN2, QWEN3, MISTRAL, QWEN3_MOE, QWEN2_MOE, MIXTRAL)
}
SUPPORTED_MODEL_TYPES: Tuple[str, ...] = tuple(sorted(ARCHITECTURES))


def get_architecture(model_type: Optional[str]) -> Architecture:
    """The table for an HF `model_type`; UserError naming the supported ones otherwise."""
    arch = ARCHITECTURES.get(model_type or "")
    if arch is None:
        raise UserError(
            f"unsupported model_type {model_type!r}: supported architectures are {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return arch
