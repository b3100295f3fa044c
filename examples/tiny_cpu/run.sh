#!/usr/bin/env bash
# Embedded CPU demo: tiny assets -> HF-to-Megatron conversion -> SPPO on 2 gloo ranks (TP=2, HF
# rollout engine) -> held-out accuracy before and after. No network, no GPU.
# Usage: bash examples/tiny_cpu/run.sh [OUT_DIR] [key=value ...]   (default OUT_DIR outputs/tiny_cpu)
# OUT_DIR is the run directory (config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, hf/);
# the generated model and data go to OUT_DIR/assets. key=value arguments override the config,
# e.g. `bash examples/tiny_cpu/run.sh trainer.total_steps=3`. Running it again on the same OUT_DIR
# resumes that run; start over with trainer.resume=none trainer.overwrite=true or another OUT_DIR.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../tiny_demo.sh"
demo_init outputs/tiny_cpu "$@"
demo_assets "tokenizer, arithmetic prompts, warm-started Qwen2 model" model/config.json
demo_convert
demo_train "" "$HERE/config.yaml" "${DEMO_ARGS[@]}"
demo_report ""
echo "demo finished in $(( $(date +%s) - DEMO_START ))s; HF checkpoint of the trained policy: $OUT_DIR/hf"
