"""tools/gpu_check.sh on CPU: the dry run reaches every step (skipped for lack of CUDA, commands
still checked), and the runner's time limits, failures, dependencies, budget, offline install and
output parsing behave as the GPU run relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from tests.helpers import alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = [
    "install",
    "env",
    "bench_train",
    "offload",
    "sppo_train",
    "logp_parity",
    "bench_sync",
    "gpu_tests",
    "vllm_train",
]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "tools", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ctx(gc, tmp_path):
    return gc.Ctx(
        python=sys.executable,
        wheels=str(tmp_path / "wheels"),
        work=str(tmp_path / "work"),
        env={**os.environ, "PYTHONPATH": ROOT},
    )


@pytest.mark.slow
def test_dry_run_reaches_every_step_and_skips_each_for_lack_of_cuda(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "tools", "gpu_check.sh"),
            "--dry-run",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert [e["step"] for e in report["steps"]] == STEPS
    reason = "dry run" if torch.cuda.is_available() else "no CUDA: torch.cuda.is_available() is False"
    for entry in report["steps"]:
        assert entry["status"] == "skipped" and entry["reason"].startswith(reason), entry
    checked = {e["step"]: e["checked"] for e in report["steps"]}
    assert all(
        checked[s] >= 1
        for s in ("env", "bench_train", "offload", "sppo_train", "bench_sync", "gpu_tests", "vllm_train")
    )
    table = (out / "gpu_check.md").read_text()
    for step in STEPS:
        assert f"| {step} | skipped |" in table
    assert report["total_s"] <= time.monotonic() - start and report["ok"] and report["dry_run"]
    assert (out / "gpu_check.log").stat().st_size > 0


@pytest.mark.slow
def test_dry_run_fails_when_a_step_command_has_rotted(gc, ctx, monkeypatch, tmp_path):
    monkeypatch.setattr(gc, "BENCH_SYNC", gc.BENCH_SYNC + ["--no-such-flag"])
    step = next(s for s in gc.STEPS if s.name == "bench_sync")
    with open(tmp_path / "log", "w") as log:
        entry = gc.run_step(step, ctx, "dry run", 100, log)
    assert entry["status"] == "failed" and "--no-such-flag" in entry["tail"]

    monkeypatch.setattr(gc, "TRAIN_OVERRIDES", gc.TRAIN_OVERRIDES + ["trainer.no_such_key=1"])
    step = next(s for s in gc.STEPS if s.name == "sppo_train")
    with open(tmp_path / "log", "w") as log:
        entry = gc.run_step(step, ctx, "dry run", 100, log)
    assert entry["status"] == "failed" and "trainer.no_such_key" in entry["tail"]


def test_vllm_step_is_skipped_where_vllm_is_not_carried(gc, ctx, tmp_path):
    """The vllm_train step runs only where vllm imports (never on the bare GPU machine so far)."""
    step = next(s for s in gc.STEPS if s.name == "vllm_train")
    ctx.python = "false"  # an interpreter that cannot import vllm
    assert "not importable" in gc.vllm_unavailable(ctx)
    ctx.results["sppo_train"] = {"status": "ok"}
    with open(tmp_path / "log", "w") as log:
        entry = gc.run_step(step, ctx, None, 100, log)
    assert entry["status"] == "skipped" and "not importable" in entry["reason"]


def test_time_limit_kills_the_whole_process_group(gc, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)"
    )
    with open(tmp_path / "log", "w") as log:
        status, seconds, tail = gc.run_bounded([[sys.executable, "-c", code], ["true"]], 3, dict(os.environ), log)
    assert status == "timeout" and 3 <= seconds < 20 and "started" in tail
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive([pid]):
        time.sleep(0.1)
    assert not alive([pid]), "the step's grandchild survived the time-out"


def test_failure_dependency_budget_and_output_checks(gc, ctx, tmp_path):
    log = open(tmp_path / "log", "w")
    failing = gc.Step("a", 30, lambda c: [[sys.executable, "-c", "print('boom'); raise SystemExit(3)"], ["true"]])
    entry = gc.run_step(failing, ctx, None, 100, log)
    assert entry["status"] == "failed" and entry["reason"] == "exit 3: boom" and "boom" in entry["tail"]
    ctx.results["a"] = entry
    dependent = gc.Step("b", 30, lambda c: [["true"]], needs="a")
    assert gc.run_step(dependent, ctx, None, 100, log)["reason"] == "needs a, which failed"
    late = gc.Step("c", 30, lambda c: [["true"]], needs=None)
    assert gc.run_step(late, ctx, None, 5, log)["reason"] == "total budget spent (5 s left)"

    def bad_output(c):
        raise gc.CheckFailed("no figures")

    ran = gc.run_step(gc.Step("d", 30, lambda c: [["true"]], bad_output, needs=None), ctx, None, 100, log)
    assert (ran["status"], ran["reason"]) == ("failed", "no figures")
    missing = gc.run_step(
        gc.Step("e", 30, lambda c: [["true"]], gc.bench_train_figures, needs=None), ctx, None, 100, log
    )
    assert missing["status"] == "failed" and "bench_train.json was not written" in missing["reason"]


def test_install_is_offline_into_the_target_folder(gc, ctx, tmp_path):
    os.makedirs(ctx.wheels)
    with pytest.raises(gc.CheckFailed, match="no \\*.whl"):
        gc.install_commands(ctx)
    _write_wheel(os.path.join(ctx.wheels, "gpucheckdemo-0.1-py3-none-any.whl"))
    with open(tmp_path / "log", "w") as log:
        status, _, tail = gc.run_bounded(gc.install_commands(ctx), 120, {**os.environ, "PIP_NO_INDEX": "1"}, log)
    assert status == "ok", tail
    site = os.path.join(ctx.work, "site")
    probe = subprocess.run(
        [sys.executable, "-c", "import gpucheckdemo, torch; print(gpucheckdemo.X, torch.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": site},
    )
    x, torch_file = probe.stdout.split()
    assert x == "42" and not torch_file.startswith(site)
    assert gc.install_figures(ctx) == {"wheels": ["gpucheckdemo-0.1-py3-none-any.whl"]}


def _write_wheel(path: str) -> None:
    info = "gpucheckdemo-0.1.dist-info"
    files = {
        "gpucheckdemo/__init__.py": "X = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpucheckdemo\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


def test_training_figures_and_logp_bound(gc, ctx):
    run = os.path.join(ctx.work, "tiny", "run")
    os.makedirs(run)
    rows = [{"step": 0, "val/accuracy": 0.5}]
    rows += [
        {
            "step": s,
            "train/loss": 0.1,
            "timing/step_s": 0.5,
            "timing/sync_s": 0.01,
            "timing/gen_s": 0.2,
            "timing/update_s": 0.1,
            "perf/tokens_per_s": 1000.0,
            "rollout/logp_abs_diff": 0.01,
        }
        for s in range(1, gc.TRAIN_STEPS + 1)
    ]
    rows.append({"step": gc.TRAIN_STEPS, "val/accuracy": 0.6})

    def write(rs):
        with open(os.path.join(run, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rs)

    write(rows)
    figures = gc.sppo_train_figures(ctx)
    assert figures["steps"] == gc.TRAIN_STEPS and figures["val_accuracy_first_last"] == [0.5, 0.6]
    assert gc.logp_parity_figures(ctx)["max"] == 0.01
    rows[3]["rollout/logp_abs_diff"] = 0.2
    write(rows)
    with pytest.raises(gc.CheckFailed, match="logp_abs_diff max 0.2"):
        gc.logp_parity_figures(ctx)
    write(rows[:5])
    with pytest.raises(gc.CheckFailed, match="4 training steps"):
        gc.sppo_train_figures(ctx)


def test_real_run_report_only_and_exit_code(gc, monkeypatch, tmp_path):
    """The non-dry path of main() (CUDA faked, steps replaced by quick commands)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    work = tmp_path / "work"
    (work / "site").mkdir(parents=True)
    (work / "stale.json").write_text("{}")
    steps = [
        gc.Step("install", 30, lambda c: [["true"]], needs=None),
        gc.Step("ok", 30, lambda c: [[sys.executable, "-c", "print('hi')"]], lambda c: {"x": 1}),
        gc.Step("broken", 30, lambda c: [["false"]]),
        gc.Step("after", 30, lambda c: [["true"]], needs="broken"),
        gc.Step("unasked", 30, lambda c: [["true"]]),
    ]
    monkeypatch.setattr(gc, "STEPS", steps)
    out = tmp_path / "out"
    code = gc.main(["--out", str(out), "--work", str(work), "--only", "install,ok,broken,after"])
    report = json.loads((out / "gpu_check.json").read_text())
    status = {e["step"]: (e["status"], e.get("reason")) for e in report["steps"]}
    assert code == 1 and not report["ok"] and report["device"] == "FakeGPU"
    assert status == {
        "install": ("ok", None),
        "ok": ("ok", None),
        "broken": ("failed", "exit 1"),
        "after": ("skipped", "needs broken, which failed"),
        "unasked": ("skipped", "not in --only"),
    }
    assert "| ok | ok |" in (out / "gpu_check.md").read_text() and "x 1" in (out / "gpu_check.md").read_text()
    assert not (work / "stale.json").exists() and (work / "site").is_dir()
    with pytest.raises(SystemExit):
        gc.main(["--out", str(out), "--only", "nosuch"])
