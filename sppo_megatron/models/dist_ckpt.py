"""The one place that calls megatron-core `dist_checkpointing.save/load`.

Layout used everywhere (converter, training engine, export): one torch_dist checkpoint
directory whose state is a dict; the model lives under the key ``"model"``:

    save_dist_checkpoint({"model": model.sharded_state_dict(), ...}, ckpt_dir)
    state = load_dist_checkpoint({"model": model.sharded_state_dict()}, ckpt_dir)
    model.load_state_dict(state["model"])

The training engine adds optimizer / scheduler / RNG keys to the same dict; asking only for
``"model"`` loads any of them model-only (unexpected keys in the checkpoint are ignored).
Written once, a checkpoint loads under any TP/PP layout (the padded vocabulary does not depend
on the TP size for power-of-two TP, see `Bridge.padded_vocab_size`). Every loader builds its model
with the checkpoint's own padded vocabulary (`checkpoint_padded_vocab`, read from the tensor
metadata before loading) and refuses, in one line, a model whose padded vocabulary differs:
megatron-core marks the embedding `allow_shape_mismatch` and would load it partially.

A path given to any loader may be a checkpoint directory or a Megatron-LM load directory
(tracker file + release/ or iter_%07d/, `resolve_checkpoint_dir`). What `sppo-convert` writes
around a checkpoint (its description, the two layouts) lives in converted.py.

Keywords only: megatron-core 0.19 removed `common_strategy` from `save/load`, so positions
differ between 0.16 and 0.19.

Why the queue: 0.16.1 / 0.19.2 create their write-results queue with a *spawn*-context
multiprocessing Manager on the first save (`filesystem_async._results_queue`): ~9 s, and the
spawned manager re-imports the main script. A fork-context Manager does the same job in
~0.2 s; we install one before the first save when the module global is still unset. That
Manager and megatron's writer processes are forks of the trainer: `install_fork_hygiene` makes
them die with it and take SIGTERM normally, and a Manager found dead before a save is replaced
(one line on stderr), one lost during a save is a one-line error instead of a BrokenPipeError.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from multiprocessing.managers import SyncManager
from typing import Any, Dict, Optional

import torch.multiprocessing as mp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from sppo_megatron.errors import RunStopped, UserError, first_line
from sppo_megatron.models.ckpt_writer import streaming_writes
from sppo_megatron.models.megatron_lm import resolve_checkpoint_dir
from sppo_megatron.platform.distributed import barrier, is_rank0, rank
from sppo_megatron.platform.process import install_fork_hygiene

# megatron-core is imported inside the functions that use it: the console scripts import this
# package before they silence megatron's import-time warnings, and `--help` stays quick.

MODEL_KEY = "model"
#: the sharded tensors whose first dimension is the padded vocabulary
VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")


def _require_psutil() -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:
        # megatron's async writer silently hangs without it (0.16.1)
        raise UserError("megatron-core dist checkpointing needs psutil: pip install psutil") from None


class _SaveHelper:
    """The fork-context Manager serving megatron's write-results queue (module global of
    `filesystem_async`), replaced when it has died."""

    manager: Any = None

    @classmethod
    def ensure(cls) -> None:
        try:
            from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
        except ImportError:
            return
        if cls.manager is not None and not cls.alive():
            process = cls.manager._process
            print(
                f"rank {rank()}: checkpoint save helper (pid {process.pid}) died (exit code {process.exitcode}); "
                "starting a new one",
                file=sys.stderr,
                flush=True,
            )
            cls.manager, fsa._results_queue = None, None
        if getattr(fsa, "_results_queue", "missing") is None:
            try:
                manager = SyncManager(ctx=mp.get_context("fork"))
                manager.start()
            except (ValueError, OSError, RuntimeError):
                return  # no fork on this platform: megatron's own spawn queue is used
            cls.manager, fsa._results_queue = manager, manager.Queue()

    @classmethod
    def alive(cls) -> bool:
        return cls.manager is None or cls.manager._process.is_alive()


def save_dist_checkpoint(state: Dict[str, Any], ckpt_dir: str) -> None:
    """Write a sharded state dict (e.g. ``{"model": model.sharded_state_dict()}``) to `ckpt_dir`.

    Collective: every rank calls it with its own shards. Creates `ckpt_dir` (should be empty).
    """
    from megatron.core import dist_checkpointing

    _require_psutil()
    install_fork_hygiene()
    _SaveHelper.ensure()
    if is_rank0():
        os.makedirs(ckpt_dir, exist_ok=True)
    barrier()
    try:
        with streaming_writes():  # no whole-model copy of the parameters' views (ckpt_writer.py)
            dist_checkpointing.save(sharded_state_dict=state, checkpoint_dir=ckpt_dir)
    except (EOFError, ConnectionError) as e:  # BrokenPipeError is a ConnectionError
        if _SaveHelper.alive():
            raise
        raise RunStopped(
            f"saving {ckpt_dir}: the checkpoint save helper process died during the save "
            f"({type(e).__name__}); the previous checkpoint is intact"
        ) from e
    barrier()


def load_dist_checkpoint(
    sharded_state: Dict[str, Any], ckpt_dir: str, what: str = "checkpoint", resize_vocab: bool = False
) -> Dict[str, Any]:
    """Load the keys of `sharded_state` from `ckpt_dir`; returns plain tensors in the same structure.

    The files and the model's shapes are checked first, on every rank alike, so a corrupt,
    truncated or foreign checkpoint is one UserError naming the file rather than a failure
    inside the collective load; `what` names where the path came from (flag or config key)."""
    from megatron.core import dist_checkpointing

    _require_psutil()
    check_checkpoint_dir(ckpt_dir, what)
    stored = check_checkpoint_files(ckpt_dir)
    if MODEL_KEY in sharded_state:
        check_model_shapes(sharded_state[MODEL_KEY], stored, ckpt_dir, resize_vocab)

    try:
        return dist_checkpointing.load(sharded_state_dict=sharded_state, checkpoint_dir=ckpt_dir)
    # torch's CheckpointException (e.g. a missing key) derives from BaseException, not Exception
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - a wrong / corrupt checkpoint is a user problem here
        cause: BaseException = e
        if isinstance(e, CheckpointException) and e.failures:
            cause = next(iter(e.failures.values()))[0]  # the first failing rank's own exception
        raise UserError(f"cannot load {what} {ckpt_dir}: {_named_first_line(cause)}") from cause


def _named_first_line(e: BaseException) -> str:
    line = first_line(e)
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def check_checkpoint_files(ckpt_dir: str) -> Any:
    """UserError naming the file unless metadata.json, common.pt and .metadata read and every
    shard file .metadata names is present and long enough; returns the tensor metadata."""

    def bad(name: str, why: str) -> UserError:
        return UserError(f"checkpoint {ckpt_dir}: {name} {why}")

    try:
        with open(os.path.join(ckpt_dir, "metadata.json"), encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, ValueError) as e:
        raise bad("metadata.json", f"is unreadable ({_named_first_line(e)})") from None
    common = os.path.join(ckpt_dir, "common.pt")
    if os.path.exists(common) and not zipfile.is_zipfile(common):
        raise bad("common.pt", "is truncated or corrupt (not a complete torch.save archive)")
    try:
        stored = FileSystemReader(ckpt_dir).read_metadata()
    except Exception as e:  # noqa: BLE001 - a pickle of any kind of garbage
        raise bad(".metadata", f"is unreadable ({_named_first_line(e)})") from None
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


def check_model_shapes(model_state: Any, stored: Any, ckpt_dir: str, resize_vocab: bool = False) -> None:
    """UserError unless every tensor of the model's sharded state dict is in the checkpoint's
    metadata (`stored`, from check_checkpoint_files) with the same global shape (the padded
    vocabulary rows of VOCAB_KEYS may differ with resize_vocab)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    for sharded in nested_values(model_state):
        if not isinstance(sharded, ShardedTensor):
            continue
        meta = stored.state_dict_metadata.get(sharded.key)
        if meta is None:
            raise UserError(
                f"checkpoint {ckpt_dir} does not fit the model: it has no tensor {sharded.key} "
                "(.metadata; a checkpoint of another architecture)"
            )
        if resize_vocab and sharded.key in VOCAB_KEYS and tuple(meta.size[1:]) == tuple(sharded.global_shape[1:]):
            continue
        if tuple(meta.size) != tuple(sharded.global_shape):
            raise UserError(
                f"checkpoint {ckpt_dir} does not fit the model: {sharded.key} is {tuple(meta.size)} in "
                f".metadata, the model's is {tuple(sharded.global_shape)} (a checkpoint of another model shape)"
            )


