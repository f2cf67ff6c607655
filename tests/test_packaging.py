"""dl2 as users install it: `python -m build` makes an sdist and then, from that sdist alone, a wheel; the wheel,
installed (not editable) into a fresh venv, trains from a folder outside the repo."""
import configparser, csv, os, subprocess, sys, tarfile, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBES = ['dl2/csrc/dl2_probe.cpp', 'dl2/csrc/dl2_probe.h']   # C++ sources of the kind the kernels live in

def requirements():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']['requirements'].split()

@pytest.fixture(scope='module')
def dists(checkout):
    "The sdist and the wheel that `python -m build` (which builds the wheel from the sdist) makes of a clean copy of the repo."
    src = checkout('src')
    for p in PROBES: (src/p).parent.mkdir(exist_ok=True); (src/p).write_text('// packaging probe\n')
    out = src.parent/'dist'
    r = subprocess.run([sys.executable, '-m', 'build', '--outdir', str(out), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (sdist,), (wheel,) = out.glob('*.tar.gz'), out.glob('*.whl')
    return sdist, wheel

def test_sdist_can_rebuild_the_wheel(dists):
    names = {n.split('/', 1)[1] for n in tarfile.open(dists[0]).getnames() if '/' in n}
    assert {'settings.ini', 'setup.py', 'pyproject.toml', 'MANIFEST.in', 'LICENSE', 'README.md', *PROBES} <= names
    assert {f'dl2/{p.name}' for p in (ROOT/'dl2').glob('*.py')} <= names

def test_wheel_has_the_package_and_its_data(dists):
    with zipfile.ZipFile(dists[1]) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
        entry_points = z.read(next(n for n in names if n.endswith('.dist-info/entry_points.txt'))).decode()
    repo_csrc = {p.relative_to(ROOT).as_posix() for p in (ROOT/'dl2').glob('csrc/*') if p.suffix in ('.cpp', '.h')}
    assert {f'dl2/{p.name}' for p in (ROOT/'dl2').glob('*.py')} | set(PROBES) | repo_csrc <= names
    assert any(n.endswith('.dist-info/licenses/LICENSE') for n in names)
    assert [l.split(': ', 1)[1] for l in meta.splitlines() if l.startswith('Requires-Dist: ') and 'extra ==' not in l] == requirements()
    assert 'dl2_train = dl2.train:main' in entry_points

def fresh_venv(path):
    "A venv at `path` that reuses this interpreter's packages (PyTorch is GBs), behind its own site-packages."
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(path)], check=True)
    py = path/'bin'/'python'
    purelib = subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], capture_output=True, text=True, check=True).stdout.strip()
    # --system-site-packages reaches the base Python only; this interpreter's own venv, if any, comes by a plain
    # path entry, which leaves that venv's .pth files (its editable dl2 among them) unprocessed
    (Path(purelib)/'outer_env.pth').write_text(''.join(f'{p}\n' for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))
    return py

def test_wheel_installs_and_trains_outside_the_repo(dists, tmp_path):
    py = fresh_venv(tmp_path/'venv')
    # dl2 of the same version is visible from this environment (editable): --force-reinstall puts the wheel's in the
    # venv, --no-deps keeps the reused packages; `pip check` then says whether the wheel's requirements are met
    subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-deps', '--force-reinstall', str(dists[1])], check=True)
    check = subprocess.run([py, '-m', 'pip', 'check'], capture_output=True, text=True).stdout
    assert not [l for l in check.splitlines() if l.startswith('dl2 ')], check
    work = tmp_path/'elsewhere'; work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    where = subprocess.run([py, '-c', 'import dl2; print(dl2.__file__)'], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path/'venv'), where.stdout
    r = subprocess.run([tmp_path/'venv'/'bin'/'dl2_train', '--subset', '2000', '--epochs', '1', '--out', 'run'],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert {'checkpoint.pth', 'metrics.csv', 'loss.png', 'lr.png'} <= {p.name for p in (work/'run').iterdir()}
    assert len(list(csv.DictReader(open(work/'run'/'metrics.csv')))) == 1
