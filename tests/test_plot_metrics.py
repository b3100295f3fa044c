"""tools/plot_metrics.py turns a run's metrics.jsonl into PNGs."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "plot_metrics.py")


def test_plots_every_panel(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.write(json.dumps({"step": 0, "val/accuracy": 0.5, "timing/sync_s": 0.1}) + "\n")
        for step in range(1, 6):
            fh.write(json.dumps({"step": step, "reward/mean": 0.1 * step, "train/loss": 1.0 / step, "train/grad_norm": 2.0,
                                 "sppo/win_rate_mean": 0.5, "sppo/log_ratio_mean": 0.01, "timing/gen_s": 1.0,
                                 "timing/sync_s": 0.1, "timing/update_s": 2.0, "timing/step_s": 3.5,
                                 "val/accuracy": None}) + "\n")
    out = subprocess.run([sys.executable, TOOL, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("reward", "accuracy", "loss", "win_rate", "timing"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_missing_metrics_is_exit_2(tmp_path):
    out = subprocess.run([sys.executable, TOOL, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no metrics.jsonl" in out.stderr
