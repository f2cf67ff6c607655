#!/usr/bin/env bash
# Sets dl2 up, then runs COMMAND (if given) inside the project's Python environment:
#   bash tests/setup.sh [--dev] [COMMAND [ARG...]]        e.g.  bash tests/setup.sh dl2_train --epochs 3
# The environment is the active one (a virtualenv's $VIRTUAL_ENV, or a conda env other than `base`), else `.venv` in
# the repo root, made on first use: system Pythons (Debian's, Ubuntu's, Homebrew's) refuse `pip install` (PEP 668).
# A new .venv sees the base Python's packages only when that Python already has PyTorch, to reuse it (GBs with CUDA).
# Into the environment go PyTorch if missing, then dl2 itself, editable (with the dev tools for --dev); Fashion-MNIST
# comes from Debian's `dataset-fashion-mnist` where apt exists. Safe to run again: it installs only what is missing.
# PYTHON picks the Python that .venv is made from (default python3). DL2_TORCH picks PyTorch's build on Linux: `cpu`
# (PyTorch's own CPU-only wheels), `cuda` (PyPI's default, with CUDA) or `auto` (the default: cuda where nvidia-smi
# lists a GPU, else cpu); macOS and Windows get PyPI's wheels, which are CPU (and MPS) builds there.
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

torch_build() {   # cpu or cuda: DL2_TORCH's choice, else cpu on Linux unless nvidia-smi lists a GPU; cuda means PyPI's default
  case "${DL2_TORCH:-auto}" in
    cpu|cuda) echo "$DL2_TORCH";;
    auto) if [ "$(uname -s)" = Linux ] && ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then echo cpu; else echo cuda; fi;;
    *) say "DL2_TORCH=$DL2_TORCH: use cpu, cuda or auto"; return 1;;
  esac
}

reachable() { "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' "$1" >/dev/null 2>&1; }

install_torch() {   # PyTorch and torchvision, from PyTorch's CPU index where that is the choice and it can be reached
  local cpu_index=https://download.pytorch.org/whl/cpu build
  build=$(torch_build)
  if [ "$build" = cpu ] && reachable "$cpu_index/torch/"; then
    say "installing PyTorch's CPU build into $env (DL2_TORCH=cuda for the CUDA build): with dl2's other requirements about 0.25 GB to download, 1.1 GB installed"
    # an extra index: PyPI still serves the other packages, and torch's +cpu versions sort above PyPI's same versions
    "$py" -m pip install torch torchvision --extra-index-url "$cpu_index"
    return
  fi
  if [ "$build" = cpu ]; then say "cannot reach $cpu_index: installing PyPI's default PyTorch instead"; fi
  if [ "$(uname -s)" = Linux ]; then
    say "installing PyTorch with CUDA into $env: with dl2's other requirements about 3 GB to download, 5.6 GB installed"
  else
    say "installing PyTorch into $env: with dl2's other requirements about 0.2 GB to download"
  fi
  "$py" -m pip install torch torchvision
}

if ! "$py" -c 'import torch, torchvision' 2>/dev/null; then install_torch; fi
if "$py" tests/tools/installed.py ${extras:+--dev} 2>/dev/null; then say "dl2 and its requirements${extras:+ (with the dev tools)} are installed in $env"
else
  say "installing dl2 (editable, as the distribution dl2-foundations) and its requirements${extras:+, with the dev tools,} into $env"
  "$py" -m pip install -q -e ".$extras"
fi

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
