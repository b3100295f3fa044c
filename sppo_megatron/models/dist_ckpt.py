"""The one place that calls megatron-core `dist_checkpointing.save/load`.

Layout used everywhere (converter, training engine, export): one torch_dist checkpoint
directory whose state is a dict; the model lives under the key ``"model"``:

    save_dist_checkpoint({"model": model.sharded_state_dict(), ...}, ckpt_dir)
    state = load_dist_checkpoint({"model": model.sharded_state_dict()}, ckpt_dir)
    model.load_state_dict(state["model"])

The training engine adds optimizer / scheduler / RNG keys to the same dict; asking only for
``"model"`` loads any of them model-only (unexpected keys in the checkpoint are ignored).
Written once, a checkpoint loads under any TP/PP layout (the padded vocabulary does not depend
on the TP size for power-of-two TP, see `Bridge.padded_vocab_size`).

A converted checkpoint also carries its description (`write_checkpoint_meta`: META_FILE and
the source's config/tokenizer in HF_SUBDIR), from which `resolve_megatron_checkpoint` finds the
model of any checkpoint and `load_megatron_model` builds and fills it.

Keywords only: megatron-core 0.19 removed `common_strategy` from `save/load`, so positions
differ between 0.16 and 0.19.

Why the queue: 0.16.1 / 0.19.2 create their write-results queue with a *spawn*-context
multiprocessing Manager on the first save (`filesystem_async._results_queue`): ~9 s, and the
spawned manager re-imports the main script. A fork-context Manager does the same job in
~0.2 s; we install one before the first save when the module global is still unset.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional, Tuple

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import barrier, is_rank0

MODEL_KEY = "model"
#: written next to a converted checkpoint by `sppo-convert hf-to-megatron` (architecture, sizes, dtype)
META_FILE = "sppo_checkpoint.json"
META_FORMAT = "sppo-megatron-model"
#: the source model's config.json, generation config and tokenizer inside a converted checkpoint
HF_SUBDIR = "hf"


def _require_psutil() -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:
        # megatron's async writer silently hangs without it (0.16.1)
        raise UserError("megatron-core dist checkpointing needs psutil: pip install psutil") from None


def _install_fork_results_queue() -> None:
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
    except ImportError:
        return
    if getattr(fsa, "_results_queue", "missing") is None:
        import torch.multiprocessing as mp

        try:
            fsa._results_queue = mp.get_context("fork").Manager().Queue()
        except (ValueError, OSError, RuntimeError):
            pass  # no fork on this platform: megatron's own spawn queue is used


def save_dist_checkpoint(state: Dict[str, Any], ckpt_dir: str) -> None:
    """Write a sharded state dict (e.g. ``{"model": model.sharded_state_dict()}``) to `ckpt_dir`.

    Collective: every rank calls it with its own shards. Creates `ckpt_dir` (should be empty).
    """
    from megatron.core import dist_checkpointing

    _require_psutil()
    _install_fork_results_queue()
    if is_rank0():
        os.makedirs(ckpt_dir, exist_ok=True)
    barrier()
    dist_checkpointing.save(sharded_state_dict=state, checkpoint_dir=ckpt_dir)
    barrier()


def load_dist_checkpoint(sharded_state: Dict[str, Any], ckpt_dir: str, what: str = "checkpoint") -> Dict[str, Any]:
    """Load the keys of `sharded_state` from `ckpt_dir`; returns plain tensors in the same structure.

    The files and the model's shapes are checked first, on every rank alike, so a corrupt,
    truncated or foreign checkpoint is one UserError naming the file rather than a failure
    inside the collective load; `what` names where the path came from (flag or config key)."""
    from megatron.core import dist_checkpointing

    _require_psutil()
    check_checkpoint_dir(ckpt_dir, what)
    stored = check_checkpoint_files(ckpt_dir)
    if MODEL_KEY in sharded_state:
        check_model_shapes(sharded_state[MODEL_KEY], stored, ckpt_dir)
    try:
        return dist_checkpointing.load(sharded_state_dict=sharded_state, checkpoint_dir=ckpt_dir)
    except Exception as e:  # noqa: BLE001 - a wrong / corrupt checkpoint is a user problem here
        raise UserError(f"cannot load {what} {ckpt_dir}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def check_checkpoint_files(ckpt_dir: str) -> Any:
    """UserError naming the file unless metadata.json, common.pt and .metadata read and every
    shard file .metadata names is present and long enough; returns the tensor metadata."""
    import zipfile

    from torch.distributed.checkpoint import FileSystemReader

    def bad(name: str, why: str) -> UserError:
        return UserError(f"checkpoint {ckpt_dir}: {name} {why}")

    try:
        with open(os.path.join(ckpt_dir, "metadata.json"), encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, ValueError) as e:
        raise bad("metadata.json", f"is unreadable ({_first_line(e)})") from None
    common = os.path.join(ckpt_dir, "common.pt")
    if os.path.exists(common) and not zipfile.is_zipfile(common):
        raise bad("common.pt", "is truncated or corrupt (not a complete torch.save archive)")
    try:
        stored = FileSystemReader(ckpt_dir).read_metadata()
    except Exception as e:  # noqa: BLE001 - a pickle of any kind of garbage
        raise bad(".metadata", f"is unreadable ({_first_line(e)})") from None
    needed: Dict[str, int] = {}
    for info in stored.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            raise bad(name, "is missing (named in .metadata)")
        if os.path.getsize(path) < size:
            raise bad(name, f"is truncated ({os.path.getsize(path)} of at least {size} bytes)")
    return stored


def check_model_shapes(model_state: Any, stored: Any, ckpt_dir: str) -> None:
    """UserError unless every tensor of the model's sharded state dict is in the checkpoint's
    metadata (`stored`, from check_checkpoint_files) with the same global shape."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    for sharded in nested_values(model_state):
        if not isinstance(sharded, ShardedTensor):
            continue
        meta = stored.state_dict_metadata.get(sharded.key)
        if meta is None:
            raise UserError(f"checkpoint {ckpt_dir} does not fit the model: it has no tensor {sharded.key} "
                            "(.metadata; a checkpoint of another architecture)")
        if tuple(meta.size) != tuple(sharded.global_shape):
            raise UserError(f"checkpoint {ckpt_dir} does not fit the model: {sharded.key} is {tuple(meta.size)} in "
                            f".metadata, the model's is {tuple(sharded.global_shape)} (a checkpoint of another model shape)")


