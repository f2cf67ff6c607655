#!/usr/bin/env bash
# One command for the day a GPU is lent: the GPU tests, every benchmark on the device and the default dl2_train run,
# written up as one markdown report. `--device cpu --dry-run` runs each step once, tiny, to prove the script works.
# Details and options: benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
