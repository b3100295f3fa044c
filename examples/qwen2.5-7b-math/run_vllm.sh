#!/usr/bin/env bash
# The same recipe with vLLM rollouts: one vLLM engine per rollout.tp=2 group, in the training
# processes (external launcher), gpu_memory_utilization = rollout.mem_fraction, sleep mode between
# generation and training. Needs vllm (`pip install -e .[vllm]`, or the image built from docker/
# with ENGINE=vllm). Never run on a GPU yet. Extra arguments are config overrides.
exec bash "$(dirname "$0")/run.sh" rollout.engine=vllm "$@"
