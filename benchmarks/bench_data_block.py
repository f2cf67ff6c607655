"""Images per second from imagenette-like JPEG folders to normalised float batches of 128x128 images.

Compares `dl2.data_block` (decode straight to a tensor with torchvision, or at reduced scale with simplejpeg for
JPEGs at least twice the target, uint8 resize, float conversion and normalisation once per batch, in shared memory
inside workers) with, in the same run:
  * the lesson's 2019 path: PIL open, convert('RGB'), PIL bilinear resize, bytes -> tensor, float per item,
    default collate, then per-channel normalisation of the batch;
  * torchvision `ImageFolder` with `transforms.v2` (Resize, ToImage, ToDtype, Normalize);
  * torchvision `decode_image` + v2 Resize on the uint8 tensor, ToDtype and Normalize per item.
Each is run at num_workers 0 and 2. The pipelines alternate within every repeat (the machine may be shared)
and the table reports median images/s and the median of the per-repeat speed ratios.

Generates ~1,000 JPEGs (10 classes, shorter side 160-500 px, aspect 1-1.5, photo-like entropy) once in
benchmarks/data/. Run: `python benchmarks/bench_data_block.py [--n 1000] [--reps 5]`.
"""
import argparse, os, statistics, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.io import decode_image, ImageReadMode
from torchvision.transforms import v2
from dl2.data_block import *

SIZE, BS = 128, 64

# ---------------------------------------------------------------- data

def _make_jpeg(fn, seed):
    "A photo-like JPEG: smooth random colour fields plus mild noise, shorter side 160-500 px."
    rng = np.random.default_rng(seed)
    short, ratio = int(rng.integers(160, 501)), rng.uniform(1, 1.5)
    w, h = (int(short * ratio), short) if rng.random() < 0.7 else (short, int(short * ratio))
    lo = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    a = np.asarray(PIL.Image.fromarray(lo).resize((w, h), PIL.Image.BICUBIC)).astype(np.int16)
    a = a + rng.integers(-6, 7, size=a.shape)
    PIL.Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(fn, quality=90)

def make_jpeg_folder(n=1000, path=Path(__file__).parent/'data'/'imagenette-like', n_classes=10):
    "`path`/<class>/<i>.JPEG, n images, built once (a `.complete` marker records a finished build)."
    path = path/str(n)
    if (path/'.complete').exists(): return path
    fns = [path/f'n{i % n_classes:08d}'/f'{i:05d}.JPEG' for i in range(n)]
    for fn in fns: fn.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as ex: list(ex.map(_make_jpeg, fns, range(n), chunksize=32))
    (path/'.complete').touch()
    return path

# ---------------------------------------------------------------- the pipelines

class LessonDataset():
    "Lesson 11's notebook 08 pipeline (ByteStorage.from_buffer, now deprecated, replaced by torch.frombuffer)."
    def __init__(self, files, labels): self.files, self.labels = files, labels
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        img = PIL.Image.open(self.files[i]).convert('RGB')                              # make_rgb
        img = img.resize((SIZE, SIZE), PIL.Image.BILINEAR)                             # ResizeFixed
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)              # to_byte_tensor
        x = x.view(SIZE, SIZE, -1).permute(2, 0, 1)
        return x.float().div_(255.), self.labels[i]                                     # to_float_tensor

class DecodeImageDataset():
    "torchvision.io.decode_image, then v2 transforms on the uint8 tensor."
    def __init__(self, files, labels, tfm): self.files, self.labels, self.tfm = files, labels, tfm
    def __len__(self): return len(self.files)
    def __getitem__(self, i): return self.tfm(decode_image(str(self.files[i]), mode=ImageReadMode.RGB)), self.labels[i]

class NormalizeBatch():
    "The lesson's batch transform: `normalize_chan` applied to the collated batch (done here after loading)."
    def __init__(self, norm): self.norm = norm
    def __call__(self, b): return self.norm(b[0]), b[1]

def loaders(root, norm, nw):
    "name -> (DataLoader, batch post-processing) for each pipeline, all over the same files."
    kw = dict(batch_size=BS, num_workers=nw, persistent_workers=nw > 0)
    il = ImageList.from_files(root, tfms=[make_rgb, to_byte_tensor, ResizeFixed(SIZE)])
    ld = LabeledData.label_by_func(il, parent_labeler, proc_y=CategoryProcessor())
    m, s = norm.mean.tolist(), norm.std.tolist()
    folder = datasets.ImageFolder(root, transform=v2.Compose([
        v2.Resize((SIZE, SIZE)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(m, s)]))
    tv = DecodeImageDataset(ld.x.items, ld.y.items, v2.Compose([
        v2.Resize((SIZE, SIZE)), v2.ToDtype(torch.float32, scale=True), v2.Normalize(m, s)]))
    return {'dl2.data_block': (DataLoader(ld, collate_fn=ImageCollate(norm), **kw), None),
            'lesson (PIL)': (DataLoader(LessonDataset(ld.x.items, ld.y.items), **kw), NormalizeBatch(norm)),
            'ImageFolder+v2': (DataLoader(folder, **kw), None),
            'decode_image+v2': (DataLoader(tv, **kw), None)}

def one_pass(dl, post):
    "Seconds to draw every batch of `dl` (checking its shape), through `post` if given."
    start, n = time.perf_counter(), 0
    for b in dl:
        x, _ = post(b) if post else b
        assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32
        n += len(x)
    assert n == len(dl.dataset)
    return time.perf_counter() - start

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=1000, help='number of JPEGs')
    p.add_argument('--reps', type=int, default=3, help='timed passes per pipeline')
    args = p.parse_args()
    root = make_jpeg_folder(args.n)
    files = get_files(root, image_extensions, recurse=True)
    sizes = [PIL.Image.open(f).size for f in files]
    print(f'{len(files)} JPEGs in {root}, {sum(os.path.getsize(f) for f in files) / 2**20:.0f} MB, '
          f'shorter side {min(min(s) for s in sizes)}-{max(min(s) for s in sizes)} px; '
          f'torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads')
    il = ImageList(files, root, tfms=[make_rgb, to_byte_tensor, ResizeFixed(SIZE)])
    norm = Normalize(*channel_stats(il, n=200))
    rows = []
    for nw in (0, 2):
        dls = loaders(root, norm, nw)
        for dl, post in dls.values(): one_pass(dl, post)  # warm up: workers, page cache
        times = {k: [] for k in dls}
        for r in range(args.reps):
            names = list(dls)[r % len(dls):] + list(dls)[:r % len(dls)]  # rotate who goes first
            for k in names: times[k].append(one_pass(*dls[k]))
        ours = times['dl2.data_block']
        for k, ts in times.items():
            ratio = statistics.median(t / o for t, o in zip(ts, ours))
            rows.append((k, nw, len(files) / statistics.median(ts), ratio))
        del dls
    print(f'\n{"pipeline":18s} {"workers":>7s} {"images/s":>9s} {"dl2 speedup":>12s}')
    for k, nw, ips, ratio in rows: print(f'{k:18s} {nw:7d} {ips:9.0f} {ratio:11.2f}x')

if __name__ == '__main__': main()
