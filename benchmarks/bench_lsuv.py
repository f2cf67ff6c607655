"""LSUV cost: each measuring pass stopped at the layer being initialised (`lsuv_init`, the default) vs the
course's whole-model forward for every measurement (`lsuv_init(..., stop_early=False)`), same run.

    python benchmarks/bench_lsuv.py [--reps 5] [--threads N] [--device cuda]

Models: plain CNNs of `ConvLayer`s (the first three halve the resolution, then 3x3 convs at 4x4), batch of
MNIST-sized random images. Repeats alternate between the two variants; the table gives medians and the ratio.
"""
import argparse, statistics, time, warnings
import torch
from torch import nn
from dl2.lsuv import ConvLayer, lsuv_init

def deep_cnn(n_layers, nf=16):
    "A plain CNN without normalisation: `n_layers` `ConvLayer`s, pooling, a linear head."
    nfs = [1, 8] + [nf] * (n_layers - 1)
    layers = [ConvLayer(nfs[i], nfs[i+1], 5 if i == 0 else 3, stride=2 if i < 3 else 1, leak=0.1, sub=0.4, maxv=6.)
              for i in range(n_layers)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nf, 10))

def time_lsuv(n_layers, xb, stop_early):
    "Seconds taken by `lsuv_init` on a fresh `deep_cnn(n_layers)` on `xb`'s device."
    torch.manual_seed(0)
    model = deep_cnn(n_layers).to(xb.device)
    start = time.perf_counter()
    lsuv_init(model, xb, stop_early=stop_early)
    return time.perf_counter() - start   # lsuv_init reads its statistics back to the host: the device is done

def main(reps, threads, device):
    if threads: torch.set_num_threads(threads)
    warnings.simplefilter('ignore')
    print(f'torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s), median of {reps} interleaved repeats')
    print(f"{'layers':>6} {'batch':>6} {'stop at layer (s)':>18} {'whole model (s)':>16} {'whole/stop':>11}")
    for n_layers, bs in [(10, 64), (20, 64), (20, 256)]:
        xb = torch.randn(bs, 1, 28, 28, device=device)
        time_lsuv(n_layers, xb, True)  # warm-up
        times = {True: [], False: []}
        for _ in range(reps):
            for stop_early in (True, False): times[stop_early].append(time_lsuv(n_layers, xb, stop_early))
        stop, whole = statistics.median(times[True]), statistics.median(times[False])
        print(f'{n_layers:>6} {bs:>6} {stop:>18.3f} {whole:>16.3f} {whole/stop:>10.2f}x')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--device', default='cpu')
    main(**vars(p.parse_args()))
