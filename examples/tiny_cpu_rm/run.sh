#!/usr/bin/env bash
# Embedded CPU demo of a learned oracle: tiny assets plus a tiny reward model trained to prefer
# correct sums -> HF-to-Megatron conversion -> SPPO on 2 gloo ranks with reward.source=reward_model
# (the rule never sees training) -> held-out accuracy, measured by the rule scorer, before and after.
# Usage: bash examples/tiny_cpu_rm/run.sh [OUT_DIR] [key=value ...]   (default OUT_DIR outputs/tiny_cpu_rm)
# OUT_DIR is the run directory; the generated models and data go to OUT_DIR/assets. Running it
# again on the same OUT_DIR resumes that run; start over with trainer.resume=none trainer.overwrite=true.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR=outputs/tiny_cpu_rm
if [[ $# -gt 0 && "$1" != *=* ]]; then OUT_DIR="$1"; shift; fi
source "$ROOT/examples/python.sh"
ASSETS="$OUT_DIR/assets"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
start=$(date +%s)

echo "== 1/4 tiny assets: tokenizer, arithmetic prompts, warm-started Qwen2 policy, trained reward model -> $ASSETS"
if [[ ! -f "$ASSETS/reward_model/config.json" ]]; then
  "$PY" "$ROOT/tools/make_tiny_assets.py" --out "$ASSETS" --reward-model
else
  echo "   (reusing $ASSETS)"
fi

echo "== 2/4 convert Hugging Face -> Megatron dist checkpoint"
if [[ ! -f "$ASSETS/megatron/sppo_checkpoint.json" ]]; then
  "$PY" -m sppo_megatron.cli.convert hf-to-megatron --hf "$ASSETS/model" --out "$ASSETS/megatron"
else
  echo "   (reusing $ASSETS/megatron)"
fi

echo "== 3/4 SPPO against the reward model: torchrun --nproc_per_node 2, TP=2, gloo, HF rollout engine"
train_start=$(date +%s)
"$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m sppo_megatron.train \
  --config "$HERE/config.yaml" \
  model.path="$ASSETS/megatron/hf" model.megatron_ckpt="$ASSETS/megatron" reward.model_path="$ASSETS/reward_model" \
  "data.train_files=[$ASSETS/data/train.parquet]" "data.val_files=[$ASSETS/data/test.parquet]" \
  trainer.output_dir="$OUT_DIR" "$@"
train_s=$(( $(date +%s) - train_start ))

echo "== 4/4 held-out accuracy (greedy, rule scorer, $OUT_DIR/metrics.jsonl)"
"$PY" - "$OUT_DIR/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
val = [(r["step"], r["val/accuracy"]) for r in rows if r.get("val/accuracy") is not None]
(s0, before), (s1, after) = val[0], val[-1]
scores = [r["reward/score_mean"] for r in rows if "reward/score_mean" in r]
print(f"held-out accuracy: {100 * before:.1f}% at step {s0} -> {100 * after:.1f}% at step {s1} "
      f"({100 * (after - before):+.1f} points); mean reward-model score {scores[0]:.2f} -> {scores[-1]:.2f}")
PYEOF
echo "demo finished in $(( $(date +%s) - start ))s (SPPO ${train_s}s)"
