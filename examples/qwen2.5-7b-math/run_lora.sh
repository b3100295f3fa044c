#!/usr/bin/env bash
# LoRA variant of run.sh -- NOT YET RUN ON GPUs (no GPU was available to this project so far; the
# CPU tests cover the same code paths at TP/PP/EP 2). The recipe of config.yaml with the policy's
# weights frozen and rank-64 adapters on every attention and MLP linear layer trained instead:
# gradients and Adam state for 142 M adapter parameters instead of 7.6 B, checkpoints of about
# 2 GB (bf16 adapters, fp32 Adam state) instead of about 107 GB. LoRA takes a larger learning rate
# than full fine-tuning (1e-6 there); 2e-5 is a starting point, not a tuned value.
# Export afterwards: sppo-convert megatron-to-hf --ckpt outputs/qwen2.5-7b-math-lora/checkpoints/step_N
#                    --out adapter --peft   (or without --peft: merged weights)
set -euo pipefail
LORA=(
  model.lora.rank=64
  model.lora.alpha=128
  optim.lr=2.0e-5
  trainer.output_dir=outputs/qwen2.5-7b-math-lora
)
exec bash "$(dirname "$0")/run.sh" "${LORA[@]}" "$@"
