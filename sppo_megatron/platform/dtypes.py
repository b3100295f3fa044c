"""The one dtype table: config / CLI names (bf16, fp16, fp32) <-> torch dtypes.

Everything that turns a dtype name into a torch dtype (model.dtype, rollout.dtype,
`sppo-convert --dtype`, config.json's "dtype") goes through here, so a name means the same
thing everywhere.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch

from sppo_megatron.errors import UserError

#: in the order the CLI and error messages list them
DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES: Dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


def resolve_dtype(name: Union[str, torch.dtype, None], device: Optional[torch.device] = None) -> torch.dtype:
    """'auto' (or None) -> bf16 on a GPU, fp32 otherwise; else bf16 / fp16 / fp32.

    The GPU question is `device.type == "cuda"` for a given device, else whether CUDA is available."""
    if name in (None, "auto"):
        gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
        return torch.bfloat16 if gpu else torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"dtype {name!r}: expected auto, bf16, fp16 or fp32")
    return DTYPES[name]


def torch_dtype_name(dtype: Union[str, torch.dtype]) -> str:
    """bf16 (or torch.bfloat16) -> "bfloat16": the spelling of transformers' config.json and
    SGLang's --dtype. KeyError outside the table."""
    if not isinstance(dtype, str):
        dtype = DTYPE_NAMES[dtype]
    return str(DTYPES[dtype]).removeprefix("torch.")


def dtype_name(dtype: Any, default: str = "fp32") -> str:
    """bf16 / fp16 / fp32 for a torch dtype or its transformers spelling ("bfloat16"); `default`
    for anything else (None, float64, an unknown string)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return DTYPE_NAMES.get(dtype, default)
