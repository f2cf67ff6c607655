"""Data-parallel training on two CPU processes (Gloo): the same training as one process with twice the batch, checkpoints
that resume on one process or two, and `dl2_train --nproc 2` end to end, stopped by Ctrl-C or by a process killed."""
import csv, os, signal, subprocess, sys, time
from functools import partial
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from dl2.batchnorm import conv_rbn
from dl2.checkpoint import CheckpointCallback, ResumeCallback, load_checkpoint
from dl2.cnn import get_cnn_model, init_cnn
from dl2.data import DataBunch, TensorDataLoader, accuracy
from dl2.distributed import DistributedCallback, distributed, launch, rank, shard_loader
from dl2.fast.batchnorm import fast_batchnorm
from dl2.learner import Callback, CancelTrainException, Learner, AvgStatsCallback
from dl2.optimizers import adam_opt
from dl2.schedules import ParamScheduler, Recorder, one_cycle

pytestmark = pytest.mark.slow   # several processes, each importing dl2, training

SEED, EPOCHS, STEPS = 5, 2, 10   # 20 steps of a global batch of 16: 8 per process on two

def toy_data(n, seed):
    "Images whose class is the quadrant holding a bright blob."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.5
    for i, c in enumerate(y.tolist()): x[i, 0, 6 * (c // 2):6 * (c // 2) + 6, 6 * (c % 2):6 * (c % 2) + 6] += 1.5
    return x, y

def make_learner(bs=16):
    "The same learner on every process: a `RunningBatchNorm` CNN (the C++ kernel's route), Adam, a one-cycle schedule."
    (xt, yt), (xv, yv) = toy_data(bs * STEPS, 0), toy_data(50, 1)   # 50: the processes' validation shares differ in size
    data = DataBunch(TensorDataLoader(xt, yt, bs, shuffle=True), TensorDataLoader(xv, yv, 2 * bs), c_out=4, c_in=1)
    torch.manual_seed(0)
    model = fast_batchnorm(get_cnn_model(data, [8, 16], conv_rbn)).to(memory_format=torch.channels_last)
    init_cnn(model)
    return Learner(model, data, F.cross_entropy, opt_func=adam_opt(), lr=3e-3,
                   cb_funcs=[partial(AvgStatsCallback, accuracy), Recorder, partial(ParamScheduler, 'lr', one_cycle(3e-3))])

class EpochOrder(Callback):
    "One process reading its data in the order `DistributedCallback` gives a group: `shard_loader` of all, set each epoch."
    def begin_fit(self): self.data.train_dl = shard_loader(self.data.train_dl, 0, 1, SEED)
    def begin_epoch(self): self.data.train_dl.sampler.set_epoch(self.epoch)

class StopAfter(Callback):
    "Stop a run planned for more epochs after `n`, as Ctrl-C would (after the checkpoint)."
    _order = 30
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise CancelTrainException()

def two_processes(out):
    "Run by each of two processes: EPOCHS epochs of a run of EPOCHS+1, then the run resumed from its checkpoint; states saved."
    out = Path(out)
    with distributed('cpu'):
        learn = make_learner()
        learn.fit(EPOCHS + 1, cbs=[DistributedCallback(seed=SEED), CheckpointCallback(out/'two.pth'), StopAfter(EPOCHS)])
        torch.save(learn.model.state_dict(), out/f'two_rank{rank()}.pt')
        torch.distributed.barrier()   # rank 0 has written the checkpoint
        learn = make_learner()
        ckpt = learn.load(out/'two.pth')
        learn.fit(EPOCHS + 1, cbs=[DistributedCallback(seed=SEED), ResumeCallback(ckpt['epoch'], ckpt['logs'])])
        torch.save(learn.model.state_dict(), out/f'resumed_rank{rank()}.pt')
    return 0

def assert_states_equal(a, b, what):
    "Weights and RunningBatchNorm statistics (means, vars, count, batch) equal to 1e-5."
    assert list(a) == list(b), what
    for k in a: torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-5, msg=lambda m: f'{what}, {k}: {m}')

def saved(path): return torch.load(path, weights_only=True)

METRICS = ('train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy')

def test_two_processes_train_as_one(tmp_path):
    "2 processes with batches of 8 = 1 process with batches of 16 after 20 steps (weights, statistics, metrics, per-step\
 losses); the checkpoint resumes on 1 process and on 2, each ending where the uninterrupted process does."
    assert launch(two_processes, 2, str(tmp_path)) == 0
    one = make_learner()
    one.fit(EPOCHS + 1, cbs=[EpochOrder(), StopAfter(EPOCHS)])
    ckpt = load_checkpoint(tmp_path/'two.pth')
    assert ckpt['epoch'] == EPOCHS and not any(k.startswith('module.') for k in ckpt['model'])
    assert int(ckpt['model']['0.2.batch']) == 16 * STEPS * EPOCHS   # every process's samples counted
    assert_states_equal(ckpt['model'], one.model.state_dict(), 'checkpoint')
    for r in (0, 1): assert_states_equal(saved(tmp_path/f'two_rank{r}.pt'), one.model.state_dict(), f'rank {r}')
    for ours, theirs in zip(ckpt['logs']['history'], one.avg_stats.history, strict=True):
        for k in METRICS: assert ours[k] == pytest.approx(theirs[k], rel=1e-5, abs=1e-6), k
    torch.testing.assert_close(torch.tensor(ckpt['logs']['losses']), torch.stack(one.recorder.losses), rtol=1e-5, atol=1e-6)

    full = make_learner()
    full.fit(EPOCHS + 1, cbs=EpochOrder())
    resumed = make_learner()
    resumed.load(tmp_path/'two.pth')
    resumed.fit(EPOCHS + 1, cbs=[EpochOrder(), ResumeCallback(ckpt['epoch'], ckpt['logs'])])
    assert_states_equal(resumed.model.state_dict(), full.model.state_dict(), 'resumed on 1 process')
    for r in (0, 1): assert_states_equal(saved(tmp_path/f'resumed_rank{r}.pt'), full.model.state_dict(), f'resumed on 2, rank {r}')
    assert [h['epoch'] for h in resumed.avg_stats.history] == list(range(EPOCHS + 1))

# ---- dl2_train --nproc 2

SMALL = ['--subset', '1000', '--nfs', '8,16', '--bs', '64']

def cli(*args):
    "`dl2_train` with `args`, started in the background, output piped."
    return subprocess.Popen([sys.executable, '-m', 'dl2.train', *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def finish(p, timeout=600):
    "Wait for `p`; its stdout and stderr (it is killed if it runs past `timeout`)."
    try: return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None: p.kill(); p.wait()

def wait_for_epoch(out, n, p, timeout=600):
    "Wait until the checkpoint in `out` holds `n` finished epochs (failing at once if `p` exits first)."
    end = time.time() + timeout
    while time.time() < end:
        assert p.poll() is None, finish(p)[1]
        try:
            if load_checkpoint(out/'checkpoint.pth')['epoch'] >= n: return
        except (OSError, ValueError): pass
        time.sleep(0.1)
    raise TimeoutError(f'no checkpoint of epoch {n} in {out}')

def workers(pid):
    "The pids of the processes `launch` started under `pid`, in rank order."
    kids = [int(k) for t in os.listdir(f'/proc/{pid}/task') for k in open(f'/proc/{pid}/task/{t}/children').read().split()]
    return [k for k in kids if b'resource_tracker' not in open(f'/proc/{k}/cmdline', 'rb').read()]

def alive(pid):
    try: os.kill(pid, 0); return True
    except ProcessLookupError: return False

def test_nproc_end_to_end(tmp_path):
    "Two processes, one epoch: exit code 0, each line printed once, the files written by rank 0 alone; it resumes on one process."
    out = tmp_path/'run'
    stdout, err = finish(p := cli('--nproc', '2', *SMALL, '--epochs', '1', '--out', str(out)))
    assert p.returncode == 0 and 'Traceback' not in err, err
    lines = stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ['epoch', 'train_loss'] and lines[2].startswith('final validation accuracy'), stdout
    assert sorted(f.name for f in out.iterdir()) == ['checkpoint.pth', 'loss.png', 'lr.png', 'metrics.csv']
    assert [r['epoch'] for r in csv.DictReader(open(out/'metrics.csv'))] == ['0']
    ckpt = load_checkpoint(out/'checkpoint.pth')
    assert ckpt['epoch'] == 1 and not any(k.startswith('module.') for k in ckpt['model'])
    stdout, err = finish(p := cli('--out', str(out), '--resume', '--epochs', '2'))
    assert p.returncode == 0 and 'after epoch 1' in stdout, err
    assert [r['epoch'] for r in csv.DictReader(open(out/'metrics.csv'))] == ['0', '1']

def long_run(tmp_path):
    "A 100-epoch `--nproc 2` run, once its first epoch is saved: its output folder, launcher process and worker pids."
    out = tmp_path/'run'
    p = cli('--nproc', '2', *SMALL, '--epochs', '100', '--out', str(out))
    wait_for_epoch(out, 1, p)
    return out, p, workers(p.pid)

def test_ctrl_c_stops_every_process(tmp_path):
    "Ctrl-C to the launcher: every process stops, one message, exit code 130, a checkpoint that resumes."
    out, p, pids = long_run(tmp_path)
    p.send_signal(signal.SIGINT)
    stdout, err = finish(p, 120)
    assert p.returncode == 130 and 'Traceback' not in err and err.count('continue with --resume') == 1, err
    assert stdout.count('train_loss') == 1 and len(pids) == 2 and not any(map(alive, pids))
    assert 1 <= load_checkpoint(out/'checkpoint.pth')['epoch'] < 100

def test_killed_process_stops_the_others(tmp_path):
    "A process killed (as by the out-of-memory killer): the other stops too, the launcher says which died, the checkpoint stays."
    out, p, pids = long_run(tmp_path)
    os.kill(pids[1], signal.SIGKILL)
    _, err = finish(p, 120)
    assert p.returncode == 128 + signal.SIGKILL and 'process 1 was killed by SIGKILL' in err and 'Traceback' not in err, err
    assert 'the checkpoint in' in err and not any(map(alive, pids))
    assert 1 <= load_checkpoint(out/'checkpoint.pth')['epoch'] < 100
