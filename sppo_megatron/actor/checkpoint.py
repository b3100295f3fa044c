"""Actor checkpoints: model + optimizer + LR scheduler + RNG in one megatron-core dist checkpoint.

Layout of the state written by `save_actor` (one `dist_checkpointing` directory):
  model       `model.sharded_state_dict()`: the same key as the converter's model-only
              checkpoints, so an actor checkpoint also serves as `model.megatron_ckpt` and
              loads under any TP/PP;
  optimizer   the optimizer's sharded state with the distributed optimizer's
              `fully_reshardable` format (regular optimizers are reshardable by construction),
              so training resumes exactly in any TP/PP/DP layout (with the same
              parallel.use_distributed_optimizer: the two formats are not interchangeable);
  scheduler   OptimizerParamScheduler.state_dict() (common, written once);
  rng_state   per rank: python, numpy, torch (and CUDA) generators and megatron's model-parallel
              RNG tracker; restored on a full resume when the TP/PP/DP layout is unchanged
              (a different layout has different per-rank streams; the run keeps its fresh
              seeding then);
  actor_meta.json  (rank 0, after the collective save) layout, optimizer steps, padded
              vocabulary, versions; with LoRA the adapter settings and the base they adapt.

With LoRA (model.lora.rank > 0) `model` holds the adapters alone (their sharded state, so they
load under any TP/PP/EP too) and the optimizer state is theirs alone: the frozen base is named by
`base` in actor_meta.json (model.path / model.megatron_ckpt), which a resume must load from
the same place (build_policy loads it; the adapters come from here).

The torch-Adam workarounds needed to save/load the optimizer live in optimizer_state.py.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple, cast

import numpy as np
import torch

from sppo_megatron.actor import optimizer_state
from sppo_megatron.actor.optimizer_save import streaming_state
from sppo_megatron.errors import UserError
from sppo_megatron.models import load_dist_checkpoint, save_dist_checkpoint
from sppo_megatron.models.dist_ckpt import (
    MODEL_KEY,
    check_checkpoint_dir,
    check_checkpoint_files,
    check_padded_vocab,
    unwrap_model,
)
from sppo_megatron.platform.distributed import barrier, rank
from sppo_megatron.platform.files import atomic_write_text
from sppo_megatron.platform.parallel_dims import ParallelDims

# megatron-core is imported inside the functions that use it: the trainer and the tests import
# the actor's batch types without paying for it.

META_FILE = "actor_meta.json"
FORMAT = 1
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _rng_state() -> Dict[str, Any]:
    from megatron.core import tensor_parallel

    np_state = cast(Tuple[Any, ...], np.random.get_state())
    return {
        "random": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(data: Any, dims: ParallelDims):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        key="rng_state",
        data=data,
        global_shape=(dims.pp, dims.tp, dims.dp),
        global_offset=(
            ps.get_pipeline_model_parallel_rank(),
            ps.get_tensor_model_parallel_rank(),
            ps.get_data_parallel_rank(),
        ),
        replica_id=0,
    )


def _model_state(actor: Any) -> Dict[str, Any]:
    """The model's sharded state a checkpoint holds: all of it, or with LoRA the adapters."""
    if actor.model_cfg.lora.rank == 0:
        return actor.model.sharded_state_dict()
    from sppo_megatron.models.lora import adapter_sharded_state

    return adapter_sharded_state(actor.model)


def _load_model_state(actor: Any, state: Dict[str, Any]) -> None:
    """Copy loaded tensors into the model: every parameter, or with LoRA every adapter one."""
    if actor.model_cfg.lora.rank > 0:
        from sppo_megatron.models.lora import load_adapter_state

        load_adapter_state(actor.model, state)
        return
    with torch.no_grad():
        actor.model.load_state_dict(state)


def base_pointer(model_cfg: Any) -> Dict[str, Optional[str]]:
    """Where a LoRA policy's frozen base comes from (absolute paths)."""
    return {
        key: os.path.realpath(value) if value else None
        for key, value in (("path", model_cfg.path), ("megatron_ckpt", model_cfg.megatron_ckpt))
    }