def is_dist_checkpoint(ckpt_dir: str) -> bool:
    """True if `ckpt_dir` looks like a megatron-core dist checkpoint."""
    return os.path.isfile(os.path.join(ckpt_dir, "metadata.json")) and (
        os.path.isfile(os.path.join(ckpt_dir, ".metadata")) or os.path.isfile(os.path.join(ckpt_dir, "common.pt"))
    )


def save_model_checkpoint(model: Any, ckpt_dir: str) -> None:
    """Model-only checkpoint: ``{"model": model.sharded_state_dict()}``."""
    save_dist_checkpoint({MODEL_KEY: unwrap_model(model).sharded_state_dict()}, ckpt_dir)


def load_model_checkpoint(model: Any, ckpt_dir: str, what: str = "--ckpt") -> None:
    """Load the ``"model"`` part of any checkpoint (converter output or a training checkpoint,
    any TP/PP) into `model` (strict). A missing, foreign or mismatched checkpoint is a UserError
    naming `what` (the flag or config key it came from)."""
    module = unwrap_model(model)
    state = load_dist_checkpoint({MODEL_KEY: module.sharded_state_dict()}, ckpt_dir, what)
    try:
        module.load_state_dict(state[MODEL_KEY])
    except Exception as e:  # noqa: BLE001 - a wrong checkpoint is a user problem here
        raise UserError(f"cannot load {what} {ckpt_dir}: {_first_line(e)}") from e


def check_checkpoint_dir(ckpt: str, what: str = "--ckpt") -> None:
    """UserError unless `ckpt` is a megatron-core dist checkpoint directory."""
    if not os.path.exists(ckpt):
        raise UserError(f"{what}: directory does not exist: {ckpt}")
    if not os.path.isdir(ckpt):
        raise UserError(f"{what}: not a directory: {ckpt}")
    if not is_dist_checkpoint(ckpt):
        raise UserError(f"{what}: {ckpt} is not a megatron-core dist checkpoint (no metadata.json / .metadata)")


