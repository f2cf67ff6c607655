"""tests/setup.sh on the Pythons users have: an externally managed system Python (PEP 668) gets a .venv; an active
virtualenv or conda env is used as it is; a Python without its venv package gets a one-line fix. PyTorch is stubbed
(a few GB to download otherwise): a package on PYTHONPATH with the version and metadata of the one this test runs with."""
import os, subprocess, sys, sysconfig
from importlib.metadata import version
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOW_ENV = 'import os, sys, dl2; print(sys.prefix); print(dl2.__file__); print(os.environ.get("VIRTUAL_ENV", ""))'

def externally_managed_python():
    "A Python >= 3.10 that refuses `pip install` outside an environment (Debian's, Ubuntu's, Homebrew's), with venv; or None."
    probe = ('import os, sys, sysconfig; print(sys.version_info >= (3, 10) and sys.prefix == sys.base_prefix'
             ' and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))')
    for py in ['/usr/bin/python3', '/opt/homebrew/bin/python3', '/usr/local/bin/python3']:
        if Path(py).exists() and subprocess.run([py, '-c', probe], capture_output=True, text=True).stdout.strip() == 'True': return py

SYSTEM_PY = externally_managed_python()

@pytest.fixture(scope='module')
def torch_stub(tmp_path_factory):
    "A folder for PYTHONPATH holding importable `torch` and `torchvision` that pip takes as installed."
    d = tmp_path_factory.mktemp('torch_stub')
    for name in ('torch', 'torchvision'):
        v = version(name).split('+')[0]
        (d/name).mkdir(); (d/name/'__init__.py').write_text(f'__version__ = {v!r}\n')
        info = d/f'{name}-{v}.dist-info'; info.mkdir()
        (info/'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {v}\n')
    return d

def setup_sh(repo, *cmd, **env):
    "Run `repo`'s tests/setup.sh with `cmd`, outside any Python environment except the ones `env` sets up."
    # PIP_CONSTRAINT: CI's floor pins are for its own Python; the system Python may be too new for their wheels
    drop = ('VIRTUAL_ENV', 'CONDA_PREFIX', 'CONDA_DEFAULT_ENV', 'PYTHONPATH', 'PYTHONHOME', 'PIP_CONSTRAINT')
    base = {k: v for k, v in os.environ.items() if k not in drop}
    # this interpreter's environment off PATH, so that no `python`/`pip` of it can stand in for the one setup.sh picks
    base['PATH'] = os.pathsep.join(p for p in base['PATH'].split(os.pathsep) if Path(p).resolve() != Path(sys.prefix, 'bin').resolve())
    return subprocess.run(['bash', 'tests/setup.sh', *cmd], cwd=repo, env={**base, **env}, capture_output=True, text=True, timeout=900)

def test_scripts_parse():
    for script in ['tests/setup.sh', 'tests/run.sh', '.ci/run', 'benchmarks/gpu_check.sh']: subprocess.run(['bash', '-n', ROOT/script], check=True)

@pytest.mark.slow
@pytest.mark.skipif(SYSTEM_PY is None, reason='no externally managed Python 3.10+ with venv at /usr/bin, /opt/homebrew/bin or /usr/local/bin')
def test_system_python_gets_a_venv_then_active_envs_are_used(checkout, torch_stub):
    repo = checkout('repo')
    r = setup_sh(repo, 'python', '-c', SHOW_ENV, PYTHON=SYSTEM_PY, PYTHONPATH=str(torch_stub))
    assert r.returncode == 0, r.stderr
    venv = repo/'.venv'
    prefix, dl2_file, virtual_env = r.stdout.split('\n')[:3]
    assert Path(prefix) == venv and Path(virtual_env) == venv
    assert Path(dl2_file) == repo/'dl2'/'__init__.py'   # editable: the repo's own code
    assert 'include-system-site-packages = true' in (venv/'pyvenv.cfg').read_text()   # the base "has" PyTorch: reused
    assert 'installing PyTorch' not in r.stderr

    # run again: the venv is kept, nothing is installed (offline works), and the command's exit code comes back
    made = (venv/'pyvenv.cfg').stat().st_mtime_ns
    r = setup_sh(repo, 'sh', '-c', 'command -v dl2_train; exit 7', PYTHON=SYSTEM_PY, PYTHONPATH=str(torch_stub), PIP_NO_INDEX='1')
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == str(venv/'bin'/'dl2_train')
    assert (venv/'pyvenv.cfg').stat().st_mtime_ns == made and 'creating .venv' not in r.stderr
    assert 'installing' not in r.stderr and 'dl2 and its requirements are installed' in r.stderr

    # an active virtualenv, then a conda env (not `base`): installed into, used, and no .venv of their own
    for env in [dict(VIRTUAL_ENV=str(venv)), dict(CONDA_PREFIX=str(venv), CONDA_DEFAULT_ENV='dl2')]:
        other = checkout('other')
        r = setup_sh(other, 'python', '-c', SHOW_ENV, PYTHONPATH=str(torch_stub), **env)
        assert r.returncode == 0, r.stderr
        prefix, dl2_file, virtual_env = r.stdout.split('\n')[:3]
        assert Path(prefix) == venv and Path(dl2_file) == other/'dl2'/'__init__.py' and not (other/'.venv').exists()
        assert virtual_env == ('' if 'CONDA_PREFIX' in env else str(venv))