def check_lora_matches(meta: Dict[str, Any], model_cfg: Any, ckpt_dir: str) -> None:
    """UserError unless the checkpoint's adapters (or their absence) and base fit `model_cfg`."""
    saved, lora = meta.get("lora"), model_cfg.lora
    if saved is None and lora.rank == 0:
        return
    if saved is None:
        raise UserError(
            f"checkpoint {ckpt_dir} holds a fully trained model (no LoRA adapters) but model.lora.rank={lora.rank}; "
            "resume it with model.lora.rank=0"
        )
    if lora.rank == 0:
        raise UserError(
            f"checkpoint {ckpt_dir} holds LoRA adapters (rank {saved['rank']}) but model.lora.rank=0; resume it "
            f"with model.lora.rank={saved['rank']}, or export it with sppo-convert megatron-to-hf"
        )
    mine = asdict(lora)
    for key in ("rank", "alpha", "target_modules", "experts"):
        if saved.get(key) != mine[key]:
            raise UserError(
                f"checkpoint {ckpt_dir} holds LoRA adapters with model.lora.{key}={saved.get(key)!r} but the "
                f"config says {mine[key]!r}"
            )
    base, want = meta.get("base") or {}, base_pointer(model_cfg)
    for key, value in want.items():
        if base.get(key) != value:
            raise UserError(
                f"checkpoint {ckpt_dir} holds LoRA adapters of the base model.{key}={base.get(key)} but this "
                f"run's model.{key}={value}: point it at the base the adapters were trained on"
            )


def read_meta(ckpt_dir: str) -> Dict[str, Any]:
    """actor_meta.json ({} for a model-only checkpoint); UserError naming it when it is garbage."""
    path = os.path.join(ckpt_dir, META_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt_dir}: {META_FILE} is unreadable ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layout"), dict):
        raise UserError(f"checkpoint {ckpt_dir}: {META_FILE} is not an actor checkpoint description")
    return meta


def read_lora(ckpt_dir: str) -> Optional[Tuple[Any, Dict[str, Optional[str]]]]:
    """(LoraConfig, base pointer) of a LoRA run's checkpoint, None for any other directory."""
    from sppo_megatron.config.schema import LoraConfig

    meta = read_meta(ckpt_dir) if os.path.isdir(ckpt_dir) else {}
    if not meta.get("lora"):
        return None
    return LoraConfig(**meta["lora"]), dict(meta.get("base") or {})


def check_actor_files(ckpt_dir: str) -> None:
    """UserError naming the file unless `ckpt_dir` holds a complete actor checkpoint (read
    without a process group or model: the run's start decision uses it)."""
    if not read_meta(ckpt_dir):
        raise UserError(f"checkpoint {ckpt_dir}: {META_FILE} is missing (a model-only or unfinished checkpoint)")
    check_checkpoint_dir(ckpt_dir, "checkpoint")
    check_checkpoint_files(ckpt_dir)


def save_actor(actor: Any, ckpt_dir: str) -> None:
    """Write the actor's state into `ckpt_dir` (collective; the directory may already exist)."""
    from megatron.core import __version__ as mcore_version

    if rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
    barrier()
    optimizer_state.init_state(actor.optimizer)  # workaround (1): a fresh optimizer cannot build its state dict
    model_sd = _model_state(actor)
    with streaming_state(actor.optimizer):  # one DP rank: the optimizer's tensors as they are, no copies
        state = {
            MODEL_KEY: model_sd,
            "optimizer": actor.optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=OPTIMIZER_METADATA),
            "scheduler": actor.scheduler.state_dict(),
            "rng_state": _rng_sharded(_rng_state(), actor.parallel_dims),
        }
        save_dist_checkpoint(state, ckpt_dir)
    if rank() == 0:
        meta = {
            "format": FORMAT,
            "layout": actor.parallel_dims.sizes(),
            "num_optimizer_steps": actor.num_optimizer_steps,
            "use_distributed_optimizer": bool(actor.parallel.use_distributed_optimizer),
            "optimizer_sharding": OPTIMIZER_METADATA["distrib_optim_sharding_type"],
            "dtype": str(actor.dtype),
            "padded_vocab_size": int(unwrap_model(actor.model).vocab_size),
            "megatron_core": mcore_version,
        }
        if actor.model_cfg.lora.rank > 0:
            meta["lora"] = asdict(actor.model_cfg.lora)
            meta["base"] = base_pointer(actor.model_cfg)
        atomic_write_text(os.path.join(ckpt_dir, META_FILE), json.dumps(meta, indent=2))
    barrier()


