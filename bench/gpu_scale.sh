#!/usr/bin/env bash
# Elastic vs plain fine-tuning of a SmolLM-135M-shaped Llama on one GPU (tokens/s, peak GPU memory), then nas-measure
# (loss on the GPU, latency in ONNX Runtime on the CPU), nas-fit, nas-search and nas-export of the knee; all through
# the project's CLIs, about 6-8 minutes on one H100/H200. What it runs and reports: bench/gpu_scale.py's docstring.
#
#   bench/gpu_scale.sh                 # results in $OUT when set, else bench/results/gpu_scale/
#   bench/gpu_scale.sh --tiny          # the same pipeline on the CPU with a 2-layer Llama (tests/test_gpu_scale.py)
#   bench/gpu_scale.sh --help          # the other options (precision, gradient checkpointing, budget, folders)
#
# Python: $PYTHON, else the checkout's .venv, else python3. The repository root goes on PYTHONPATH (the project need
# not be installed), after nothing else: wheels installed with --target (PYTHONPATH=/tmp/site:...) stay visible.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$root/bench/gpu_scale.py" "$@"
