#!/usr/bin/env bash
# 8 GPUs on one node (NOT YET RUN ON GPUS, see config.yaml). Extra arguments are config
# overrides, e.g. trainer.total_steps=10. Uses $PYTHON, the repository's .venv, or python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/python.sh
"$PY" -m torch.distributed.run --standalone --nproc_per_node 8 -m sppo_megatron.train \
    --config examples/qwen3-30b-a3b-math/config.yaml "$@"
