#!/usr/bin/env bash
# GPU check for one H200-class host with PyTorch and nvidia-ml-py, no vLLM, nothing to download:
# a Llama-3.1-8B-shaped model with random weights in plain PyTorch (bf16) is timed at prefill
# and decode shapes and compared with the simulator's cost model (pythia/sim/costmodel.py),
# while the NVML sampler records the device. Writes results/bench/gpu_check/gpu_check.{json,md}
# (or --out DIR). At most 8 minutes: the Python part stops starting shapes after 7 (--max-seconds)
# and this wrapper interrupts it at 8, keeping what was measured.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU host
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu-check   # anywhere: tiny shape on the CPU
#
# Other options pass through to benchmarks/gpu_check.py (--help lists them). PYTHON picks the
# interpreter (default: python3, the one that holds PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=(--device cuda)
for arg in "$@"; do
    case "$arg" in --dry-run|--device|--device=*|--compare|--compare=*|-h|--help) device=() ;; esac
done
# SIGINT first (the check writes what it measured), SIGKILL 20 s later.
exec timeout --signal=INT --kill-after=20 480 "$PY" benchmarks/gpu_check.py "${device[@]}" "$@"
