"""Every command in README.md's ```bash blocks, as written, so README and behaviour cannot drift.

RUN commands (the Quickstart) are executed through the shell (`bash -c`) in README order in one
scratch directory laid out like a fresh checkout (examples/ and tools/ link to this repository,
.venv/bin runs this interpreter), each on what the commands before it left: command (a) runs the
full 150-step demo, with its venv-and-install prefix taken by the prepared .venv. The others need a
GPU, the hub, an installer or minutes of compute; they are checked without running: scripts with
`bash -n`, every --flag against the program's --help, every key=value against the config
schema, every file, extra and pytest marker they name. A README command in neither table fails
test_every_readme_command_is_covered.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from typing import Dict, List, Tuple

import pytest

from sppo_megatron.config.loader import all_keys, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -r requirements-cpu.txt && "
DEMO = INSTALL + "bash examples/tiny_cpu/run.sh"  # command (a)
ACTIVATE = "source .venv/bin/activate"
EVAL = (
    "sppo-eval --model outputs/tiny_cpu/hf --data outputs/tiny_cpu/assets/data/test.parquet data.max_response_length=6"
)
PLOT = "python tools/plot_metrics.py outputs/tiny_cpu"
SMOKE = "bash examples/tiny_cpu/run.sh outputs/smoke trainer.total_steps=3"
#: the Quickstart, run in this order in one checkout (each command sees what the ones before left)
RUN = [DEMO, ACTIVATE, EVAL, PLOT, SMOKE]

#: the README's Conversion block, run in order on the demo's model and training checkpoint
#: (the names a user would have there replaced by the demo's)
CONVERSION = [
    "sppo-convert hf-to-megatron --hf Qwen2.5-7B-Instruct --out ckpt/qwen7b --dtype bf16",
    "sppo-convert verify --hf Qwen2.5-7B-Instruct --ckpt ckpt/qwen7b",
    "sppo-convert megatron-to-hf --ckpt outputs/run/checkpoints/step_160 --out qwen7b-sppo "
    "--hf-config Qwen2.5-7B-Instruct",
    "sppo-convert hf-to-megatron --hf Qwen2.5-7B-Instruct --out mlm/qwen7b --layout megatron-lm",
    "sppo-convert megatron-to-megatron-lm --ckpt outputs/run/checkpoints/step_160 --out mlm/run",
]
ON_THE_DEMO = {
    "Qwen2.5-7B-Instruct": "outputs/tiny_cpu/assets/model",
    "outputs/run/checkpoints/step_160": "outputs/tiny_cpu/checkpoints/step_150",
}

NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install -r requirements-cpu.txt && bash tools/install_cpu_engines.sh "
    "--python .venv/bin/python && .venv/bin/python -m pytest -q": "installs packages and runs this suite",
    "bash examples/qwen2.5-7b-math/run_vllm.sh": "needs 4 GPUs, vllm and the 7B model",
    "sppo-eval --model outputs/qwen2.5-7b-math --data data/math/test.parquet --n 4 --temperature 1.0 --out math.json": "needs the 7B run (GPU)",
    "pip install torch": "installer (CUDA build)",
    "bash examples/tiny_cpu_rm/run.sh": "minutes of compute (trains a reward model, then 100 SPPO steps)",
    "python tools/prepare_ultrafeedback.py --hub --out data/ultrafeedback --test-size 1000": "downloads from the hub",
    "bash examples/ultrafeedback-pairrm/run.sh": "needs 8 GPUs, Mistral-7B-Instruct and PairRM",
    "sppo-eval --model outputs/ultrafeedback-pairrm --data data/ultrafeedback/test.parquet --reference reference.jsonl "
    "--config examples/ultrafeedback-pairrm/config.yaml": "needs the 7B run (GPU)",
    "pip install -e '.[gpu,sglang]'": "installer (GPU packages)",
    "hf download Qwen/Qwen2.5-7B-Instruct --local-dir Qwen2.5-7B-Instruct": "downloads from the hub",
    "python tools/prepare_math.py --hub --out data/math": "downloads from the hub",
    "sppo-convert hf-to-megatron --hf Qwen2.5-7B-Instruct --out ckpt/qwen2.5-7b-instruct": "needs the 7B model",
    "bash examples/qwen2.5-7b-math/run.sh": "needs 4 GPUs and the 7B model",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 "
    "-m sppo_megatron.train --config run.yaml parallel.tp=4 parallel.pp=2": "needs 2 GPU nodes",
    "sppo-train --config run.yaml trainer.total_steps=100 rollout.n=8": "run.yaml is the user's own config",
    "bash examples/tiny_cpu/run.sh outputs/tiny_lora model.lora.rank=16 model.lora.alpha=32 optim.lr=2e-3": "minutes of "
    "compute (the 150-step demo with LoRA adapters)",
    "sppo-convert megatron-to-hf --ckpt outputs/tiny_lora/checkpoints/step_150 --out tiny-adapter --peft": "needs the "
    "LoRA demo run",
    "sppo-train --help": "checked: --help runs",
    "python tools/prepare_math.py --input my_problems.jsonl --out data/mine --test-size 200": "the user's own file",
    "sppo-train --config examples/qwen2.5-7b-math/config.yaml data.train_files=[data/mine/train.parquet] "
    "data.val_files=[data/mine/test.parquet] trainer.output_dir=outputs/mine": "needs GPUs and the 7B model",
    ".venv/bin/python -m pytest -q": "runs this suite",
    '.venv/bin/python -m pytest -q -m "not slow and not engine and not gpu"': "runs this suite's fast tier",
    ".venv/bin/python -m pytest -q -m gpu": "needs a GPU",
    ".venv/bin/python -m sppo_megatron.config.reference": "rewrites tracked files (test_config checks they are current)",
}

CLI_MODULES = {
    "sppo-train": "sppo_megatron.cli.train",
    "sppo-eval": "sppo_megatron.cli.eval",
    "sppo-convert": "sppo_megatron.cli.convert",
}


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def readme_commands() -> List[str]:
    """The commands of README.md's ```bash blocks: continuation lines joined, comments dropped."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", "\n".join(line.strip() for line in block.splitlines()))
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_every_readme_command_is_covered():
    assert set(readme_commands()) == set(RUN) | set(CONVERSION) | set(NOT_RUN)


