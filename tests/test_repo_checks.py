"The repo checks that CI runs must fail when the repo is broken, and pass on the repo as committed."
import json, tempfile, shutil, subprocess
from pathlib import Path
import pytest
from check_repo import ROOT, legacy_directives, export_drift, clean_drift, sidebar_drift, missing_kernelspec, readme_from_index

def _nb(path, *sources, metadata=None, cell_type='code'):
    code = dict(outputs=[], execution_count=None) if cell_type == 'code' else {}
    cells = [dict(cell_type=cell_type, id=f'c{i}', source=s, metadata={}, **code) for i, s in enumerate(sources)]
    path.write_text(json.dumps(dict(cells=cells, metadata=metadata or {}, nbformat=4, nbformat_minor=5)))

def test_legacy_directive_found(tmp_path):
    _nb(tmp_path/'a.ipynb', '#| export\ndef f(): pass', '#export\ndef g(): pass', '# hide\nx = 1', '#|hide\ny = 2')
    found = legacy_directives(tmp_path)
    assert [(i, line) for _, i, line in found] == [(1, '#export'), (2, '# hide')]

def test_repo_has_no_legacy_directive():
    assert legacy_directives(ROOT/'nbs') == []

@pytest.fixture
def project_copy(tmp_path):
    for name in ['settings.ini', 'setup.py']: shutil.copy(ROOT/name, tmp_path/name)
    for name in ['nbs', 'dl2']: shutil.copytree(ROOT/name, tmp_path/name, ignore=shutil.ignore_patterns('__pycache__', 'data', '*.pt'))
    return tmp_path

def test_export_drift_detects_hand_edit(project_copy):
    assert export_drift(project_copy) == []
    core = project_copy/'dl2'/'core.py'
    core.write_text(core.read_text() + '\nhand_edit = 1\n')
    assert export_drift(project_copy) == ['dl2/core.py']
    assert 'hand_edit' not in core.read_text()   # the export restored it

def test_export_drift_detects_unexported_notebook_change(project_copy):
    nb = project_copy/'nbs'/'00_core.ipynb'
    d = json.loads(nb.read_text())
    d['cells'].append(dict(cell_type='code', source='#| export\ndef brand_new(): "New." ', metadata={}, outputs=[], execution_count=None))
    nb.write_text(json.dumps(d))
    assert export_drift(project_copy) == ['dl2/_modidx.py', 'dl2/core.py']

PY3 = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}

def test_clean_drift_detects_outputs(project_copy):
    nb = project_copy/'nbs'/'00_core.ipynb'
    subprocess.run(['nbdev_clean', '--fname', str(nb)], check=True)   # the repo's notebooks may wait for the lead's clean
    assert 'nbs/00_core.ipynb' not in clean_drift(project_copy)
    d = json.loads(nb.read_text())
    code = next(c for c in d['cells'] if c['cell_type'] == 'code')
    code['execution_count'], code['outputs'] = 3, [dict(output_type='stream', name='stdout', text='hi\n')]
    nb.write_text(json.dumps(d))
    assert 'nbs/00_core.ipynb' in clean_drift(project_copy)
    assert clean_drift(project_copy) == []   # nbdev_clean has now cleaned everything

def test_sidebar_drift_detects_a_missing_notebook(project_copy):
    sidebar = project_copy/'nbs'/'sidebar.yml'
    assert sidebar_drift(project_copy) == []
    sidebar.write_text(sidebar.read_text().replace('      - 00_core.ipynb\n', ''))
    assert sidebar_drift(project_copy) == ['nbs/sidebar.yml'] and '00_core.ipynb' in sidebar.read_text()

def test_kernelspec_required_and_kept_by_nbdev_clean(tmp_path):
    "What the README's ways of opening a notebook save passes, after nbdev_clean; a kernel registered under another name fails."
    _nb(tmp_path/'none.ipynb', 'x = 1')
    _nb(tmp_path/'r.ipynb', 'x = 1', metadata={'kernelspec': {'display_name': 'R', 'language': 'R', 'name': 'ir'}})
    _nb(tmp_path/'registered.ipynb', 'x = 1', metadata={'kernelspec': {'display_name': 'Python 3 (dl2)', 'language': 'python', 'name': 'dl2'}})
    _nb(tmp_path/'lab.ipynb', 'x = 1', metadata={'kernelspec': {**PY3['kernelspec'], 'display_name': 'Python 3 (ipykernel)'}})
    _nb(tmp_path/'vscode.ipynb', 'x = 1', metadata={'kernelspec': {**PY3['kernelspec'], 'display_name': '.venv'}})
    for nb in tmp_path.glob('*.ipynb'): subprocess.run(['nbdev_clean', '--fname', str(nb)], check=True)
    assert [nb.name for nb in missing_kernelspec(tmp_path)] == ['none.ipynb', 'r.ipynb', 'registered.ipynb']
    for name in ['lab.ipynb', 'vscode.ipynb']: assert json.loads((tmp_path/name).read_text())['metadata'] == PY3

