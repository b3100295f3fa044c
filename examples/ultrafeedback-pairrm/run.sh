#!/usr/bin/env bash
# NOT YET RUN ON GPUS. 8 GPUs on one node: SPPO on UltraFeedback prompts with PairRM (see
# config.yaml for the setting and how to fetch and prepare everything), then the win rate of the
# trained policy against reference responses (a parquet/JSONL of messages + response, e.g. the
# initial model's or GPT-4's answers to data/ultrafeedback/test.parquet) judged by PairRM.
# Extra arguments are config overrides of the training run, e.g. trainer.total_steps=10.
# Uses $PYTHON, the repository's .venv, or python3 (see examples/python.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/python.sh
"$PY" -m torch.distributed.run --standalone --nproc_per_node 8 -m sppo_megatron.train \
    --config examples/ultrafeedback-pairrm/config.yaml "$@"
REFERENCE="${REFERENCE:-data/ultrafeedback/reference.jsonl}"
if [[ -f "$REFERENCE" ]]; then
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 8 -m sppo_megatron.cli.eval \
      --model outputs/ultrafeedback-pairrm --data data/ultrafeedback/test.parquet --reference "$REFERENCE" \
      --config examples/ultrafeedback-pairrm/config.yaml --temperature 0.7 --top-p 0.9
else
  echo "no $REFERENCE: skipping the win-rate evaluation (set REFERENCE=FILE)"
fi
