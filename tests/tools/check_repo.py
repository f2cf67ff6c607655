"""Repo invariants nbdev does not enforce: no legacy `#export`-style directives; dl2/, the notebooks and nbs/sidebar.yml
as nbdev_export, nbdev_clean and nbdev_sidebar leave them; a Python 3 kernelspec in every notebook; README.md made from
nbs/index.ipynb. `python tests/tools/check_repo.py --write-readme` writes README.md from nbs/index.ipynb."""
import hashlib, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# nbdev 2 only reads `#| directive`; nbdev 1's `#export` (no bar) is silently treated as a comment.
LEGACY = re.compile(r'^\s*#\s*(export|exports|exporti|default_exp|hide|hide_input|hide_output|collapse_\w+)\b(?!.*\|)')

def notebooks(nbs_path):
    "The notebooks in `nbs_path`, checkpoints left out."
    return [nb for nb in sorted(Path(nbs_path).glob('**/*.ipynb')) if '.ipynb_checkpoints' not in nb.parts]

def _source(cell): return cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])

def legacy_directives(nbs_path):
    "`(notebook, cell index, line)` for each code-cell line that looks like an nbdev 1 directive."
    found = []
    for nb in notebooks(nbs_path):
        cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
        for i, cell in enumerate(cells):
            if cell['cell_type'] != 'code': continue
            found += [(nb, i, line) for line in _source(cell).splitlines() if LEGACY.match(line) and not line.lstrip().startswith('#|')]
    return found

def _digest(files): return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

def drift(root, cmd, pattern):
    "Run nbdev command `cmd` in `root`; the files matching `pattern` (relative to `root`) that it created, changed or removed."
    root = Path(root)
    before = _digest(root.glob(pattern))
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL)
    after = _digest(root.glob(pattern))
    return sorted(p.relative_to(root).as_posix() for p in before.keys() | after.keys() if before.get(p) != after.get(p))

def export_drift(root=ROOT):
    "The dl2/ files that `nbdev_export` changes: the library is out of sync with the notebooks."
    return drift(root, ['nbdev_export'], 'dl2/**/*.py')

def clean_drift(root=ROOT):
    "The notebooks that `nbdev_clean` changes: they were committed with outputs, execution counts or stray metadata."
    return drift(root, ['nbdev_clean'], 'nbs/**/*.ipynb')

def sidebar_drift(root=ROOT):
    "['nbs/sidebar.yml'] if `nbdev_sidebar` (which lists the notebooks for the docs) changes it."
    return drift(root, ['nbdev_sidebar'], 'nbs/sidebar.yml')

def missing_kernelspec(nbs_path):
    "The notebooks whose kernelspec is not `python3`: Jupyter elsewhere would ask for a kernel (nbdev_clean keeps the name)."
    def ok(nb): return json.loads(nb.read_text(encoding='utf-8'))['metadata'].get('kernelspec', {}).get('name') == 'python3'
    return [nb for nb in notebooks(nbs_path) if not ok(nb)]

def readme_from_index(index):
    "README.md's text made from the docs home page `index`: its markdown cells, a blank line apart (code cells need Quarto)."
    cells = json.loads(Path(index).read_text(encoding='utf-8'))['cells']
    if any(c['cell_type'] != 'markdown' for c in cells): raise ValueError(f'{index}: only markdown cells can become README.md without Quarto')
    return '\n\n'.join(_source(c).strip('\n') for c in cells) + '\n'

def main(args=()):
    index, readme = ROOT/'nbs'/'index.ipynb', ROOT/'README.md'
    if '--write-readme' in args:
        readme.write_text(readme_from_index(index), encoding='utf-8')
        return 0
    problems = [f'{nb.relative_to(ROOT)} cell {i}: legacy directive {line.strip()!r} is ignored by nbdev 2; write "#| {line.strip().lstrip("#").strip()}"'
                for nb, i, line in legacy_directives(ROOT/'nbs')]
    problems += [f'{nb.relative_to(ROOT)} has no Python 3 kernelspec (saved with a kernel of another name?): set its metadata '
                 '"kernelspec" to {"display_name": "python3", "language": "python", "name": "python3"}, or save it again from '
                 "the environment's own Jupyter or with .venv's Python as VS Code's kernel" for nb in missing_kernelspec(ROOT/'nbs')]
    for changed, fix in [(export_drift(), 'nbdev_export changed {}: commit the exported files'),
                         (clean_drift(), 'nbdev_clean changed {}: commit the cleaned notebooks'),
                         (sidebar_drift(), 'nbdev_sidebar changed {}: commit it')]:
        if changed: problems.append(fix.format(', '.join(changed)))
    if readme.read_text(encoding='utf-8') != readme_from_index(index):
        problems.append('README.md is not what nbs/index.ipynb makes: edit the notebook, then run `python tests/tools/check_repo.py --write-readme`')
    for p in problems: print(f'check_repo: {p}', file=sys.stderr)
    if not problems: print('check_repo: no legacy directives; dl2/, notebooks and sidebar as nbdev leaves them; kernelspecs; README.md from index.ipynb')
    return 1 if problems else 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
