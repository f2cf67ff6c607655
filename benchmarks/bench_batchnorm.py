"""Forward+backward time of `RunningBatchNorm` in training mode, as a ratio to `nn.BatchNorm2d` measured in the same run.

`FastRunningBatchNorm` (what `fast_batchnorm(model)` switches a model to: dl2's C++ kernel on the CPU, Triton on a GPU) is
timed beside its PyTorch route (`route='torch'`, what runs where no kernel does: no compiler, no Triton, other dtypes),
dl2's lesson class `RunningBatchNorm`, and the two lessons' own versions (`Lesson10RunningBatchNorm`,
`Lesson11RunningBatchNorm`).
Modules are run interleaved, in a rotating order, and the median of the repeats is reported.

    python benchmarks/bench_batchnorm.py                 # CPU (dl2's C++ kernel), goal: at most 1.2x BatchNorm2d
    python benchmarks/bench_batchnorm.py --device cuda   # GPU, goal: at most 1.5x
    python benchmarks/bench_batchnorm.py --threads 1 --clock cpu   # a busy shared CPU: count only this process's CPU time
"""
import argparse, statistics, time
import torch
from torch import nn
from dl2.batchnorm import Lesson10RunningBatchNorm, Lesson11RunningBatchNorm, RunningBatchNorm
from dl2.fast.batchnorm import FastRunningBatchNorm, running_bn_kernel

SHAPES = [(64, 32, 28, 28), (8, 128, 32, 32), (2, 64, 56, 56)]
GOALS = {'cpu': 1.2, 'cuda': 1.5}

def torch_route(nf):
    "A `FastRunningBatchNorm` held to its PyTorch route."
    m = FastRunningBatchNorm(nf)
    m.route = 'torch'
    return m

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()

def time_step(mod, x, g, device, clock):
    "Seconds for one training-mode forward and backward of `mod` on `x`."
    x.grad = None
    mod.zero_grad(set_to_none=True)
    sync(device)
    start = clock()
    mod(x).backward(g)
    sync(device)
    return clock() - start

def bench_shape(shape, device, reps, clock=time.perf_counter, warmup=3):
    "Median forward+backward seconds of each module on inputs of `shape`."
    nf = shape[1]
    mods = {'BatchNorm2d': nn.BatchNorm2d(nf), 'fast': FastRunningBatchNorm(nf), 'PyTorch route': torch_route(nf),
            'dl2 lesson class': RunningBatchNorm(nf), 'lesson 11': Lesson11RunningBatchNorm(nf), 'lesson 10': Lesson10RunningBatchNorm(nf)}
    mods = {k: m.to(device).train() for k, m in mods.items()}
    x = torch.randn(shape, device=device).requires_grad_()
    g = torch.randn(shape, device=device)
    times = {k: [] for k in mods}
    names = list(mods)
    for i in range(warmup + reps):
        for k in names[i % len(names):] + names[:i % len(names)]:
            t = time_step(mods[k], x, g, device, clock)
            if i >= warmup: times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (default: cpu)")
    p.add_argument('--reps', type=int, default=20, help='timed repeats per module and shape')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                   help="'wall' (default) or 'cpu': this process's CPU time, steadier on a shared CPU (CPU device only)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): raise SystemExit('--device cuda: no CUDA device available')
    if args.threads: torch.set_num_threads(args.threads)
    if args.clock == 'cpu' and device.type != 'cpu': raise SystemExit('--clock cpu: only meaningful with --device cpu')
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    goal = GOALS.get(device.type)
    print(f'device={device} threads={torch.get_num_threads()} clock={args.clock} torch={torch.__version__} reps={args.reps}')
    if device.type == 'cpu':   # a one-off cost, kept out of the timings: compile (first run) or load from the cache
        start = time.perf_counter()
        built = running_bn_kernel() is not None
        print(f"RunningBatchNorm's C++ kernel: {'ready' if built else 'NOT AVAILABLE (the PyTorch route is timed)'} "
              f"in {time.perf_counter() - start:.1f} s")
    print(f"{'shape':>18} {'BatchNorm2d ms':>15} {'FastRunningBN':>14} {'PyTorch route':>14} {'dl2 lesson':>11} {'lesson 11':>10} {'lesson 10':>10}  goal")
    for shape in SHAPES:
        med = bench_shape(shape, device, args.reps, clock)
        base = med['BatchNorm2d']
        ratios = {k: v / base for k, v in med.items()}
        ok = '' if goal is None else ('ok' if ratios['fast'] <= goal else f'MISSED (>{goal}x)')
        print(f"{str(shape):>18} {base*1e3:15.2f} {ratios['fast']:13.2f}x {ratios['PyTorch route']:13.2f}x {ratios['dl2 lesson class']:10.2f}x {ratios['lesson 11']:9.2f}x "
              f"{ratios['lesson 10']:9.2f}x  {ok}")

if __name__ == '__main__': main()
