#!/usr/bin/env bash
# 4 GPUs on one node. Extra arguments are config overrides, e.g. trainer.total_steps=10.
# Uses $PYTHON, the repository's .venv, or python3 (see examples/python.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/python.sh
"$PY" -m torch.distributed.run --standalone --nproc_per_node 4 -m sppo_megatron.train \
    --config examples/qwen2.5-7b-math/config.yaml "$@"