def is_dist_checkpoint(ckpt_dir: str) -> bool:
    """True if `ckpt_dir` looks like a megatron-core dist checkpoint."""
    return os.path.isfile(os.path.join(ckpt_dir, "metadata.json")) and (
        os.path.isfile(os.path.join(ckpt_dir, ".metadata")) or os.path.isfile(os.path.join(ckpt_dir, "common.pt"))
    )


def save_model_checkpoint(model: Any, ckpt_dir: str, common: Optional[Dict[str, Any]] = None) -> None:
    """Model-only checkpoint: ``{"model": model.sharded_state_dict(), **common}`` (`common`:
    non-sharded entries, e.g. Megatron-LM's args / checkpoint_version / iteration)."""
    save_dist_checkpoint({MODEL_KEY: unwrap_model(model).sharded_state_dict(), **(common or {})}, ckpt_dir)


def checkpoint_padded_vocab(ckpt_dir: str, what: str = "--ckpt") -> Optional[int]:
    """Rows of the checkpoint's embedding (else its LM head) from the tensor metadata, without
    loading; None if it holds neither."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException

    try:
        tensors = dist_checkpointing.load_tensors_metadata(ckpt_dir)
    except (CheckpointingException, OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{what}: cannot read the tensor metadata of {ckpt_dir}: {first_line(e)}") from None
    for key in VOCAB_KEYS:
        if key in tensors:
            return int(tensors[key].global_shape[0])
    return None


def model_vocab_for(ckpt: str, tp: int, what: str = "--ckpt") -> Optional[int]:
    """The padded vocabulary to build a model with to load `ckpt` at tensor-parallel size `tp`."""
    ckpt_dir = resolve_checkpoint_dir(ckpt, what)
    check_checkpoint_dir(ckpt_dir, what)
    rows = checkpoint_padded_vocab(ckpt_dir, what)
    if rows is not None and rows % tp:
        raise UserError(f"{what} {ckpt}: its padded vocabulary of {rows} rows does not split into tp={tp} shards")
    return rows


def check_padded_vocab(model: Any, ckpt_dir: str, what: str = "--ckpt") -> None:
    """UserError naming both sizes if `model`'s padded vocabulary differs from the checkpoint's."""
    want = getattr(unwrap_model(model), "vocab_size", None)
    have = checkpoint_padded_vocab(ckpt_dir, what)
    if want is not None and have is not None and want != have:
        raise UserError(
            f"{what} {ckpt_dir}: the checkpoint's padded vocabulary has {have} rows but the model "
            f"being loaded has {want} (another vocabulary padding or model)"
        )


def load_model_checkpoint(model: Any, ckpt_dir: str, what: str = "--ckpt", resize_vocab: bool = False) -> None:
    """Load the ``"model"`` part of any checkpoint (converter output, a training checkpoint or a
    Megatron-LM load directory, any TP/PP) into `model` (strict). A missing, foreign or mismatched
    checkpoint is a UserError naming `what` (the flag or config key it came from).

    resize_vocab=True loads a checkpoint of another padded vocabulary on purpose (the real rows
    are read, the model's extra padded rows keep their zeros): re-padding for another layout."""
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir, what)
    check_checkpoint_dir(ckpt_dir, what)
    if not resize_vocab:
        check_padded_vocab(model, ckpt_dir, what)
    module = unwrap_model(model)
    state = load_dist_checkpoint({MODEL_KEY: module.sharded_state_dict()}, ckpt_dir, what, resize_vocab)
    try:
        module.load_state_dict(state[MODEL_KEY])
    except Exception as e:  # noqa: BLE001 - a wrong checkpoint is a user problem here
        raise UserError(f"cannot load {what} {ckpt_dir}: {_named_first_line(e)}") from e


def check_checkpoint_dir(ckpt: str, what: str = "--ckpt") -> None:
    """UserError unless `ckpt` is a megatron-core dist checkpoint directory."""
    if not os.path.exists(ckpt):
        raise UserError(f"{what}: directory does not exist: {ckpt}")
    if not os.path.isdir(ckpt):
        raise UserError(f"{what}: not a directory: {ckpt}")
    if not is_dist_checkpoint(ckpt):
        raise UserError(f"{what}: {ckpt} is not a megatron-core dist checkpoint (no metadata.json / .metadata)")


def unwrap_model(model: Any) -> Any:
    """Strip DDP / Float16Module wrappers (anything with `.module`)."""
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model
