"""Where metrics go: `metrics.jsonl` (one flat JSON object per step, plus event lines that carry
an `event` key), the console, and
optionally tensorboard / wandb. Only rank 0 writes; other ranks get a no-op logger."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

from sppo_megatron.platform.files import append_text, atomic_write_text


class Timer:
    """`with Timer() as t: ...`, then `t.seconds` is the block's wall time."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _truncate_after(path: str, keep_up_to_step: int) -> None:
    """Drop the JSON lines of `path` whose step is > keep_up_to_step."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= keep_up_to_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    atomic_write_text(path, "".join(kept))


class MetricsLogger:
    """Append-only metrics.jsonl + console summary + optional tensorboard/wandb backends."""

    def __init__(
        self,
        output_dir: str,
        backends: List[str],
        total_steps: int,
        run_name: str = "run",
        project: str = "sppo",
        config: Optional[Dict[str, Any]] = None,
        enabled: bool = True,
        keep_up_to_step: int = -1,
    ) -> None:
        """keep_up_to_step: records of an earlier attempt at this run with step <= it are kept
        (the resumed checkpoint's step); later ones, which the resumed run redoes, are dropped
        (-1: a fresh run, drop all)."""
        self.enabled = enabled
        self.total_steps = total_steps
        self.start = time.time()
        self._tb = self._wandb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._path = os.path.join(output_dir, "metrics.jsonl")
        self._samples_path = os.path.join(output_dir, "samples.jsonl")
        for old in (self._path, self._samples_path):
            _truncate_after(old, keep_up_to_step)
        self.console = "console" in backends
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("trainer.logger=tensorboard needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard", run_name))
        if "wandb" in backends:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("trainer.logger=wandb needs `pip install wandb`") from e
            self._wandb = wandb.init(project=project, name=run_name, config=config, dir=output_dir)

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        append_text(self._path, json.dumps(record) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self.console:
            print(self.summary_line(step, metrics), file=sys.stderr, flush=True)

    def event(self, step: int, name: str, fields: Dict[str, Any]) -> None:
        """A metrics.jsonl line that is no step's metrics: `{"step": step, "event": name, ...}`
        (e.g. `resumed`, with the config keys that changed)."""
        if not self.enabled:
            return
        append_text(self._path, json.dumps({"step": step, "event": name, **fields}, default=str) + "\n")

    def summary_line(self, step: int, metrics: Dict[str, Any]) -> str:
        """`[step 3/10 |######              | 0:42] reward 0.41 | loss 0.012 | no_signal 38% | 2.1s/step`

        no_signal: prompts whose samples all got the same reward (no SPPO signal); the mean win
        rate is not shown, the soft loss makes it 1/2 by construction."""
        done = step / max(self.total_steps, 1)
        bar = "#" * int(20 * done)
        elapsed = int(time.time() - self.start)
        parts = [f"[step {step}/{self.total_steps} |{bar:<20}| {elapsed // 60}:{elapsed % 60:02d}]"]
        for key, label, fmt in (
            ("reward/mean", "reward", "{:.3f}"),
            ("train/loss", "loss", "{:.4g}"),
            ("train/grad_norm", "gnorm", "{:.3g}"),
            ("sppo/no_signal_frac", "no_signal", "{:.0%}"),
            ("val/accuracy", "val_acc", "{:.3f}"),
            ("val/score", "val_score", "{:.4g}"),
            ("rollout/logp_abs_diff", "logp_diff", "{:.2g}"),
            ("timing/step_s", "", "{:.1f}s/step"),
        ):
            if isinstance(metrics.get(key), (int, float)):
                text = fmt.format(metrics[key])
                parts.append(f"{label} {text}" if label else text)
        return " | ".join(parts)

    def log_samples(self, step: int, samples: List[Dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if samples:
            append_text(self._samples_path, "".join(json.dumps({"step": step, **sample}) + "\n" for sample in samples))

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
