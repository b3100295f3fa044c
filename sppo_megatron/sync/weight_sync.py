"""Megatron -> rollout engine weight sync, once per step.

    sync = WeightSync(engine)
    metrics = sync.sync(bridge.export_hf_weights(model))   # collective: every rank

The bridge's export yields (HF name, full tensor) on every rank (gathered over TP and PP); the
engine consumes the stream in buckets of rollout.sync_bucket_mb (SGLang) or tensor by tensor
(HF: in-place copies). WeightSync measures bytes and seconds (the export's gathers included:
the stream is lazy) and checks cheaply that the engine got the update: it keeps the first rows
of one tensor of the first layer as streamed (cast to the engine's dtype) and compares them,
exactly, with the engine's own copy (`engine.read_weight`: the HF engine reads its parameter,
SGLang uses get_weights_by_name, which 0.5.23 supports for Llama but not for Qwen2/Qwen3: then
the check is skipped and `sync/checked` = 0).

Changed tensors only: a stream that can say which of its tensors training changes
(`changed_only()`, the actor's export: with LoRA the adapted weights, merged; the frozen rest of
the base never changes) is sent whole the first time and, after that, only its changed tensors
while the engine keeps its weights and takes partial updates (`capabilities.partial_updates`:
the HF engine; not SGLang with its memory saver, which drops them asleep, nor the rollout ranks
of placement=separate). Anything else is sent whole every time.

Metrics: timing/sync_s, sync/bytes, sync/gb_per_s (1e9 bytes/s), sync/tensors, sync/checked,
sync/partial (1: only the changed tensors were sent).
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterable, Iterator, Optional, Tuple

import torch

from sppo_megatron.platform.distributed import rank, share_outcomes

logger = logging.getLogger(__name__)


class _Tap:
    """Wraps the stream: counts tensors/bytes and keeps the probe tensor's first rows."""

    def __init__(
        self, stream: Iterable[Tuple[str, torch.Tensor]], probe_rows: int, dtype: Optional[torch.dtype]
    ) -> None:
        self.stream = stream
        self.probe_rows = probe_rows
        self.dtype = dtype
        self.bytes = 0
        self.tensors = 0
        self.probe_name: Optional[str] = None
        self.probe: Optional[torch.Tensor] = None
        self._fallback: Optional[Tuple[str, torch.Tensor]] = None

    def _capture(self, tensor: torch.Tensor) -> torch.Tensor:
        t = tensor.detach()[: self.probe_rows]
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t.to("cpu", torch.float32).clone()

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in self.stream:
            self.bytes += tensor.numel() * tensor.element_size()
            self.tensors += 1
            if self.probe is None and tensor.dim() == 2 and ".0." in name and "embed" not in name:
                self.probe_name, self.probe = name, self._capture(tensor)
            elif self._fallback is None and self.probe is None:
                self._fallback = (name, self._capture(tensor))
            yield name, tensor
        if self.probe is None and self._fallback is not None:
            self.probe_name, self.probe = self._fallback


class WeightSync:
    """Drives export -> engine; see module docstring."""

    def __init__(self, engine, check: bool = True, probe_rows: int = 4) -> None:
        self.engine = engine
        self.check = check
        self.probe_rows = probe_rows
        self._noted = False
        self._synced_whole = False  # this sync gave the engine a whole stream that knows its changed tensors

    def sync(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> Dict[str, float]:
        """Push the weights (all, or the changed ones: see the module docstring); returns the
        metrics. Collective."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        changed = getattr(named_tensors, "changed_only", lambda: None)()
        partial = (
            changed is not None
            and self._synced_whole
            and self.engine.capabilities.partial_updates
            and self.engine.weights_valid
        )
        tap = _Tap(changed if partial else named_tensors, self.probe_rows, self.engine.dtype)
        self._synced_whole = False  # until this update went through
        if partial:
            self.engine.update_weights(tap, partial=True)
        else:
            self.engine.update_weights(tap)
        self._synced_whole = changed is not None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        # only engine hosts can fail the check: every rank stops on it
        checked = share_outcomes(lambda: self.check and self._verify(tap))[rank()]
        return {
            "timing/sync_s": elapsed,
            "sync/bytes": float(tap.bytes),
            "sync/gb_per_s": tap.bytes / max(elapsed, 1e-12) / 1e9,
            "sync/tensors": float(tap.tensors),
            "sync/checked": 1.0 if checked else 0.0,
            "sync/partial": 1.0 if partial else 0.0,
        }

    def _verify(self, tap: _Tap) -> bool:
        if tap.probe is None:
            return False
        got = self.engine.read_weight(tap.probe_name, rows=self.probe_rows)
        if got is None:
            if not self._noted:
                logger.info(
                    "weight sync: %s engine cannot read back %s; post-sync check skipped",
                    self.engine.name,
                    tap.probe_name,
                )
                self._noted = True
            return False
        rows = tap.probe.shape[0] if tap.probe.dim() > 0 else 1
        got = got[:rows] if got.dim() > 0 else got
        if got.shape != tap.probe.shape:
            # e.g. SGLang returns its TP-rank-0 shard of a row-parallel weight: not comparable
            if not self._noted:
                logger.info(
                    "weight sync: engine returned %s with shape %s (streamed %s); check skipped",
                    tap.probe_name,
                    tuple(got.shape),
                    tuple(tap.probe.shape),
                )
                self._noted = True
            return False
        if not torch.equal(got, tap.probe):
            diff = (got - tap.probe).abs().max().item()
            raise RuntimeError(
                f"weight sync check failed: the rollout engine's {tap.probe_name} does not match the streamed "
                f"tensor (max |diff| {diff:.3g} over its first {rows} rows); the engine did not take the update "
                "(wrong name, or a refused load?)"
            )
        return True
