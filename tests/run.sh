#!/usr/bin/env bash
# The test command: set up what is missing (with the dev tools), then, inside the project's Python environment, check
# the repo's invariants, process the notebooks as the docs build does, run every notebook as a test, then the tests
# that don't belong in a notebook.
#   bash tests/run.sh           everything, before a pull request
#   bash tests/run.sh --quick   everyday edits: the repo checks, the notebooks changed since main (DL2_BASE names another
#                               branch), the tests not marked slow
set -euo pipefail
cd "$(dirname "$0")/.."
# run again inside the environment that setup.sh makes or finds; the second argument is when the whole run began
if [ "${1:-}" != --in-env ]; then
  case "$*" in ''|--quick) ;; *) echo "usage: bash tests/run.sh [--quick]" >&2; exit 2;; esac
  exec bash tests/setup.sh --dev bash tests/run.sh --in-env "$(date +%s)" "$@"
fi
start=$2 quick=${3:-}
step() { echo "run.sh: $*" >&2; }
# One thread per worker: two workers with two threads each on two cores made small-tensor code 5-50x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
workers=${DL2_WORKERS:-2}   # notebooks and test files at a time

changed_notebooks() {   # the notebooks changed (committed or not) since this branch left $DL2_BASE (default main, else origin/main)
  local base ref
  for ref in ${DL2_BASE:-main origin/main}; do base=$(git merge-base HEAD "$ref" 2>/dev/null) && break; done
  { git diff --name-only "${base:-HEAD}" -- 'nbs/*.ipynb'; git ls-files --others --exclude-standard -- 'nbs/*.ipynb'; } |
    sort -u | while read -r f; do [ -f "$f" ] && basename "$f"; done
}

step "repo checks (nbdev_export, nbdev_clean and nbdev_sidebar change nothing; kernelspecs; README.md from index.ipynb)"
python tests/tools/check_repo.py
if [ "$quick" = --quick ]; then
  nbs=$(changed_notebooks | paste -sd'|' -)
  if [ -n "$nbs" ]; then
    step "running the notebooks changed since main: ${nbs//|/, }"
    nbdev_test --n_workers "$workers" --file_re "^(${nbs//./\\.})$"
  else step "no notebook changed since main"; fi
  step "pytest, the tests not marked slow"
  python -m pytest -q -n "$workers" --dist loadgroup -m 'not slow' tests
  echo "tests/run.sh --quick: green in $(( $(date +%s) - start )) s; the whole command (bash tests/run.sh) before a pull request"
  exit 0
fi
# nbdev_proc_nbs is this after a check for Quarto that would install it (with sudo); processing needs no Quarto.
step "processing the notebooks for the docs, as nbdev_proc_nbs does"
python -c 'from nbdev.serve import proc_nbs; proc_nbs()'
step "running every notebook (nbdev_test)"
nbdev_test --n_workers "$workers" --timing
step "the stored outputs: every notebook run in full since its code last changed (tests/tools/check_outputs.py)"
python tests/tools/check_outputs.py
step "pytest"
# --dist loadgroup: the tests sharing an expensive fixture (xdist_group) run on one worker, which makes it once
python -m pytest -q -n "$workers" --dist loadgroup tests
echo "tests/run.sh: all green in $(( $(date +%s) - start )) s"
