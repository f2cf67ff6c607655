#!/usr/bin/env bash
# Installs dl2 and what it needs on a fresh machine: PyTorch, the package itself (with the pinned nbdev 2
# toolchain when given --dev), and Fashion-MNIST from Debian's `dataset-fashion-mnist` where apt exists.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! $PY -c 'import torch, torchvision' 2>/dev/null; then
  # Where a local wheel cache caps pip (this project's build machines), this resolves to it; elsewhere PyPI's latest.
  $PY -m pip install -q 'torch>=2.0' 'torchvision>=0.15'
fi
if [ "${1:-}" = "--dev" ]; then extras='.[dev]'; else extras='.'; fi
$PY -m pip install -q -e "$extras"
command -v pyenv >/dev/null 2>&1 && pyenv rehash   # make the new `dl2_train` script visible through pyenv's shims

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
  sudo=''; [ "$(id -u)" = 0 ] || sudo='sudo'
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; } >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist with apt; dl2 will try to download Fashion-MNIST instead" >&2
fi
