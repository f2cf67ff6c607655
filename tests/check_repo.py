"""Repo invariants nbdev does not enforce: no legacy `#export`-style directives, and dl2/ in sync with the notebooks."""
import hashlib, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# nbdev 2 only reads `#| directive`; nbdev 1's `#export` (no bar) is silently treated as a comment.
LEGACY = re.compile(r'^\s*#\s*(export|exports|exporti|default_exp|hide|hide_input|hide_output|collapse_\w+)\b(?!.*\|)')

def legacy_directives(nbs_path):
    "`(notebook, cell index, line)` for each code-cell line that looks like an nbdev 1 directive."
    found = []
    for nb in sorted(Path(nbs_path).glob('**/*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts: continue
        cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
        for i, cell in enumerate(cells):
            if cell['cell_type'] != 'code': continue
            src = cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])
            found += [(nb, i, line) for line in src.splitlines() if LEGACY.match(line) and not line.lstrip().startswith('#|')]
    return found

def _digest(lib):
    return {p.relative_to(lib).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(lib).rglob('*.py'))}

def export_drift(root=ROOT):
    "Run `nbdev_export` in `root` and return the dl2/ files it created, changed or removed."
    lib = Path(root)/'dl2'
    before = _digest(lib)
    subprocess.run(['nbdev_export'], cwd=root, check=True)
    after = _digest(lib)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

def main():
    problems = [f'{nb.relative_to(ROOT)} cell {i}: legacy directive {line.strip()!r} is ignored by nbdev 2; write "#| {line.strip().lstrip("#").strip()}"'
                for nb, i, line in legacy_directives(ROOT/'nbs')]
    drift = export_drift()
    if drift: problems.append(f'dl2/ was out of sync with the notebooks (nbdev_export changed: {", ".join(drift)}); commit the exported files')
    for p in problems: print(f'check_repo: {p}', file=sys.stderr)
    if not problems: print('check_repo: no legacy directives; dl2/ in sync with nbs/')
    return 1 if problems else 0

if __name__ == '__main__': sys.exit(main())
