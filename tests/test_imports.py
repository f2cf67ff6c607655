"Every module of dl2 imports on its own, and `dl2.imports` gives lesson code the names it relies on."
import importlib, pkgutil, re, subprocess, sys
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

@pytest.mark.parametrize('name', MODULES)
def test_module_imports_alone(name):
    "A fresh interpreter, so one module's import can't hide another's missing import."
    subprocess.run([sys.executable, '-c', f'import dl2.{name}'], check=True)

@pytest.mark.parametrize('name', MODULES)
def test_all_names_exist(name):
    mod = importlib.import_module(f'dl2.{name}')
    missing = [n for n in getattr(mod, '__all__', []) if not hasattr(mod, n)]
    assert not missing, f'dl2.{name}.__all__ names {missing}, which it does not define'
