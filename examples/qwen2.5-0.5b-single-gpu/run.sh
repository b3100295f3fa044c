#!/usr/bin/env bash
# One GPU. Extra arguments are config overrides, e.g. trainer.total_steps=10.
# Uses $PYTHON, the repository's .venv, or python3 (see examples/python.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/python.sh
"$PY" -m sppo_megatron.train --config examples/qwen2.5-0.5b-single-gpu/config.yaml "$@"
