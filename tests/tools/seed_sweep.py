"""Run the notebooks' training cells over several seeds and thread counts, and print the metric each one asserts.

A developer tool, not part of the test run: it executes every notebook as `nbdev_test` does (IN_TEST set), once per
(seed, threads) pair, with every `torch.manual_seed(n)` of the notebook turned into `torch.manual_seed(n + seed)`. After
each cell that calls `.fit(`, it records the last validation accuracy of every `Learner` in the notebook whose history
grew, and the threshold the cell asserts (`> 0.7` style), so thresholds can be set with margin below the worst case:

    python tests/tools/seed_sweep.py                          # every notebook that trains, seeds 0-4, 1 and 2 threads
    python tests/tools/seed_sweep.py nbs/06_cuda_cnn_hooks_init.ipynb --seeds 0 1 --threads 1
"""
import argparse, json, os, re, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEED = re.compile(r'torch\.manual_seed\((\d+)\)')
THRESHOLD = re.compile(r"valid_accuracy'\]\s*>\s*\(?\s*([0-9.]+)(?:\s*if in_test\(\)\s*else\s*([0-9.]+))?")

def run_notebook(nb, seed, threads):
    "In this process: execute `nb` with seeds shifted by `seed` on `threads` threads; the metrics of its training cells."
    import torch
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from dl2.learner import Learner
    torch.set_num_threads(threads)
    os.environ['IN_TEST'] = '1'
    cells = read_nb(nb).cells
    os.chdir(Path(nb).parent)
    shell, rows = CaptureShell(), []
    seen = {}
    for i, cell in enumerate(cells):
        if cell.cell_type != 'code' or '#| eval: false' in cell.source.splitlines()[:4]: continue   # as nbdev_test skips them
        src = SEED.sub(lambda m: f'torch.manual_seed({int(m.group(1)) + seed})', cell.source)
        shell.run(src)
        if shell.exc: return dict(error=f'cell {i}: {type(shell.exc).__name__}: {str(shell.exc).splitlines()[0][:200]}', rows=rows)
        if '.fit(' not in src: continue
        learners = [v for v in shell.user_ns.values() if isinstance(v, Learner) and hasattr(v, 'avg_stats')]
        for l in learners:
            h = getattr(l.avg_stats, 'history', [])
            if h and seen.get(id(l)) != len(h):
                seen[id(l)] = len(h)
                m = THRESHOLD.search(src)
                rows.append(dict(cell=i, acc=h[-1]['valid_accuracy'], threshold=float(m.group(1)) if m else None))
    return dict(rows=rows)

def training_notebooks():
    "The notebooks whose cells call `.fit(`."
    return [nb for nb in sorted((ROOT/'nbs').glob('*.ipynb')) if '.fit(' in nb.read_text()]

def worker(nb, seed, threads):
    "Run `run_notebook` in a fresh Python, as a separate kernel would; its JSON result."
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([sys.executable, __file__, '--worker', str(nb), str(seed), str(threads)], capture_output=True, text=True, env=env)
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]) if r.returncode == 0 and lines else dict(error=(r.stderr.strip().splitlines() or ['?'])[-1], rows=[])

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('notebooks', nargs='*', type=Path)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        nb, seed, threads = a.worker
        print(json.dumps(run_notebook(nb, int(seed), int(threads))))
        return
    runs = [(nb.resolve(), s, t) for nb in (a.notebooks or training_notebooks()) for s in a.seeds for t in a.threads]
    with ThreadPoolExecutor(a.jobs) as ex: results = list(ex.map(lambda r: worker(*r), runs))
    print(f"{'notebook':<32} {'cell':>4} {'seed':>4} {'threads':>7} {'accuracy':>8} {'asserts >':>9}")
    worst, failed = {}, False
    for (nb, s, t), res in zip(runs, results):
        if 'error' in res: print(f'{nb.name:<32} {"":>4} {s:>4} {t:>7}  ERROR {res["error"]}'); failed = True
        for r in res['rows']:
            print(f"{nb.name:<32} {r['cell']:>4} {s:>4} {t:>7} {r['acc']:>8.4f} {r['threshold'] if r['threshold'] is not None else '':>9}")
            key = (nb.name, r['cell'])
            worst[key] = min(worst.get(key, (2., r['threshold']))[0], r['acc']), r['threshold']
    print(f"\n{'notebook':<32} {'cell':>4} {'lowest':>8} {'asserts >':>9}  margin")
    for (name, cell), (low, th) in sorted(worst.items()):
        margin = '' if th is None else f'{low - th:+.3f}'
        print(f'{name:<32} {cell:>4} {low:>8.4f} {th if th is not None else "":>9}  {margin}')
        failed |= th is not None and low <= th
    sys.exit(1 if failed else 0)

if __name__ == '__main__': main()
