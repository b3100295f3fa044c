"""`sppo-train` end to end on the demo's tiny assets, launched as users launch it (a plain process
or torchrun with gloo ranks): outputs, layout invariance, resume, preemption, crash safety, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_run import (
    ENV,
    QUICK,
    ROOT,
    base_overrides,
    by_step,
    latest,
    read_metrics,
    train,
    train_command,
    wait_for_step,
)

pytestmark = pytest.mark.slow

DESIGN_KEYS = (
    "train/loss",
    "train/grad_norm",
    "train/lr",
    "reward/mean",
    "sppo/win_rate_mean",
    "sppo/log_ratio_mean",
    "timing/gen_s",
    "timing/sync_s",
    "timing/update_s",
    "timing/step_s",
    "perf/tokens_per_s",
)


def _eval(args):
    return subprocess.run(
        [sys.executable, "-m", "sppo_megatron.cli.eval", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )


def test_run_directory_metrics_samples_checkpoint_and_export(tiny_assets, tmp_path):
    out = tmp_path / "run"
    train(
        base_overrides(tiny_assets, str(out))
        + ["trainer.total_steps=2", "trainer.log_samples_freq=1", "trainer.export_hf=true"]
    )
    rows = read_metrics(str(out))
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert 0.0 <= rows[0]["val/accuracy"] <= 1.0 and "val/accuracy/arith" in rows[0]
    for row in rows[1:]:
        missing = [k for k in DESIGN_KEYS if not isinstance(row.get(k), (int, float))]
        assert not missing, f"step {row['step']} lacks {missing}"
        assert row["train/skipped"] == 0
        # the rollout engine samples from exactly the weights the actor recomputes log-probs with
        assert row["rollout/logp_abs_diff"] < 1e-4
    assert "val/accuracy" in rows[2] and "val/accuracy" not in rows[1]
    # validation syncs too, but its sync time is its own: the step's sync figure stays the step's
    assert rows[2]["timing/sync_s"] > 0 and rows[2]["timing/val_sync_s"] > 0

    assert (out / "config.yaml").is_file()
    assert latest(str(out)) == "step_2"
    state = json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["sampler"]["position"] == 8
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2} and all("response" in s and "reward" in s for s in samples)

    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(out / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    # sppo-eval of the exported HF model and of the run's Megatron checkpoint reproduce the
    # trainer's own greedy validation at the last step
    for model_arg in (out / "hf", out):
        result_file = tmp_path / f"eval_{model_arg.name}.json"
        res = _eval(
            [
                "--model",
                str(model_arg),
                "--data",
                tiny_assets["test"],
                "--out",
                str(result_file),
                "data.max_response_length=6",
                "trainer.seed=3",
            ]
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert "arith" in res.stdout

        got = json.loads(result_file.read_text())["metrics"]["eval/accuracy"]
        assert got == pytest.approx(rows[2]["val/accuracy"]), model_arg

    bad = _eval(["--model", str(tmp_path / "nowhere"), "--data", tiny_assets["test"]])
    assert bad.returncode == 2 and "sppo-eval: error: --model" in bad.stderr and "Traceback" not in bad.stderr
    bad = _eval(["--model", tiny_assets["megatron"] + "/hf", "--data", tiny_assets["test"]])  # config only
    assert bad.returncode == 2 and "no weights" in bad.stderr and "Traceback" not in bad.stderr


def test_tp2_pp2_matches_single_process(tiny_assets, two_step_run, tmp_path):
    # the single-process reference is the shared two_step_run (its checkpoints and export do not
    # change the metrics)
    train(
        base_overrides(tiny_assets, str(tmp_path / "tp2pp2"))
        + QUICK
        + ["trainer.total_steps=2", "parallel.tp=2", "parallel.pp=2"],
        nproc=4,
        timeout=400,
    )
    single, sharded = by_step(str(two_step_run)), by_step(str(tmp_path / "tp2pp2"))
    assert all(single[step]["train/grad_norm"] > 0 for step in (1, 2)), "no learning signal: the comparison is vacuous"
    for step in (1, 2):
        assert sharded[step]["reward/mean"] == single[step]["reward/mean"]
        # fp32 reduction order differs between 4 sharded ranks and one process: on this machine's
        # CPU the step-2 loss differs by 1.6e-4 relative, identically on the earlier commit 955afc6
        # (it passed 1e-4 on another CPU); a wrong layout or a dropped shard moves these by > 1e-2
        for key in ("train/loss", "train/grad_norm", "sppo/log_ratio_mean"):
            assert sharded[step][key] == pytest.approx(single[step][key], rel=1e-3, abs=1e-7), (step, key)


def _weights(run_dir) -> dict:
    return load_file(os.path.join(run_dir, "hf", "model.safetensors"))


def test_resumed_run_reproduces_uninterrupted_run(tiny_assets, two_step_run, tmp_path):
    common = base_overrides(tiny_assets, "") + QUICK + ["trainer.export_hf=true", "trainer.save_freq=2"]
    full, split = tmp_path / "full", tmp_path / "split"
    train([*common, f"trainer.output_dir={full}", "trainer.total_steps=4"])
    shutil.copytree(two_step_run, split)  # the same run's first 2 steps, stopped there
    resumed = train([*common, f"trainer.output_dir={split}", "trainer.total_steps=4"])
    assert "resumed from" in resumed.stdout
    a, b = by_step(str(full)), by_step(str(split))
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert b[step]["reward/mean"] == a[step]["reward/mean"]
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)
    wa, wb = _weights(full), _weights(split)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-6, atol=1e-7, msg=name)


def _children(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


@pytest.mark.parametrize("nproc,sig", [(1, signal.SIGTERM), (2, signal.SIGUSR1)])
def test_preemption_signal_checkpoints_and_exits_0(tiny_assets, tmp_path, nproc, sig):
    out = tmp_path / "run"
    cmd = train_command(
        base_overrides(tiny_assets, str(out)) + ["trainer.total_steps=200", "trainer.test_freq=0"], nproc
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV}, cwd=ROOT
    )
    wait_for_step(str(out), 1, proc)
    # one rank is enough (Slurm signals every task, but not necessarily at the same moment)
    target = proc.pid if nproc == 1 else _children(proc.pid)[-1]
    os.kill(target, sig)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "preemption signal received" in stdout
    last = read_metrics(str(out))[-1]["step"]
    assert 1 <= last < 200
    assert latest(str(out)) == f"step_{last}"


def test_kill_9_during_checkpoint_leaves_a_resumable_run(tiny_assets, tmp_path):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    overrides = base_overrides(tiny_assets, str(out)) + [
        "trainer.test_freq=0",
        "trainer.val_before_train=false",
        "trainer.save_freq=1",
        "trainer.keep_last=2",
    ]
    proc = subprocess.Popen(
        train_command([*overrides, "trainer.total_steps=200"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    deadline = time.time() + 240
    seen_tmp = False
    while time.time() < deadline and proc.poll() is None:
        names = os.listdir(ckpts) if ckpts.is_dir() else []
        # the second save or later: a kill mid-write must leave the previous one usable
        if any(n.startswith(".tmp-step_") and n != ".tmp-step_1" for n in names):
            seen_tmp = True
            proc.kill()
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert seen_tmp, "never saw a checkpoint being written"
    done = latest(str(out))
    assert done is not None and (ckpts / done / "trainer_state.json").is_file()
    for name in os.listdir(ckpts):
        if name.startswith("step_"):
            assert (ckpts / name / "trainer_state.json").is_file(), f"{name} is incomplete but looks complete"
    step = int(done.split("_")[1])
    resumed = train([*overrides, f"trainer.total_steps={step + 1}"])
    assert f"resumed from {ckpts / done}" in resumed.stdout
    assert latest(str(out)) == f"step_{step + 1}"
    assert max(by_step(str(out))) == step + 1
    assert sorted(n for n in os.listdir(ckpts) if n.startswith("step_")) == sorted([done, f"step_{step + 1}"])


def _parquet(path, rows) -> str:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _row(source="arith"):
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": "1+2="}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": "3"},
        "extra_info": {"index": 0},
    }


def _bad_run(tiny_assets, tmp_path, *extra):
    res = train(base_overrides(tiny_assets, str(tmp_path / "run")) + ["trainer.total_steps=1", *extra], check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    return [line for line in res.stderr.splitlines() if line.startswith("sppo-train: error:")]


def _refused_before_start(tiny_assets, tmp_path, capsys, *extra):
    """sppo-train's main() in this process for what preflight refuses: it must exit 2 before any
    process group exists (so the pytest process stays clean), saving a process start each."""
    from sppo_megatron.cli.train import main

    with pytest.raises(SystemExit) as exited:
        main(base_overrides(tiny_assets, str(tmp_path / "run")) + ["trainer.total_steps=1", *extra])
    assert exited.value.code == 2
    assert not torch.distributed.is_initialized()
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("sppo-train: error:")]


def test_bad_inputs_exit_2_with_one_clear_line(tiny_assets, tmp_path, capsys):
    # found with the tokenizer and data, after the platform starts: real processes
    no_prompt = tmp_path / "no_prompt.parquet"
    _parquet(no_prompt, [{k: v for k, v in _row().items() if k != "prompt"}])
    errors = _bad_run(tiny_assets, tmp_path, f"data.train_files=[{no_prompt}]")
    assert len(errors) == 1 and str(no_prompt) in errors[0] and "'prompt'" in errors[0]

    unknown = _parquet(tmp_path / "unknown.parquet", [_row("mystery_source")] * 8)
    errors = _bad_run(tiny_assets, tmp_path, f"data.train_files=[{unknown}]")
    assert len(errors) == 1 and "mystery_source" in errors[0]

    # refused by preflight: in this process
    errors = _refused_before_start(tiny_assets, tmp_path, capsys, f"data.train_files=[{tmp_path / 'missing.parquet'}]")
    assert len(errors) == 1 and "data.train_files" in errors[0] and "missing.parquet" in errors[0]

    not_hf = tmp_path / "not_hf"
    not_hf.mkdir()
    errors = _refused_before_start(tiny_assets, tmp_path, capsys, f"model.path={not_hf}")
    assert len(errors) == 1 and "model.path" in errors[0] and "config.json" in errors[0]

    # an output directory holding another run's checkpoints is not overwritten by resume=none
    ckpt = tmp_path / "run" / "checkpoints" / "step_5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 5}')
    (tmp_path / "run" / "config.yaml").write_text("the other run's config\n")
    errors = _refused_before_start(tiny_assets, tmp_path, capsys, "trainer.resume=none")
    assert len(errors) == 1 and "trainer.overwrite" in errors[0]
    assert (ckpt / "trainer_state.json").read_text() == '{"step": 5}'
    assert (tmp_path / "run" / "config.yaml").read_text() == "the other run's config\n"


def test_non_finite_steps_are_skipped_then_the_run_stops(tiny_assets, tmp_path):
    # an absurd learning rate overflows the weights after the first optimizer step
    res = train(
        base_overrides(tiny_assets, str(tmp_path / "run"))
        + [
            "trainer.total_steps=10",
            "trainer.max_bad_steps=2",
            "trainer.val_before_train=false",
            "optim.lr=1e30",
            "optim.clip_grad=0",
        ],
        check=False,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "2 steps in a row had a non-finite loss" in res.stderr and "Traceback" not in res.stderr
    rows = read_metrics(str(tmp_path / "run"))
    assert rows[-1]["step"] < 10 and rows[-1]["train/bad_steps"] == 2 and rows[-1]["train/skipped"] > 0
    assert latest(str(tmp_path / "run")) is None, "a diverged run must not checkpoint its broken weights"


def test_non_finite_reward_is_a_clear_error(tiny_assets, tmp_path):
    reward = tmp_path / "nan_reward.py"
    reward.write_text("def score(solution_str, ground_truth):\n    return float('nan')\n")
    errors = _bad_run(tiny_assets, tmp_path, f"reward.custom_fn={reward}:score", "trainer.val_before_train=false")
    assert len(errors) == 1 and "rewards must be finite" in errors[0]
