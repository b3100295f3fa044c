#!/usr/bin/env bash
# The GPU check in one command (tools/gpu_check.py says what it runs and writes):
#
#   bash tools/gpu_check.sh --out DIR [--wheels .cache/gpu_wheels] [--dry-run] [--only STEP,...]
#
# On the lent GPU machine: carry .cache/gpu_wheels (built by tools/gpu_check_wheels.sh) and run
#   bash tools/gpu_check.sh --out "$OUT/gpu_check"
# The interpreter is $PYTHON, else the GPU image's /opt/torch/.venv/bin/python3, else the
# checkout's .venv, else python3; nothing is installed into it (wheels go to a --target folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x /opt/torch/.venv/bin/python3 ]]; then PY=/opt/torch/.venv/bin/python3
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
exec "$PY" "$ROOT/tools/gpu_check.py" "$@"
