"""Time one optimizer step + zero_grad of dl2's fused `adam_opt` and `lamb` against torch's AdamW (foreach and fused) and
the lesson's per-parameter Adam, on the lesson's CNN, torchvision's resnet18 and a stack of 50 conv+BN blocks.

Run: `python benchmarks/bench_optimizers.py [--budget SECONDS_PER_MODEL] [--device cpu|cuda] [--threads N] [--clock wall|cpu]`.
On the CPU, `lamb` runs dl2's C++ kernel; the time to compile it (first run) or load it is printed apart.
On a busy shared CPU, `--threads 1 --clock cpu` (CPU time of this process) is far less noisy than wall time.
Every implementation steps its own copy of the model with the same fixed gradients; implementations are
interleaved (rotating order, one step each per round) and the table shows median times and their ratios to
`AdamW(fused=True)` and `AdamW(foreach=True)` measured in the same run. 'lesson Adam' is `adam_opt` as notebook 09
builds it (its per-parameter loop); 'adam_opt' and 'lamb' are the same optimizers with `fused(...)`, as `dl2_train`
runs them (notebook 09a).
"""
import argparse, copy, statistics, time
from types import SimpleNamespace
import torch
from torch import nn
import torchvision
from dl2.cnn import get_cnn_model, conv_layer
from dl2.optimizers import adam_opt, lamb
from dl2.fast.optimizers import fused, lamb_kernel


def conv_bn_stack(n=50, c=16):
    "`n` blocks of conv (no bias) + BatchNorm: 3 tensors each."
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)) for _ in range(n)])

MODELS = {
    'lesson CNN': lambda: get_cnn_model(SimpleNamespace(c_in=1, c_out=10), [8, 16, 32, 32], conv_layer),
    'resnet18': lambda: torchvision.models.resnet18(),
    'conv+BN x50': conv_bn_stack,
}
OPTS = {
    'AdamW(fused)': lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, fused=True),
    'AdamW(foreach)': lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, foreach=True),
    'lesson Adam': lambda ps: adam_opt(wd=1e-2)(ps, lr=1e-3),
    'adam_opt': lambda ps: fused(adam_opt(wd=1e-2))(ps, lr=1e-3),
    'lamb': lambda ps: fused(lamb)(ps, lr=1e-3, wd=1e-2),
}


def bench_model(make_model, budget, device, clock=time.perf_counter):
    "Median seconds of step+zero_grad per optimizer, interleaved rounds for about `budget` seconds."
    torch.manual_seed(0)
    base = make_model().to(device)
    grads = [torch.randn_like(p) for p in base.parameters()]
    runs = {}
    for name, make_opt in OPTS.items():
        ps = list(copy.deepcopy(base).parameters())
        runs[name] = (ps, make_opt(ps), [])
    names, start, rnd = list(OPTS), time.perf_counter(), 0
    while rnd < 7 or (time.perf_counter() - start < budget and rnd < 500):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            ps, opt, times = runs[name]
            for p, g in zip(ps, grads): p.grad = g.clone()
            if device.type == 'cuda': torch.cuda.synchronize()
            t = clock()
            opt.step(); opt.zero_grad()
            if device.type == 'cuda': torch.cuda.synchronize()
            if rnd >= 2: times.append(clock() - t)   # first rounds: state creation, warm-up
        rnd += 1
    return len(grads), {k: statistics.median(v[2]) for k, v in runs.items()}, rnd - 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--budget', type=float, default=30., help='seconds per model')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch decides)')
    ap.add_argument('--clock', choices=['wall', 'cpu'], default='wall', help='cpu: CPU time of this process (CPU device only)')
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.clock == 'cpu' and device.type != 'cpu': ap.error('--clock cpu only measures CPU work')
    if args.threads: torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
          "time of step+zero_grad, median; ratio = time / peer's time (lower is better)")
    if device.type == 'cpu':   # a one-off cost, kept out of the step times: compile (first run) or load from the cache
        start = time.perf_counter()
        built = lamb_kernel() is not None
        print(f"lamb's C++ kernel: {'ready' if built else 'NOT AVAILABLE (lamb runs its fallback)'} in {time.perf_counter() - start:.1f} s")
    print(f"{'model':13} {'tensors':>7} {'optimizer':15} {'median us':>10} {'/ fused':>8} {'/ foreach':>9} {'/ lesson':>8}")
    for mname, make in MODELS.items():
        n, med, rounds = bench_model(make, args.budget, device, clock)
        for oname, t in med.items():
            print(f"{mname:13} {n:7d} {oname:15} {t*1e6:10.0f} {t/med['AdamW(fused)']:8.2f} "
                  f"{t/med['AdamW(foreach)']:9.2f} {t/med['lesson Adam']:8.2f}")
        print(f"{'':13} ({rounds} interleaved rounds)", flush=True)


if __name__ == '__main__': main()
