"`benchmarks/gpu_check.sh` runs end to end before its first GPU: the dry run on the CPU, every step once, tiny."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_dry_run(tmp_path):
    out = tmp_path/'report.md'
    r = subprocess.run(['bash', str(ROOT/'benchmarks'/'gpu_check.sh'), '--device', 'cpu', '--dry-run', '--out', str(out)],
                       capture_output=True, text=True, timeout=1500, env={**__import__('os').environ, 'PYTHON': sys.executable})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    report = out.read_text()
    assert 'every step passed' in report and report.count('## ') == 8, report[:2000]
    assert 'final validation accuracy' in report
