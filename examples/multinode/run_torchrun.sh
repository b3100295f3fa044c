#!/usr/bin/env bash
# Multi-node launch with torchrun's c10d rendezvous. Run the same command on every node:
#   NNODES=2 HEAD_ADDR=node001 bash examples/multinode/run_torchrun.sh --config run.yaml parallel.tp=4
# Uses $PYTHON, the repository's .venv, or python3 (see examples/python.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/python.sh
: "${NNODES:?set NNODES}" "${HEAD_ADDR:?set HEAD_ADDR (reachable address of the first node)}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
"$PY" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD_ADDR:${HEAD_PORT:-29500}" --rdzv_id "${RDZV_ID:-sppo}" \
    -m sppo_megatron.train "$@"