def test_readme_from_index(tmp_path):
    _nb(tmp_path/'index.ipynb', '# dl2\n\nIntro.\n', '## Use\n\n```bash\nbash tests/run.sh\n```', cell_type='markdown', metadata=PY3)
    assert readme_from_index(tmp_path/'index.ipynb') == '# dl2\n\nIntro.\n\n## Use\n\n```bash\nbash tests/run.sh\n```\n'
    _nb(tmp_path/'index.ipynb', '# dl2', 'print(1)', metadata=PY3)
    with pytest.raises(ValueError, match='only markdown cells'): readme_from_index(tmp_path/'index.ipynb')

def test_repo_readme_is_made_from_index():
    assert (ROOT/'README.md').read_text() == readme_from_index(ROOT/'nbs'/'index.ipynb')

# ---- stored outputs (tests/tools/check_outputs.py; made by tests/tools/run_notebooks.py)
from check_outputs import problems, missing_outputs
from run_notebooks import code_hash, neutral

def _ran(path, cells, **meta):
    "A notebook at `path` holding `cells`, with run metadata as run_notebooks.py writes it (hash of its code by default)."
    path.write_text(json.dumps(dict(cells=cells, metadata={'dl2': {'code_hash': code_hash(cells), **meta}, **PY3}, nbformat=4, nbformat_minor=5)))
    return path

def _cell(src, *outputs):
    return dict(cell_type='code', id='c', source=src, metadata={}, execution_count=None, outputs=list(outputs))

PNG = dict(output_type='display_data', data={'image/png': 'iVBOR', 'text/plain': '<Figure>'}, metadata={})
TEXT = dict(output_type='stream', name='stdout', text='hi\n')
VALUE = dict(output_type='execute_result', data={'text/plain': '3'}, metadata={}, execution_count=None)

def test_outputs_of_the_current_code_pass(tmp_path):
    nb = _ran(tmp_path/'a.ipynb', [_cell('plt.plot([1, 2])', PNG), _cell('print(1)', TEXT), _cell('x = 1\nx', VALUE), _cell('learn.fit(1)')])
    assert problems(nb) == []

def test_stale_outputs_fail(tmp_path):
    nb = _ran(tmp_path/'a.ipynb', [_cell('x = 1\nx', VALUE)])
    d = json.loads(nb.read_text()); d['cells'][0]['source'] = 'x = 2\nx'; nb.write_text(json.dumps(d))
    assert problems(nb) == ['a.ipynb: its outputs are not from its current code: run `python tests/tools/run_notebooks.py nbs/a.ipynb`']

def test_missing_outputs_fail():
    cells = [_cell('fig, ax = plt.subplots()\nax.plot([1])'), _cell('print(len(x))'), _cell('x.shape'), _cell('#| export\ndef f(): return 1'),
             _cell('#| eval: false\nx.shape'), _cell('x.shape;'), _cell('def f(): print(1)')]
    assert missing_outputs(cells) == [(0, 'a figure'), (1, 'printed text'), (2, 'a value')]

def test_cleared_outputs_fail(tmp_path):
    "Once a notebook has run, its record of which code cells had outputs is what counts: a cell cleared since is reported."
    cells = [dict(cell_type='markdown', id='m', source='# hi', metadata={}), _cell('x', VALUE), _cell('rm(tmp)'), _cell('print(1)', TEXT)]
    nb = _ran(tmp_path/'a.ipynb', cells, shown=[0, 2])
    assert problems(nb) == []
    cells[3]['outputs'] = []
    assert problems(_ran(tmp_path/'a.ipynb', cells, shown=[0, 2])) == [
        'a.ipynb cell 3: it shows the output of its full run but has no output: run `python tests/tools/run_notebooks.py nbs/a.ipynb`']

def test_machine_paths_and_size_fail(tmp_path):
    leak = dict(TEXT, text=f'saved to {ROOT}/nbs/run\n')
    nb = _ran(tmp_path/'a.ipynb', [_cell('print(where)', leak)])
    assert any('holds a path of the machine' in p for p in problems(nb))
    assert neutral(leak['text']) == 'saved to ./run\n'
    assert neutral(f'{tempfile.gettempdir()}/tmpab/x') == '$TMPDIR/tmpab/x'
    big = _ran(tmp_path/'b.ipynb', [_cell('plt.plot([1])', dict(PNG, data={'image/png': 'A' * 2_100_000}))])
    assert any('over the 2,000,000-byte budget' in p for p in problems(big))
