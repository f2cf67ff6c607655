"""Images per second from imagenette-like JPEG folders to normalised float batches of 128x128 images.

Compares `dl2.image_folder` (JPEGs decoded by libjpeg-turbo through simplejpeg, at reduced scale when at least
twice the target; uint8 resize; batches loaded on threads, or built in shared memory inside workers; float
conversion and normalisation once per batch) with, in the same run:
  * the same with torchvision's `decode_image` for the JPEGs too small to decode at reduced scale (and PNGs), as
    dl2 had it before: does dl2 need torchvision's decoder?
  * `dl2.data_block`, the lesson's pipeline: PIL decode and bilinear resize, bytes -> tensor, `ImageCollate`;
  * torchvision `ImageFolder` with `transforms.v2` (Resize, ToImage, ToDtype, Normalize);
  * torchvision `decode_image` + v2 Resize on the uint8 tensor, ToDtype and Normalize per item.
Each is run at num_workers 0 and 2. The pipelines alternate within every repeat (the machine may be shared)
and the table reports median images/s and the median of the per-repeat speed ratios. First, milliseconds per
image for each decoder alone (PIL, simplejpeg, torchvision's `decode_image`) on the JPEGs and on PNGs of them.

Generates ~1,000 JPEGs (10 classes, shorter side 160-500 px, aspect 1-1.5, photo-like entropy) once in
benchmarks/data/. Run: `python benchmarks/bench_data_block.py [--n 1000] [--reps 5]`.
"""
import argparse, os, statistics, time, warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
import PIL.Image
import simplejpeg
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.io import decode_image, ImageReadMode
from torchvision.transforms import v2
from dl2.data_block import *
from dl2.image_folder import DecodeResize, SharedCollate, ThreadedLabeledData

warnings.filterwarnings('ignore', 'The image decoding', DeprecationWarning)   # torchvision 0.29 on its own decoders: the peers use them

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

# ---------------------------------------------------------------- the decoders alone

def ms_per_image(f, files, reps):
    "Median over `reps` passes of the mean milliseconds `f(file)` takes over `files`."
    for fn in files[:5]: f(fn)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for fn in files: f(fn)
        times.append((time.perf_counter() - start) / len(files) * 1000)
    return statistics.median(times)

def decoder_times(root, files, reps):
    "Rows (format, decoder, ms per image) for full-scale decoding of `files` (JPEGs in `root`) and of PNG copies of them beside `root`."
    pngs = [root.with_name(f'{root.name}-png')/fn.relative_to(root).with_suffix('.png') for fn in files]
    for fn, png in zip(files, pngs):
        png.parent.mkdir(parents=True, exist_ok=True)
        if not png.exists(): PIL.Image.open(fn).save(png, compress_level=1)
    pil = lambda fn: np.asarray(PIL.Image.open(fn).convert('RGB'))
    tv = lambda fn: decode_image(torch.from_numpy(np.fromfile(fn, dtype=np.uint8)), mode=ImageReadMode.RGB)
    sj = lambda fn: simplejpeg.decode_jpeg(Path(fn).read_bytes())
    return [('JPEG', 'PIL', ms_per_image(pil, files, reps)), ('JPEG', 'simplejpeg', ms_per_image(sj, files, reps)),
            ('JPEG', 'torchvision', ms_per_image(tv, files, reps)),
            ('PNG', 'PIL', ms_per_image(pil, pngs, reps)), ('PNG', 'torchvision', ms_per_image(tv, pngs, reps))]

# ---------------------------------------------------------------- the pipelines

class DecodeImageDataset():
    "torchvision.io.decode_image, then v2 transforms on the uint8 tensor."
    def __init__(self, files, labels, tfm): self.files, self.labels, self.tfm = files, labels, tfm
    def __len__(self): return len(self.files)
    def __getitem__(self, i): return self.tfm(decode_image(str(self.files[i]), mode=ImageReadMode.RGB)), self.labels[i]

class TorchvisionDecodeResize(DecodeResize):
    "`DecodeResize` as dl2 had it before dropping torchvision: JPEGs too small for a reduced scale, and PNGs, decoded by `decode_image`."
    def decode(self, img):
        (w, h), (th, tw) = img.size, self.size
        if img.format in ('JPEG', 'PNG') and img.mode == 'RGB' and img.tile and (img.format == 'PNG' or w < 2 * tw or h < 2 * th):
            return decode_image(torch.from_numpy(np.fromfile(img.filename, dtype=np.uint8)), mode=ImageReadMode.RGB)
        return super().decode(img)

def loaders(root, norm, nw):
    "name -> (DataLoader, batch post-processing) for each pipeline, all over the same files."
    kw = dict(batch_size=BS, num_workers=nw, persistent_workers=nw > 0)
    il = ImageList.from_files(root, tfms=[make_rgb, DecodeResize(SIZE)])
    ld = ThreadedLabeledData.label_by_func(il, parent_labeler, proc_y=CategoryProcessor())
    with_tv = ThreadedLabeledData.label_by_func(ImageList(il.items, root, tfms=[make_rgb, TorchvisionDecodeResize(SIZE)]), parent_labeler,
                                                proc_y=CategoryProcessor())
    lesson = LabeledData.label_by_func(ImageList(il.items, root, tfms=[make_rgb, ResizeFixed(SIZE), to_byte_tensor]), parent_labeler,
                                       proc_y=CategoryProcessor())
    m, s = norm.mean.tolist(), norm.std.tolist()
    folder = datasets.ImageFolder(root, transform=v2.Compose([
        v2.Resize((SIZE, SIZE)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(m, s)]))
    tv = DecodeImageDataset(ld.x.items, ld.y.items, v2.Compose([
        v2.Resize((SIZE, SIZE)), v2.ToDtype(torch.float32, scale=True), v2.Normalize(m, s)]))
    return {'dl2.image_folder': (DataLoader(ld, collate_fn=SharedCollate(norm), **kw), None),
            'dl2.image_folder, torchvision decoding': (DataLoader(with_tv, collate_fn=SharedCollate(norm), **kw), None),
            'dl2.data_block': (DataLoader(lesson, collate_fn=ImageCollate(norm), **kw), None),
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
    print(f'\n{"format":6s} {"decoder":12s} {"ms/image":>8s}   (full scale, one thread)')
    for fmt, dec, ms in decoder_times(root, files[:200], args.reps): print(f'{fmt:6s} {dec:12s} {ms:8.2f}')
    il = ImageList(files, root, tfms=[make_rgb, DecodeResize(SIZE)])
    norm = Normalize(*channel_stats(il, n=200))
    rows = []
    for nw in (0, 2):
        dls = loaders(root, norm, nw)
        for dl, post in dls.values(): one_pass(dl, post)  # warm up: workers, page cache
        times = {k: [] for k in dls}
        for r in range(args.reps):
            names = list(dls)[r % len(dls):] + list(dls)[:r % len(dls)]  # rotate who goes first
            for k in names: times[k].append(one_pass(*dls[k]))
        ours = times['dl2.image_folder']
        for k, ts in times.items():
            ratio = statistics.median(t / o for t, o in zip(ts, ours))
            rows.append((k, nw, len(files) / statistics.median(ts), ratio))
        del dls
    print(f'\n{"pipeline":38s} {"workers":>7s} {"images/s":>9s} {"dl2 speedup":>12s}')
    for k, nw, ips, ratio in rows: print(f'{k:38s} {nw:7d} {ips:9.0f} {ratio:11.2f}x')

if __name__ == '__main__': main()
