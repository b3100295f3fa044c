#!/usr/bin/env bash
# Embedded CPU demo: tiny assets -> HF-to-Megatron conversion -> SPPO on 2 gloo ranks (TP=2, HF
# rollout engine) -> held-out accuracy before and after. No network, no GPU.
# Usage: bash examples/tiny_cpu/run.sh [OUT_DIR] [key=value ...]   (default OUT_DIR outputs/tiny_cpu)
# OUT_DIR is the run directory (config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, hf/);
# the generated model and data go to OUT_DIR/assets. key=value arguments override the config,
# e.g. `bash examples/tiny_cpu/run.sh trainer.total_steps=3`. Running it again on the same OUT_DIR
# resumes that run; start over with trainer.resume=none trainer.overwrite=true or another OUT_DIR.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR=outputs/tiny_cpu
if [[ $# -gt 0 && "$1" != *=* ]]; then OUT_DIR="$1"; shift; fi
source "$ROOT/examples/python.sh"
ASSETS="$OUT_DIR/assets"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
start=$(date +%s)

echo "== 1/4 tiny assets: tokenizer, arithmetic prompts, warm-started Qwen2 model -> $ASSETS"
if [[ ! -f "$ASSETS/model/config.json" ]]; then
  "$PY" "$ROOT/tools/make_tiny_assets.py" --out "$ASSETS"
else
  echo "   (reusing $ASSETS)"
fi

echo "== 2/4 convert Hugging Face -> Megatron dist checkpoint"
if [[ ! -f "$ASSETS/megatron/sppo_checkpoint.json" ]]; then
  "$PY" -m sppo_megatron.cli.convert hf-to-megatron --hf "$ASSETS/model" --out "$ASSETS/megatron"
else
  echo "   (reusing $ASSETS/megatron)"
fi

echo "== 3/4 SPPO: torchrun --nproc_per_node 2, TP=2, gloo, HF rollout engine"
"$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m sppo_megatron.train \
  --config "$HERE/config.yaml" \
  model.path="$ASSETS/megatron/hf" model.megatron_ckpt="$ASSETS/megatron" \
  "data.train_files=[$ASSETS/data/train.parquet]" "data.val_files=[$ASSETS/data/test.parquet]" \
  trainer.output_dir="$OUT_DIR" "$@"

echo "== 4/4 held-out accuracy (greedy, $OUT_DIR/metrics.jsonl)"
"$PY" - "$OUT_DIR/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
val = [(r["step"], r["val/accuracy"]) for r in rows if r.get("val/accuracy") is not None]
(s0, before), (s1, after) = val[0], val[-1]
print(f"held-out accuracy: {100 * before:.1f}% at step {s0} -> {100 * after:.1f}% at step {s1} "
      f"({100 * (after - before):+.1f} points)")
PYEOF
echo "demo finished in $(( $(date +%s) - start ))s; HF checkpoint of the trained policy: $OUT_DIR/hf"
