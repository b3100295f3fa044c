"""A dashboard of a run's metrics.jsonl: one PNG with labeled panels (and optionally an HTML page).

    python tools/plot_metrics.py RUN_DIR [--out FILE.png] [--smooth N] [--html]

Writes RUN_DIR/plots/dashboard.png (needs matplotlib); --html also writes dashboard.html next to
it (the PNG embedded, plus the latest value of every panel's series). Noisy per-step series are
drawn faint with an exponential moving average over about N steps on top (default: a twentieth
of the run). Panels: held-out accuracy (%), training reward, loss and gradient norm (separate
axes: they differ by orders of magnitude), SPPO targets vs log-ratios, prompts without signal and
clipped responses and gradients, policy entropy, KL to the step's old policy, response length,
learning rate, phase time stacked per step, throughput, peak host memory per phase (`memory/*`).
The mean win rate is not drawn: with the soft loss it
is 1/2 by construction.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Series = Tuple[List[int], List[float]]
Record = Dict[str, object]

# Phases of one step, bottom to top of the stacked timing panel; "other" is the rest of timing/step_s.
PHASES = [
    ("weight sync", ("timing/sync_s",)),
    ("generation", ("timing/gen_s",)),
    ("reward", ("timing/reward_s",)),
    ("old log-probs", ("timing/old_logp_s",)),
    ("update", ("timing/update_s",)),
    ("validation", ("timing/val_sync_s", "timing/val_s")),
    ("checkpoint", ("timing/save_s",)),
]


def _number(value: object) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def key_series(records: Sequence[Record], key: str, scale: float = 1.0) -> Series:
    """(steps, values) of the records where `key` holds a finite number."""
    points = [(int(r["step"]), _number(r.get(key))) for r in records]
    points = [(s, v * scale) for s, v in points if v is not None]
    return [s for s, _ in points], [v for _, v in points]


def _rms_fit_error(records: Sequence[Record]) -> Series:
    """sqrt(train/loss): the RMS of log-ratio minus target that the square loss averages."""
    steps, loss = key_series(records, "train/loss")
    return steps, [math.sqrt(max(v, 0.0)) for v in loss]


def smooth(values: Sequence[float], window: int) -> List[float]:
    """Debiased exponential moving average over about `window` points (TensorBoard-style)."""
    if window <= 1:
        return list(values)
    alpha = 2.0 / (window + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


@dataclass
class Panel:
    """One axis of the dashboard: what it draws, and (after drawing) the series it drew."""

    title: str
    ylabel: str
    lines: List[Tuple[str, Callable[[Sequence[Record]], Series]]] = field(default_factory=list)
    noisy: bool = True  # per-step series: faint raw curve + smoothed curve
    stacked: bool = False
    drawn: Dict[str, Series] = field(default_factory=dict)


def _key(key: str, scale: float = 1.0) -> Callable[[Sequence[Record]], Series]:
    return lambda records: key_series(records, key, scale)


def _accuracy_lines(records: Sequence[Record]) -> List[Tuple[str, Callable[[Sequence[Record]], Series]]]:
    sources = sorted({k.split("/", 2)[2] for r in records for k in r if k.startswith("val/accuracy/")})
    lines = [("all prompts", _key("val/accuracy", 100.0))]
    if len(sources) > 1:
        lines += [(source, _key(f"val/accuracy/{source}", 100.0)) for source in sources]
    return lines


def phase_series(records: Sequence[Record]) -> Dict[str, Series]:
    """Seconds per phase for every training step (records with timing/step_s), plus `other`."""
    rows = [r for r in records if _number(r.get("timing/step_s")) is not None]
    steps = [int(r["step"]) for r in rows]
    out: Dict[str, Series] = {}
    accounted = [0.0] * len(rows)
    for name, keys in PHASES:
        values = [sum(_number(r.get(k)) or 0.0 for k in keys) for r in rows]
        if any(values):
            out[name] = (steps, values)
            accounted = [a + v for a, v in zip(accounted, values)]
    out["other"] = (steps, [max(float(r["timing/step_s"]) - a, 0.0) for r, a in zip(rows, accounted)])
    return out


#: the memory ledger's phases (sppo_megatron/platform/memory.py), in step order
MEMORY_PHASES = [
    ("sync", "weight sync"),
    ("gen", "generation"),
    ("old_logp", "old log-probs"),
    ("update", "update"),
    ("val", "validation"),
    ("save", "checkpoint"),
]


def _memory_lines(records: Sequence[Record]) -> List[Tuple[str, Callable[[Sequence[Record]], Series]]]:
    return [(label, _key(f"memory/{phase}_peak_rss_gib")) for phase, label in MEMORY_PHASES]


def panels(records: Sequence[Record]) -> List[Panel]:
    """The dashboard's panels, in reading order (two per row)."""
    return [
        Panel("Held-out accuracy (greedy)", "accuracy (%)", _accuracy_lines(records), noisy=False),
        Panel("Training reward", "mean reward per sample", [("reward/mean", _key("reward/mean"))]),
        Panel("SPPO loss", "loss (square error)", [("train/loss", _key("train/loss"))]),
        Panel("Gradient norm", "grad norm", [("train/grad_norm", _key("train/grad_norm"))]),
        Panel(
            "SPPO targets vs log-ratios",
            "nats",
            [
                ("target spread (std)", _key("sppo/target_std")),
                ("RMS log-ratio - target (sqrt loss)", _rms_fit_error),
                ("mean log-ratio", _key("sppo/log_ratio_mean")),
            ],
        ),
        Panel(
            "Prompts without signal / clipped responses",
            "% of prompts / responses",
            [
                ("prompts whose samples all scored the same", _key("sppo/no_signal_frac", 100.0)),
                ("responses cut at max length", _key("response/clip_frac", 100.0)),
                ("optimizer steps with a clipped gradient", _key("train/grad_clip_frac", 100.0)),
            ],
        ),
        Panel(
            "Policy entropy (sampling policy)", "nats per response token", [("policy/entropy", _key("policy/entropy"))]
        ),
        Panel(
            "KL to the step's old policy (in the update)",
            "nats per response token",
            [("policy/kl_old", _key("policy/kl_old"))],
        ),
        Panel(
            "Response length",
            "tokens",
            [("mean", _key("response/length_mean")), ("max", _key("response/length_max"))],
        ),
        Panel("Learning rate", "lr", [("train/lr", _key("train/lr"))], noisy=False),
        Panel("Time per step, by phase", "seconds", noisy=False, stacked=True),
        Panel("Throughput (rollout + training)", "tokens / s", [("perf/tokens_per_s", _key("perf/tokens_per_s"))]),
        Panel("Peak host memory, by phase", "peak RSS (GiB)", _memory_lines(records), noisy=False),
    ]