def load_actor(actor: Any, ckpt_dir: str, load_optimizer: bool = True) -> None:
    """Restore the actor from `ckpt_dir` (collective).

    load_optimizer=False loads the model weights only (a converter's model-only checkpoint, or
    an actor checkpoint used as initial weights); the optimizer and LR schedule stay fresh, the
    optimizer's main params are refreshed from the loaded weights.
    """
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"checkpoint directory {ckpt_dir} does not exist")
    meta = read_meta(ckpt_dir)
    if load_optimizer and not meta:
        raise UserError(f"{ckpt_dir} is a model-only checkpoint (no {META_FILE}); it has no optimizer state to resume")
    want = bool(actor.parallel.use_distributed_optimizer)
    if load_optimizer and meta.get("use_distributed_optimizer", want) != want:
        raise UserError(
            f"{ckpt_dir} holds {'distributed' if not want else 'plain'}-optimizer state but "
            f"parallel.use_distributed_optimizer={want}; resume with the setting it was saved with"
        )
    if meta:
        check_lora_matches(meta, actor.model_cfg, ckpt_dir)
    check_padded_vocab(actor.model, ckpt_dir, "checkpoint")
    model_sd = _model_state(actor)
    request: Dict[str, Any] = {MODEL_KEY: model_sd}
    if load_optimizer:
        optimizer_state.init_state(actor.optimizer)  # workaround (1)
        request["optimizer"] = actor.optimizer.sharded_state_dict(
            model_sd, is_loading=True, metadata=OPTIMIZER_METADATA
        )
    # RNG streams are per rank: restored on a full resume in the same layout only
    same_layout = load_optimizer and meta.get("layout") == actor.parallel_dims.sizes()
    if same_layout:
        request["rng_state"] = _rng_sharded(None, actor.parallel_dims)
    loaded = load_dist_checkpoint(request, ckpt_dir)
    _load_model_state(actor, loaded[MODEL_KEY])
    if load_optimizer:
        with optimizer_state.loading(actor.optimizer):  # workarounds (2), (3)
            actor.optimizer.load_state_dict(loaded["optimizer"])
        optimizer_state.apply_optim_settings(actor.optimizer)  # this run's optim.*, not the checkpoint's
        actor.scheduler.num_steps = 0  # load_state_dict ADDS the saved count to the current one
        actor.scheduler.load_state_dict(loaded["scheduler"])
        steps = int(meta.get("num_optimizer_steps", actor.scheduler.num_steps))
        optimizer_state.set_step(actor.optimizer, steps)  # workarounds (4), (5)
    else:
        actor.optimizer.reload_model_params()
    if same_layout and loaded.get("rng_state") is not None:
        _set_rng_state(loaded["rng_state"])


def save_policy_weights(actor: Any, ckpt_dir: str) -> None:
    """The model weights alone (no optimizer, schedule or RNG) as a dist checkpoint (collective):
    the policy that generated an off-policy run's in-flight batch."""
    if rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
    barrier()
    save_dist_checkpoint({MODEL_KEY: _model_state(actor)}, ckpt_dir)
    barrier()


def load_policy_weights(actor: Any, ckpt_dir: str) -> None:
    """Load what `save_policy_weights` wrote into the model (collective); the optimizer is left alone."""
    loaded = load_dist_checkpoint({MODEL_KEY: _model_state(actor)}, ckpt_dir)
    _load_model_state(actor, loaded[MODEL_KEY])
