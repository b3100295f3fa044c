"""The console line shows figures that move during training (not the win rate, 1/2 by construction)."""

from sppo_megatron.trainer.metrics import MetricsLogger


def test_console_line_shows_no_signal_fraction_not_win_rate(tmp_path):
    logger = MetricsLogger(str(tmp_path), ["console"], total_steps=10)
    line = logger.summary_line(
        3,
        {
            "reward/mean": 0.4,
            "train/loss": 0.012,
            "sppo/win_rate_mean": 0.5,
            "sppo/no_signal_frac": 0.375,
            "timing/step_s": 2.1,
        },
    )
    logger.close()
    assert "no_signal 38%" in line and "win" not in line
    assert line.startswith("[step 3/10 |######              |") and line.endswith("| 2.1s/step")
