#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m sppo_megatron.train --config examples/qwen2.5-0.5b-single-gpu/config.yaml "$@"
