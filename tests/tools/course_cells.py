"""Run course-v3's lesson-11 notebooks against dl2 with only their import line changed (a developer tool, not a test).

    python tests/tools/course_cells.py COURSE [NOTEBOOK.ipynb ...] [--git REPO] [--only 08 09b] [--import-line LINE] [-v]

COURSE is a folder holding the course's notebooks (course-v3's `nbs/dl2`); NOTEBOOK paths given after it replace
the folder's copy of the same name. Two of the seven are not in a plain course-v3 checkout:
- 07_batchnorm's lesson-11 section ("Simplified RunningBatchNorm") was removed later: with `--git` pointing at a
  course-v3 git repository, the last version that has it is read from the history.
- 10_augmentation.ipynb is over 4 MB and may be missing from a snapshot: give a copy as a NOTEBOOK argument (e.g. a
  fork's jupytext pairing `10_augmentation.py` converted with `jupytext --to ipynb`).

Each notebook runs in a fresh interpreter (an execnb `CaptureShell`), its code cells in order. The tool reads the
notebooks at run time and changes their cells only by these rules:
1. Import: a line `from exp.nb_XX import *` becomes LINE (default `from dl2.course import *`).
2. Offline data: `untar_data(URL)` (with or without `datasets.`) becomes `_cc.local_folder(URL)`. The URL
   expression is still evaluated; the folder returned has Imagenette's layout (`train/` and `val/`, one folder per
   Imagenette class, JPEGs with a shorter side of 160, 320 or 375 pixels for IMAGENETTE_160, _320 and full size),
   built once from Fashion-MNIST pictures, 10 training and 5 validation images per class.
3. Small data: `get_data()` becomes `_cc.subset(get_data())`: the first 1,000 training and 500 validation rows,
   so the MNIST trainings of lesson 10's notebooks take seconds on a CPU.
Cells are skipped, with the reason printed, when they:
- call CUDA when they run (`.cuda(`, `torch.cuda`, outside the functions they define) and this machine has none;
- run the course's own export tooling (`notebook2script`, `nb_auto_export`);
- use a name that only a skipped cell defines.
A cell that fails for want of what an earlier cell failed to make is reported as blocked by that cell, not as
failed, so that the failures listed are the causes: a NameError for a name that a skipped or failed cell would
have defined, or any error in a cell that reads a name a failed cell left holding an older value (or a value
computed from one).
"""
import argparse, ast, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

LESSON_11 = ['07_batchnorm', '07a_lsuv', '08_data_block', '09_optimizers', '09b_learner', '09c_add_progress_bar',
             '10_augmentation']
SECTIONS = {'07_batchnorm': 'Simplified RunningBatchNorm'}   # notebooks where lesson 11 is one section; cells before it set up
IMPORT = re.compile(r'^(\s*)from\s+exp\.nb_\w+\s+import\s+\*\s*$', re.M)
UNTAR = re.compile(r'\b(?:datasets\.)?untar_data\(')
GET_DATA = re.compile(r'(?<![\w.])get_data\(\)')
NEEDS_CUDA = re.compile(r'\.cuda\(|torch\.cuda\b')
COURSE_TOOLING = re.compile(r'notebook2script|nb_auto_export')
N_TRAIN, N_VALID = 1000, 500
PER_CLASS = dict(train=10, val=5)
# Imagenette's ten ImageNet classes (folder names), paired with Fashion-MNIST's ten classes by position.
IMAGENETTE_CLASSES = ['n01440764', 'n02102040', 'n02979186', 'n03000684', 'n03028079',
                      'n03394916', 'n03417042', 'n03425413', 'n03445777', 'n03888605']

# ---------------------------------------------------------------- helpers the rewritten cells call (as `_cc`)

def subset(data):
    "The first `N_TRAIN` training and `N_VALID` validation rows of `(x_train, y_train, x_valid, y_valid)`."
    x_train, y_train, x_valid, y_valid = data
    return x_train[:N_TRAIN], y_train[:N_TRAIN], x_valid[:N_VALID], y_valid[:N_VALID]

