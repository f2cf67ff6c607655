"Fixtures shared by the test modules."
import contextlib, os, shutil, signal, subprocess, sys
from pathlib import Path
import pytest
import torch
from hypothesis import settings
# Every run draws the same examples, so a red CI run is the one a laptop reproduces; HYPOTHESIS_PROFILE=explore draws new
# ones (run it with larger max_examples after changing a tolerance).
settings.register_profile('fixed', derandomize=True, print_blob=True)
settings.register_profile('explore', derandomize=False, print_blob=True)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'fixed'))
sys.path.insert(0, str(Path(__file__).parent/'tools'))   # the maintenance scripts, importable by the tests of them
import torch.utils.cpp_extension
from dl2.fast.kernels import load_cpp, triton_interpreting, use_triton_interpreter
# Without a GPU, dl2's Triton kernels are tested in Triton's interpreter (tests/test_triton.py). Triton reads that choice
# as it is imported, and importing torch.distributed (dl2.distributed) already imports it: so the choice is made here,
# before any test module is collected.
if not (torch.cuda.is_available() or triton_interpreting()): use_triton_interpreter()

# Tests press Ctrl-C on child processes. A shell starting a command in the background (`cmd &`, nohup) makes it ignore
# SIGINT, and its children would inherit that; the handler set here makes children start with Python's default instead.
signal.signal(signal.SIGINT, signal.default_int_handler)

@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    "A machine where building C++ extensions fails: dl2's kernel caches are emptied before and after; builds (and the failure\
 dl2 remembers) go to a temporary folder."
    def fail(*args, **kwargs): raise RuntimeError('Error building extension: c++ not found')
    monkeypatch.setattr(torch.utils.cpp_extension, 'load', fail)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    load_cpp.cache_clear()
    yield
    load_cpp.cache_clear()

@pytest.fixture(scope='session')
def checkout(tmp_path_factory):
    "A function making a fresh copy of the repo, as a clean clone would have it (without envs, builds, caches), in a new temporary folder."
    root = Path(__file__).resolve().parent.parent
    ls = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root, capture_output=True, check=True)
    files = [f for f in ls.stdout.decode().split('\0') if f and (root/f).is_file()]   # tracked files deleted in the work tree are left out
    def make(name='checkout'):
        dest = tmp_path_factory.mktemp(name)
        for f in files:
            (dest/f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root/f, dest/f)
        return dest
    return make

def _host_read(*args, **kwargs): raise AssertionError('a training step read a value from a tensor on the host')

@pytest.fixture
def no_host_reads(monkeypatch):
    "A context manager inside which reading a tensor's value on the host fails; with `cuda_syncs=True` on a GPU, so does any\
 CUDA call that waits for the device."
    @contextlib.contextmanager
    def block(cuda_syncs=False):
        with monkeypatch.context() as m:
            for name in ('item', 'tolist', '__float__', '__int__', '__bool__', '__index__'): m.setattr(torch.Tensor, name, _host_read)
            cuda_syncs = cuda_syncs and torch.cuda.is_available()
            if cuda_syncs: torch.cuda.set_sync_debug_mode('error')
            try: yield
            finally:
                if cuda_syncs: torch.cuda.set_sync_debug_mode('default')
    return block
