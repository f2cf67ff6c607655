"""Everything dl2 wants to know about a GPU, in one go: the GPU tests, every benchmark on the device, and the
default `dl2_train` run, written up as one markdown report.

    bash benchmarks/gpu_check.sh                          # on a machine with a CUDA GPU: about 6-7 minutes on an H200
    bash benchmarks/gpu_check.sh --device cpu --dry-run   # each step once, tiny, on the CPU: proves the script runs
    bash benchmarks/gpu_check.sh --out report.md          # where the report goes (default: benchmarks/results/gpu_report.md)

Each step runs in its own process with a time limit, so one failing or slow step is reported and the others still run.
"""
import argparse, os, platform, re, shlex, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

def steps(device, dry, tmp):
    "`(title, command, time limit in s)` of every step, for `device`; tiny versions when `dry`."
    b = lambda name, *args: [PY, str(ROOT/'benchmarks'/name), *args]
    if dry:
        return [
            ('GPU tests (Triton kernels, batch norm, fused optimizers)', [PY, '-m', 'pytest', '-q', '-x', 'tests/test_triton.py', '-k', 'lamb_steps or rbn'], 300),
            ('RunningBatchNorm vs BatchNorm2d', b('bench_batchnorm.py', '--device', device, '--reps', '1'), 300),
            ('Triton kernels vs cuDNN, PyTorch, torch.compile, fused AdamW', b('bench_triton.py', '--device', device, '--dry-run'), 300),
            ('Optimizers vs AdamW', b('bench_optimizers.py', '--device', device, '--budget', '0.2'), 300),
            ('LSUV', b('bench_lsuv.py', '--device', device, '--reps', '1'), 300),
            ('Batch augmentation', b('bench_augmentation.py', '--device', device, '--reps', '1', '--bs', '4', '--size', '32'), 300),
            ('Learner overhead vs a plain loop', b('bench_learner.py', '--device', device, '--batches', '2', '--repeats', '1', '--bs', '64'), 300),
            ('dl2_train (default run)', [PY, '-m', 'dl2.train', '--device', device, '--subset', '500', '--epochs', '1', '--out', str(tmp/'run')], 300),
        ]
    return [
        ('GPU tests (Triton kernels, batch norm, fused optimizers)',
         [PY, '-m', 'pytest', '-q', 'tests/test_triton.py', 'tests/test_batchnorm.py', 'tests/test_fused_optimizers.py'], 150),
        ('RunningBatchNorm vs BatchNorm2d', b('bench_batchnorm.py', '--device', device, '--reps', '30'), 60),
        ('Triton kernels vs cuDNN, PyTorch, torch.compile, fused AdamW', b('bench_triton.py', '--device', device, '--reps', '50'), 120),
        ('Optimizers vs AdamW', b('bench_optimizers.py', '--device', device, '--budget', '8'), 60),
        ('LSUV', b('bench_lsuv.py', '--device', device, '--reps', '3'), 40),
        ('Batch augmentation', b('bench_augmentation.py', '--device', device, '--reps', '5', '--bs', '256'), 40),
        ('Learner overhead vs a plain loop', b('bench_learner.py', '--device', device, '--batches', '100', '--repeats', '3'), 60),
        ('dl2_train (default run)', [PY, '-m', 'dl2.train', '--device', device, '--out', str(tmp/'run')], 120),
    ]

def versions():
    "Lines describing the software and the accelerator."
    import torch
    lines = [f'- Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})']
    try:
        import triton
        lines.append(f'- Triton {triton.__version__}')
    except Exception as e: lines.append(f'- Triton: not importable ({type(e).__name__})')
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f'- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}')
        try:
            smi = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], capture_output=True, text=True, timeout=30)
            lines.append(f'- driver {smi.stdout.strip()}')
        except (OSError, subprocess.SubprocessError): lines.append('- driver: nvidia-smi not available')
    else: lines.append(f'- no CUDA GPU; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores')
    return lines

def run_step(cmd, limit):
    "Run `cmd` from the repository root; its exit code (or 'timeout'), seconds taken and output."
    start = time.time()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'PYTHONUNBUFFERED': '1'}
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        return r.returncode, time.time() - start, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'').decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
        return 'timeout', time.time() - start, out

def summary(title, out):
    "The lines of a step's output worth putting at the top of its section."
    if title.startswith('dl2_train'): return [l for l in out.splitlines() if 'final validation accuracy' in l or 'error' in l.lower()]
    if title.startswith('GPU tests'): return [l for l in out.splitlines() if re.search(r'\d+ (passed|failed|skipped)', l)]
    return []

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--dry-run', action='store_true', help='each step once, tiny (use with --device cpu where no GPU is)')
    p.add_argument('--out', type=Path, default=ROOT/'benchmarks'/'results'/'gpu_report.md')
    a = p.parse_args()
    if a.device == 'cuda':
        import torch
        if not torch.cuda.is_available(): p.error('no CUDA GPU here; use --device cpu --dry-run to check the script')
    tmp = Path(tempfile.mkdtemp(prefix='dl2_gpu_check_'))
    report = [f"# dl2 GPU check ({'dry run, ' if a.dry_run else ''}{a.device}, {time.strftime('%Y-%m-%d %H:%M')})", '', *versions(), '']
    failed, total = [], time.time()
    for title, cmd, limit in steps(a.device, a.dry_run, tmp):
        print(f'== {title}: {shlex.join(cmd)}', flush=True)
        code, secs, out = run_step(cmd, limit)
        print(out[-3000:], flush=True)
        status = 'ok' if code == 0 else f'FAILED ({code})'
        if code != 0: failed.append(title)
        report += [f'## {title}', '', f'`{shlex.join(c.replace(str(ROOT) + "/", "") for c in cmd)}`: {status} in {secs:.0f} s', '',
                   *[f'**{l.strip()}**' for l in summary(title, out)], '', '```', out.strip()[-6000:], '```', '']
    report.insert(3, f'- total {time.time() - total:.0f} s; ' + (f'failed: {", ".join(failed)}' if failed else 'every step passed'))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text('\n'.join(report) + '\n')
    print(f'report: {a.out}')
    sys.exit(1 if failed else 0)

if __name__ == '__main__': main()