def _short_side(url):
    name = str(url).rsplit('/', 1)[-1].lower()
    return 160 if '160' in name else 320 if '320' in name else 375

def local_folder(url):
    "A local folder with the layout of the Imagenette archive at `url`, built once under `$DL2_DATA/course_cells`."
    from dl2.datasets import data_path
    short = _short_side(url)
    dest = data_path()/'course_cells'/f'imagenette-like-{short}'
    if not (dest/'.complete').exists(): _build_folder(dest, short)
    return dest

def _build_folder(dest, short):
    import numpy as np, PIL.Image
    from dl2.datasets import get_data
    x_train, y_train, x_valid, y_valid = get_data('fashion-mnist')
    for split, x, y in (('train', x_train, y_train), ('val', x_valid, y_valid)):
        for c, wnid in enumerate(IMAGENETTE_CLASSES):
            (dest/split/wnid).mkdir(parents=True, exist_ok=True)
            for i in (y == c).nonzero()[:PER_CLASS[split], 0].tolist():
                a = (x[i].view(28, 28) * 255).byte().numpy()
                img = PIL.Image.fromarray(np.stack([a, a // 2 + 64, 255 - a], -1))   # three distinct channels
                img.resize((short * 4 // 3, short), PIL.Image.Resampling.BILINEAR).save(dest/split/wnid/f'{wnid}_{i}.JPEG', quality=90)
    (dest/'.complete').touch()

# ---------------------------------------------------------------- rewriting and classifying cells

def rewrite(src, import_line):
    "`src` with the rules of the module docstring applied."
    src = IMPORT.sub(lambda m: m.group(1) + import_line, src)
    src = UNTAR.sub('_cc.local_folder(', src)
    return GET_DATA.sub('_cc.subset(get_data())', src)

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

def _runs(node):
    "`node` and the nodes under it that run when it runs: the bodies of functions it defines left out."
    yield node
    body = node.body if isinstance(node, _FUNCS) else []
    for child in ast.iter_child_nodes(node):
        if not (child is body or (isinstance(body, list) and any(child is b for b in body))): yield from _runs(child)

TIME_MAGIC = re.compile(r'^(\s*)%%?time(?:it)?((\s+-\w+(\s+\d+)?)*)\s*', re.M)

def _parse(src):
    "The syntax tree of `src`, read as Python: `%time`/`%timeit` lines as the statement they time, other magics dropped."
    src = TIME_MAGIC.sub(lambda m: m.group(1), src)
    src = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
    try: return ast.parse(src)
    except SyntaxError: return None

def _names(src, ctx):
    "Names that `src` loads (`ast.Load`), or defines (`ast.Store`), when it runs."
    tree = _parse(src)
    if tree is None: return set()
    nodes = list(_runs(tree))
    names = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}
    if ctx is ast.Store: names |= {n.name for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return names

def _uses_cuda(src):
    "Whether `src` touches CUDA when it runs (not merely in the body of a function it defines)."
    tree = _parse(src)
    if tree is None: return bool(NEEDS_CUDA.search(src))
    return any(isinstance(n, ast.Attribute) and n.attr == 'cuda' for n in _runs(tree))

def skip_reason(src, skipped, defined):
    "Why the cell `src` is not run, or None; `skipped` maps names to the skipped cell that would have defined them."
    if COURSE_TOOLING.search(src): return "runs the course's own export tooling"
    if _uses_cuda(src):
        import torch
        if not torch.cuda.is_available(): return 'needs CUDA'
    missing = sorted((_names(src, ast.Load) & set(skipped)) - defined)
    if missing: return f'uses {", ".join(missing)} from skipped cell [{skipped[missing[0]]}]'

def _first_code_line(src):
    "The first line of `src` that is not blank or a comment (such as `#export`), for the report."
    return next((l.strip() for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#')), '')[:80]

def first_line(e):
    lines = str(e).strip().splitlines()
    return f'{type(e).__name__}: {lines[0] if lines else ""}'[:200]

# ---------------------------------------------------------------- running one notebook (in its own interpreter)

def code_cells(nb_path):
    "The non-empty code cells of a notebook, as `(index among code cells, source)`, and the index where the lesson-11 section starts."
    cells = json.loads(Path(nb_path).read_text())['cells']
    res, start, section = [], 0, SECTIONS.get(Path(nb_path).stem)
    for c in cells:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown' and section and section in src: start = len(res)
        if c['cell_type'] == 'code' and src.strip(): res.append(src)
    return list(enumerate(res)), start

def run_notebook(nb_path, import_line, verbose=False):
    "Run the cells of `nb_path`; a dict with a result per cell."
    from execnb.shell import CaptureShell
    shell = CaptureShell()
    shell.run(f'import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import course_cells as _cc')
    cells, start = code_cells(nb_path)
    # name -> the cell that would have defined it but was skipped, or failed; `stale`: names that hold an older
    # value because a cell failed before updating them, or values computed from such names
    skipped, failed, stale, results = {}, {}, {}, []
    for i, src in cells:
        t0 = time.time()
        reason = skip_reason(src, skipped, set(shell.user_ns))
        loads, stores = _names(src, ast.Load), _names(src, ast.Store)
        if reason:
            skipped.update(dict.fromkeys(stores, i))
            res = dict(status='skip', why=reason)
        else:
            defined = set(shell.user_ns)
            shell.run(rewrite(src, import_line))
            e, name = shell.exc, getattr(shell.exc, 'name', None)
            old = sorted((loads - stores) & set(stale))   # `x = next(iter(dl)); show_batch(x)` reads its own new `x`
            if e is None: res = dict(status='ok')
            elif isinstance(e, NameError) and name in {**failed, **skipped}:
                kind, cell = ('skipped', skipped[name]) if name in skipped else ('failed', failed[name])
                res = dict(status='blocked', why=f'{first_line(e)}: defined by {kind} cell [{cell}]')
            elif old: res = dict(status='blocked', why=f'{first_line(e)}: `{old[0]}` is stale, not updated by failed cell [{stale[old[0]]}]')
            else: res = dict(status='fail', why=first_line(e))
            if e is not None:
                failed.update(dict.fromkeys(stores - defined, i))
                stale.update(dict.fromkeys(stores & defined, i))
            else:
                for n in stores: stale.pop(n, None)
                if old: stale.update(dict.fromkeys(stores, stale[old[0]]))   # computed from a stale value
            shell.run("import matplotlib.pyplot as _plt; _plt.close('all')")
        res.update(idx=i, secs=round(time.time() - t0, 1), section=i >= start, src=_first_code_line(src))
        if verbose: print(f"  [{i}] {res['status']} {res['secs']}s {res.get('why', '')}", file=sys.stderr, flush=True)
        results.append(res)
    return dict(notebook=Path(nb_path).stem, sectioned=start > 0, cells=results)

# ---------------------------------------------------------------- finding the notebooks, reporting

def _from_git(repo, name, section):
    "The last version of `nbs/dl2/<name>.ipynb` in the git `repo` that has `section`, written to a temporary file."
    rel = f'nbs/dl2/{name}.ipynb'
    commits = subprocess.run(['git', '-C', repo, 'log', '-S', section, '--format=%H', '--', rel],
                             capture_output=True, text=True, check=True).stdout.split()
    if not commits: raise SystemExit(f'course_cells: no commit of {rel} in {repo} mentions {section!r}')
    for rev in (commits[0], commits[0] + '^'):   # the newest commit either added or removed it
        text = subprocess.run(['git', '-C', repo, 'show', f'{rev}:{rel}'], capture_output=True, text=True).stdout
        if section in text:
            dest = Path(tempfile.mkdtemp())/f'{name}.ipynb'
            dest.write_text(text)
            return dest
    raise SystemExit(f'course_cells: could not read {rel} with {section!r} from {repo}')

def find_notebooks(course, extra, git=None):
    "`{name: path}` of the lesson-11 notebooks: `extra` paths first, then the folder `course`, then the git history."
    found = {Path(p).stem: Path(p) for p in extra}
    for name in LESSON_11:
        if name in found: continue
        p = Path(course)/f'{name}.ipynb'
        if p.exists() and (name not in SECTIONS or SECTIONS[name] in p.read_text()): found[name] = p
        elif git and name in SECTIONS: found[name] = _from_git(git, name, SECTIONS[name])
    return {n: found[n] for n in LESSON_11 if n in found}

def summary(res):
    "Counts of each status among the cells of `res`, all of them and those of its lesson-11 section."
    count = lambda cells: {s: sum(c['status'] == s for c in cells) for s in ('ok', 'fail', 'blocked', 'skip')}
    return count(res['cells']), count([c for c in res['cells'] if c['section']])

def report(results):
    rows = []
    for res in results:
        total, section = summary(res)
        name = res['notebook']
        print(f"\n{name}: {total['ok']} ok, {total['fail']} failed, {total['blocked']} blocked, {total['skip']} skipped "
              f"of {len(res['cells'])} code cells" + (f" (lesson-11 section: {section['ok']} ok of {sum(section.values())})" if res['sectioned'] else ''))
        for c in res['cells']:
            if c['status'] != 'ok': print(f"  {c['status'].upper():7} [{c['idx']}] {c['why']}   <- {c['src']}")
        rows.append((name, total, len(res['cells'])))
        if res['sectioned']: rows.append((f'{name} (lesson-11 section)', section, sum(section.values())))
    print('\n| notebook | ok / cells | failed | blocked | skipped |\n|---|---|---|---|---|')
    for name, t, n in rows: print(f"| {name} | {t['ok']} / {n} | {t['fail']} | {t['blocked']} | {t['skip']} |")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('course', help="course-v3's nbs/dl2 folder")
    ap.add_argument('notebooks', nargs='*', help='notebook files replacing the folder\'s copy of the same name')
    ap.add_argument('--git', help='a course-v3 git repository, to read the lesson-11 section of 07_batchnorm from its history')
    ap.add_argument('--only', nargs='*', help='notebook name prefixes to run, e.g. 08 09b')
    ap.add_argument('--import-line', default='from dl2.course import *', help='what `from exp.nb_XX import *` becomes')
    ap.add_argument('--timeout', type=int, default=1800, help='seconds per notebook')
    ap.add_argument('--json', help='also write the results to this file')
    ap.add_argument('-v', '--verbose', action='store_true')
    ap.add_argument('--run-one', help=argparse.SUPPRESS)   # internal: run this notebook here, print JSON
    args = ap.parse_args(argv)
    if args.run_one:
        print('\n@@RESULT@@' + json.dumps(run_notebook(args.run_one, args.import_line, args.verbose)))
        return
    nbs = find_notebooks(args.course, args.notebooks, args.git)
    if args.only: nbs = {n: p for n, p in nbs.items() if any(n.startswith(o) for o in args.only)}
    missing = [n for n in LESSON_11 if n not in nbs and not (args.only and not any(n.startswith(o) for o in args.only))]
    for n in missing: print(f'course_cells: {n} not found (see --help)', file=sys.stderr)
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'MPLBACKEND': 'Agg'}
    results = []
    for name, path in nbs.items():
        t0 = time.time()
        print(f'course_cells: running {name} ({path})', file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, args.course, '--run-one', str(path), '--import-line', args.import_line] + (['-v'] if args.verbose else [])
        try:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE, text=True,
                                 env=env, timeout=args.timeout, cwd=tempfile.mkdtemp())
            res = json.loads(out.stdout.rsplit('@@RESULT@@', 1)[1]) if '@@RESULT@@' in out.stdout else None
            if res is None: print((out.stderr or '')[-3000:], file=sys.stderr)
        except subprocess.TimeoutExpired: res = None
        if res is None: res = dict(notebook=name, sectioned=False, cells=[dict(idx=-1, status='fail', why='the notebook run crashed or timed out', section=True, src='', secs=0)])
        print(f'course_cells: {name} took {time.time() - t0:.0f} s', file=sys.stderr, flush=True)
        results.append(res)
    report(results)
    if args.json: Path(args.json).write_text(json.dumps(results, indent=1))

if __name__ == '__main__': main()
