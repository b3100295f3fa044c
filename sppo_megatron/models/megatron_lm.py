"""Megatron-LM's checkpoint conventions, on top of our megatron-core dist checkpoints.

Megatron-LM's `--load DIR` reads `DIR/latest_checkpointed_iteration.txt` ("release" or an
integer N) and loads `DIR/release/` or `DIR/iter_%07d/` (a torch_dist checkpoint). Without the
tracker it starts from random weights; without `args`, `checkpoint_version` >= 3.0 and
`iteration` in the common state it cannot use `--use-checkpoint-args` or load without
`--finetune`. This module is the one place that knows those conventions:

- `megatron_lm_args`: the `argparse.Namespace` Megatron-LM pickles into the common state, with
  the architecture and parallel fields under its argument names (builtins and a torch dtype
  only, so it unpickles with `weights_only=True`);
- `megatron_lm_padded_vocab`: Megatron-LM's padding rule, a multiple of
  make_vocab_size_divisible_by * tp (ours is lcm(128, tp), see `Bridge.padded_vocab_size`);
- `resolve_checkpoint_dir` / `write_tracker`: the tracker and the iteration directory;
- `read_args` / `check_args_match`: a Megatron-LM checkpoint's `args`, checked against the HF
  config we build the model from.

The sharded tensor keys need no translation: ours are megatron-core GPTModel's, which
Megatron-LM uses under the state key "model" too.
"""

from __future__ import annotations

import argparse
import os
import pickle
from typing import Any, Dict, Optional

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError, first_line

# megatron-core is imported inside the functions that use it: the console scripts import this
# package before they silence megatron's import-time warnings, and `--help` stays quick.

TRACKER = "latest_checkpointed_iteration.txt"
RELEASE = "release"
CHECKPOINT_VERSION = 3.0
MAKE_VOCAB_SIZE_DIVISIBLE_BY = 128
# megatron-core's RotaryEmbedding._apply_scaling (used by Megatron-LM) hard-codes these llama3 factors
MEGATRON_LLAMA3 = (1.0, 4.0, 8192)


def megatron_lm_padded_vocab(vocab_size: int, tp: int, divisible_by: int = MAKE_VOCAB_SIZE_DIVISIBLE_BY) -> int:
    """Megatron-LM's `_vocab_size_with_padding`: rounded up to a multiple of divisible_by * tp."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def iteration_dir(load_dir: str, iteration: Optional[int]) -> str:
    """`load_dir/release` (iteration None) or `load_dir/iter_%07d`, as Megatron-LM names them."""
    return os.path.join(load_dir, RELEASE if iteration is None else "iter_{:07d}".format(iteration))


def write_tracker(load_dir: str, iteration: Optional[int]) -> None:
    """The tracker file; written last, so a crash never leaves one pointing at a partial directory."""
    with open(os.path.join(load_dir, TRACKER), "w", encoding="utf-8") as f:
        f.write(RELEASE if iteration is None else str(iteration))


def resolve_checkpoint_dir(path: str, what: str = "--ckpt") -> str:
    """The torch_dist directory behind `path`: the tracker's release/ or iter_N/ for a Megatron-LM
    load directory, `path` itself otherwise. A bad tracker is a UserError naming it."""
    tracker = os.path.join(path, TRACKER)
    if not os.path.isfile(tracker):
        return path
    with open(tracker, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        iteration: Optional[int] = int(text)
    except ValueError:
        if text != RELEASE:
            raise UserError(f"{what}: {tracker} holds {text!r}, expected 'release' or an iteration number") from None
        iteration = None
    ckpt = iteration_dir(path, iteration)
    if not os.path.isdir(ckpt):
        raise UserError(f"{what}: {tracker} points at {ckpt}, which does not exist")
    return ckpt


def common_state(args: argparse.Namespace, iteration: Optional[int]) -> Dict[str, Any]:
    """The non-sharded entries Megatron-LM's `load_checkpoint` reads next to "model"."""
    return {"args": args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration or 0}


