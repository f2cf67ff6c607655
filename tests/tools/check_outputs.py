"""Check the notebooks' stored outputs: present where the full run gave them (for a notebook never run: where a cell
draws, prints or shows a result), made from the notebook's current code, within the size budget, and free of this
machine's paths. Part of the test command (tests/run.sh).

    python tests/tools/check_outputs.py            # every notebook but index.ipynb; exit 1 with one line per problem

`tests/tools/run_notebooks.py` makes the outputs (a full run); this only reads them.
"""
import ast, json, re, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from run_notebooks import ROOT, EVAL_FALSE, code_hash

NB_BUDGET, TOTAL_BUDGET = 2_000_000, 20_000_000   # bytes: each notebook, all of them
DRAWS = re.compile(r'\bplt\.|\.plot\w*\(|\bplot_\w+\(|\bshow_\w+\(|\bimshow\(|\.hist\(')
QUIET_CALLS = re.compile(r'^(test\w*|print|display|plt\.\w+|\w+\.(fit|fit_one_cycle|backward|step|zero_grad|save|load|append|extend|update|write_text|unlink|mkdir|touch)\b)')

def _source(cell): return cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])

def _statements(src):
    "The top-level statements of a code cell (magics and directives removed), or [] if it does not parse."
    try: return ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))).body
    except SyntaxError: return []

def _shows_value(src):
    "Whether the cell ends with an expression Jupyter displays (not a call that returns nothing, not silenced by `;`)."
    body = _statements(src)
    if not body or not isinstance(body[-1], ast.Expr) or src.rstrip().endswith(';'): return False
    v = body[-1].value
    if isinstance(v, ast.Constant): return v.value is not None and not isinstance(v.value, str)
    if isinstance(v, ast.Call): return not QUIET_CALLS.match(ast.unparse(v.func))
    return not isinstance(v, (ast.Await, ast.Yield))

def _prints(src):
    "Whether the cell calls `print` at its top level (not only inside a function it defines)."
    return any(isinstance(n, ast.Call) and getattr(n.func, 'id', None) == 'print'
               for s in _statements(src) if not isinstance(s, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(s))

def _draws(src):
    "Whether the cell draws a figure at its top level."
    return any(DRAWS.search(ast.unparse(s)) for s in _statements(src) if not isinstance(s, (ast.FunctionDef, ast.ClassDef)))

def _has(cell, kinds):
    "Whether `cell` has an output of one of `kinds`: 'stream', 'image' or 'value'."
    for o in cell.get('outputs', []):
        if 'stream' in kinds and o['output_type'] == 'stream' and o.get('name') == 'stdout': return True
        if 'image' in kinds and any(k.startswith('image/') for k in o.get('data', {})): return True
        if 'value' in kinds and o['output_type'] in ('execute_result', 'display_data'): return True
    return False

def missing_outputs(cells, shown=None):
    "`(index, what)` for each code cell without the outputs it should have: those its full run gave (`shown`, the code cells'\
 ordinals that `run_notebooks.py` records) or, for a notebook never run, those its code draws, prints or shows."
    if shown is not None:
        code = [i for i, c in enumerate(cells) if c['cell_type'] == 'code']
        return [(code[k], 'the output of its full run') for k in shown if k < len(code) and not cells[code[k]].get('outputs')]
    found = []
    for i, c in enumerate(cells):
        src = _source(c)
        if c['cell_type'] != 'code' or EVAL_FALSE.search(src) or src.lstrip().startswith('#| export'): continue
        for what, kinds, needed in [('a figure', {'image'}, _draws(src)), ('printed text', {'stream', 'value'}, _prints(src)),
                                    ('a value', {'value', 'image'}, _shows_value(src) and not _draws(src))]:
            if needed and not _has(c, kinds): found.append((i, what))
    return found

def machine_paths(cells):
    "The cell indices whose outputs hold a path of the machine that ran them (repo, home or temporary folder)."
    paths = [str(ROOT), str(Path.home()), tempfile.gettempdir() + '/']
    return [i for i, c in enumerate(cells) if any(p in json.dumps(c.get('outputs', [])) for p in paths)]

def problems(nb):
    "What is wrong with the stored outputs of notebook `nb`, one line each."
    d = json.loads(nb.read_text(encoding='utf-8'))
    meta, cells, name, out = d['metadata'].get('dl2', {}), d['cells'], nb.name, []
    rerun = f'run `python tests/tools/run_notebooks.py nbs/{name}`'
    if meta.get('code_hash') != code_hash(cells): out.append(f'{name}: its outputs are not from its current code: {rerun}')
    out += [f'{name} cell {i}: it shows {what} but has no output: {rerun}' for i, what in missing_outputs(cells, meta.get('shown'))]
    out += [f'{name} cell {i}: an output holds a path of the machine that ran it: {rerun}' for i in machine_paths(cells)]
    if (size := nb.stat().st_size) > NB_BUDGET: out.append(f'{name}: {size:,} bytes, over the {NB_BUDGET:,}-byte budget: smaller figures')
    return out

def main(nbs_path=ROOT/'nbs'):
    nbs = [nb for nb in sorted(Path(nbs_path).glob('*.ipynb')) if nb.name != 'index.ipynb']
    found = [p for nb in nbs for p in problems(nb)]
    if (total := sum(nb.stat().st_size for nb in nbs)) > TOTAL_BUDGET:
        found.append(f'the notebooks hold {total:,} bytes, over the {TOTAL_BUDGET:,}-byte budget')
    for p in found: print(f'check_outputs: {p}', file=sys.stderr)
    if not found: print(f'check_outputs: {len(nbs)} notebooks show the outputs of their current code, {total:,} bytes in all')
    return 1 if found else 0

if __name__ == '__main__': sys.exit(main())