# --- commands run as written --------------------------------------------------------------


def _venv_bin(bin_dir: str) -> None:
    """.venv/bin of the scratch checkout: python and the console scripts run this interpreter
    on this checkout; activate puts them first on PATH."""
    os.makedirs(bin_dir)
    programs = {"python": "", "python3": "", **{name: f"-m {module}" for name, module in CLI_MODULES.items()}}
    for name, args in programs.items():
        path = os.path.join(bin_dir, name)
        with open(path, "w") as fh:
            fh.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {args} "$@"\n')
        os.chmod(path, 0o755)
    with open(os.path.join(bin_dir, "activate"), "w") as fh:
        fh.write(f'export PATH={shlex.quote(bin_dir)}:"$PATH"\n')


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A scratch directory laid out like the repository, where the README's demo command has run."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("examples", "tools"):
        os.symlink(os.path.join(ROOT, name), root / name)
    _venv_bin(str(root / ".venv" / "bin"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHON", None)
    assert DEMO.startswith(INSTALL)
    demo = _shell(root, env, DEMO[len(INSTALL) :], timeout=1500)
    return root, env, demo, {}


def _shell(root, env: Dict[str, str], command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"{ACTIVATE} && {command}"], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_demo_command(checkout):
    root, _, demo, _ = checkout
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    rows = [json.loads(line) for line in open(root / "outputs/tiny_cpu/metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(151))
    assert "held-out accuracy:" in demo.stdout and "at step 150" in demo.stdout
    assert (root / "outputs/tiny_cpu/hf/config.json").is_file()
    for key in ("policy/entropy", "policy/kl_old", "response/length_mean", "response/clip_frac", "train/lr"):
        assert all(isinstance(r[key], float) for r in rows[1:]), key
    assert max(r["policy/kl_old"] for r in rows[1:]) > 0.0


def _in_order(checkout, command: str):
    """Run `command` after every RUN command before it (each once per module), like a user would."""
    root, env, demo, done = checkout
    assert demo.returncode == 0, "the demo command failed (see test_demo_command)"
    for previous in RUN[2 : RUN.index(command) + 1]:
        if previous not in done:
            done[previous] = _shell(root, env, previous)
    res = done[command]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return root, res


@pytest.mark.slow
def test_eval_command_reproduces_the_final_validation(checkout):
    root, res = _in_order(checkout, EVAL)
    out = root / "outputs/tiny_cpu/eval/hf-test.json"
    assert f"wrote {out}" in res.stdout and not (root / "sppo_eval.json").exists()
    result = json.loads(out.read_text())
    final = [json.loads(line) for line in open(root / "outputs/tiny_cpu/metrics.jsonl")][-1]
    assert result["max_new_tokens"] == 6
    assert result["metrics"]["eval/accuracy"] == final["val/accuracy"]


@pytest.mark.slow
def test_plot_command(checkout):
    root, res = _in_order(checkout, PLOT)
    png = root / "outputs/tiny_cpu/plots/dashboard.png"
    assert res.stdout.split() == ["outputs/tiny_cpu/plots/dashboard.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_run_after_the_demo_trains(checkout):
    root, res = _in_order(checkout, SMOKE)
    assert "steps 1..3" in res.stdout + res.stderr and "resumed" not in res.stdout + res.stderr
    rows = [json.loads(line) for line in open(root / "outputs/smoke/metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [json.loads(line)["step"] for line in open(root / "outputs/tiny_cpu/metrics.jsonl")][-1] == 150


@pytest.mark.slow
def test_conversion_commands_in_order_on_the_demo(checkout):
    """The Conversion block as written but on the demo's files: a bf16 conversion of the fp32 model
    verifies, a training checkpoint converts without --hf-config."""
    root, env, demo, _ = checkout
    assert demo.returncode == 0, "the demo command failed (see test_demo_command)"
    for command in CONVERSION:
        for name, demo_name in ON_THE_DEMO.items():
            command = command.replace(name, demo_name)
        res = _shell(root, env, command)
        assert res.returncode == 0, command + "\n" + res.stdout[-2000:] + res.stderr[-3000:]
        if " verify " in command:
            assert ": OK" in res.stderr + res.stdout and "rounded to bf16" in res.stderr + res.stdout
    assert (root / "qwen7b-sppo/config.json").is_file()
    assert (root / "mlm/run/latest_checkpointed_iteration.txt").read_text().strip() == "150"


# --- commands checked without running ------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _help_text(argv: Tuple[str, ...]) -> str:
    res = subprocess.run(
        [*argv, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, f"{' '.join(argv)} --help: {res.stderr[-2000:]}"
    return res.stdout


def _help(argv: List[str]) -> str:
    return _help_text(tuple(argv))


def _check_args(prog: List[str], args: List[str]) -> None:
    """Flags appear in prog's --help; key=value arguments are config keys."""
    text = _help(prog)
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=")[0]
            assert re.search(rf"{re.escape(flag)}(?![\w-])", text), f"{' '.join(prog)}: {flag} is not in --help"
        elif "=" in arg and not arg.startswith("$"):
            assert arg.split("=")[0] in all_keys(), f"{arg}: not a config key"


def _check_part(tokens: List[str]) -> None:
    prog, args = tokens[0], tokens[1:]
    if prog in CLI_MODULES:
        sub = [args[0]] if prog == "sppo-convert" else []
        _check_args([sys.executable, "-m", CLI_MODULES[prog], *sub], args[len(sub) :])
    elif prog == "torchrun":
        split = args.index("-m")
        _check_args([sys.executable, "-m", "torch.distributed.run"], args[:split])
        assert args[split + 1] == "sppo_megatron.train"
        _check_args([sys.executable, "-m", CLI_MODULES["sppo-train"]], args[split + 2 :])
    elif prog == "bash":
        script = os.path.join(ROOT, args[0])
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
        if args[0] == "examples/qwen2.5-7b-math/run.sh":  # the recipe's config is valid (paths aside)
            load_config(
                os.path.join(ROOT, "examples/qwen2.5-7b-math/config.yaml"), args[1:], world_size=4, check_paths=False
            )
    elif prog.endswith("pip"):
        assert args[0] == "install"
        if args[1] == "-r":
            assert os.path.isfile(os.path.join(ROOT, args[2]))
        elif args[1] == "-e":
            extras = re.fullmatch(r"\.\[(.*)\]", args[2]).group(1).split(",")
            assert set(extras) <= set(_pyproject()["project"]["optional-dependencies"]), extras
    elif prog.endswith(("python", "python3")):
        if args[0] == "-m" and args[1] == "pytest":
            if "-m" in args[2:]:
                markers = {m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
                expression = args[args.index("-m", 2) + 1]
                assert set(re.findall(r"\w+", expression)) - {"and", "or", "not"} <= markers, expression
        elif args[0] == "-m":
            assert args[1] == "venv" or importlib.util.find_spec(args[1]) is not None, args[1]
        else:
            _check_args([sys.executable, os.path.join(ROOT, args[0])], args[1:])
    elif prog == "hf":
        hf = shutil.which("hf", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
        if hf is None:
            pytest.skip("the hf command (huggingface_hub) is not installed here")
        _check_args([hf, args[0]], args[1:])
    else:
        raise AssertionError(f"no check for {prog!r}: add one")


@pytest.mark.parametrize("command", sorted(NOT_RUN) + CONVERSION)
def test_command_that_needs_a_gpu_hub_or_installer_is_well_formed(command):
    for part in command.split("&&"):
        _check_part(shlex.split(part))
