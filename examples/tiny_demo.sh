# Sourced by the embedded CPU demos (examples/tiny_cpu/run.sh, examples/tiny_cpu_rm/run.sh): the
# steps they share. demo_init parses `[OUT_DIR] [key=value ...]` (OUT_DIR defaults to $1) and
# leaves the overrides in DEMO_ARGS; then each step is one call.
set -euo pipefail
DEMO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$DEMO_ROOT/examples/python.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# demo_init DEFAULT_OUT_DIR "$@": sets OUT_DIR, ASSETS, DEMO_ARGS and the start time.
demo_init() {
  OUT_DIR="$1"; shift
  if [[ $# -gt 0 && "$1" != *=* ]]; then OUT_DIR="$1"; shift; fi
  ASSETS="$OUT_DIR/assets"
  DEMO_ARGS=("$@")
  DEMO_START=$(date +%s)
}

# demo_assets WHAT MARKER [make_tiny_assets flags]: build the assets unless ASSETS/MARKER exists.
demo_assets() {
  local what="$1" marker="$2"; shift 2
  echo "== 1/4 tiny assets: $what -> $ASSETS"
  if [[ ! -f "$ASSETS/$marker" ]]; then
    "$PY" "$DEMO_ROOT/tools/make_tiny_assets.py" --out "$ASSETS" "$@"
  else
    echo "   (reusing $ASSETS)"
  fi
}

demo_convert() {
  echo "== 2/4 convert Hugging Face -> Megatron dist checkpoint"
  if [[ ! -f "$ASSETS/megatron/sppo_checkpoint.json" ]]; then
    "$PY" -m sppo_megatron.cli.convert hf-to-megatron --hf "$ASSETS/model" --out "$ASSETS/megatron"
  else
    echo "   (reusing $ASSETS/megatron)"
  fi
}

# demo_train WHAT CONFIG [key=value ...]: SPPO on 2 gloo ranks on the assets; sets TRAIN_S.
demo_train() {
  local what="$1" config="$2"; shift 2
  echo "== 3/4 SPPO$what: torchrun --nproc_per_node 2, TP=2, gloo, HF rollout engine"
  local train_start
  train_start=$(date +%s)
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m sppo_megatron.train \
    --config "$config" \
    model.path="$ASSETS/megatron/hf" model.megatron_ckpt="$ASSETS/megatron" \
    "data.train_files=[$ASSETS/data/train.parquet]" "data.val_files=[$ASSETS/data/test.parquet]" \
    trainer.output_dir="$OUT_DIR" "$@"
  TRAIN_S=$(( $(date +%s) - train_start ))
}

# demo_report WHAT: held-out accuracy before and after (and the oracle's mean score when logged).
demo_report() {
  echo "== 4/4 held-out accuracy (greedy$1, $OUT_DIR/metrics.jsonl)"
  "$PY" - "$OUT_DIR/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
val = [(r["step"], r["val/accuracy"]) for r in rows if r.get("val/accuracy") is not None]
(s0, before), (s1, after) = val[0], val[-1]
scores = [r["reward/score_mean"] for r in rows if "reward/score_mean" in r]
oracle = f"; mean reward-model score {scores[0]:.2f} -> {scores[-1]:.2f}" if scores else ""
print(f"held-out accuracy: {100 * before:.1f}% at step {s0} -> {100 * after:.1f}% at step {s1} "
      f"({100 * (after - before):+.1f} points){oracle}")
PYEOF
}
