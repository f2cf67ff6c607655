"""Data-parallel training on one machine: 2 processes against 1 (images per second, the same model, batch and cores), and
what synchronising the batch-norm statistics costs per step.

    python benchmarks/bench_distributed.py                  # CPU, Gloo: 2 processes x 1 thread against 1 process x 2 threads
    python benchmarks/bench_distributed.py --device cuda    # 2 GPUs, NCCL: 2 processes against 1 GPU, and nn.SyncBatchNorm

The model is dl2_train's default CNN on 28x28 images, the batch dl2_train's default (256 images a step, shared out between
the processes), with Adam. Step times are medians over the timed steps, every process starting each step together.
On the CPU, nn.SyncBatchNorm cannot run (PyTorch implements it for GPUs only), so its communication is measured by
issuing the collectives it issues for the same layers (an all-gather forward, an all-reduce backward, per layer) next to
those of synchronised RunningBatchNorm (an all-reduce each way, per layer).
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
from types import SimpleNamespace
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from dl2.batchnorm import RunningBatchNorm
from dl2.distributed import launch, distributed, sync_running_bn, world_size, rank
from dl2.train import make_model

def build(cfg, device):
    "dl2_train's CNN with `cfg['norm']` on `device`, batch norm synchronised if `cfg['sync']`, in DDP if several processes."
    torch.manual_seed(0)
    model = make_model(SimpleNamespace(c_in=1, c_out=10), cfg['nfs'], cfg['norm']).to(device, memory_format=torch.channels_last)
    if world_size() == 1: return model
    if cfg['sync']: model = nn.SyncBatchNorm.convert_sync_batchnorm(sync_running_bn(model)) if device.type == 'cuda' else sync_running_bn(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)

def timed(step, n, warmup, device):
    "Seconds of each of `n` calls of `step` after `warmup` calls, every process starting each call together."
    times = []
    for i in range(warmup + n):
        if world_size() > 1: dist.barrier()
        if device.type == 'cuda': torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == 'cuda': torch.cuda.synchronize()
        if i >= warmup: times.append(time.perf_counter() - start)
    return times

def training_step(cfg, device):
    "One training step of this process's share of the batch."
    model = build(cfg, device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    bs = cfg['bs'] // world_size()
    x = torch.randn(bs, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=device)
    def step():
        F.cross_entropy(model(x), y).backward()
        opt.step(); opt.zero_grad()
    return step

def collectives(cfg, device):
    "The batch-norm collectives of one training step of `cfg['pattern']`: 'rbn' (synchronised RunningBatchNorm) or 'syncbn' (nn.SyncBatchNorm)."
    chans = cfg['nfs']
    def step():
        for c in chans:   # forward, layer by layer
            t = torch.zeros(2 * c + 1, device=device)
            if cfg['pattern'] == 'rbn': dist.all_reduce(t)
            else: dist.all_gather([torch.empty_like(t) for _ in range(world_size())], t)
        for c in reversed(chans): dist.all_reduce(torch.zeros(2 * c, device=device))   # backward
    return step

def worker(cfg, out):
    "Run by each process: time the configured step; rank 0 writes the times to `out`."
    with distributed(cfg['device']) as device:
        torch.set_num_threads(cfg['threads'])
        step = (collectives if 'pattern' in cfg else training_step)(cfg, device)
        times = timed(step, cfg['steps'], cfg['warmup'], device)
        if rank() == 0: Path(out).write_text(json.dumps(times))
    return 0

def measure(cfg, nproc):
    "Median seconds per step of `cfg` on `nproc` processes."
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)/'times.json'
        if launch(worker, nproc, cfg, str(out)) != 0: sys.exit(f'bench_distributed: the run {cfg} failed')
        return statistics.median(json.loads(out.read_text()))

CONFIGS = [   # name, settings, processes, threads per process (None: the cores shared out)
    ('1 process x 1 thread, RunningBatchNorm', dict(norm='rbn', sync=False), 1, 1),
    ('1 process, RunningBatchNorm', dict(norm='rbn', sync=False), 1, None),
    ('2 processes, RunningBatchNorm synchronised', dict(norm='rbn', sync=True), 2, None),
    ("2 processes, RunningBatchNorm each its own (DDP copies rank 0's)", dict(norm='rbn', sync=False), 2, None),
    ('1 process, nn.BatchNorm2d', dict(norm='bn', sync=False), 1, None),
    ('2 processes, nn.BatchNorm2d (plain DDP; nn.SyncBatchNorm on GPUs)', dict(norm='bn', sync=True), 2, None),
    ('batch-norm collectives of a step: synchronised RunningBatchNorm', dict(pattern='rbn'), 2, 1),
    ('batch-norm collectives of a step: nn.SyncBatchNorm', dict(pattern='syncbn'), 2, 1)]

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    p.add_argument('--bs', type=int, default=256, help='images per step, all processes together')
    p.add_argument('--nfs', default='32,64,128,256', help="filters of the conv layers (dl2_train's default)")
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--rounds', type=int, default=2, help='each configuration this many times, interleaved; the fastest round counts')
    p.add_argument('--cores', type=int, default=torch.get_num_threads(), help='CPU threads in all (CPU runs)')
    a = p.parse_args()
    base = dict(device=a.device, bs=a.bs, nfs=[int(n) for n in a.nfs.split(',')], steps=a.steps, warmup=a.warmup)
    print(f"{a.device}: {f'{a.cores} cores' if a.device == 'cpu' else 'one GPU per process'}; batch {a.bs}; filters {base['nfs']}; "
          f"median step of {a.steps} after {a.warmup}, fastest of {a.rounds} rounds")
    best = {}
    for _ in range(a.rounds):
        for name, cfg, nproc, threads in CONFIGS:
            t = measure({**base, 'threads': threads or max(1, a.cores // nproc), **cfg}, nproc)
            best[name] = min(best.get(name, t), t)
    for name, cfg, nproc, threads in CONFIGS:
        per_s = '' if 'pattern' in cfg else f'{a.bs / best[name]:8.0f} images/s'
        print(f'{name:68} {best[name] * 1e3:8.2f} ms/step {per_s}')
    one, two, own = (best[n] for n in ('1 process, RunningBatchNorm', '2 processes, RunningBatchNorm synchronised',
                                       "2 processes, RunningBatchNorm each its own (DDP copies rank 0's)"))
    print(f'2 processes against 1, RunningBatchNorm synchronised: {one / two:.2f}x the images per second; '
          f'synchronising costs {(two - own) * 1e3:+.1f} ms per step')

if __name__ == '__main__': main()
