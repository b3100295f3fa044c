"""Faults really injected into real runs on the demo's tiny assets: broken checkpoints (garbage
trainer_state.json, a truncated shard, another model's shape), two runs in one output_dir, a
kill -9 leaving a stale lock, truncated safetensors, non-UTF-8 parquet strings, a full disk (a
1 MB tmpfs, also while appending metrics.jsonl), a read-only output directory, a truncated
tokenizer.json, a remote scorer answering 500 or garbage JSON. Every failure is one line naming the
file (or URL), exit code 2; nothing is overwritten."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sppo_megatron.testing.oracle_models import ScoringServer
from tests.tiny_run import ENV, QUICK, ROOT, base_overrides, by_step, train, train_command, wait_for_step

pytestmark = pytest.mark.slow


def _errors(res: subprocess.CompletedProcess, prog: str) -> list:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return [line for line in res.stderr.splitlines() if line.startswith(f"{prog}: error:")]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )


def _truncate(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("fault", ["garbage_trainer_state", "truncated_shard"])
def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(two_step_run, tiny_assets, tmp_path, fault):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    broken = out / "checkpoints" / "step_2"
    if fault == "garbage_trainer_state":
        (broken / "trainer_state.json").write_text("{\x00garbage")
        named = "trainer_state.json is unreadable"
    else:
        _truncate(broken / "__0_0.distcp")
        named = "__0_0.distcp is truncated"
    res = train(base_overrides(tiny_assets, str(out)) + QUICK + ["trainer.total_steps=3"])
    assert f"checkpoint {broken}: {named}" in res.stdout and "falling back to" in res.stdout, res.stdout
    assert f"resumed from {out / 'checkpoints' / 'step_1'}" in res.stdout
    assert sorted(by_step(str(out))) == [1, 2, 3]
    if fault != "truncated_shard":
        return
    # an explicit trainer.resume path gets no fallback: one line naming the directory and the file
    res = train(
        base_overrides(tiny_assets, str(out))
        + QUICK
        + ["trainer.total_steps=4", f"trainer.resume={out / 'checkpoints' / 'step_3'}"]
    )
    assert res.returncode == 0
    _truncate(out / "checkpoints" / "step_4" / "__0_1.distcp")
    res = train(
        base_overrides(tiny_assets, str(out))
        + QUICK
        + ["trainer.total_steps=5", f"trainer.resume={out / 'checkpoints' / 'step_4'}"],
        check=False,
    )
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1 and "step_4: __0_1.distcp is truncated" in errors[0], errors


def test_checkpoint_of_another_model_shape_is_one_line_and_keeps_config_yaml(two_step_run, tiny_assets, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    config_before = (out / "config.yaml").read_text()
    wide = tmp_path / "wide_hf"
    shutil.copytree(tiny_assets["megatron"] + "/hf", wide)
    cfg = json.loads((wide / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (wide / "config.json").write_text(json.dumps(cfg))
    overrides = [o for o in base_overrides(tiny_assets, str(out)) if not o.startswith(("model.path", "model.megatron"))]
    res = train(overrides + QUICK + [f"model.path={wide}", "trainer.total_steps=3"], check=False)
    errors = _errors(res, "sppo-train")  # another model is a config change the checkpoint refuses first
    assert {e.split(":")[3].strip().split("=")[0] for e in errors} == {
        "model.path",
        "model.megatron_ckpt",
        "reward.pairwise_prompt_template",
    }, errors
    accept = "trainer.resume_accept=[model,reward.pairwise_prompt_template]"
    res = train(overrides + QUICK + [f"model.path={wide}", "trainer.total_steps=3", accept], check=False)
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1 and f"checkpoint {out / 'checkpoints' / 'step_2'} does not fit the model" in errors[0], (
        errors
    )
    assert "linear_fc" in errors[0] and "another model shape" in errors[0]
    assert (out / "config.yaml").read_text() == config_before


def _tree(path) -> dict:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.mark.parametrize(
    "mode, message", [("500", "HTTP status 500"), ("malformed", "malformed JSON"), ("silent", "no answer within 0.3s")]
)
def test_remote_scorer_failing_mid_run_is_one_line_and_overwrites_no_checkpoint(
    two_step_run, tiny_assets, tmp_path, mode, message
):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    before = _tree(out / "checkpoints")
    server = ScoringServer()
    server.mode = mode
    try:
        res = train(
            base_overrides(tiny_assets, str(out))
            + QUICK
            + [
                "trainer.total_steps=3",
                "trainer.save_freq=1",
                "reward.source=remote",
                f"reward.url={server.url}",
                "reward.retries=1",
                "reward.backoff_s=0.01",
                "reward.request_timeout_s=0.3",
                "trainer.resume_accept=[reward]",  # the rule-scored run goes on with a remote scorer
            ],
            check=False,
        )
    finally:
        server.shutdown()
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1 and server.url in errors[0] and message in errors[0] and "after 2 attempts" in errors[0], (
        errors
    )
    assert server.requests == 2 and f"resumed from {out / 'checkpoints' / 'step_2'}" in res.stdout
    assert _tree(out / "checkpoints") == before and sorted(by_step(str(out))) == [1, 2]


def test_second_run_in_one_output_dir_is_refused_and_a_killed_runs_lock_is_stale(tiny_assets, tmp_path):
    out = tmp_path / "run"
    overrides = base_overrides(tiny_assets, str(out)) + QUICK + ["trainer.save_freq=1"]
    first = subprocess.Popen(
        train_command([*overrides, "trainer.total_steps=200"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    try:
        wait_for_step(out, 1, first)
        lock = json.loads((out / ".sppo-train.lock").read_text())
        res = train([*overrides, "trainer.total_steps=200"], check=False)
        errors = _errors(res, "sppo-train")
        assert len(errors) == 1 and "in use by another run" in errors[0] and f"PID {lock['pid']}" in errors[0], errors
    finally:
        first.kill()  # kill -9: the lock file stays behind, naming a dead PID
        first.wait(timeout=60)
    assert (out / ".sppo-train.lock").exists()
    steps_done = max(by_step(str(out)))
    res = train([*overrides, f"trainer.total_steps={steps_done + 1}"])
    assert "removed the stale lock" in res.stdout and "resumed from" in res.stdout
    assert not (out / ".sppo-train.lock").exists()  # released at exit


def _bad_utf8_parquet(path) -> str:
    """A verl-schema prompt file whose data_source strings are not UTF-8."""
    good = pq.read_table(path).slice(0, 4)
    raw = pa.Array.from_buffers(
        pa.string(),
        4,
        [
            None,
            pa.py_buffer(b"".join(i.to_bytes(4, "little") for i in (0, 2, 4, 6, 8))),
            pa.py_buffer(b"\xff\xfe\xff\xfe\xff\xfe\xff\xfe"),
        ],
    )
    table = good.set_column(good.column_names.index("data_source"), "data_source", raw)
    out = os.path.join(os.path.dirname(path), "..", "bad_utf8.parquet")
    pq.write_table(table, out)
    return os.path.abspath(out)


@pytest.fixture()
def broken_inputs(tiny_assets, tmp_path):
    hf = tmp_path / "truncated_hf"
    shutil.copytree(tiny_assets["hf"], hf)
    _truncate(hf / "model.safetensors")
    bad = tmp_path / "data" / "x"
    bad.parent.mkdir()
    shutil.copy(tiny_assets["test"], bad)
    return {"hf": str(hf), "parquet": _bad_utf8_parquet(str(bad))}


def test_train_truncated_safetensors_and_bad_utf8_parquet(tiny_assets, broken_inputs, tmp_path):
    fresh = [
        o for o in base_overrides(tiny_assets, str(tmp_path / "run")) if not o.startswith(("model.path", "model.meg"))
    ]
    errors = _errors(train(fresh + [f"model.path={broken_inputs['hf']}"], check=False), "sppo-train")
    assert len(errors) == 1 and "model.safetensors: truncated or corrupt safetensors file" in errors[0], errors
    res = train(
        base_overrides(tiny_assets, str(tmp_path / "run2")) + [f"data.train_files=[{broken_inputs['parquet']}]"],
        check=False,
    )
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1 and "bad_utf8.parquet: column 'data_source'" in errors[0] and "UTF-8" in errors[0], errors


def test_convert_and_eval_truncated_safetensors_and_bad_utf8_parquet(tiny_assets, broken_inputs, tmp_path):
    for argv in (
        ["hf-to-megatron", "--hf", broken_inputs["hf"], "--out", str(tmp_path / "out")],
        ["verify", "--hf", broken_inputs["hf"], "--ckpt", tiny_assets["megatron"]],
    ):
        errors = _errors(_cli("sppo_megatron.cli.convert", *argv), "sppo-convert")
        assert len(errors) == 1 and "model.safetensors: truncated or corrupt" in errors[0], (argv, errors)
    errors = _errors(
        _cli(
            "sppo_megatron.cli.eval", "--model", broken_inputs["hf"], "--data", tiny_assets["test"], "rollout.engine=hf"
        ),
        "sppo-eval",
    )
    assert len(errors) == 1 and "model.safetensors: truncated or corrupt" in errors[0], errors
    errors = _errors(
        _cli(
            "sppo_megatron.cli.eval",
            "--model",
            tiny_assets["hf"],
            "--data",
            broken_inputs["parquet"],
            "rollout.engine=hf",
        ),
        "sppo-eval",
    )
    assert len(errors) == 1 and "not valid UTF-8" in errors[0], errors


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs: writes there fail with a full disk (the tiny model takes 1.2 MB)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk ({res.stderr.strip() or 'mount failed'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_naming_the_file(tiny_assets, small_tmpfs, tmp_path):
    errors = _errors(
        _cli(
            "sppo_megatron.cli.convert", "hf-to-megatron", "--hf", tiny_assets["hf"], "--out", str(small_tmpfs / "conv")
        ),
        "sppo-convert",
    )
    assert len(errors) == 1 and f"cannot write {small_tmpfs / 'conv'}: no space left on device" in errors[0], errors
    assert os.listdir(small_tmpfs) == [], "the temporary output must be removed"

    res = train(base_overrides(tiny_assets, str(small_tmpfs / "run")) + QUICK + ["trainer.total_steps=1"], check=False)
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1 and "checkpoints/.tmp-step_1: no space left on device" in errors[0], errors
    assert not (small_tmpfs / "run" / "checkpoints" / ".tmp-step_1").exists()

    shutil.rmtree(small_tmpfs / "run")
    filler = small_tmpfs / "filler"
    with pytest.raises(OSError):
        with open(filler, "wb") as fh:
            fh.write(b"\0" * 4 * 1024**2)
    errors = _errors(
        _cli(
            "sppo_megatron.cli.eval",
            "--model",
            tiny_assets["hf"],
            "--data",
            tiny_assets["test"],
            "--limit",
            "4",
            "--out",
            str(small_tmpfs / "eval.json"),
            "rollout.engine=hf",
        ),
        "sppo-eval",
    )
    assert len(errors) == 1 and f"cannot write {small_tmpfs / 'eval.json'}: no space left on device" in errors[0], (
        errors
    )


FILL_AT_STEP_2 = """
import os, time
def score(solution_str, ground_truth):
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "calls"), "a") as fh:
        fh.write("x")
    if os.path.getsize(os.path.join(here, "calls")) > 16:  # step 2: let the test fill the disk first
        open(os.path.join(here, "waiting"), "w").close()
        while not os.path.exists(os.path.join(here, "filled")):
            time.sleep(0.05)
    return 1.0 if ground_truth in solution_str else 0.0
