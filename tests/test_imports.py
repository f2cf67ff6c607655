"Every module of dl2 imports on its own, and `dl2.imports` gives lesson code the names it relies on."
import importlib, pkgutil, subprocess, sys
import pytest
import dl2

MODULES = sorted(m.name for m in pkgutil.iter_modules(dl2.__path__) if not m.name.startswith('_'))

def test_found_modules():
    assert {'core', 'imports', 'datasets', 'training', 'callbacks', 'schedules', 'layers', 'hooks'} <= set(MODULES)

@pytest.mark.parametrize('name', MODULES)
def test_module_imports_alone(name):
    "A fresh interpreter, so one module's import can't hide another's missing import."
    subprocess.run([sys.executable, '-c', f'import dl2.{name}'], check=True)

@pytest.mark.parametrize('name', MODULES)
def test_all_names_exist(name):
    mod = importlib.import_module(f'dl2.{name}')
    missing = [n for n in getattr(mod, '__all__', []) if not hasattr(mod, n)]
    assert not missing, f'dl2.{name}.__all__ names {missing}, which it does not define'
