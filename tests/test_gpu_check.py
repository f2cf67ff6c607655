"""`benchmarks/gpu_check.sh` runs end to end before its first GPU: the dry run on the CPU, every step once, tiny, in the
environment running the tests, which the script finds through tests/setup.sh as the README's other commands do."""
import os, subprocess, sys
from pathlib import Path
import pytest
from installed import installed_here

pytestmark = pytest.mark.slow   # the GPU check's dry run: every benchmark and a training run

ROOT = Path(__file__).resolve().parent.parent

# elsewhere (dl2 installed from another checkout, or not at all) gpu_check.sh would install dl2 into this environment
@pytest.mark.skipif(not installed_here(dev=True), reason='dl2 and the dev tools are not installed here from this checkout')
def test_dry_run(tmp_path):
    out = tmp_path/'report.md'
    # the running environment, active, as tests/run.sh leaves it
    env = {**os.environ, 'VIRTUAL_ENV': sys.prefix, 'PATH': f'{Path(sys.prefix, "bin")}{os.pathsep}{os.environ["PATH"]}'}
    r = subprocess.run(['bash', str(ROOT/'benchmarks'/'gpu_check.sh'), '--device', 'cpu', '--dry-run', '--out', str(out)],
                       capture_output=True, text=True, timeout=1500, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert 'dl2 and its requirements (with the dev tools) are installed' in r.stderr, r.stderr   # found, not installed
    report = out.read_text()
    assert 'every step passed' in report and report.count('## ') == 8, report[:2000]
    assert 'final validation accuracy' in report
