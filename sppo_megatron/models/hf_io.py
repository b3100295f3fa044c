"""Hugging Face checkpoint files: sliced safetensors reads, sharded safetensors writes, side files.

`SafetensorsReader` opens the safetensors files of an HF directory lazily (memory-mapped) and
reads only the requested rows/columns of a tensor (`safe_open(...).get_slice`), so a rank that
needs 1/TP of a matrix never materialises the whole matrix and never holds more than the
tensors it asked for.

`ShardedSafetensorsWriter` takes (name, tensor) pairs one at a time and streams their bytes
into the shard file at once (memory: one tensor), closes a shard when it would exceed `max_shard_bytes`,
and writes `model.safetensors.index.json` (the layout `transformers.from_pretrained` expects);
a single shard is named `model.safetensors`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open

from sppo_megatron.errors import UserError
from sppo_megatron.platform.dtypes import DTYPES, dtype_name, torch_dtype_name

# transformers is imported in load_hf_config only: the console scripts import this module, and
# `--help` stays quick.

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = (SAFE_INDEX, "pytorch_model.bin.index.json", "tf_model.h5.index.json")


def check_hf_dir(path: str, what: str = "--hf") -> None:
    """UserError unless `path` is an HF model directory (has config.json)."""
    if not path or not os.path.exists(path):
        raise UserError(f"{what}: directory does not exist: {path}")
    if not os.path.isdir(path):
        raise UserError(f"{what}: not a directory: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"{what}: {path} is not a Hugging Face model directory (no config.json)")


def load_hf_config(path: str, what: str = "--hf"):
    """The transformers PretrainedConfig of an HF directory (UserError if it cannot be read)."""
    check_hf_dir(path, what)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - turn any parse failure into one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot read {os.path.join(path, 'config.json')}: {first}") from None


def hf_dtype_name(hf_config: Any) -> str:
    """bf16 / fp16 / fp32: the dtype an HF config declares ("dtype", 4.x "torch_dtype"); fp32 if none."""
    return dtype_name(getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None))


def _open_safetensors(path: str) -> Any:
    """safe_open(path), a truncated or corrupt file being one UserError naming it. safetensors
    checks that the header's tensors cover the file exactly, so a truncation is caught here."""
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: truncated or corrupt safetensors file ({e})") from None