def megatron_lm_args(bridge: Any, dtype: str, tp: int, pp: int, padded_vocab_size: int) -> argparse.Namespace:
    """Megatron-LM's `args` for `bridge`'s model (names as `arguments.py` spells them, both
    epsilon names: layernorm_epsilon since 0.16, norm_epsilon before). Refuses llama3 RoPE
    factors Megatron-LM cannot express, and mixture-of-experts models (their args are not mapped)."""
    if bridge.arch.moe:
        raise UserError(
            f"--layout megatron-lm: {bridge.model_type} (mixture of experts) is not supported for "
            "Megatron-LM checkpoints yet; use the default layout"
        )

    tc = bridge.transformer_config_kwargs(
        ModelConfig(dtype=dtype, transformer_impl="local"), ParallelConfig(tp=tp, pp=pp)
    )
    rope = bridge.rope
    if (
        rope.kind == "llama3"
        and (rope.low_freq_factor, rope.high_freq_factor, rope.original_max_position_embeddings) != MEGATRON_LLAMA3
    ):
        raise UserError(
            f"--layout megatron-lm: llama3 rope (low_freq_factor, high_freq_factor, original_max_position_embeddings)="
            f"{(rope.low_freq_factor, rope.high_freq_factor, rope.original_max_position_embeddings)}; "
            f"Megatron-LM hard-codes {MEGATRON_LLAMA3}"
        )
    window = tc.get("window_size")
    return argparse.Namespace(
        num_layers=tc["num_layers"],
        hidden_size=tc["hidden_size"],
        ffn_hidden_size=tc["ffn_hidden_size"],
        num_attention_heads=tc["num_attention_heads"],
        num_query_groups=tc["num_query_groups"],
        group_query_attention=tc["num_query_groups"] != tc["num_attention_heads"],
        kv_channels=tc["kv_channels"],
        max_position_embeddings=bridge.max_position_embeddings,
        seq_length=None,
        position_embedding_type="rope",
        add_position_embedding=True,
        use_rotary_position_embeddings=False,
        rotary_base=int(rope.theta),
        rotary_percent=1.0,
        rotary_interleaved=tc["rotary_interleaved"],
        use_rope_scaling=rope.kind == "llama3",
        rope_scaling_factor=rope.factor if rope.kind == "llama3" else 8.0,
        rotary_seq_len_interpolation_factor=int(rope.factor) if rope.kind == "linear" else None,
        add_bias_linear=tc["add_bias_linear"],
        add_qkv_bias=tc["add_qkv_bias"],
        qk_layernorm=tc["qk_layernorm"],
        squared_relu=False,
        swiglu=tc["gated_linear_unit"],
        untie_embeddings_and_output_weights=not bridge.tied,
        normalization=tc["normalization"],
        apply_layernorm_1p=False,
        layernorm_zero_centered_gamma=False,
        layernorm_epsilon=tc["layernorm_epsilon"],
        norm_epsilon=tc["layernorm_epsilon"],
        apply_query_key_layer_scaling=False,
        attention_dropout=tc["attention_dropout"],
        hidden_dropout=tc["hidden_dropout"],
        window_size=tuple(window) if window else None,
        vocab_size=bridge.vocab_size,
        padded_vocab_size=padded_vocab_size,
        make_vocab_size_divisible_by=MAKE_VOCAB_SIZE_DIVISIBLE_BY,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None,
        num_layers_per_virtual_pipeline_stage=None,
        expert_model_parallel_size=1,
        num_experts=None,
        params_dtype=tc["params_dtype"],
        bf16=tc["bf16"],
        fp16=tc["fp16"],
        ckpt_format="torch_dist",
        use_dist_ckpt=True,
        no_save_optim=True,
        no_save_rng=True,
        async_save=False,
        consumed_train_samples=0,
        skipped_train_samples=0,
        consumed_valid_samples=0,
    )


