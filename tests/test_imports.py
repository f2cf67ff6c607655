"Every module of dl2 imports on its own, and `dl2.imports` gives lesson code the names it relies on."
import importlib, json, pkgutil, re, subprocess, sys
from pathlib import Path
import pytest
import dl2

MODULES = sorted(m.name.removeprefix('dl2.') for m in pkgutil.walk_packages(dl2.__path__, 'dl2.')
                 if not m.name.rsplit('.', 1)[-1].startswith('_') and not m.ispkg)

LESSON = {'core', 'imports', 'datasets', 'data', 'learner', 'schedules', 'lr_find', 'cnn', 'hooks', 'batchnorm', 'lsuv',
          'data_block', 'optimizers', 'checkpoint', 'progress', 'augmentation'}
WINGS = {'fast.kernels', 'fast.batchnorm', 'fast.triton_kernels', 'fast.optimizers', 'image_folder', 'distributed', 'train', 'cli'}
ADAPTER = {'course'}

def test_found_modules():
    "Every module is in the lesson wing, in a wing beyond the lesson, or the course adapter."
    assert set(MODULES) == LESSON | WINGS | ADAPTER, sorted(set(MODULES) ^ (LESSON | WINGS | ADAPTER))

def _dl2_imports(name):
    "`(module, names)` for each `from dl2.X import ...` / `from .X import ...` line of `dl2/<name>.py`."
    src = (Path(dl2.__file__).parent/f"{name.replace('.', '/')}.py").read_text()
    return [(m, [n.strip() for n in names.split(',')]) for m, names in re.findall(r'^from (?:dl2|)\.?([\w.]+) import (.+)$', src, re.M)]

@pytest.mark.parametrize('name', MODULES)
def test_no_private_names_across_modules(name):
    private = [(m, n) for m, names in _dl2_imports(name) for n in names if n.startswith('_') and m != name]
    assert not private, f'dl2.{name} imports private names {private}'

def test_the_lesson_wing_loads_no_other_wing():
    "Importing every lesson module (and the course adapter, which gives the lesson's classes) loads no speed-wing, image-folder, distributed or CLI module."
    code = (f"import sys\nfor m in {sorted(LESSON | ADAPTER)}: __import__('dl2.' + m)\n"
            f"print(sorted(m for m in sys.modules if m.removeprefix('dl2.') in {sorted(WINGS)} or m == 'dl2.fast'))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == '[]', r.stdout

# Each module is imported in a process of its own, so that one module's import can't hide another's missing import. Where
# processes fork (Linux), one process imports torch, which every fresh interpreter importing dl2 would import too, and forks a
# child per module that imports only that module: the seconds torch takes are spent once, not once per module.
IMPORT_EACH = r"""import json, os, sys, traceback
import torch
errors = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    if (pid := os.fork()) == 0:
        os.close(r)
        try: __import__(name); err = b''
        except BaseException: err = traceback.format_exc().encode()
        os.write(w, err); os._exit(0)
    os.close(w)
    with os.fdopen(r, 'rb') as f: err = f.read().decode()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    errors[name] = err or (f'the process importing it ended with {code}' if code else '')
print(json.dumps(errors))"""

def fresh_import(names):
    "For each module in `names`, the error (a traceback) of importing it alone in a new process; '' where it imports."
    if sys.platform != 'linux':   # no fork (Windows), or fork unsafe once some of torch's libraries are loaded (macOS)
        done = {n: subprocess.run([sys.executable, '-c', f'import {n}'], capture_output=True, text=True) for n in names}
        return {n: (r.stderr or f'the process importing it ended with {r.returncode}') if r.returncode else '' for n, r in done.items()}
    r = subprocess.run([sys.executable, '-c', IMPORT_EACH, *names], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])

@pytest.fixture(scope='module')
def import_errors(): return fresh_import([f'dl2.{m}' for m in MODULES])

@pytest.mark.xdist_group('import_errors')   # one xdist worker runs them all, and the fixture once
@pytest.mark.parametrize('name', MODULES)
def test_module_imports_alone(name, import_errors):
    "The module imports alone, in a process of its own."
    assert not import_errors[f'dl2.{name}'], import_errors[f'dl2.{name}']

@pytest.mark.slow
def test_fresh_import_reports_failures(tmp_path, monkeypatch):
    "Each module alone: one relying on another's import fails with its traceback, and so does one whose process dies."
    (tmp_path/'adds.py').write_text('import json\njson.added = 1\n')
    (tmp_path/'relies.py').write_text('import json\njson.added\n')   # imports only after `adds`
    (tmp_path/'dies.py').write_text('import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n')
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    errors = fresh_import(['adds', 'relies', 'dies'])
    assert errors['adds'] == '' and "has no attribute 'added'" in errors['relies'] and errors['dies'], errors

@pytest.mark.parametrize('name', MODULES)
def test_all_names_exist(name):
    mod = importlib.import_module(f'dl2.{name}')
    missing = [n for n in getattr(mod, '__all__', []) if not hasattr(mod, n)]
    assert not missing, f'dl2.{name}.__all__ names {missing}, which it does not define'
