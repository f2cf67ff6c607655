#!/usr/bin/env bash
# Sets dl2 up, then runs COMMAND (if given) inside the project's Python environment:
#   bash tests/setup.sh [--dev] [COMMAND [ARG...]]        e.g.  bash tests/setup.sh dl2_train --epochs 3
# The environment is the active one (a virtualenv's $VIRTUAL_ENV, or a conda env other than `base`), else `.venv` in
# the repo root, made on first use: system Pythons (Debian's, Ubuntu's, Homebrew's) refuse `pip install` (PEP 668).
# A new .venv sees the base Python's packages only when that Python already has PyTorch, to reuse it (several GB).
# Into the environment go PyTorch if missing, then dl2 itself, editable (with the dev tools for --dev); Fashion-MNIST
# comes from Debian's `dataset-fashion-mnist` where apt exists. Safe to run again: it installs only what is missing.
# PYTHON picks the Python that .venv is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*" >&2; }

extras=''
if [ "${1:-}" = --dev ]; then extras='[dev]'; shift; fi

apt_install() {   # apt_install PACKAGE: quietly, with sudo unless root; fails where apt-get is missing or refuses
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=''; [ "$(id -u)" = 0 ] || sudo='sudo'
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1"; } >/dev/null
}

ensure_venv_module() {   # Debian and Ubuntu ship venv's ensurepip in a package of its own
  local py=$1 pkg
  "$py" -c 'import ensurepip' 2>/dev/null && return
  pkg="python$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
  say "$py cannot make virtual environments without the package $pkg; trying apt"
  apt_install "$pkg" && "$py" -c 'import ensurepip' 2>/dev/null && return
  say "could not install $pkg: install it (sudo apt install $pkg) or activate a Python environment of your own, then run this again"
  exit 1
}

make_venv() {   # .venv in the repo root, kept if it works, made anew otherwise
  local base=${PYTHON:-python3} flags=''
  if [ -x .venv/bin/python ] && .venv/bin/python -c '' 2>/dev/null; then return; fi
  command -v "$base" >/dev/null 2>&1 || { say "no '$base' found: install Python 3 (3.10 or newer), or set PYTHON to one"; exit 1; }
  ensure_venv_module "$base"
  if "$base" -c 'import torch, torchvision' 2>/dev/null; then
    flags=--system-site-packages
    say "creating .venv from $base, reusing its PyTorch (the venv sees $base's packages)"
  else
    say "creating .venv from $base"
  fi
  if [ -e .venv ]; then say "replacing .venv, whose Python no longer runs"; rm -rf .venv; fi
  "$base" -m venv $flags .venv
  # the pip a Python ships can be years old: Debian 12's took over 10 minutes to resolve the dev tools, pip 26 one
  say "updating .venv's pip"
  .venv/bin/python -m pip install -q --upgrade pip
}

if [ -n "${VIRTUAL_ENV:-}" ]; then env=$VIRTUAL_ENV
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != base ]; then env=$CONDA_PREFIX
else make_venv; env=$PWD/.venv
fi
py=$env/bin/python
[ -x "$py" ] || { say "the active environment $env has no bin/python"; exit 1; }

if ! "$py" -c 'import torch, torchvision' 2>/dev/null; then
  say "installing PyTorch into $env: a download of about 3 GB on Linux (CUDA libraries included; 5.5 GB installed), 0.15 GB on macOS"
  "$py" -m pip install torch torchvision
fi
say "installing dl2 (editable) and its requirements${extras:+, with the dev tools} into $env"
"$py" -m pip install -q -e ".$extras"

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
  say "installing Debian's dataset-fashion-mnist (30 MB) with apt"
  apt_install dataset-fashion-mnist || say "could not install dataset-fashion-mnist with apt; dl2 will download Fashion-MNIST instead"
fi

if [ $# -eq 0 ]; then
  if [ "$env" = "$PWD/.venv" ]; then say "done: 'source .venv/bin/activate' enters the environment (or run .venv/bin/dl2_train)"
  else say "done: installed into the active environment $env"; fi
  exit 0
fi
# run COMMAND as if the environment were activated
[ "$env" = "${CONDA_PREFIX:-}" ] || export VIRTUAL_ENV=$env
export PATH="$env/bin:$PATH"
unset PYTHONHOME
exec "$@"