def read_args(ckpt_dir: str, what: str = "--ckpt") -> Optional[argparse.Namespace]:
    """The `args` of a checkpoint's common state (Megatron-LM's or ours), None if it has none.
    Unreadable common state (a foreign pickle, or a checkpoint without common.pt read by
    megatron-core < 0.19, which only knows common.pt) is a UserError."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException

    try:
        common = dist_checkpointing.load_common_state_dict(ckpt_dir)
    except (
        CheckpointingException,
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        EOFError,
        AttributeError,
        KeyError,
        ValueError,
    ) as e:
        hint = (
            ""
            if os.path.isfile(os.path.join(ckpt_dir, "common.pt"))
            else (
                " (no common.pt: megatron-core >= 0.19 keeps the common state inside the DCP, "
                "which megatron-core < 0.19 cannot read)"
            )
        )
        raise UserError(
            f"{what}: cannot read the common state of {ckpt_dir}: {type(e).__name__}: {first_line(e)}{hint}"
        ) from None
    args = common.get("args") if isinstance(common, dict) else None
    return args if isinstance(args, argparse.Namespace) else None


def args_architecture(args: argparse.Namespace) -> Dict[str, Any]:
    """The architecture fields of Megatron-LM `args` (the ones present), in our bridge's terms."""
    fields: Dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if value is not None:
            fields[name] = value

    put("num_layers", getattr(args, "num_layers", None))
    put("hidden_size", getattr(args, "hidden_size", None))
    put("num_attention_heads", getattr(args, "num_attention_heads", None))
    put("ffn_hidden_size", getattr(args, "ffn_hidden_size", None))
    put("kv_channels", getattr(args, "kv_channels", None))
    heads = getattr(args, "num_attention_heads", None)
    gqa = getattr(args, "group_query_attention", None)
    if gqa is not None:
        put("num_kv_heads", getattr(args, "num_query_groups", None) if gqa else heads)
    untie = getattr(args, "untie_embeddings_and_output_weights", None)
    if untie is not None:
        fields["tied"] = not bool(untie)
    put("qk_layernorm", getattr(args, "qk_layernorm", None))
    eps = getattr(args, "layernorm_epsilon", getattr(args, "norm_epsilon", None))
    put("rms_norm_eps", None if eps is None else float(eps))
    put("rotary_base", getattr(args, "rotary_base", None))
    return fields


def bridge_architecture(bridge: Any) -> Dict[str, Any]:
    """The same fields for the model an HF config describes."""
    return {
        "num_layers": bridge.num_layers,
        "hidden_size": bridge.hidden_size,
        "num_attention_heads": bridge.num_attention_heads,
        "ffn_hidden_size": bridge.ffn_hidden_size,
        "kv_channels": bridge.head_dim,
        "num_kv_heads": bridge.num_kv_heads,
        "tied": bridge.tied,
        "qk_layernorm": bridge.arch.qk_norm,
        "rms_norm_eps": bridge.rms_norm_eps,
        "rotary_base": int(bridge.rope.theta),
    }


def check_args_match(args: Optional[argparse.Namespace], bridge: Any, ckpt: str, hf_what: str) -> None:
    """UserError (one line) if the checkpoint's `args` describe another model than `bridge`'s."""
    if args is None:
        return
    have = bridge_architecture(bridge)
    for key, value in args_architecture(args).items():
        if value != have[key]:
            raise UserError(
                f"checkpoint {ckpt} args have {key}={value!r} but {hf_what} has {key}={have[key]!r} "
                f"(checkpoint of another model / architecture)"
            )
    padded = getattr(args, "padded_vocab_size", None)
    if padded is not None and padded < bridge.vocab_size:
        raise UserError(
            f"checkpoint {ckpt} args have padded_vocab_size={padded} < vocab_size={bridge.vocab_size} of {hf_what}"
        )