def draw(ax, panel: Panel, records: Sequence[Record], window: int) -> None:
    """Draw `panel` on `ax` and record the series drawn in panel.drawn."""
    from matplotlib.ticker import MaxNLocator

    if panel.stacked:
        phases = phase_series(records)
        steps = next(iter(phases.values()))[0]
        if steps:
            bottom = [0.0] * len(steps)
            for name, (_, values) in phases.items():
                ax.bar(steps, values, width=1.0, bottom=bottom, label=name, linewidth=0)
                bottom = [b + v for b, v in zip(bottom, values)]
            panel.drawn.update(phases)
            ax.set_ylim(0, 1.3 * max(bottom))
    else:
        for label, get in panel.lines:
            steps, values = get(records)
            if not steps:
                continue
            panel.drawn[label] = (steps, values)
            if not panel.noisy:
                ax.plot(steps, values, marker="o", markersize=3, label=label)
            elif window > 1:
                (raw,) = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
                ax.plot(steps, smooth(values, window), color=raw.get_color(), linewidth=1.8, label=label)
            else:
                ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=label)
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    if panel.drawn:
        ax.legend(fontsize=8, loc="upper center", ncol=4) if panel.stacked else ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no data in metrics.jsonl", ha="center", va="center", transform=ax.transAxes, color="gray")


def default_window(records: Sequence[Record]) -> int:
    return max(1, round(sum(1 for r in records if "train/loss" in r) / 20))


def build_dashboard(records: Sequence[Record], title: str = "", window: Optional[int] = None):
    """(matplotlib Figure, drawn panels): the whole dashboard, not yet saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = default_window(records) if window is None else window
    layout = panels(records)
    rows = -(-len(layout) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, layout):
        draw(ax, panel, records, window)
    for ax in list(axes.flat)[len(layout) :]:
        ax.set_visible(False)
    steps = [int(r["step"]) for r in records]
    subtitle = f"{title}: " if title else ""
    subtitle += f"steps {min(steps)}..{max(steps)}" if steps else "no records"
    if window > 1:
        subtitle += f"; faint: per step, solid: moving average over ~{window} steps"
    fig.suptitle(subtitle, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig, layout


def write_html(path: str, png_path: str, title: str, layout: Sequence[Panel]) -> None:
    """A page with the PNG embedded and the latest value of every drawn series."""
    with open(png_path, "rb") as fh:
        image = base64.b64encode(fh.read()).decode("ascii")
    rows = []
    for panel in layout:
        for label, (steps, values) in panel.drawn.items():
            if steps:
                rows.append(
                    f"<tr><td>{html.escape(panel.title)}</td><td>{html.escape(label)}</td>"
                    f"<td>{steps[-1]}</td><td>{values[-1]:.4g}</td></tr>"
                )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><img src='data:image/png;base64,{image}' style='max-width:100%'>"
        "<table border='1' cellpadding='4'><tr><th>panel</th><th>series</th><th>step</th><th>latest</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)


def read_metrics(path: str) -> List[Record]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/plots/dashboard.png)")
    parser.add_argument("--smooth", type=int, default=None, metavar="N", help="moving-average window in steps (1: off)")
    parser.add_argument("--html", action="store_true", help="also write dashboard.html next to the PNG")
    args = parser.parse_args(argv)
    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        print(f"plot_metrics: error: no metrics.jsonl in {args.run_dir}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot_metrics: error: needs matplotlib (`pip install matplotlib`)", file=sys.stderr)
        return 2
    import matplotlib.pyplot as plt

    title = os.path.basename(os.path.abspath(args.run_dir))
    fig, layout = build_dashboard(read_metrics(path), title, args.smooth)
    out = args.out or os.path.join(args.run_dir, "plots", "dashboard.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(out)
    if args.html:
        page = os.path.splitext(out)[0] + ".html"
        write_html(page, out, title, layout)
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
