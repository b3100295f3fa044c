#!/usr/bin/env python
"""The GPU check: every GPU path that runs on a bare GPU machine (no SGLang, no Transformer
Engine), in one command, each step timed and bounded, into one report.

    bash tools/gpu_check.sh --out DIR [--wheels .cache/gpu_wheels] [--work DIR] [--budget-s 530]
                            [--dry-run] [--only STEP,...]

Steps, in order (each has its own time limit; together they stay inside --budget-s):
  install      pip install --no-index --no-deps --target WORK/site WHEELS/*.whl, offline; the
               image's torch is never touched (PYTHONPATH=WORK/site:REPO for every later step)
  env          versions, the device, and its two ceilings measured: a bf16 8192^3 matmul (TFLOP/s)
               and a device-to-device copy (GB/s, bytes read + written)
  bench_train  tools/bench_train.py: Llama-3.2-1B shape, bf16, seq 4096, local layers + SDPA
               restricted to flash; tokens/s, TFLOP/s, MFU (formula in bench_train.py)
  offload      tools/bench_train.py --measure-offload: actor offload()/onload() seconds, GPU memory
  sppo_train   the tiny demo's assets, then sppo-train on one GPU (HF engine, bf16)
  logp_parity  rollout/logp_abs_diff of that run (bf16) against LOGP_BOUND
  bench_sync   tools/bench_sync.py: Megatron export -> HF engine against the device copy floor
  gpu_tests    pytest -m gpu (tests that need SGLang / TE skip themselves)
  vllm_train   sppo-train of sppo_train's setup with rollout.engine=vllm (bf16, sleep mode), its
               rollout/logp_abs_diff against LOGP_BOUND; skipped when vllm is not importable (the
               bare machine does not carry it). Never run on a GPU yet.
A step is skipped when the step it needs (install; for logp_parity and vllm_train, sppo_train)
ran and failed, or when what it exercises is not installed.

Writes DIR/gpu_check.json (everything), DIR/gpu_check.md (the table) and DIR/gpu_check.log (the
end of each step's output). With --dry-run, or without CUDA, every step is skipped with the
reason, but each is still reached: its commands are built and checked (tool flags against the
tool's --help, the sppo-train overrides through load_config), so the check cannot rot unseen.
Exit code 0 when no step failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
LOGP_BOUND = 0.05  # bf16 HF engine vs bf16 Megatron actor, mean |delta log-prob| per response token
MIN_STEP_S = 20  # a step is not started with less of the budget left
LOG_TAIL = 4000

BENCH_TRAIN = [
    "--preset",
    "llama3.2-1b",
    "--dtype",
    "bf16",
    "--seq",
    "4096",
    "--prompt-len",
    "1024",
    "--batch",
    "16",
    "--micro-batch-size",
    "1",
    "--steps",
    "3",
    "--warmup",
    "1",
    "--sdpa-backend",
    "flash",
]
OFFLOAD = [
    "--preset",
    "llama3.2-1b",
    "--dtype",
    "bf16",
    "--seq",
    "1024",
    "--prompt-len",
    "256",
    "--batch",
    "4",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--measure-offload",
]
BENCH_SYNC = ["--preset", "small", "--source", "megatron", "--engine", "hf", "--dtype", "bf16", "--iters", "5"]
TRAIN_STEPS = 20
VLLM_STEPS = 5
VLLM_OVERRIDES = ["rollout.engine=vllm", f"trainer.total_steps={VLLM_STEPS}", "trainer.test_freq=0"]
TRAIN_OVERRIDES = [
    "parallel.tp=1",
    "model.dtype=bf16",
    "rollout.dtype=bf16",
    "rollout.engine=hf",
    f"trainer.total_steps={TRAIN_STEPS}",
    "trainer.test_freq=10",
    "trainer.save_freq=0",
    "trainer.export_hf=false",
    "trainer.log_samples_freq=0",
]


class CheckFailed(Exception):
    """A step ran but its output shows the path is broken."""


@dataclass
class Ctx:
    python: str
    wheels: str
    work: str
    env: Dict[str, str]
    results: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)


@dataclass
class Step:
    name: str
    limit_s: int
    commands: Callable[[Ctx], List[List[str]]]
    figures: Callable[[Ctx], Dict[str, Any]] = lambda ctx: {}
    checks: Callable[[Ctx], List[List[str]]] = lambda ctx: []  # what the dry run runs instead
    needs: Optional[str] = "install"  # skipped when that step ran and did not pass
    #: a reason to skip the step on this machine (what it exercises is not installed), or None
    unavailable: Callable[[Ctx], Optional[str]] = lambda ctx: None


def flag_check(ctx: Ctx, script: str, argv: List[str]) -> List[str]:
    return [ctx.python, os.path.abspath(__file__), "--check-flags", script, *argv]


def read_json_lines(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        raise CheckFailed(f"{path} was not written")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- install / env ---------------------------------------------------------------------------


def install_commands(ctx: Ctx) -> List[List[str]]:
    wheels = sorted(glob.glob(os.path.join(ctx.wheels, "*.whl")))
    if not wheels:
        raise CheckFailed(f"--wheels {ctx.wheels}: no *.whl (build it with tools/gpu_check_wheels.sh)")
    return [
        [
            ctx.python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--upgrade",
            "--find-links",
            ctx.wheels,
            "--target",
            ctx.path("site"),
            *wheels,
        ]
    ]


def install_figures(ctx: Ctx) -> Dict[str, Any]:
    return {"wheels": sorted(os.path.basename(w) for w in glob.glob(os.path.join(ctx.wheels, "*.whl")))}


def env_commands(ctx: Ctx) -> List[List[str]]:
    return [[ctx.python, os.path.abspath(__file__), "--probe", ctx.path("env.json"), "--site", ctx.path("site")]]


def env_figures(ctx: Ctx) -> Dict[str, Any]:
    env = read_json_lines(ctx.path("env.json"))[0]
    if not env["torch_from_image"]:
        raise CheckFailed(f"torch was imported from {env['torch_file']}, not the image")
    return env


def probe(out: str, site: str) -> None:
    """Versions, the device and its measured ceilings, as one JSON line in `out`."""
    from importlib import metadata

    import torch

    names = [
        "torch",
        "megatron-core",
        "transformers",
        "tokenizers",
        "huggingface-hub",
        "omegaconf",
        "math-verify",
        "numpy",
        "pytest",
    ]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import megatron.core  # noqa: F401  (fails here, not in a later step, when the install is broken)

    info: Dict[str, Any] = {
        "python": sys.version.split()[0],
        "versions": versions,
        "torch_file": torch.__file__,
        "torch_from_image": not os.path.abspath(torch.__file__).startswith(os.path.abspath(site)),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda_runtime=torch.version.cuda,
        )
        info.update(measure_ceilings(torch), sdpa_flash_gqa=flash_gqa_works(torch))
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(info) + "\n")


def flash_gqa_works(torch: Any) -> bool:
    """Whether SDPA's flash kernel takes bench_train's attention (causal, GQA 32/8 heads, head 64,
    seq 4096, bf16) forward and backward; bench_train falls back to 'auto' where it does not."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 32, 4096, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(1, 8, 4096, 64, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(
                q, kv, kv, is_causal=True, enable_gqa=True
            ).sum().backward()
        torch.cuda.synchronize()
        return True
    except RuntimeError:
        return False


