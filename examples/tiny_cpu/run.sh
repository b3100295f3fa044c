#!/usr/bin/env bash
# Embedded CPU demo: tiny assets -> convert -> SPPO on 2 gloo ranks -> held-out accuracy.
# Usage: bash examples/tiny_cpu/run.sh [OUT_DIR]   (default outputs/tiny_cpu)
set -euo pipefail
OUT_DIR="${1:-outputs/tiny_cpu}"
echo "sppo-megatron CPU demo (output: $OUT_DIR)"
echo "The SPPO training loop is not built yet, so this demo does not train anything."
echo "Coming with the trainer issue: tiny assets, conversion, SPPO on 2 gloo ranks, accuracy before/after."
