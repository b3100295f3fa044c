"""requirements-cpu.txt resolves torch to the CPU build, never to PyPI's CUDA one.

pip resolves the file's torch lines for real (`pip install --dry-run --report`) against local
stand-ins of the two public indexes, holding wheels made here with the same names, versions and
dependencies: "PyPI", whose Linux torch 2.13.0 is the CUDA build depending on nvidia-* packages,
and "PyTorch's CPU index", whose torch 2.13.0+cpu depends on none. The machine's own pip
configuration (a local wheel directory, extra indexes) is left out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements-cpu.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _wheel(directory: Path, name: str, version: str, requires: List[str]) -> None:
    """A minimal installable wheel `name-version-py3-none-any.whl` declaring `requires`."""
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
            name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
        ),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("indexes")
    nvidia = ["nvidia-cublas-cu12", "nvidia-cudnn-cu12"]
    _wheel(root / "pypi", "torch", "2.13.0", nvidia)
    for name in nvidia:
        _wheel(root / "pypi", name, "12.9.1", [])
    _wheel(root / "pytorch-cpu", "torch", "2.13.0+cpu", [])
    return {"pypi": root / "pypi", "pytorch-cpu": root / "pytorch-cpu"}


def torch_lines() -> List[str]:
    """The torch requirement lines of requirements-cpu.txt."""
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-") and Requirement(line).name == "torch"]


def resolve(lines: List[str], tmp_path: Path, *indexes: Path) -> Optional[Dict[str, str]]:
    """{name: version} pip would install for `lines` from `indexes` alone; None when it finds none."""
    req = tmp_path / "req.txt"
    req.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # not this machine's wheel directory and extra indexes
    links = [arg for index in indexes for arg in ("--find-links", str(index))]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", *links]
    res = subprocess.run(
        [*cmd, "--report", str(report), "-r", str(req)], capture_output=True, text=True, env=env, timeout=120
    )
    if res.returncode != 0:
        assert "No matching distribution found for torch" in res.stderr, res.stderr
        return None
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def test_torch_is_pinned_to_the_cpu_build():
    lines = torch_lines()
    here = [
        Requirement(line) for line in lines if Requirement(line).marker is None or Requirement(line).marker.evaluate()
    ]
    assert len(here) == 1, lines
    if sys.platform != "darwin":
        assert str(here[0].specifier).endswith("+cpu"), here[0]
    # the file names the index that holds the +cpu wheels, so a machine that only knows PyPI gets one
    options = [line.split() for line in REQUIREMENTS.read_text().splitlines() if line.startswith("--")]
    assert ["--extra-index-url", CPU_INDEX] in options, options


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS torch wheels on PyPI are CPU builds")
def test_public_index_gives_the_cpu_build_or_nothing(indexes, tmp_path):
    lines = torch_lines()
    assert resolve(lines, tmp_path, indexes["pypi"], indexes["pytorch-cpu"]) == {"torch": "2.13.0+cpu"}
    assert resolve(lines, tmp_path, indexes["pypi"]) is None, "PyPI alone must fail, not give the CUDA build"
    # the stand-in reproduces the trap: a bare version pin takes the CUDA build and its nvidia-* packages
    cuda = resolve(["torch==2.13.0"], tmp_path, indexes["pypi"])
    assert cuda is not None and {"nvidia-cublas-cu12", "nvidia-cudnn-cu12"} <= set(cuda)
