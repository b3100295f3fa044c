"""tools/plot_metrics.py: one dashboard PNG with labeled panels, checked through the figure it draws."""

import html
import json
import math
import os
import subprocess
import sys

import pytest

from tools import plot_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "plot_metrics.py")

TITLES = [
    "Held-out accuracy (greedy)",
    "Training reward",
    "SPPO loss",
    "Gradient norm",
    "SPPO targets vs log-ratios",
    "Prompts without signal / clipped responses",
    "Policy entropy (sampling policy)",
    "KL to the step's old policy (in the update)",
    "Response length",
    "Learning rate",
    "Time per step, by phase",
    "Throughput (rollout + training)",
    "Peak host memory, by phase",
]


def _records(steps=60):
    rows = [
        {"step": 0, "val/accuracy": 0.5, "val/accuracy/arith": 0.5, "val/accuracy/gsm8k": 0.25, "timing/val_s": 0.3}
    ]
    for step in range(1, steps + 1):
        row = {
            "step": step,
            "reward/mean": 0.5 + 0.005 * step + 0.05 * math.sin(step),
            "train/loss": 0.04 / (1 + 0.01 * step),
            "train/grad_norm": 20.0 + step % 7,
            "sppo/win_rate_mean": 0.5,
            "sppo/target_std": 0.2,
            "sppo/log_ratio_mean": 0.001,
            "sppo/no_signal_frac": 0.2 + 0.005 * step,
            "response/clip_frac": 0.0,
            "response/length_mean": 5.0 + step % 3,
            "response/length_max": 8.0,
            "train/grad_clip_frac": 0.5,
            "train/lr": 2e-4 * min(1.0, step / 5),
            "policy/entropy": 1.2 - 0.01 * step,
            "policy/kl_old": 1e-3,
            "timing/sync_s": 0.01,
            "timing/gen_s": 0.05,
            "timing/reward_s": 0.001,
            "timing/old_logp_s": 0.1,
            "timing/update_s": 0.2,
            "timing/step_s": 0.5,
            "perf/tokens_per_s": 6000.0 + step,
            "memory/gen_peak_rss_gib": 1.5,
            "memory/update_peak_rss_gib": 2.0 + 0.01 * step,
            "val/accuracy": None,
        }
        if step % 20 == 0:
            row.update(
                {
                    "val/accuracy": 0.5 + step / 200,
                    "val/accuracy/arith": 0.6,
                    "val/accuracy/gsm8k": 0.3,
                    "timing/val_sync_s": 0.01,
                    "timing/val_s": 0.05,
                    "timing/save_s": 0.4,
                    "timing/step_s": 0.96,
                }
            )
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def dashboard():
    fig, layout = plot_metrics.build_dashboard(_records(), "run")
    yield fig, {panel.title: panel for panel in layout}
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_panels_are_titled_and_labeled(dashboard):
    fig, _ = dashboard
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == TITLES
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() for ax in axes)
    assert axes[0].get_ylabel() == "accuracy (%)"
    assert "moving average over ~3 steps" in fig._suptitle.get_text()


def test_accuracy_is_in_percent_per_data_source(dashboard):
    _, panels = dashboard
    drawn = panels["Held-out accuracy (greedy)"].drawn
    assert drawn["all prompts"] == ([0, 20, 40, 60], [50.0, 60.0, 70.0, 80.0])
    assert drawn["gsm8k"][1] == [25.0, 30.0, 30.0, 30.0] and "arith" in drawn


def test_loss_and_grad_norm_have_their_own_axes(dashboard):
    fig, panels = dashboard
    assert list(panels["SPPO loss"].drawn) == ["train/loss"]
    assert list(panels["Gradient norm"].drawn) == ["train/grad_norm"]
    loss_ax = fig.axes[TITLES.index("SPPO loss")]
    assert loss_ax.get_ylim()[1] < 0.1, "the loss axis is scaled to the loss, not to the gradient norm"


def test_noisy_series_are_smoothed_over_a_faint_raw_curve(dashboard):
    fig, _ = dashboard
    reward_ax = fig.axes[TITLES.index("Training reward")]
    raw, smoothed = reward_ax.get_lines()
    assert raw.get_alpha() == pytest.approx(0.25) and smoothed.get_alpha() is None
    assert raw.get_color() == smoothed.get_color()
    assert list(raw.get_ydata()) != list(smoothed.get_ydata())
    assert abs(smoothed.get_ydata()[-1] - raw.get_ydata()[-1]) < 0.1


def test_what_moves_instead_of_the_win_rate(dashboard):
    _, panels = dashboard
    assert not any("win" in label for panel in panels.values() for label in panel.drawn)
    signal = panels["SPPO targets vs log-ratios"].drawn
    assert signal["target spread (std)"][1][0] == 0.2 and signal["mean log-ratio"][1][0] == 0.001
    assert signal["RMS log-ratio - target (sqrt loss)"][1][0] == pytest.approx(math.sqrt(0.04 / 1.01))
    no_signal = panels["Prompts without signal / clipped responses"].drawn
    assert no_signal["prompts whose samples all scored the same"][1][0] == pytest.approx(20.5)


def test_what_rl_users_look_for(dashboard):
    _, panels = dashboard
    assert panels["Policy entropy (sampling policy)"].drawn["policy/entropy"][1][0] == pytest.approx(1.19)
    assert panels["KL to the step's old policy (in the update)"].drawn["policy/kl_old"][1][0] == 1e-3
    lengths = panels["Response length"].drawn
    assert lengths["mean"][1][:3] == [6.0, 7.0, 5.0] and lengths["max"][1][0] == 8.0
    assert panels["Learning rate"].drawn["train/lr"][1][:2] == pytest.approx([4e-5, 8e-5])
    clipped = panels["Prompts without signal / clipped responses"].drawn
    assert clipped["optimizer steps with a clipped gradient"][1][0] == 50.0


def test_phase_times_are_stacked_per_step_with_old_logprobs(dashboard):
    fig, panels = dashboard
    phases = panels["Time per step, by phase"].drawn
    assert list(phases) == [
        "weight sync",
        "generation",
        "reward",
        "old log-probs",
        "update",
        "validation",
        "checkpoint",
        "other",
    ]
    assert phases["old log-probs"][1][0] == 0.1
    assert phases["validation"][1][19] == pytest.approx(0.06) and phases["checkpoint"][1][19] == 0.4
    totals = [sum(values[i] for _, values in phases.values()) for i in range(60)]
    assert totals[0] == pytest.approx(0.5) and totals[19] == pytest.approx(0.96), "phases add up to timing/step_s"
    timing_ax = fig.axes[TITLES.index("Time per step, by phase")]
    assert len(timing_ax.patches) == 8 * 60, "one bar per phase per step"


def test_memory_peaks_per_phase(dashboard):
    _, panels = dashboard
    drawn = panels["Peak host memory, by phase"].drawn
    assert list(drawn) == ["generation", "update"], "phases without a ledger entry are not drawn"
    assert drawn["update"][0] == list(range(1, 61)) and drawn["update"][1][-1] == pytest.approx(2.6)


def test_command_writes_png_and_html(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in _records(10))
    out = subprocess.run([sys.executable, TOOL, str(tmp_path), "--html"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    png = (tmp_path / "plots" / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1400 and int.from_bytes(png[20:24], "big") == 2520
    page = (tmp_path / "plots" / "dashboard.html").read_text()
    assert "data:image/png;base64," in page and all(html.escape(title) in page for title in TITLES)


def test_missing_metrics_is_exit_2(tmp_path):
    out = subprocess.run([sys.executable, TOOL, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no metrics.jsonl" in out.stderr
