"The repo checks that CI runs must fail when the repo is broken, and pass on the repo as committed."
import json, shutil
from pathlib import Path
import pytest
from check_repo import ROOT, legacy_directives, export_drift

def _nb(path, *sources):
    cells = [dict(cell_type='code', source=s, metadata={}, outputs=[], execution_count=None) for s in sources]
    path.write_text(json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)))

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
    assert export_drift(project_copy) == ['core.py']
    assert 'hand_edit' not in core.read_text()   # the export restored it

def test_export_drift_detects_unexported_notebook_change(project_copy):
    nb = project_copy/'nbs'/'00_core.ipynb'
    d = json.loads(nb.read_text())
    d['cells'].append(dict(cell_type='code', source='#| export\ndef brand_new(): "New." ', metadata={}, outputs=[], execution_count=None))
    nb.write_text(json.dumps(d))
    assert export_drift(project_copy) == ['_modidx.py', 'core.py']