def read_checkpoint_meta(ckpt: str) -> Optional[Dict[str, Any]]:
    """The converter's description of a checkpoint (META_FILE), None for training checkpoints."""
    path = os.path.join(ckpt, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise UserError(f"{path}: not an sppo-megatron checkpoint description")
    return meta


def check_meta_matches(meta: Optional[Dict[str, Any]], bridge: Any, ckpt: str, hf_what: str) -> None:
    """UserError if the checkpoint was written for another model than `bridge`'s."""
    if meta is None:
        return
    fields = {
        "model_type": bridge.model_type,
        "vocab_size": bridge.vocab_size,
        "num_layers": bridge.num_layers,
        "hidden_size": bridge.hidden_size,
    }
    for key, have in fields.items():
        if key in meta and meta[key] != have:
            raise UserError(
                f"checkpoint {ckpt} was written for {key}={meta[key]!r} but {hf_what} has {key}={have!r} "
                f"(checkpoint of another model / architecture)"
            )


def write_checkpoint_meta(ckpt: str, bridge: Any, dtype: str, hf_src: str, tp: int, pp: int) -> None:
    """The converter's description of a checkpoint it wrote: META_FILE and HF_SUBDIR (the
    source's config.json and side files), which `resolve_megatron_checkpoint` reads back."""
    import torch

    from sppo_megatron.models.hf_io import copy_side_files

    hf_out = os.path.join(ckpt, HF_SUBDIR)
    os.makedirs(hf_out)
    shutil.copy2(os.path.join(hf_src, "config.json"), os.path.join(hf_out, "config.json"))
    copy_side_files(hf_src, hf_out)
    meta = {
        "format": META_FORMAT,
        "format_version": 1,
        "model_type": bridge.model_type,
        "hf_architecture": bridge.arch.hf_class,
        "vocab_size": bridge.vocab_size,
        "padded_vocab_size": bridge.padded_vocab_size(1),
        "num_layers": bridge.num_layers,
        "hidden_size": bridge.hidden_size,
        "tie_word_embeddings": bridge.tied,
        "dtype": dtype,
        "state_key": MODEL_KEY,
        "hf_dir": HF_SUBDIR,
        "source": os.path.abspath(hf_src),
        "written_with": {"tp": tp, "pp": pp, "megatron_core": _mcore_version(), "torch": torch.__version__},
    }
    with open(os.path.join(ckpt, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)


def _mcore_version() -> str:
    try:
        from importlib.metadata import version

        return version("megatron-core")
    except Exception:  # noqa: BLE001
        return "unknown"


def resolve_megatron_checkpoint(ckpt: str, hf_config_dir: Optional[str] = None) -> Tuple[str, Any, str]:
    """Check a Megatron checkpoint (converter output or a training checkpoint) and find its model:
    (HF directory with config and tokenizer, bridge, checkpoint dtype). `hf_config_dir` defaults
    to the checkpoint's hf/ subdirectory (written by hf-to-megatron)."""
    from sppo_megatron.models.bridge import get_bridge
    from sppo_megatron.models.hf_io import hf_dtype_name, load_hf_config

    check_checkpoint_dir(ckpt, "--ckpt")
    meta = read_checkpoint_meta(ckpt)
    hf_dir = hf_config_dir or os.path.join(ckpt, HF_SUBDIR)
    if not hf_config_dir and not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise UserError(f"--ckpt {ckpt} has no {HF_SUBDIR}/config.json: pass --hf-config DIR (the HF model it was trained from)")
    hf_config = load_hf_config(hf_dir, "--hf-config")
    bridge = get_bridge(hf_config)
    check_meta_matches(meta, bridge, ckpt, hf_dir)
    return hf_dir, bridge, (meta or {}).get("dtype") or hf_dtype_name(hf_config)


def conversion_model_config(dtype: str) -> ModelConfig:
    """What conversion builds: local layers (no Transformer Engine needed; their dist-checkpoint
    keys equal the TE spec's) in `dtype`."""
    return ModelConfig(dtype=dtype, transformer_impl="local")


def load_megatron_model(bridge: Any, ckpt: str, dtype: str, tp: int = 1, pp: int = 1) -> Any:
    """This rank's stage of the model, with the checkpoint's weights (call after init_distributed)."""
    model = bridge.build_model(conversion_model_config(dtype), ParallelConfig(tp=tp, pp=pp), perform_initialization=False)
    load_model_checkpoint(model, ckpt)
    return model


def unwrap_model(model: Any) -> Any:
    """Strip DDP / Float16Module wrappers (anything with `.module`)."""
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model
