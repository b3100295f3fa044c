"""Plot a run's metrics.jsonl: reward, accuracy, loss, win rate and phase timings as PNGs.

    python tools/plot_metrics.py RUN_DIR [--out DIR]

Writes RUN_DIR/plots/{reward,accuracy,loss,win_rate,timing}.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

PANELS = {
    "reward": ["reward/mean"],
    "accuracy": ["val/accuracy"],
    "loss": ["train/loss", "train/grad_norm"],
    "win_rate": ["sppo/win_rate_mean", "sppo/log_ratio_mean"],
    "timing": ["timing/gen_s", "timing/sync_s", "timing/update_s", "timing/step_s"],
}


def read_metrics(path: str) -> List[Dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    args = parser.parse_args()
    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        print(f"plot_metrics: error: no metrics.jsonl in {args.run_dir}", file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_metrics: error: needs matplotlib (`pip install matplotlib`)", file=sys.stderr)
        return 2
    records = read_metrics(path)
    out = args.out or os.path.join(args.run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    for name, keys in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        plotted = False
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=key)
                plotted = True
        if plotted:
            ax.set_xlabel("step")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(os.path.join(out, f"{name}.png"), dpi=100)
            print(os.path.join(out, f"{name}.png"))
        plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