class SafetensorsReader:
    """Read whole tensors or row/column slices from an HF directory's safetensors files."""

    def __init__(self, hf_dir: str) -> None:
        self.hf_dir = hf_dir
        index_path = os.path.join(hf_dir, SAFE_INDEX)
        single = os.path.join(hf_dir, SAFE_SINGLE)
        self._handles: Dict[str, object] = {}
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    self.weight_map: Dict[str, str] = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{index_path}: not a readable safetensors index ({type(e).__name__}: {e})") from None
            for fname in sorted(set(self.weight_map.values())):
                self._file(fname)  # every shard's header checked now, not at its first tensor
        elif os.path.isfile(single):
            with _open_safetensors(single) as h:
                self.weight_map = {k: SAFE_SINGLE for k in h.keys()}
        else:
            others = [f for f in sorted(os.listdir(hf_dir)) if f.endswith(WEIGHT_SUFFIXES)]
            if others:
                raise UserError(
                    f"{hf_dir}: only safetensors weights are supported, found {', '.join(others[:3])} "
                    "(re-save the model with save_pretrained(..., safe_serialization=True))"
                )
            raise UserError(f"{hf_dir}: no weights found ({SAFE_SINGLE} or {SAFE_INDEX})")

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _handle(self, name: str):
        if name not in self.weight_map:
            raise UserError(f"{self.hf_dir}: tensor {name!r} is missing from the checkpoint")
        return self._file(self.weight_map[name])

    def _file(self, fname: str):
        h = self._handles.get(fname)
        if h is None:
            path = os.path.join(self.hf_dir, fname)
            if not os.path.isfile(path):
                raise UserError(f"{self.hf_dir}: shard {fname} named in {SAFE_INDEX} does not exist")
            h = _open_safetensors(path)
            self._handles[fname] = h
        return h

    def shape(self, name: str) -> List[int]:
        return list(self._handle(name).get_slice(name).get_shape())

    def read(
        self,
        name: str,
        rows: Optional[Tuple[int, int]] = None,
        cols: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """Tensor `name`, or only rows [a, b) / columns [c, d) of it (read from disk, not sliced after)."""
        sl = self._handle(name).get_slice(name)
        if rows is None and cols is None:
            return sl[:]
        r0, r1 = rows if rows is not None else (0, sl.get_shape()[0])
        if cols is None:
            return sl[r0:r1]
        return sl[r0:r1, cols[0] : cols[1]]

    def close(self) -> None:
        self._handles.clear()


_ST_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class ShardedSafetensorsWriter:
    """Stream tensors into size-bounded safetensors shards plus the HF index, O(1 tensor) memory.

    Each tensor's bytes are written to the shard file as they arrive, after a reserved header
    region; when the shard is full (or at `finish`) the JSON header is written into that region,
    padded with spaces (valid safetensors). A header that outgrows the reservation (thousands of
    tensors in one shard) is handled by rewriting the shard. The caller can drop every tensor
    right after `add`: the export never holds the whole model twice. Shards are written under
    temporary names and renamed by `finish`.
    """

    HEADER_RESERVE = 256 * 1024

    def __init__(self, out_dir: str, max_shard_bytes: int = 5 * 1024**3) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._files: List[Tuple[str, List[str]]] = []  # (temp file name, tensor names)
        self._entries: Dict[str, dict] = {}
        self._fh: Optional[BinaryIO] = None
        self._shard_bytes = 0
        self.total_bytes = 0

    def _tmp_name(self) -> str:
        return f"shard-{len(self._files):05d}.tmp.safetensors"

    def _open(self) -> BinaryIO:
        self._fh = open(os.path.join(self.out_dir, self._tmp_name()), "w+b")
        self._fh.write(b"\0" * (8 + self.HEADER_RESERVE))
        return self._fh

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype not in _ST_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be written to safetensors")
        if name in self._entries or any(name in names for _, names in self._files):
            raise ValueError(f"duplicate tensor name {name}")
        t = tensor.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if self._entries and self._shard_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        fh = self._fh if self._fh is not None else self._open()
        if nbytes:
            fh.write(t.reshape(-1).view(torch.uint8).numpy().data)
        self._entries[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self._shard_bytes, self._shard_bytes + nbytes],
        }
        self._shard_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        fh = self._fh if self._fh is not None else self._open()
        header = dict(self._entries)
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        fname = self._tmp_name()
        path = os.path.join(self.out_dir, fname)
        if len(raw) <= self.HEADER_RESERVE:
            raw += b" " * (self.HEADER_RESERVE - len(raw))
            fh.seek(0)
            fh.write(len(raw).to_bytes(8, "little"))
            fh.write(raw)
            fh.close()
        else:  # header too large for the reservation: rewrite the shard behind a fitting header
            raw += b" " * (-len(raw) % 8)
            fh.close()
            with open(path + ".big", "wb") as out, open(path, "rb") as data:
                out.write(len(raw).to_bytes(8, "little"))
                out.write(raw)
                data.seek(8 + self.HEADER_RESERVE)
                shutil.copyfileobj(data, out, 64 * 1024 * 1024)
            os.replace(path + ".big", path)
        self._files.append((fname, list(self._entries)))
        self._entries = {}
        self._fh = None
        self._shard_bytes = 0

    def finish(self) -> List[str]:
        """Flush, give shards their final names, write the index (when > 1 shard)."""
        if self._entries or not self._files:
            self._flush()
        n = len(self._files)
        if n == 1:
            os.replace(os.path.join(self.out_dir, self._files[0][0]), os.path.join(self.out_dir, SAFE_SINGLE))
            return [SAFE_SINGLE]
        weight_map: Dict[str, str] = {}
        names = []
        for i, (tmp, tensor_names) in enumerate(self._files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.out_dir, tmp), os.path.join(self.out_dir, final))
            names.append(final)
            for t in tensor_names:
                weight_map[t] = final
        with open(os.path.join(self.out_dir, SAFE_INDEX), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)
        return names + [SAFE_INDEX]


def copy_side_files(src_dir: str, dst_dir: str, skip: Iterable[str] = ("config.json",)) -> List[str]:
    """Copy tokenizer, generation config, chat template, ... (every top-level non-weight file)."""
    skip = set(skip)
    copied = []
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path) or name in skip or name.startswith("."):
            continue
        if name.endswith(WEIGHT_SUFFIXES) or name in WEIGHT_INDEXES:
            continue
        shutil.copy2(path, os.path.join(dst_dir, name))
        copied.append(name)
    return copied


def write_hf_dir(
    named_tensors: Iterable[Tuple[str, torch.Tensor]],
    src_hf_dir: str,
    out_dir: str,
    dtype: str,
    hf_class: str,
    max_shard_bytes: int = 5 * 1024**3,
    write: bool = True,
) -> None:
    """Write an HF checkpoint into `out_dir` (which must exist): the streamed tensors as sharded
    safetensors in `dtype` (bf16 | fp16 | fp32), src_hf_dir's config.json with that dtype, and its
    tokenizer / generation-config side files. Every rank consumes the (collective) stream; only
    `write=True` ranks write."""
    torch_dtype = DTYPES[dtype]
    writer = ShardedSafetensorsWriter(out_dir, max_shard_bytes) if write else None
    for name, tensor in named_tensors:
        if writer is not None:
            writer.add(name, tensor.to(torch_dtype).cpu())
    if writer is None:
        return
    writer.finish()
    with open(os.path.join(src_hf_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["dtype"] = torch_dtype_name(dtype)
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = torch_dtype_name(dtype)
    cfg.setdefault("architectures", [hf_class])
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    copy_side_files(src_hf_dir, out_dir)


def iter_hf_weights(hf_dir: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of an HF directory's safetensors, one at a time."""
    reader = SafetensorsReader(hf_dir)
    try:
        for name in sorted(reader.weight_map):
            yield name, reader.read(name)
    finally:
        reader.close()
