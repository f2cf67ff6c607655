#!/usr/bin/env bash
# The test command: set up what is missing, check the repo's invariants, run every notebook as a test,
# then the tests that don't belong in a notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)

bash tests/setup.sh --dev
$PY tests/check_repo.py                 # no legacy '#export' directives; dl2/ in sync with the notebooks
# One thread per notebook worker: two workers with two threads each on two cores made small-tensor code 5-50x slower.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing
$PY -m pytest -q tests
echo "tests/run.sh: all green in $(( $(date +%s) - start )) s"
