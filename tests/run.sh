#!/usr/bin/env bash
# The test command: set up what is missing (with the dev tools), then, inside the project's Python environment, check
# the repo's invariants, process the notebooks as the docs build does, run every notebook as a test, then the tests
# that don't belong in a notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
# run again inside the environment that setup.sh makes or finds; the second argument is when the whole run began
if [ "${1:-}" != --in-env ]; then exec bash tests/setup.sh --dev bash tests/run.sh --in-env "$(date +%s)"; fi
start=$2
step() { echo "run.sh: $*" >&2; }
# One thread per notebook worker: two workers with two threads each on two cores made small-tensor code 5-50x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

step "repo checks (nbdev_export, nbdev_clean and nbdev_sidebar change nothing; kernelspecs; README.md from index.ipynb)"
python tests/tools/check_repo.py
# nbdev_proc_nbs is this after a check for Quarto that would install it (with sudo); processing needs no Quarto.
step "processing the notebooks for the docs, as nbdev_proc_nbs does"
python -c 'from nbdev.serve import proc_nbs; proc_nbs()'
step "running every notebook (nbdev_test)"
nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing
step "pytest"
python -m pytest -q tests
echo "tests/run.sh: all green in $(( $(date +%s) - start )) s"
