#!/usr/bin/env bash
# Build the wheel folder tools/gpu_check.sh installs on a bare, offline GPU machine.
#
#   bash tools/gpu_check_wheels.sh [WHEEL_DIR]        (default .cache/gpu_wheels; needs PyPI)
#
# The GPU image (device README / KINDS.md: Python 3.12, torch 2.11 and ~200 packages
# preinstalled) lacks megatron-core and this project's pure-Python dependencies below; only
# those are downloaded, each with --no-deps so nothing the image already has (torch above all)
# is pulled in. transformers is carried at the version the CPU suite runs (the image has 5.17).
# Not carried: datasets (only sppo_megatron/data/prepare.py imports it; the check does not
# prepare data), Transformer Engine and SGLang (each far over the size limit).
# The folder must stay under 48 MiB: the checkout plus carried paths may be 64 MiB at most.
set -euo pipefail
DEST="${1:-.cache/gpu_wheels}"
LIMIT_MIB="${GPU_WHEELS_LIMIT_MIB:-48}"
PY="${PYTHON:-python3}"
PACKAGES=(
  megatron-core==0.19.2
  transformers==5.23.0
  omegaconf==2.4.0
  math-verify==0.9.0
  latex2sympy2_extended==1.11.0
  antlr4-python3-runtime==4.13.2
)
# manylinux tags pip matches exactly: the ones wheels of these packages are published under
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
mkdir -p "$DEST"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
for pkg in "${PACKAGES[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DEST" "$pkg"
done

# one version per package (two stop the install); never torch or a CUDA library
"$PY" - "$DEST" <<'PYEOF'
import collections, os, sys
dest = sys.argv[1]
names = collections.Counter(f.split("-")[0].lower().replace("_", "-") for f in os.listdir(dest) if f.endswith(".whl"))
dupes = [n for n, c in names.items() if c > 1]
banned = [n for n in names if n in ("torch", "triton") or n.startswith("nvidia")]
if dupes or banned:
    sys.exit(f"gpu_check_wheels: {dest}: remove {'duplicate versions of ' + ', '.join(dupes) if dupes else ''}"
             f"{' and ' if dupes and banned else ''}{'packages the image has: ' + ', '.join(banned) if banned else ''}")
PYEOF

size_kib=$(du -sk "$DEST" | cut -f1)
echo "gpu_check_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $((size_kib / 1024)) MiB ($size_kib KiB) in $DEST"
ls -1 "$DEST"
if (( size_kib > LIMIT_MIB * 1024 )); then
  echo "gpu_check_wheels: $DEST is over $LIMIT_MIB MiB: it would not fit the 64 MiB carried to the GPU machine" >&2
  exit 1
fi