@pytest.mark.slow
@pytest.mark.skipif(SYSTEM_PY is None, reason='no externally managed Python 3.10+ with venv at /usr/bin, /opt/homebrew/bin or /usr/local/bin')
def test_python_without_pytorch_gets_an_isolated_venv_and_pytorch(checkout, tmp_path):
    "Without PyTorch in the base Python, .venv sees none of its packages and setup installs PyTorch (here from an empty index)."
    repo = checkout('repo')
    r = setup_sh(repo, PYTHON=SYSTEM_PY, PIP_NO_INDEX='1', PIP_FIND_LINKS=str(tmp_path))
    assert r.returncode != 0
    assert 'include-system-site-packages = false' in (repo/'.venv'/'pyvenv.cfg').read_text()
    assert 'installing PyTorch' in r.stderr and 'installing dl2' not in r.stderr   # it stopped where PyTorch could not be had

@pytest.fixture
def no_venv_module(tmp_path):
    "A `python3` that cannot make venvs (Debian's without python3.X-venv); `sudo` and `apt-get` that log, and fail to install."
    bin = tmp_path/'bin'; bin.mkdir()
    (bin/'python3').write_text(f'#!/bin/sh\ncase "$*" in *ensurepip*) exit 1;; esac\nexec {sys.executable} "$@"\n')
    (bin/'sudo').write_text(f'#!/bin/sh\necho "sudo $*" >> {tmp_path}/calls\nexec "$@"\n')
    (bin/'apt-get').write_text(f'#!/bin/sh\necho "apt-get $*" >> {tmp_path}/calls\n[ "$1" = update ]\n')
    for f in bin.iterdir(): f.chmod(0o755)
    return bin

@pytest.mark.parametrize('env', [{}, dict(CONDA_PREFIX='/opt/conda', CONDA_DEFAULT_ENV='base')])
def test_missing_venv_package_is_installed_or_named(checkout, no_venv_module, env):
    "Outside an environment (conda's `base` counts as outside), setup tries apt, then names the package to install."
    repo = checkout('repo')
    r = setup_sh(repo, 'true', PYTHON=str(no_venv_module/'python3'), PATH=f'{no_venv_module}{os.pathsep}{os.environ["PATH"]}', **env)
    pkg = 'python{}.{}-venv'.format(*sys.version_info[:2])
    assert r.returncode == 1 and not (repo/'.venv').exists()
    assert (no_venv_module.parent/'calls').read_text().splitlines()[-1] == f'apt-get install -y -qq {pkg}'
    assert r.stderr.strip().splitlines()[-1] == (f'setup: could not install {pkg}: install it (sudo apt install {pkg}) '
                                                 'or activate a Python environment of your own, then run this again')

CPU_INDEX = 'https://download.pytorch.org/whl/cpu'

@pytest.fixture
def fake_machine(tmp_path):
    """Run setup.sh on a pretend machine, offline, in seconds: an active environment whose `python` has no PyTorch, logs
    each `pip` call and reaches PyTorch's CPU index when REACHABLE=1; `uname`, `nvidia-smi` (a GPU when GPU=1, else a
    missing driver) and a failing `apt-get` on PATH. Returns a function giving setup.sh's result and its pip calls."""
    env, bin = tmp_path/'env', tmp_path/'bin'
    (env/'bin').mkdir(parents=True); bin.mkdir()
    log = tmp_path/'pip.log'
    scripts = {
        env/'bin'/'python': f'''case "$*" in
            *"import torch, torchvision"*) exit 1;;
            *urlopen*) [ "$3" = {CPU_INDEX}/torch/ ] && [ "$REACHABLE" = 1 ];;
            "-m pip "*) shift 2; echo "pip $*" >> {log};;
            *) exit 1;;   # the "installed?" check: not yet
            esac''',
        bin/'uname': 'echo "${FAKE_OS:-Linux}"',
        bin/'nvidia-smi': '''[ "$GPU" = 1 ] || { echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9; }
            echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"''',
        bin/'apt-get': 'exit 1',
    }
    for path, body in scripts.items(): path.write_text('#!/bin/sh\n' + body + '\n'); path.chmod(0o755)
    def run(**env_vars):
        if log.exists(): log.unlink()
        r = setup_sh(ROOT, 'true', VIRTUAL_ENV=str(env), PATH=f'{bin}{os.pathsep}{os.environ["PATH"]}', **env_vars)
        return r, log.read_text().splitlines() if log.exists() else []
    return run

DEFAULT, CPU = 'pip install torch torchvision', f'pip install torch torchvision --extra-index-url {CPU_INDEX}'

@pytest.mark.parametrize('os_name, gpu, choice, reachable, expected, says', [
    ('Linux', '0', '', '1', CPU, "PyTorch's CPU build"),    # a laptop without an NVIDIA GPU: CPU wheels
    ('Linux', '1', '', '1', DEFAULT, 'PyTorch with CUDA'),     # a GPU machine: PyPI's CUDA build
    ('Linux', '0', '', '0', DEFAULT, 'cannot reach'),       # the CPU index cannot be reached: PyPI's default
    ('Linux', '0', 'cuda', '1', DEFAULT, 'PyTorch with CUDA'), # chosen either way with DL2_TORCH
    ('Linux', '1', 'cpu', '1', CPU, "PyTorch's CPU build"),
    ('Darwin', '0', '', '1', DEFAULT, '0.2 GB'),           # macOS: PyPI's wheels are CPU/MPS builds already
])
def test_pytorch_build_choice(fake_machine, os_name, gpu, choice, reachable, expected, says):
    r, pip = fake_machine(FAKE_OS=os_name, GPU=gpu, DL2_TORCH=choice, REACHABLE=reachable)
    assert r.returncode == 0, r.stderr
    assert pip == [expected, 'pip install -q -e .'], r.stderr
    assert says in r.stderr

def test_pytorch_build_choice_is_checked(fake_machine):
    r, pip = fake_machine(DL2_TORCH='gpu', REACHABLE='1')
    assert r.returncode != 0 and pip == []
    assert 'DL2_TORCH=gpu: use cpu, cuda or auto' in r.stderr
