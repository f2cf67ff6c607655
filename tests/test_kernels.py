"""`dl2.fast.kernels.load_cpp` across processes: checkouts share one build, a failed build is remembered, `DL2_NO_CPP` turns
the C++ kernels off. Each case runs in fresh processes, as a user's runs would."""
import os, shutil, subprocess, sys, textwrap
from pathlib import Path
import pytest
import dl2

pytestmark = pytest.mark.slow   # fresh processes that load or build the C++ kernel

LOAD = '''import warnings
warnings.simplefilter('always')
import dl2
from dl2.fast.batchnorm import running_bn_kernel
print(dl2.__file__)
k = running_bn_kernel()
print(None if k is None else k.__file__)'''

def run_python(code, path, **env):
    "Python run on `code` in a fresh process, in folder `path` (so that its `dl2` is imported) and with `env` added to the environment."
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(path), os.environ.get('PYTHONPATH', '')]), **env}
    r = subprocess.run([sys.executable, '-c', code], cwd=path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r

def fake_clang(folder):
    "A `CXX` that fails like Apple's clang does on `-fopenmp`, and logs each call to `calls.log` beside it."
    path = Path(folder)/'clang++'
    path.write_text(textwrap.dedent(f'''\
        #!/bin/sh
        echo "$@" >> {folder}/calls.log
        case " $* " in *" -dumpfullversion "*) echo 15.0.0; exit 0;; esac
        echo "clang: error: unsupported option '-fopenmp'" >&2; exit 1
        '''))
    path.chmod(0o755)
    return str(path)

def calls(folder):
    log = Path(folder)/'calls.log'
    return len(log.read_text().splitlines()) if log.exists() else 0

def test_checkouts_share_one_build(tmp_path):
    "Two copies of dl2 in different folders load one build of the kernel: the second compiles nothing (issue 23: every switch\
 between two clones recompiled, for one to three minutes)."
    copies = [tmp_path/name for name in ('clone', 'wheel')]
    for c in copies: shutil.copytree(Path(dl2.__file__).parent, c/'dl2', ignore=shutil.ignore_patterns('__pycache__'))
    first = run_python(LOAD, copies[0])
    assert first.stdout.split()[0] == str(copies[0]/'dl2'/'__init__.py')
    so = first.stdout.split()[-1]
    if so == 'None': pytest.skip(f'the kernel cannot be built here: {first.stderr}')
    built = Path(so).stat().st_mtime_ns
    second = run_python(LOAD, copies[1])
    assert second.stdout.split() == [str(copies[1]/'dl2'/'__init__.py'), so] and 'compiling' not in second.stderr, second.stderr
    assert Path(so).stat().st_mtime_ns == built   # not linked again

def test_failed_build_remembered(tmp_path):
    "A compiler that refuses `-fopenmp`: the first process warns once with the compiler's reason; the next one warns at once,\
 without running the compiler, and says how to try again."
    env = dict(CXX=fake_clang(tmp_path), TORCH_EXTENSIONS_DIR=str(tmp_path/'ext'))
    first = run_python(LOAD, Path(dl2.__file__).parent.parent, **env)
    n = calls(tmp_path)
    second = run_python(LOAD, Path(dl2.__file__).parent.parent, **env)
    for r in (first, second):
        assert r.stdout.split()[-1] == 'None'
        assert r.stderr.count('UserWarning: dl2: could not build') == 1 and "(clang: error: unsupported option '-fopenmp'" in r.stderr, r.stderr
    assert n > 0 and calls(tmp_path) == n
    assert 'compiling' in first.stderr and 'compiling' not in second.stderr
    assert 'this build failed before, delete' in second.stderr

def test_no_cpp(tmp_path):
    "`DL2_NO_CPP=1`: no compiler runs, no warning, and the layer takes the PyTorch route."
    code = LOAD + '''
import torch
from dl2.fast.batchnorm import running_bn_route
print(running_bn_route(torch.randn(2, 3), torch.zeros(3), torch.ones(3)))'''
    r = run_python(code, Path(dl2.__file__).parent.parent, DL2_NO_CPP='1', CXX=fake_clang(tmp_path), TORCH_EXTENSIONS_DIR=str(tmp_path/'ext'))
    assert r.stdout.split()[-2:] == ['None', 'torch'] and 'dl2:' not in r.stderr and calls(tmp_path) == 0, r.stderr
