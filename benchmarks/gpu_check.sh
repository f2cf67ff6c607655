#!/usr/bin/env bash
# One command for the day a GPU is lent: the GPU tests, every benchmark on the device and the default dl2_train run,
# written up as one markdown report. `--device cpu --dry-run` runs each step once, tiny, to prove the script works.
# Like tests/run.sh it runs inside the project's environment, which tests/setup.sh finds or makes (with the dev tools:
# pytest, scikit-image); on a machine with an NVIDIA GPU that installs PyTorch's CUDA build where PyTorch is missing.
# Details and options: benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash tests/setup.sh --dev python benchmarks/gpu_check.py "$@"
