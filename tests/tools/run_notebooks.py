"""Run notebooks top to bottom in full (not the `IN_TEST` slice) and store their outputs, so GitHub and the docs show them.

    python tests/tools/run_notebooks.py nbs/07_batchnorm.ipynb [...]    # those notebooks
    python tests/tools/run_notebooks.py --all                            # every notebook but index.ipynb
    python tests/tools/run_notebooks.py --all --times                    # only print the stored full-run times

Each notebook runs in a fresh Python process, as a student's kernel would, with `IN_TEST` unset, every cell in order
(cells marked `#| eval: false` skipped, as nbdev_test does), stopping at the first error: its assertions hold on the
full data or nothing is written. The outputs are then made machine-neutral (the repo's folder, the home folder and
the temporary folder are written as `.`, `~` and `$TMPDIR`), the notebook is cleaned as `nbdev_clean` does, and its
metadata records a hash of its code cells (`tests/tools/check_outputs.py` fails when the code changes without a
new run), which code cells had outputs (it fails when one is found cleared), the run's wall time and the machine it ran on.
"""
import argparse, hashlib, json, os, platform, re, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVAL_FALSE = re.compile(r'^\s*#\|\s*eval:\s*false\s*$', re.M | re.I)
FIG_DPI = 72   # inline PNGs at 72 dpi keep every notebook well under its 2 MB budget

def code_hash(cells):
    "A short hash of the code cells' sources: it changes whenever the code a notebook runs changes."
    code = '\0'.join(c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
                     for c in cells if c['cell_type'] == 'code')
    return hashlib.sha256(code.encode()).hexdigest()[:16]

def shown(cells):
    "The ordinals (among code cells) of the cells that have outputs: `check_outputs.py` reports any of them found empty."
    return [k for k, c in enumerate(c for c in cells if c['cell_type'] == 'code') if c.get('outputs')]

def machine():
    "A short description of this machine (no names or paths): CPU model, cores, PyTorch version."
    cpu = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')),
               platform.processor()) if Path('/proc/cpuinfo').exists() else platform.processor()
    import torch
    return f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}'

def neutral(text):
    "`text` with this machine's repo, home and temporary folders written as `.`, `~` and `$TMPDIR`."
    for path, name in [(str(ROOT/'nbs'), '.'), (str(ROOT), '..'), (tempfile.gettempdir(), '$TMPDIR'), (str(Path.home()), '~')]:
        text = re.sub(re.escape(path) + r'(?![\w.-])', lambda m: name, text)   # whole names: /tmp/tmpab is $TMPDIR/tmpab
    return text

def _neutral_outputs(cell):
    "Make every text output of `cell` machine-neutral."
    for o in cell.get('outputs', []):
        if 'text' in o: o['text'] = neutral(''.join(o['text']))
        for k, v in o.get('data', {}).items():
            if k.startswith('text'): o['data'][k] = neutral(''.join(v))

def execute(nb_path):
    "In this process: run `nb_path` in full and write it back with its outputs and run metadata."
    import matplotlib
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    os.environ.pop('IN_TEST', None)
    matplotlib.rcParams.update({'figure.dpi': FIG_DPI, 'savefig.dpi': FIG_DPI})
    nb_path = Path(nb_path).resolve()
    nb, shell, start = read_nb(nb_path), CaptureShell(nb_path, mpl_format='png'), time.time()
    os.chdir(nb_path.parent)
    shell.run_all(nb, exc_stop=True, preproc=lambda c: c.cell_type != 'code' or bool(EVAL_FALSE.search(c.source)))
    for c in nb.cells: _neutral_outputs(c)
    nb.metadata['dl2'] = dict(code_hash=code_hash(nb.cells), full_run_seconds=round(time.time() - start), ran_on=machine(),
                              shown=shown(nb.cells))
    write_nb(nb, nb_path)
    subprocess.run(['nbdev_clean', '--fname', str(nb_path)], check=True, cwd=ROOT)

def notebooks(args):
    "The notebooks named in `args`, or all of them but the docs' home page."
    if not args.all: return [Path(p) for p in args.notebooks]
    return [p for p in sorted((ROOT/'nbs').glob('*.ipynb')) if p.name != 'index.ipynb']

def run(nb):
    "Run notebook `nb` in a fresh Python process; its exit code."
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    start = time.time()
    r = subprocess.run([sys.executable, __file__, '--one', str(nb)], env=env)
    print(f'run_notebooks: {nb.name}: {"stored" if r.returncode == 0 else "FAILED"} in {time.time() - start:.0f} s', flush=True)
    return r.returncode

def times(nbs):
    "The stored full-run time of each notebook, as a markdown table."
    print('| notebook | full run |\n|---|---|')
    for nb in nbs:
        meta = json.loads(nb.read_text())['metadata'].get('dl2', {})
        print(f"| `{nb.stem}` | {meta.get('full_run_seconds', '?')} s |")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('notebooks', nargs='*')
    p.add_argument('--all', action='store_true', help='every notebook but index.ipynb')
    p.add_argument('--times', action='store_true', help='print the stored full-run times and stop')
    p.add_argument('--one', help=argparse.SUPPRESS)   # the child process's job
    args = p.parse_args(argv)
    if args.one: return execute(args.one)
    nbs = notebooks(args)
    if args.times: return times(nbs)
    failed = [nb.name for nb in nbs if run(nb)]
    if failed: print(f'run_notebooks: failed: {" ".join(failed)}', file=sys.stderr)
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
