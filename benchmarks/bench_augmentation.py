"""Augmentation costs, same run: crop-and-resize filters per image, and per-item (PIL) vs per-batch (torch) augmentation.

    python benchmarks/bench_augmentation.py [--reps 5] [--bs 64] [--size 128] [--device cpu|cuda] [--threads N]

1. Cropping the centre square of a JPEG to `--size` (decoding included), ms per image, against the lesson's
   `Image.transform(EXTENT, BILINEAR)` (which does not antialias): `resize` with LANCZOS (Pillow's old ANTIALIAS),
   BICUBIC and BILINEAR, and dl2's `CenterCrop` (JPEG draft, `reduce`, then BILINEAR `resize`). Images: scikit-image's
   astronaut (512x512) and retina (1411x1411) photos, saved as JPEGs at quality 90.
2. From `--bs` PIL images of `--size` to an augmented float batch on `--device`, ms per batch: per item, PIL's
   `transform` (AFFINE or PERSPECTIVE) with `pil_coeffs`, then tensors, stacked, to the device; per batch, tensors,
   stacked, to the device, then one `affine_batch`/`warp_batch`. Both apply the same random matrices
   (`RandomAffine().mats`, `RandomWarp().mats`).
Variants alternate within every repeat (the machine may be shared); the tables give medians and the median ratio.
"""
import argparse, io, statistics, time
import numpy as np
import PIL.Image
import skimage.data
import torch
from dl2.data_block import to_byte_tensor
from dl2.augmentation import CenterCrop, RandomAffine, RandomWarp, affine_batch, warp_batch, pil_coeffs

R, T = PIL.Image.Resampling, PIL.Image.Transform

def _ms(f, device):
    "Milliseconds taken by `f()`, waiting for `device` to finish."
    start = time.perf_counter()
    f()
    if device.type == 'cuda': torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000

def _interleaved(fs, reps, device, n=1):
    "name -> list of ms per call of each of `fs` (name -> f), over `reps` repeats of `n` calls, alternating."
    for f in fs.values(): f()  # warm-up
    res = {k: [] for k in fs}
    for _ in range(reps):
        for k, f in fs.items(): res[k].append(sum(_ms(f, device) for _ in range(n)) / n)
    return res

def _report(res, peer, unit):
    "Print median times of `res` and each one's median speed ratio against `peer`."
    print(f"{'':48} {unit:>10} {'vs ' + peer:>28}")
    for k, ts in res.items():
        ratio = statistics.median(p / t for p, t in zip(res[peer], ts))
        print(f'{k:48} {statistics.median(ts):10.2f} {ratio:27.2f}x')

def _jpeg(a):
    "The uint8 array `a` as JPEG bytes."
    b = io.BytesIO()
    PIL.Image.fromarray(a).save(b, 'JPEG', quality=90)
    return b.getvalue()

def bench_crops(size, reps, cpu):
    print(f'\n1. centre square of a JPEG to {size}x{size}, decoding included (ms per image, speed vs the lesson)')
    for name in ('astronaut', 'retina'):
        data = _jpeg(getattr(skimage.data, name)())
        opn = lambda: PIL.Image.open(io.BytesIO(data))
        w, h = opn().size
        s = min(w, h)
        box, sz = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2), (size, size)
        fs = {'lesson: transform EXTENT BILINEAR': lambda: opn().transform(sz, T.EXTENT, box, R.BILINEAR),
              'resize LANCZOS (old ANTIALIAS)': lambda: opn().resize(sz, R.LANCZOS, box=box),
              'resize BICUBIC': lambda: opn().resize(sz, R.BICUBIC, box=box),
              'resize BILINEAR': lambda: opn().resize(sz, R.BILINEAR, box=box),
              'dl2 CenterCrop: draft, reduce, resize BILINEAR': lambda: CenterCrop(size, scale=w / s)(opn())}
        print(f'{name} {w}x{h}')
        _report(_interleaved(fs, reps, cpu, n=10), 'lesson: transform EXTENT BILINEAR', 'ms')

def bench_batches(bs, size, reps, device):
    print(f'\n2. {bs} PIL images of {size}x{size} to an augmented float batch on {device} (ms per batch, speed vs per item)')
    img = CenterCrop(size)(PIL.Image.fromarray(skimage.data.chelsea()))
    imgs = [img.copy() for _ in range(bs)]
    to_batch = lambda xs: torch.stack(xs).to(device).float().div_(255)
    for name, m, kind, f in [('affine', RandomAffine().mats(bs, size, size), T.AFFINE, affine_batch),
                             ('warp', RandomWarp().mats(bs, size, size), T.PERSPECTIVE, warp_batch)]:
        coeffs, n = pil_coeffs(m, img.size), 6 if kind == T.AFFINE else 8
        md = m.to(device)
        fs = {f'{name}: per item (PIL)': lambda: to_batch([to_byte_tensor(im.transform(im.size, kind, c[:n], R.BILINEAR)) for im, c in zip(imgs, coeffs)]),
              f'{name}: per batch (torch, {device.type})': lambda: f(to_batch([to_byte_tensor(im) for im in imgs]), md)}
        _report(_interleaved(fs, reps, device), f'{name}: per item (PIL)', 'ms')

def main(reps, bs, size, device, threads):
    if threads: torch.set_num_threads(threads)
    device = torch.device(device)
    print(f'torch {torch.__version__}, Pillow {PIL.__version__}, {torch.get_num_threads()} thread(s), median of {reps} interleaved repeats')
    bench_crops(size, reps, torch.device('cpu'))
    bench_batches(bs, size, reps, device)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--device', default='cpu', help='where the batch path runs: cpu, cuda, ...')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    main(**vars(p.parse_args()))
