#!/usr/bin/env bash
# The test command: set up what is missing, check the repo's invariants, run every notebook as a test,
# then the tests that don't belong in a notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)

bash tests/setup.sh --dev
$PY tests/check_repo.py                 # no legacy '#export' directives; dl2/ in sync with the notebooks
nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing
$PY -m pytest -q tests
echo "tests/run.sh: all green in $(( $(date +%s) - start )) s"
