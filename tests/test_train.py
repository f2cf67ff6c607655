"End-to-end tests of the `dl2_train` command (`python -m dl2.train`) on a small subset of Fashion-MNIST."
import csv, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from dl2.train import main

SMALL = ['--subset', '500', '--nfs', '8,16,32', '--bs', '64']

def run(*args, timeout=120):
    "Run the command with `args`; its output decoded as is (text mode would turn every \\r into \\n)."
    r = subprocess.run([sys.executable, '-m', 'dl2.train', *args], capture_output=True, timeout=timeout)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r

def epochs_in(out): return [int(r['epoch']) for r in csv.DictReader(open(out/'metrics.csv'))]

def test_run_writes_outputs_and_resumes(tmp_path):
    out = tmp_path/'run'
    r = run(*SMALL, '--epochs', '1', '--out', str(out))
    assert r.returncode == 0, r.stderr
    assert {'checkpoint.pth', 'metrics.csv', 'loss.png', 'lr.png'} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader(open(out/'metrics.csv')))
    assert list(rows[0]) == ['epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'time']
    assert len(rows) == 1 and 0 <= float(rows[0]['valid_accuracy']) <= 1
    assert 'final validation accuracy' in r.stdout
    assert '\r' not in r.stdout and '\x1b' not in r.stdout   # plain lines when stdout is a pipe

    r = run(*SMALL, '--epochs', '2', '--out', str(out), '--resume')
    assert r.returncode == 0, r.stderr
    assert 'after epoch 1' in r.stdout
    assert epochs_in(out) == [0, 1]
    assert torch.load(out/'checkpoint.pth', weights_only=False)['epoch'] == 2

def test_sigint_saves_checkpoint(tmp_path):
    out = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-m', 'dl2.train', *SMALL, '--epochs', '200', '--out', str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the metrics header is printed at begin_fit: training has started once it and one epoch row are out
        for _ in range(2): assert p.stdout.readline(), p.stderr.read()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130, err
    assert 'Traceback' not in err and 'checkpoint saved' in err
    ckpt = torch.load(out/'checkpoint.pth', weights_only=False)
    assert 1 <= ckpt['epoch'] < 200
    assert epochs_in(out) == list(range(ckpt['epoch']))

@pytest.mark.parametrize('args, msg', [
    (['--opt', 'adagrad'], "invalid choice: 'adagrad'"),
    (['--epochs', '0'], 'must be > 0'),
    (['--lr', 'fast'], "neither a number nor 'find'"),
    (['--dataset', '/no/such/folder'], '/no/such/folder'),
    (['--resume'], 'no checkpoint at'),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, msg):
    "In-process (the subprocess tests above cover the command itself): exit code 2 and one line on stderr."
    try: code = main(args + ['--out', str(tmp_path/'run')])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('dl2_train: error:') and msg in lines[0], err

def test_bad_option_from_the_command_line(tmp_path):
    r = run('--norm', 'groupnorm', '--out', str(tmp_path/'run'))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
