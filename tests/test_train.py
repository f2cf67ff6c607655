"""End-to-end tests of the `dl2_train` command (`python -m dl2.train`): outputs, resuming, interruptions and hostile input.

Each command costs a few seconds of imports before its first step, so the tests that need a finished run share one (a copy of
it where they change it), and refusals that happen before training are checked in this process with `refused`, which sees
what the command would print; test_bad_option_from_the_command_line and test_refused_runs_leave_nothing check the whole
command's refusal (exit code, one line on stderr, no traceback, nothing written)."""
import csv, os, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path
import pytest
import torch
from dl2.train import main
from dl2.checkpoint import load_checkpoint

SMALL = ['--subset', '500', '--nfs', '8,16,32', '--bs', '64']

def run(*args, timeout=180, **kwargs):
    "Run the command with `args`; its output decoded as is (text mode would turn every \\r into \\n)."
    r = subprocess.run([sys.executable, '-m', 'dl2.train', *args], capture_output=True, timeout=timeout, **kwargs)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r

def start(*args):
    "The command with `args` started in the background, its output piped."
    return subprocess.Popen([sys.executable, '-m', 'dl2.train', *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def epochs_in(out): return [int(r['epoch']) for r in csv.DictReader(open(out/'metrics.csv'))]

def wait_for_epoch(out, n, timeout=120):
    "Wait until the checkpoint in `out` holds at least `n` finished epochs."
    end = time.time() + timeout
    while time.time() < end:
        try:
            if load_checkpoint(out/'checkpoint.pth')['epoch'] >= n: return
        except (OSError, ValueError): pass
        time.sleep(0.05)
    raise TimeoutError(f'no checkpoint of epoch {n} in {out}')
def metrics(out): return [{k: v for k, v in r.items() if k != 'time'} for r in csv.DictReader(open(out/'metrics.csv'))]

# what Python's default warning filters hide from a command's stderr
HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)

def refused(capsys, *argv):
    "`main(argv)` in this process: its exit code and the lines the command would print on stderr (the warnings it would show among them)."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try: code = main(list(argv))
        except SystemExit as e: code = e.code
    return code, capsys.readouterr().err.strip().splitlines() + [str(w.message) for w in caught if not issubclass(w.category, HIDDEN)]

def one_line(lines, msg):
    "Whether `lines` is a single line of error saying `msg`."
    return len(lines) == 1 and lines[0].startswith('dl2_train: error:') and msg in lines[0]

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "One finished one-epoch run, made once for the tests that read it: its folder and the command's result."
    out = tmp_path_factory.mktemp('finished')/'run'
    r = run(*SMALL, '--epochs', '1', '--out', str(out))
    assert r.returncode == 0, r.stderr
    return out, r

def copy_of(finished, tmp_path):
    "A copy of the finished run's folder in `tmp_path`, for a test that changes it."
    return Path(shutil.copytree(finished[0], tmp_path/'run', symlinks=True))

# the tests reading the finished run go to one xdist worker (`--dist loadgroup`), which makes it once
uses_finished = pytest.mark.xdist_group('finished_run')

@pytest.mark.slow
@uses_finished
def test_run_writes_outputs_and_resumes(finished, tmp_path):
    done, r = finished
    assert {'checkpoint.pth', 'metrics.csv', 'loss.png', 'lr.png'} <= {p.name for p in done.iterdir()}
    rows = list(csv.DictReader(open(done/'metrics.csv')))
    assert list(rows[0]) == ['epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'time']
    assert len(rows) == 1 and 0 <= float(rows[0]['valid_accuracy']) <= 1
    assert 'final validation accuracy' in r.stdout
    assert '\r' not in r.stdout and '\x1b' not in r.stdout   # plain lines when stdout is a pipe

    out = copy_of(finished, tmp_path)
    r = run('--epochs', '2', '--out', str(out), '--resume')   # the run's own settings come from its checkpoint
    assert r.returncode == 0, r.stderr
    assert 'after epoch 1' in r.stdout and 'stretched' in r.stdout
    assert epochs_in(out) == [0, 1]
    assert load_checkpoint(out/'checkpoint.pth')['epoch'] == 2

@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    "Ctrl-C after an epoch: a checkpoint with the run's settings; then --resume: the same metrics, epoch for epoch, as a run never interrupted."
    full, cut = tmp_path/'full', tmp_path/'cut'
    assert run(*SMALL, '--epochs', '3', '--out', str(full)).returncode == 0
    p = start(*SMALL, '--epochs', '3', '--out', str(cut))
    try:
        wait_for_epoch(cut, 1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130 and 'Traceback' not in err and 'continue with --resume' in err, err
    ckpt = load_checkpoint(cut/'checkpoint.pth')
    assert 1 <= ckpt['epoch'] < 3 and ckpt['extra']['lr'] > 0 and ckpt['extra']['args']['nfs'] == [8, 16, 32]
    assert epochs_in(cut)[:ckpt['epoch']] == list(range(ckpt['epoch']))
    r = run('--out', str(cut), '--resume')
    assert r.returncode == 0 and f"after epoch {ckpt['epoch']}" in r.stdout, r.stderr
    assert metrics(cut) == metrics(full)

@pytest.mark.slow
def test_sigterm_leaves_a_resumable_checkpoint(tmp_path):
    "SIGTERM (`kill`, a batch system's time limit) stops a run as Ctrl-C does in the test above."
    out = tmp_path/'run'
    p = start(*SMALL, '--epochs', '200', '--out', str(out))
    try:
        wait_for_epoch(out, 1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130 and 'Traceback' not in err, err
    ckpt = load_checkpoint(out/'checkpoint.pth')
    assert 1 <= ckpt['epoch'] < 200 and ckpt['extra']['lr'] > 0 and ckpt['extra']['args']['nfs'] == [8, 16, 32]
    assert epochs_in(out)[:ckpt['epoch']] == list(range(ckpt['epoch']))
    r = run('--out', str(out), '--resume', '--epochs', str(ckpt['epoch'] + 1))
    assert r.returncode == 0 and f"after epoch {ckpt['epoch']}" in r.stdout, r.stderr

@pytest.mark.slow
def test_signal_before_the_first_epoch_ends_resumes(tmp_path):
    "Interrupted during epoch 0: the checkpoint written at the start (epoch 0) resumes."
    out = tmp_path/'run'
    p = start('--subset', '5000', '--nfs', '8,16,32', '--bs', '16', '--epochs', '1', '--out', str(out))
    try:
        assert p.stdout.readline(), p.stderr.read()   # the header: training has started
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130 and 'holds 0 finished epoch' in err, err
    assert load_checkpoint(out/'checkpoint.pth')['epoch'] == 0

@pytest.mark.slow
def test_closed_output_pipe(tmp_path):
    "`dl2_train | head -1`: no traceback, a resumable checkpoint, exit code 141."
    out = tmp_path/'run'
    p = start(*SMALL, '--epochs', '50', '--out', str(out))
    try:
        assert p.stdout.readline()
        p.stdout.close()
        err = p.stderr.read(); p.wait(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 141 and 'Traceback' not in err and 'output was closed' in err, err
    assert load_checkpoint(out/'checkpoint.pth')['epoch'] >= 0

@pytest.mark.slow
@uses_finished
def test_out_folder_is_protected(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = (out/'checkpoint.pth').read_bytes()
    code, err = refused(capsys, *SMALL, '--epochs', '1', '--out', str(out))
    assert code == 2 and one_line(err, 'holds another run'), err
    assert (out/'checkpoint.pth').read_bytes() == before
    (out/'mine.txt').write_text('keep')
    r = run(*SMALL, '--epochs', '1', '--seed', '1', '--out', str(out), '--overwrite')
    assert r.returncode == 0 and (out/'mine.txt').read_text() == 'keep'
    assert load_checkpoint(out/'checkpoint.pth')['extra']['args']['seed'] == 1

@pytest.mark.slow
@uses_finished
def test_resume_refuses_other_settings(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    for args, msg in [(['--opt', 'sgd'], '--opt sgd differs'), (['--lr', '0.5'], '--lr 0.5 differs'), (['--nfs', '8,16'], '--nfs [8, 16] differs')]:
        code, err = refused(capsys, '--out', str(out), '--resume', *args)
        assert code == 2 and one_line(err, msg), err

@pytest.mark.parametrize('content, msg', [(b'', 'is not a dl2 checkpoint'), (b'garbage', 'is not a dl2 checkpoint'),
                                          ('torch', 'no \'dl2-checkpoint-2\' marker'), ('pickle', 'cannot be read safely')])
def test_bad_checkpoint_is_one_line(tmp_path, capsys, content, msg):
    out = tmp_path/'run'; out.mkdir()
    ckpt = out/'checkpoint.pth'
    if content == 'torch': torch.save({'model': {}}, ckpt)
    elif content == 'pickle': torch.save({'x': Path('.')}, ckpt)   # any class: refused by weights_only
    else: ckpt.write_bytes(content)
    code, err = refused(capsys, '--out', str(out), '--resume')
    assert code == 2 and one_line(err, msg) and str(ckpt) in err[0], err

def test_unwritable_out(tmp_path, capsys):
    (tmp_path/'file').write_text('x')
    code, err = refused(capsys, *SMALL, '--out', str(tmp_path/'file'))
    assert code == 2 and one_line(err, 'is a file'), err
    ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK): pytest.skip('running as root with permission override: a read-only folder is writable')
        code, err = refused(capsys, *SMALL, '--out', str(ro/'run'))
        assert code == 2 and one_line(err, 'not writable'), err
    finally: ro.chmod(0o700)

@pytest.mark.parametrize('args, msg', [
    (['--opt', 'adagrad'], "invalid choice: 'adagrad'"),
    (['--epochs', '0'], 'must be from 1'),
    (['--lr', 'fast'], "neither a number nor 'find'"),
    (['--lr', 'inf'], 'finite'),
    (['--label-smoothing', '1'], 'below 1'),
    (['--nfs', '8,99999'], 'from 1 to 4096'),
    (['--dataset', '/no/such/folder'], '/no/such/folder'),
    (['--resume'], 'no checkpoint at'),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, msg):
    "Exit code 2 and one line on stderr."
    code, err = refused(capsys, *args, '--out', str(tmp_path/'run'))
    assert code == 2 and one_line(err, msg), err

def test_full_disk_while_saving(tmp_path, monkeypatch, capsys):
    "A write that fails (a full disk) is a one-line error naming the file, exit code 1, and the last good checkpoint survives."
    import dl2.checkpoint as ck
    out = tmp_path/'run'
    real_save, calls = torch.save, []
    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 1: raise RuntimeError('[enforce fail at inline_container.cc] basic_ios::clear: iostream error')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(ck.torch, 'save', save)
    code = main(SMALL + ['--epochs', '2', '--out', str(out)])
    err = capsys.readouterr().err
    assert code == 1 and 'checkpoint.pth' in err and 'disk full' in err, err
    assert load_checkpoint(out/'checkpoint.pth')['epoch'] == 0
    assert not list(out.glob('.*.part'))

@pytest.mark.slow
def test_bad_option_from_the_command_line(tmp_path):
    "The whole command refusing an option: exit code 2, one line, no traceback."
    r = run('--norm', 'groupnorm', '--out', str(tmp_path/'run'))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr

# ---- issue 24: the output folder's lock, damaged and linked checkpoints, interruptions while starting

@pytest.mark.slow
def test_lock_leftovers_neither_hang_nor_block(tmp_path):
    "The folder itself is locked: a pipe or a folder where an old lock file used to be changes nothing (a pipe once hung forever)."
    for i, make in enumerate([os.mkfifo, os.mkdir]):
        out = tmp_path/f'run{i}'; out.mkdir()
        make(out/'.dl2_train.lock')
        r = run(*SMALL, '--epochs', '1', '--out', str(out), timeout=300)
        assert r.returncode == 0, r.stderr

@pytest.mark.slow
def test_a_busy_folder_stays_locked_without_a_lock_file(tmp_path, capsys):
    "Another run training in the folder refuses an --overwrite run; nothing in the folder is the lock, so nothing deleted in it lets one in."
    out = tmp_path/'run'
    p = start(*SMALL, '--epochs', '10000', '--out', str(out))   # still training when the second run starts, however slow the machine
    try:
        assert p.stdout.readline()
        code, err = refused(capsys, *SMALL, '--epochs', '1', '--out', str(out), '--overwrite')
        assert code == 2 and one_line(err, 'in use by another dl2_train'), err
        for f in out.iterdir():
            if f.name.startswith('.'): f.unlink()
        code, err = refused(capsys, *SMALL, '--epochs', '1', '--out', str(out), '--overwrite')
        assert code == 2 and one_line(err, 'in use by another dl2_train'), err
        assert (out/'checkpoint.pth').exists()
    finally: p.kill(); p.wait()

@pytest.mark.slow
@uses_finished
def test_resume_refuses_a_damaged_checkpoint_and_keeps_a_link(finished, tmp_path, capsys):
    out, elsewhere = copy_of(finished, tmp_path), tmp_path/'disk'
    elsewhere.mkdir(); (out/'checkpoint.pth').rename(elsewhere/'ck.pth'); (out/'checkpoint.pth').symlink_to(elsewhere/'ck.pth')
    r = run('--out', str(out), '--resume', '--epochs', '2')
    assert r.returncode == 0, r.stderr
    assert (out/'checkpoint.pth').is_symlink() and load_checkpoint(elsewhere/'ck.pth')['epoch'] == 2
    ck = torch.load(elsewhere/'ck.pth', weights_only=True)
    w = next(v for v in ck['model'].values() if v.is_floating_point())
    w.view(-1).view(torch.int32)[0] ^= 1   # one flipped bit in a weight
    torch.save(ck, elsewhere/'ck.pth')
    code, err = refused(capsys, '--out', str(out), '--resume', '--epochs', '3')
    assert code == 2 and one_line(err, 'is damaged'), err

@pytest.mark.slow
@pytest.mark.parametrize('args, msg', [(['--out', ''], 'an empty name'), (['--device', 'cuda'], 'no CUDA device')])
def test_refused_runs_leave_nothing(tmp_path, args, msg):
    if 'cuda' in args and torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []
