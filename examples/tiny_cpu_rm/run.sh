#!/usr/bin/env bash
# Embedded CPU demo of a learned oracle: tiny assets plus a tiny reward model trained to prefer
# correct sums -> HF-to-Megatron conversion -> SPPO on 2 gloo ranks with reward.source=reward_model
# (the rule never sees training) -> held-out accuracy, measured by the rule scorer, before and after.
# Usage: bash examples/tiny_cpu_rm/run.sh [OUT_DIR] [key=value ...]   (default OUT_DIR outputs/tiny_cpu_rm)
# OUT_DIR is the run directory; the generated models and data go to OUT_DIR/assets. Running it
# again on the same OUT_DIR resumes that run; start over with trainer.resume=none trainer.overwrite=true.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../tiny_demo.sh"
demo_init outputs/tiny_cpu_rm "$@"
demo_assets "tokenizer, arithmetic prompts, warm-started Qwen2 policy, trained reward model" \
  reward_model/config.json --reward-model
demo_convert
demo_train " against the reward model" "$HERE/config.yaml" reward.model_path="$ASSETS/reward_model" "${DEMO_ARGS[@]}"
demo_report ", rule scorer"
echo "demo finished in $(( $(date +%s) - DEMO_START ))s (SPPO ${TRAIN_S}s)"