def measure_ceilings(torch: Any) -> Dict[str, float]:
    """Median of 10 timed runs after 3 warm-ups, random data (zeros run faster than real data)."""

    def median_ms(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    n = 8192
    x, y = (
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
    )
    mm = median_ms(lambda: torch.mm(x, y))
    src = torch.randn(2**29, device="cuda")  # 2 GiB of fp32
    dst = torch.empty_like(src)
    cp = median_ms(lambda: dst.copy_(src))
    return {
        "matmul_bf16_tflops": round(2 * n**3 / mm / 1e9, 1),
        "copy_gb_per_s": round(2 * src.numel() * 4 / cp / 1e6, 1),
    }


# ---- the GPU steps ---------------------------------------------------------------------------


def gpu_tests_commands(ctx: Ctx) -> List[List[str]]:
    return [
        [
            ctx.python,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "--timeout",
            "120",
            "--junitxml",
            ctx.path("gpu_tests.xml"),
            os.path.join(ROOT, "tests"),
        ]
    ]


def gpu_tests_figures(ctx: Ctx) -> Dict[str, Any]:
    suite = ET.parse(ctx.path("gpu_tests.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def bench_train_commands(argv: List[str], out: str) -> Callable[[Ctx], List[List[str]]]:
    def commands(ctx: Ctx) -> List[List[str]]:
        flash = ctx.results.get("env", {}).get("figures", {}).get("sdpa_flash_gqa", True)
        run = [a if flash or a != "flash" else "auto" for a in argv]
        return [[ctx.python, os.path.join(TOOLS, "bench_train.py"), *run, "--json-out", ctx.path(out)]]

    return commands


def bench_train_figures(ctx: Ctx) -> Dict[str, Any]:
    r = read_json_lines(ctx.path("bench_train.json"))[-1]
    keys = (
        "model",
        "matmul_params",
        "tokens_per_step",
        "update_step_s",
        "update_tokens_per_s",
        "log_probs_tokens_per_s",
        "model_tflops_per_gpu",
        "mfu",
        "peak_mem_gib_per_rank",
        "sdpa_backend",
    )
    figures = {k: r.get(k) for k in keys}
    ceiling = ctx.results.get("env", {}).get("figures", {}).get("matmul_bf16_tflops")
    if ceiling and r.get("model_tflops_per_gpu"):
        figures["fraction_of_measured_matmul"] = round(r["model_tflops_per_gpu"] / ceiling, 3)
    return figures


def offload_figures(ctx: Ctx) -> Dict[str, Any]:
    r = read_json_lines(ctx.path("offload.json"))[-1]
    figures = {k: r[k] for k in r if k.startswith(("offload", "onload", "gpu_mem"))}
    if not r["offload_logp_identical"]:
        raise CheckFailed("log-probs after offload()/onload() differ from before")
    if r["gpu_mem_gib_offloaded"] >= r["gpu_mem_gib_before_offload"]:
        raise CheckFailed("offload() freed no GPU memory")
    return figures


def bench_sync_commands(ctx: Ctx) -> List[List[str]]:
    return [[ctx.python, os.path.join(TOOLS, "bench_sync.py"), *BENCH_SYNC, "--json", ctx.path("bench_sync.json")]]


def bench_sync_figures(ctx: Ctx) -> Dict[str, Any]:
    with open(ctx.path("bench_sync.json"), encoding="utf-8") as f:
        r = json.load(f)
    if not r["checked"]:
        raise CheckFailed("the post-sync read-back check did not run")
    return {
        k: r[k]
        for k in (
            "model",
            "model_dtype",
            "engine_dtype",
            "tensors",
            "gb",
            "sync_s_median",
            "sync_s_min",
            "floor_s",
            "floor_gb_per_s",
            "sync_over_floor",
        )
    }


def assets(ctx: Ctx) -> Dict[str, str]:
    a = ctx.path("tiny", "assets")
    return {
        "dir": a,
        "hf": f"{a}/megatron/hf",
        "megatron": f"{a}/megatron",
        "train": f"{a}/data/train.parquet",
        "test": f"{a}/data/test.parquet",
    }


def train_argv(ctx: Ctx, run: str = "run", overrides: Optional[List[str]] = None) -> List[str]:
    a = assets(ctx)
    return [
        "--config",
        os.path.join(ROOT, "examples", "tiny_cpu", "config.yaml"),
        f"model.path={a['hf']}",
        f"model.megatron_ckpt={a['megatron']}",
        f"data.train_files=[{a['train']}]",
        f"data.val_files=[{a['test']}]",
        f"trainer.output_dir={ctx.path('tiny', run)}",
        *TRAIN_OVERRIDES,
        *(overrides or []),
    ]


def sppo_train_commands(ctx: Ctx) -> List[List[str]]:
    a = assets(ctx)
    return [
        [ctx.python, os.path.join(TOOLS, "make_tiny_assets.py"), "--out", a["dir"]],
        [
            ctx.python,
            "-m",
            "sppo_megatron.cli.convert",
            "hf-to-megatron",
            "--hf",
            f"{a['dir']}/model",
            "--out",
            a["megatron"],
        ],
        [ctx.python, "-m", "sppo_megatron.train", *train_argv(ctx)],
    ]


VALIDATE = (
    "import sys; from sppo_megatron.config.loader import load_config; "
    "load_config(sys.argv[2], sys.argv[3:], world_size=1, check_paths=False)"
)


def sppo_train_checks(ctx: Ctx) -> List[List[str]]:
    return [
        flag_check(ctx, "make_tiny_assets.py", ["--out", assets(ctx)["dir"]]),
        [ctx.python, "-c", VALIDATE, *train_argv(ctx)],
    ]


def train_rows(ctx: Ctx, run: str = "run") -> List[Dict[str, Any]]:
    return [r for r in read_json_lines(ctx.path("tiny", run, "metrics.jsonl")) if "train/loss" in r]


def sppo_train_figures(ctx: Ctx) -> Dict[str, Any]:
    rows = train_rows(ctx)
    if len(rows) != TRAIN_STEPS:
        raise CheckFailed(f"metrics.jsonl has {len(rows)} training steps, expected {TRAIN_STEPS}")
    val = [r["val/accuracy"] for r in read_json_lines(ctx.path("tiny", "run", "metrics.jsonl")) if "val/accuracy" in r]

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 4)

    return {
        "steps": len(rows),
        "step_s": med("timing/step_s"),
        "sync_s": med("timing/sync_s"),
        "gen_s": med("timing/gen_s"),
        "update_s": med("timing/update_s"),
        "tokens_per_s": round(med("perf/tokens_per_s"), 1),
        "val_accuracy_first_last": [val[0], val[-1]],
    }


def logp_parity_figures(ctx: Ctx, run: str = "run") -> Dict[str, Any]:
    diffs = [float(r["rollout/logp_abs_diff"]) for r in train_rows(ctx, run)]
    figures = {"mean": sum(diffs) / len(diffs), "max": max(diffs), "bound": LOGP_BOUND, "steps": len(diffs)}
    if not all(d == d for d in diffs) or figures["max"] > LOGP_BOUND:
        raise CheckFailed(f"rollout/logp_abs_diff max {figures['max']:.3g} is not within {LOGP_BOUND}")
    return figures


def vllm_unavailable(ctx: Ctx) -> Optional[str]:
    probe = subprocess.run([ctx.python, "-c", "import vllm"], env=ctx.env, capture_output=True, timeout=120)
    return None if probe.returncode == 0 else "vllm is not importable here (the machine does not carry it)"


def vllm_train_figures(ctx: Ctx) -> Dict[str, Any]:
    rows = train_rows(ctx, "vllm_run")
    if len(rows) != VLLM_STEPS:
        raise CheckFailed(f"vllm_run/metrics.jsonl has {len(rows)} training steps, expected {VLLM_STEPS}")
    return {
        "gen_s": round(statistics.median(r["timing/gen_s"] for r in rows), 4),
        **logp_parity_figures(ctx, "vllm_run"),
    }


STEPS = [  # the figures that matter most first, in case the budget runs out
    Step("install", 60, install_commands, install_figures, needs=None),
    Step("env", 45, env_commands, env_figures, checks=env_commands),
    Step(
        "bench_train",
        120,
        bench_train_commands(BENCH_TRAIN, "bench_train.json"),
        bench_train_figures,
        checks=lambda ctx: [flag_check(ctx, "bench_train.py", BENCH_TRAIN)],
    ),
    Step(
        "offload",
        90,
        bench_train_commands(OFFLOAD, "offload.json"),
        offload_figures,
        checks=lambda ctx: [flag_check(ctx, "bench_train.py", OFFLOAD)],
    ),
    Step("sppo_train", 150, sppo_train_commands, sppo_train_figures, checks=sppo_train_checks),
    Step("logp_parity", 5, lambda ctx: [], logp_parity_figures, needs="sppo_train"),
    Step(
        "bench_sync",
        60,
        bench_sync_commands,
        bench_sync_figures,
        checks=lambda ctx: [flag_check(ctx, "bench_sync.py", BENCH_SYNC)],
    ),
    Step(
        "gpu_tests",
        90,
        gpu_tests_commands,
        gpu_tests_figures,
        checks=lambda ctx: [[ctx.python, "-c", "import pytest, pytest_timeout"]],
    ),
    Step(
        "vllm_train",
        150,
        lambda ctx: [[ctx.python, "-m", "sppo_megatron.train", *train_argv(ctx, "vllm_run", VLLM_OVERRIDES)]],
        vllm_train_figures,
        checks=lambda ctx: [[ctx.python, "-c", VALIDATE, *train_argv(ctx, "vllm_run", VLLM_OVERRIDES)]],
        needs="sppo_train",
        unavailable=vllm_unavailable,
    ),
]


# ---- running, bounding, reporting ------------------------------------------------------------


def run_bounded(commands: List[List[str]], limit_s: float, env: Dict[str, str], log) -> tuple:
    """Run `commands` one after another within `limit_s` seconds in all, each in its own process
    group (killed whole on time-out). Returns (status, seconds, output tail)."""
    start = time.monotonic()
    tail = ""
    for cmd in commands:
        remaining = limit_s - (time.monotonic() - start)
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=max(remaining, 0.1))
        except subprocess.TimeoutExpired:
            out = _kill_group(proc)
            tail = (tail + out.decode(errors="replace"))[-LOG_TAIL:]
            log.write(out.decode(errors="replace")[-LOG_TAIL:] + f"\n[timed out after {limit_s:.0f} s]\n")
            return "timeout", time.monotonic() - start, tail
        _reap_group(proc)
        text = out.decode(errors="replace")
        log.write(text[-LOG_TAIL:] + "\n")
        tail = text[-LOG_TAIL:]
        if proc.returncode != 0:
            return f"exit {proc.returncode}", time.monotonic() - start, tail
    return "ok", time.monotonic() - start, tail


def _kill_group(proc: subprocess.Popen) -> bytes:
    """SIGTERM the step's process group, SIGKILL it 5 s later if still there; returns its output."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            out = proc.communicate(timeout=5)[0] or b""
        except subprocess.TimeoutExpired:
            continue
        _reap_group(proc)
        return out
    return b"[output lost: a process outside the step's group holds its pipe]"


def _reap_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a step's process group (children that outlived it hold GPU memory)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_step(step: Step, ctx: Ctx, skip_reason: Optional[str], remaining_s: float, log) -> Dict[str, Any]:
    """One step's report entry: status ok / failed / timeout / skipped, seconds, reason, figures."""
    entry: Dict[str, Any] = {"step": step.name, "limit_s": step.limit_s, "seconds": 0.0, "figures": {}}
    log.write(f"\n===== {step.name}\n")
    dependency = ctx.results.get(step.needs or "", {}).get("status")
    try:
        if skip_reason is not None:
            checks = step.checks(ctx)
            status, seconds, tail = run_bounded(checks, 60, ctx.env, log)
            entry.update(seconds=round(seconds, 2), checked=len(checks))
            if status != "ok":
                entry.update(
                    status="failed",
                    reason=f"dry-run check of the step's commands: {status}{_last_line(tail)}",
                    tail=tail,
                )
            else:
                entry.update(status="skipped", reason=skip_reason)
            return entry
        if dependency in ("failed", "timeout"):
            entry.update(
                status="skipped", reason=f"needs {step.needs}, which {dependency.replace('timeout', 'timed out')}"
            )
            return entry
        missing = step.unavailable(ctx)
        if missing is not None:
            entry.update(status="skipped", reason=missing)
            return entry
        limit = min(step.limit_s, remaining_s)
        if limit < min(MIN_STEP_S, step.limit_s):
            entry.update(status="skipped", reason=f"total budget spent ({remaining_s:.0f} s left)")
            return entry
        status, seconds, tail = run_bounded(step.commands(ctx), limit, ctx.env, log)
        entry["seconds"] = round(seconds, 2)
        if status != "ok":
            reason = f"timed out after {limit:.0f} s" if status == "timeout" else status + _last_line(tail)
            entry.update(status="timeout" if status == "timeout" else "failed", reason=reason, tail=tail)
            return entry
        entry.update(status="ok", figures=step.figures(ctx))
    except CheckFailed as e:
        entry.update(status="failed", reason=str(e))
    except (OSError, KeyError, ValueError, IndexError, TypeError, ET.ParseError) as e:
        entry.update(status="failed", reason=f"reading the step's output: {type(e).__name__}: {e}")
    return entry


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f": {lines[-1][:200]}" if lines else ""


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        f"GPU check, {report['started_utc']} UTC, {report['device']}: {report['total_s']:.0f} s in all "
        f"(budget {report['budget_s']} s){' (dry run)' if report['dry_run'] else ''}",
        "",
        "| step | status | seconds (limit) | figures / reason |",
        "| --- | --- | --- | --- |",
    ]
    for e in report["steps"]:
        text = ", ".join(f"{k} {v}" for k, v in e["figures"].items()) if e["status"] == "ok" else e.get("reason", "")
        lines.append(
            f"| {e['step']} | {e['status']} | {e['seconds']:.1f} ({e['limit_s']}) | {text.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def check_flags(script: str, argv: List[str]) -> int:
    """Every --flag in argv must appear in the tool's --help (dry-run guard against renamed flags)."""
    out = subprocess.run(
        [sys.executable, os.path.join(TOOLS, script), "--help"], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        print(out.stdout + out.stderr)
        return 1
    listed = set(re.findall(r"--[A-Za-z0-9][\w-]*", out.stdout))
    missing = [a for a in argv if a.startswith("--") and a not in listed]
    if missing:
        print(f"{script}: --help does not list {', '.join(missing)}")
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    p.add_argument("--out", help="(required) report folder: gpu_check.json, gpu_check.md, gpu_check.log")
    p.add_argument(
        "--wheels", default=os.path.join(ROOT, ".cache", "gpu_wheels"), help="tools/gpu_check_wheels.sh output"
    )
    p.add_argument(
        "--work", default=None, help="scratch folder, installs go to WORK/site (default: TMP/sppo_gpu_check)"
    )
    p.add_argument("--budget-s", type=float, default=530, help="all steps together (default 530: under 9 minutes)")
    p.add_argument("--dry-run", action="store_true", help="build and check every step's commands, run none")
    p.add_argument("--only", default=None, help="comma-separated steps to run (the others are skipped)")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--site", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--check-flags"]:  # --check-flags SCRIPT ARGV...: the dry run's guard
        return check_flags(argv[1], argv[2:])
    args = p.parse_args(argv)
    if args.probe:
        probe(args.probe, args.site or "")
        return 0
    if not args.out:
        p.error("--out DIR is required")
    names = [s.name for s in STEPS]
    only = args.only.split(",") if args.only else names
    unknown = sorted(set(only) - set(names))
    if unknown:
        p.error(f"--only: unknown step(s) {', '.join(unknown)}; steps are {', '.join(names)}")

    import torch

    cuda = torch.cuda.is_available()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.abspath(args.work or os.path.join(tempfile.gettempdir(), "sppo_gpu_check"))
    os.makedirs(work, exist_ok=True)
    site = os.path.join(work, "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([site, ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
    }
    ctx = Ctx(python=sys.executable, wheels=os.path.abspath(args.wheels), work=work, env=env)
    if not cuda:
        global_skip: Optional[str] = "no CUDA: torch.cuda.is_available() is False" + (
            " (dry run)" if args.dry_run else ""
        )
    else:
        global_skip = "dry run" if args.dry_run else None
    if global_skip is None:  # no stale outputs from an earlier run (the install is kept)
        for name in os.listdir(work):
            if name != "site":
                path = os.path.join(work, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    report: Dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "dry_run": args.dry_run,
        "cuda": cuda,
        "device": torch.cuda.get_device_name() if cuda else "no CUDA device",
        "budget_s": args.budget_s,
        "python": sys.executable,
        "steps": [],
    }
    start = time.monotonic()
    with open(os.path.join(args.out, "gpu_check.log"), "w", encoding="utf-8") as log:
        for step in STEPS:
            if step.name in only:
                entry = run_step(step, ctx, global_skip, args.budget_s - (time.monotonic() - start), log)
            else:
                entry = {
                    "step": step.name,
                    "limit_s": step.limit_s,
                    "seconds": 0.0,
                    "figures": {},
                    "status": "skipped",
                    "reason": "not in --only",
                }
            ctx.results[step.name] = entry
            report["steps"].append(entry)
            print(
                f"gpu_check: {step.name}: {entry['status']} ({entry['seconds']:.1f} s)"
                + (f": {entry['reason']}" if entry.get("reason") else ""),
                flush=True,
            )
    report["total_s"] = round(time.monotonic() - start, 1)
    report["ok"] = all(e["status"] in ("ok", "skipped") for e in report["steps"])
    with open(os.path.join(args.out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table, end="")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
