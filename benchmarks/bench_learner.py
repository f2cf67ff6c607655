"""Overhead of `Learner.fit` (with the callbacks `dl2_train` uses) over a plain PyTorch loop doing the same work.

Both train the default `dl2_train` model (the lesson's CNN with RunningBatchNorm) with dl2's Adam on the same
Fashion-MNIST batches for `--batches` training batches, under the same one-cycle learning-rate schedule, then
compute loss and accuracy on the same validation batches. Runs alternate (plain, learner, plain, ...) so
machine load hits both alike; the table shows each repeat and the median ratio learner/plain.

    python benchmarks/bench_learner.py [--batches 40] [--repeats 5] [--bs 256] [--threads N] [--device cuda]
"""
import argparse, contextlib, copy, io, statistics, tempfile, time
from pathlib import Path
from functools import partial
import torch
import torch.nn.functional as F
from dl2.learner import Learner, AvgStatsCallback
from dl2.data import accuracy, DataBunch, TensorDataLoader
from dl2.schedules import Recorder, ParamScheduler, one_cycle
from dl2.cnn import DeviceCallback, init_cnn
from dl2.checkpoint import CheckpointCallback
from dl2.progress import ProgressCallback
from dl2.train import get_parser, load_data, make_model
from dl2.optimizers import OPTIMIZERS
from dl2.fast.batchnorm import fast_batchnorm
from dl2.fast.optimizers import fused

def truncated(dl, n):
    "The first `n` batches' worth of rows of the `TensorDataLoader` `dl`, shuffled the same way each time."
    return TensorDataLoader(dl.x[:n*dl.bs], dl.y[:n*dl.bs], dl.bs, shuffle=False, tfm=dl.tfm)

def plain_loop(model, data, opt, sched, loss_func):
    "A hand-written epoch: forward, loss, backward, step, zero_grad, the lr set per batch; then validation."
    n = len(data.train_dl)
    model.train()
    for i, (xb, yb) in enumerate(data.train_dl):
        for pg in opt.param_groups: pg['lr'] = sched(i / n)
        loss = loss_func(model(xb), yb)
        loss.backward()
        opt.step(); opt.zero_grad()
    model.eval()
    tot_loss, tot_acc, count = 0., 0., 0
    with torch.no_grad():
        for xb, yb in data.valid_dl:
            pred = model(xb)
            tot_loss += loss_func(pred, yb) * len(xb); tot_acc += accuracy(pred, yb) * len(xb); count += len(xb)
    return float(tot_loss) / count, float(tot_acc) / count

def learner_loop(model, data, opt_func, sched, loss_func, ckpt, device):
    "The same epoch through `Learner.fit` with the callbacks of `dl2_train`."
    cbs = [DeviceCallback(device), AvgStatsCallback(accuracy), Recorder(), ProgressCallback(bars=False),
           ParamScheduler('lr', sched), CheckpointCallback(ckpt)]
    learn = Learner(model, data, loss_func, opt_func=opt_func, cbs=cbs)
    with contextlib.redirect_stdout(io.StringIO()): learn.fit(1)   # the table rows would clutter the report
    h = learn.avg_stats.history[-1]
    return h['valid_loss'], h['valid_accuracy']

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batches', type=int, default=40)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--bs', type=int, default=256)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    p.add_argument('--device', default='cpu')
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    full = load_data(get_parser().parse_args(['--bs', str(args.bs)]), device)   # dl2_train's data, augmentation included
    data = DataBunch(truncated(full.train_dl, args.batches), truncated(full.valid_dl, 4), c_in=full.c_in, c_out=full.c_out)
    model0 = fast_batchnorm(make_model(data, [32, 64, 128, 256], 'rbn'))   # as dl2_train does
    init_cnn(model0)
    model0 = model0.to(device, memory_format=torch.channels_last)   # as dl2_train does
    opt_func, sched = fused(OPTIMIZERS['adam'].opt_func), one_cycle(3e-3)
    loss_func = partial(F.cross_entropy, label_smoothing=0.1)
    ckpt = Path(tempfile.mkdtemp())/'bench.pth'

    def timed(f):
        "Wall and CPU seconds of `f()` (CPU time is less disturbed by other processes on a shared machine), and its result."
        torch.manual_seed(1); t, c = time.perf_counter(), time.process_time()
        res = f()
        if device.type == 'cuda': torch.cuda.synchronize()
        return time.perf_counter() - t, time.process_time() - c, res
    def time_plain():
        model = copy.deepcopy(model0)
        opt = opt_func(list(model.parameters()), lr=3e-3)
        return timed(lambda: plain_loop(model, data, opt, sched, loss_func))
    def time_learner():
        model = copy.deepcopy(model0)
        return timed(lambda: learner_loop(model, data, opt_func, sched, loss_func, ckpt, device))

    time_plain(); time_learner()   # warm-up
    print(f'{args.batches} training batches of {args.bs} + 4 validation batches on {device}, torch threads={torch.get_num_threads()}')
    print(f"{'repeat':>6} {'plain s':>8} {'learner s':>9} {'ratio':>6} {'plain cpu':>9} {'learner cpu':>11} {'ratio':>6}  valid acc plain/learner")
    walls, cpus = [], []
    for r in range(args.repeats):
        tp, cp, (_, ap) = time_plain()
        tl, cl, (_, al) = time_learner()
        walls.append(tl / tp); cpus.append(cl / cp)
        print(f'{r:>6} {tp:>8.2f} {tl:>9.2f} {tl/tp:>6.3f} {cp:>9.2f} {cl:>11.2f} {cl/cp:>6.3f}  {ap:.4f}/{al:.4f}')
    for name, rs in (('wall', walls), ('CPU', cpus)):
        m = statistics.median(rs)
        print(f'median {name} ratio learner/plain: {m:.3f} (overhead {100*(m-1):+.1f}%)')

if __name__ == '__main__': main()