"""


def test_full_disk_while_appending_metrics_is_one_line_and_leaves_whole_lines(tiny_assets, small_tmpfs, tmp_path):
    reward = tmp_path / "reward" / "fill.py"
    reward.parent.mkdir()
    reward.write_text(FILL_AT_STEP_2)
    out = small_tmpfs / "run"
    proc = subprocess.Popen(
        train_command(
            base_overrides(tiny_assets, str(out))
            + QUICK
            + ["trainer.total_steps=5", f"reward.custom_fn={reward}:score", "reward.timeout_s=0"]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ENV},
    )
    try:
        wait_for_step(str(out), 1, proc)
        while not (reward.parent / "waiting").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
        with pytest.raises(OSError):
            with open(small_tmpfs / "filler", "wb") as fh:
                fh.write(b"\0" * 4 * 1024**2)
        (reward.parent / "filled").touch()
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1 and f"cannot append to {out / 'metrics.jsonl'}: No space left on device" in errors[0], (
        errors
    )
    text = (out / "metrics.jsonl").read_text()
    steps = [json.loads(line)["step"] for line in text.splitlines()]  # every line whole JSON
    # the page metrics.jsonl already had may hold a few more lines; the one that did not fit was cut back
    assert text.endswith("\n") and steps == list(range(1, len(steps) + 1)) and len(steps) < 5, steps


@pytest.fixture()
def read_only_dir(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({res.stderr.strip() or 'mount failed'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_output_dir_and_truncated_tokenizer_are_one_line(tiny_assets, read_only_dir, tmp_path):
    res = train(base_overrides(tiny_assets, str(read_only_dir / "run")) + QUICK, check=False)
    errors = _errors(res, "sppo-train")
    assert len(errors) == 1, errors
    assert f"trainer.output_dir={read_only_dir / 'run'}: cannot write in {read_only_dir}" in errors[0]

    hf = tmp_path / "hf"
    shutil.copytree(tiny_assets["megatron"] + "/hf", hf)
    _truncate(hf / "tokenizer.json")
    overrides = [o for o in base_overrides(tiny_assets, str(tmp_path / "run")) if not o.startswith("model.path")]
    errors = _errors(train(overrides + QUICK + [f"model.path={hf}"], check=False), "sppo-train")
    assert len(errors) == 1 and f"{hf / 'tokenizer.json'}: unreadable tokenizer file" in errors[0], errors


def test_eval_of_a_run_directory_while_the_run_rotates_its_checkpoints(tiny_assets, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(
            base_overrides(tiny_assets, str(out))
            + QUICK
            + ["trainer.total_steps=200", "trainer.save_freq=1", "trainer.keep_last=1"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ENV},
    )
    try:
        wait_for_step(str(out), 1, proc)
        for attempt in range(3):
            res = _cli(
                "sppo_megatron.cli.eval",
                *("--model", str(out), "--data", tiny_assets["test"], "--limit", "4"),
                *("--out", str(tmp_path / f"eval{attempt}.json"), "rollout.engine=hf"),
            )
            assert res.returncode == 0, res.stderr[-3000:]
            assert "--ckpt" not in res.stderr
            assert json.loads((tmp_path / f"eval{attempt}.json").read_text())["metrics"]["eval/num_prompts"] == 4
        assert proc.poll() is None, "the run must keep training meanwhile"
        assert not [name for name in os.listdir(out) if name.startswith(".pinned-")]
    finally:
        proc.kill()
        proc.wait()
