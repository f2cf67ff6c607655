"""Time of dl2's Triton training steps as ratios to their PyTorch peers, all measured in the same run.

RunningBatchNorm, forward+backward in training mode, float32 and bfloat16 inputs: `running_bn_triton` against
`nn.BatchNorm2d` (cuDNN), against dl2's PyTorch route (`running_bn_torch`, what a GPU runs without these kernels) and
against that path under `torch.compile` (its compile time printed apart, not in the timings).
LAMB, one step over resnet18's parameters: `lamb_triton_` against `torch.optim.AdamW(fused=True)` and dl2's `lamb` by
the route a GPU takes without Triton (PyTorch's fused AdamW on a copy of the weights and `_foreach_` operations).

    python benchmarks/bench_triton.py --device cuda
    python benchmarks/bench_triton.py --device cpu --dry-run   # each case once, tiny, under Triton's interpreter

The dry run only shows that the script works: the interpreter is far too slow for its times to mean anything.
The PyTorch path runs at a fixed `w2` (this batch's weight in the running statistics, fixed once the running count has
settled); while it still changes, a compiled step would recompile for each value unless given it as a tensor.
Contenders run interleaved, in a rotating order; the median of the repeats is reported.
"""
import argparse, statistics, time

SHAPES = [(64, 32, 28, 28), (8, 128, 32, 32), (2, 64, 56, 56)]
W2, MIN_VAR, EPS = 0.1, 0., 1e-5
LAMB = dict(lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-6, wd=0.01)

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda', help="'cuda' (default), or 'cpu' with --dry-run")
    p.add_argument('--dry-run', action='store_true', help='run each case once on tiny inputs, without timing')
    p.add_argument('--reps', type=int, default=50, help='timed repeats of each contender')
    args = p.parse_args()
    if args.device == 'cpu' and not args.dry_run: p.error('--device cpu: only with --dry-run (the interpreter is far too slow to time)')
    return args

def time_all(fns, reps, warmup, sync):
    "Median seconds of each no-argument callable in `fns` (a dict), run interleaved in a rotating order."
    names, times = list(fns), {k: [] for k in fns}
    for i in range(warmup + reps):
        for k in names[i % len(names):] + names[:i % len(names)]:
            sync()
            start = time.perf_counter()
            fns[k]()
            sync()
            if i >= warmup: times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}

def rbn_contenders(torch, tk, shape, dtype, device):
    "Forward+backward callables on one input `x` of `shape`, each contender with its own parameters; and compile seconds."
    from torch import nn
    from dl2.fast.batchnorm import running_bn_torch
    C = shape[1]
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    g = torch.randn_like(x)
    def rbn_state():
        return [t.to(device) for t in (torch.ones(C).requires_grad_(), torch.zeros(C).requires_grad_(), torch.zeros(C), torch.ones(C), torch.tensor(EPS))]
    def torch_path(x, mults, adds, means, vars, eps): return running_bn_torch(x, mults, adds, means, vars, eps, W2, MIN_VAR)
    compiled = torch.compile(torch_path)
    bn, eager, comp, trit = nn.BatchNorm2d(C).to(device), rbn_state(), rbn_state(), rbn_state()
    def step(f, *args):
        def run():
            x.grad = None
            f(x, *args).backward(g)
        return run
    fns = {'BatchNorm2d': step(lambda x: bn(x)), 'PyTorch path': step(torch_path, *eager), 'compiled': step(compiled, *comp),
           'Triton': step(lambda x, *a: tk.running_bn_triton(x, *a, W2, MIN_VAR), *trit)}
    start = time.perf_counter()
    try: fns['compiled']()
    except Exception as e:   # reported, and the other contenders still timed
        print(f'torch.compile of the PyTorch path failed on {shape} {dtype}: {type(e).__name__}: {str(e).splitlines()[0]}')
        del fns['compiled']
        return fns, float('nan')
    return fns, time.perf_counter() - start

def lamb_contenders(torch, tk, params):
    "One-step callables of each optimizer, each over its own copy of `params` with fixed random gradients."
    from dl2.optimizers import lamb
    from dl2.fast.optimizers import fused
    def copies():
        ps = [p.detach().clone().requires_grad_() for p in params]
        for p in ps: p.grad = torch.randn_like(p)
        return ps
    adamw = torch.optim.AdamW(copies(), lr=LAMB['lr'], weight_decay=LAMB['wd'], eps=LAMB['eps'], betas=(LAMB['mom'], LAMB['sqr_mom']), fused=True)
    adamw_copy = fused(lamb, lamb_route='adamw_copy')(copies(), **LAMB)   # dl2's LAMB route where there is no Triton: PyTorch's fused AdamW on a copy
    ps = copies()
    state, steps = [[torch.zeros_like(p) for p in ps] for _ in range(2)], torch.zeros(len(ps), device=ps[0].device)
    def triton_step():
        steps.add_(1)
        tk.lamb_triton_(ps, [p.grad for p in ps], *state, steps, **LAMB)
    return {'AdamW fused': adamw.step, 'lamb (AdamW on a copy)': adamw_copy.step, 'Triton': triton_step}

def main():
    args = parse_args()
    import torch, torchvision
    from torch import nn
    from dl2.fast.kernels import use_triton_interpreter
    if args.device == 'cpu': use_triton_interpreter()   # before dl2.fast.triton_kernels defines its kernels
    import dl2.fast.triton_kernels as tk
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): raise SystemExit('--device cuda: no CUDA device here')
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    reps, warmup = (1, 0) if args.dry_run else (args.reps, 5)
    shapes = [(2, 3, 4, 4)] if args.dry_run else SHAPES
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, Triton interpreter'
    print(f'{name}: torch {torch.__version__}, triton {tk.triton.__version__}, {reps} repeats{" (dry run: times mean nothing)" if args.dry_run else ""}')
    print(f"\nRunningBatchNorm forward+backward, as a ratio to BatchNorm2d")
    print(f"{'shape':>18} {'dtype':>9} {'BatchNorm2d ms':>15} {'Triton':>7} {'PyTorch path':>13} {'compiled':>9} {'compile s':>10}")
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            fns, compile_s = rbn_contenders(torch, tk, shape, dtype, device)
            med = time_all(fns, reps, warmup, sync)
            base = med['BatchNorm2d']
            print(f"{str(shape):>18} {str(dtype)[6:]:>9} {base*1e3:15.3f} {med['Triton']/base:6.2f}x {med['PyTorch path']/base:12.2f}x "
                  f"{med.get('compiled', float('nan'))/base:8.2f}x {compile_s:10.1f}")
    if args.dry_run: model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 10))
    else: model = torchvision.models.resnet18()
    params = [p.detach().to(device) for p in model.parameters()]
    med = time_all(lamb_contenders(torch, tk, params), reps, warmup, sync)
    base = med['AdamW fused']
    print(f"\nLAMB step over {len(params)} tensors, {sum(p.numel() for p in params):,} weights, as a ratio to AdamW(fused=True) ({base*1e3:.3f} ms)")
    print('  '.join(f'{k}: {v/base:.2f}x' for k, v in med.items() if k != 'AdamW fused'))

if __name__ == '__main__': main()
