"""dl2 as users install it: `python -m build` makes an sdist and then, from that sdist alone, a wheel; the wheel,
installed (not editable) into a fresh venv, trains from a folder outside the repo. Its metadata all comes from settings.ini."""
import configparser, csv, os, re, subprocess, sys, tarfile, zipfile
from email.parser import Parser
from pathlib import Path
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROBES = ['dl2/fast/csrc/dl2_probe.cpp', 'dl2/fast/csrc/dl2_probe.h']   # C++ sources of the kind the kernels live in
CFG = configparser.ConfigParser(delimiters=['=']); CFG.read(ROOT/'settings.ini'); CFG = CFG['DEFAULT']
NAME = CFG['lib_name']

def requirements(key='requirements'): return [Requirement(r) for r in CFG[key].split()]
def modules(): return {p.relative_to(ROOT).as_posix() for p in (ROOT/'dl2').rglob('*.py')}
def canonical(name): return re.sub(r'[-_.]+', '-', name).lower()   # how PyPI and pip compare names (PEP 503)

def test_distribution_name_is_ours():
    "`dl2` on PyPI is an unrelated package: ours is published, installed and required under another name, importing as dl2."
    assert canonical(NAME) != 'dl2' and CFG['lib_path'] == 'dl2'
    project = dict(re.findall(r'^([\w-]+)\s*=\s*"(.*)"', (ROOT/'pyproject.toml').read_text(), re.M))   # nbdev_export writes these two
    assert project['name'] == NAME and project['requires-python'] == '>=' + CFG['min_python']

def test_readme_names_and_links_as_settings_do():
    readme = (ROOT/'README.md').read_text()
    assert f'`{NAME}`' in readme and 'example.' not in readme
    links = {l.rstrip('.,;:') for l in re.findall(r'https?://[\w.-]*github\.(?:io|com)[^\s`)>]*', readme)}
    assert links and links <= {CFG['doc_host'] + CFG['doc_baseurl'], CFG['git_url']}, links

# the tests of the built files go to one xdist worker (`--dist loadgroup`), which builds them once
one_build = pytest.mark.xdist_group('dists')

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

@pytest.mark.slow
@one_build
def test_sdist_can_rebuild_the_wheel(dists):
    names = {n.split('/', 1)[1] for n in tarfile.open(dists[0]).getnames() if '/' in n}
    assert {'settings.ini', 'setup.py', 'pyproject.toml', 'MANIFEST.in', 'LICENSE', 'README.md', *PROBES} <= names
    assert modules() <= names

@pytest.mark.slow
@one_build
def test_wheel_has_the_package_and_its_data(dists):
    with zipfile.ZipFile(dists[1]) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith('.dist-info/entry_points.txt'))).decode()
    repo_csrc = {p.relative_to(ROOT).as_posix() for p in (ROOT/'dl2').glob('fast/csrc/*') if p.suffix in ('.cpp', '.h')}
    assert repo_csrc and modules() | set(PROBES) | repo_csrc <= names
    assert any(n.endswith('.dist-info/licenses/LICENSE') for n in names)
    assert f"dl2_train = {CFG['console_scripts'].split('=')[1]}" in entry_points   # settings.ini's console script

@pytest.mark.slow
@one_build
def test_wheel_metadata_comes_from_settings(dists):
    with zipfile.ZipFile(dists[1]) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())
    assert dists[1].name.startswith(NAME.replace('-', '_') + '-') and meta['Name'] == NAME and meta['Version'] == CFG['version']
    reqs = [Requirement(r) for r in meta.get_all('Requires-Dist')]
    extra = lambda name: [Requirement(str(r).split(';')[0]) for r in reqs if r.marker and r.marker.evaluate({'extra': name})]
    assert [r for r in reqs if not r.marker] == requirements()
    assert extra('test') == requirements('test_requirements') and extra('dev') == requirements('dev_requirements') + extra('test')
    assert meta['Requires-Python'] == '>=' + CFG['min_python']
    docs = CFG['doc_host'] + CFG['doc_baseurl']
    assert docs == f"https://{CFG['user']}.github.io/{CFG['repo']}" and meta['Home-page'] == docs
    assert set(meta.get_all('Project-URL')) == {f'Documentation, {docs}', f"Source, {CFG['git_url']}", f"Issues, {CFG['git_url']}/issues"}
    classifiers = meta.get_all('Classifier')
    assert [c for c in classifiers if c.startswith('Development Status :: ')] == [f"Development Status :: {CFG['status']} - Alpha"]
    assert f"Programming Language :: Python :: {CFG['min_python']}" in classifiers
    assert 'example.' not in str(meta)   # no placeholder addresses

def fresh_venv(path):
    "A venv at `path` that reuses this interpreter's packages (PyTorch is GBs), behind its own site-packages."
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(path)], check=True)
    py = path/'bin'/'python'
    purelib = subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], capture_output=True, text=True, check=True).stdout.strip()
    # --system-site-packages reaches the base Python only; this interpreter's own venv, if any, comes by a plain
    # path entry, which leaves that venv's .pth files (its editable dl2 among them) unprocessed
    (Path(purelib)/'outer_env.pth').write_text(''.join(f'{p}\n' for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))
    return py

@pytest.mark.slow
@one_build
def test_wheel_installs_and_trains_outside_the_repo(dists, tmp_path):
    py = fresh_venv(tmp_path/'venv')
    # dl2 of the same version is visible from this environment (editable): --force-reinstall puts the wheel's in the
    # venv, --no-deps keeps the reused packages; `pip check` then says whether the wheel's requirements are met
    subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-deps', '--force-reinstall', str(dists[1])], check=True)
    check = subprocess.run([py, '-m', 'pip', 'check'], capture_output=True, text=True).stdout
    assert not [l for l in check.splitlines() if canonical(l.split()[0]) == canonical(NAME)], check
    work = tmp_path/'elsewhere'; work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    where = subprocess.run([py, '-c', 'import dl2; print(dl2.__file__)'], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path/'venv'), where.stdout
    r = subprocess.run([tmp_path/'venv'/'bin'/'dl2_train', '--subset', '500', '--nfs', '8,16', '--epochs', '1', '--out', 'run'],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert {'checkpoint.pth', 'metrics.csv', 'loss.png', 'lr.png'} <= {p.name for p in (work/'run').iterdir()}
    assert len(list(csv.DictReader(open(work/'run'/'metrics.csv')))) == 1
