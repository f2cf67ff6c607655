"""Real-world files through `dl2.data_block` and `dl2.image_folder`: bad files, colour modes, odd folders, worker processes,
interrupted and killed builds, full disks, and what importing each module brings."""
import os, pickle, signal, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader
from dl2.datasets import find_mnist
from dl2.data_block import *
from dl2.image_folder import *
import dl2.image_folder


def _save(path, img, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path

def _rgb(w=40, h=30, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))

@pytest.fixture
def folder(tmp_path):
    "An imagenette-like tree: train/val, two classes, JPEGs and PNGs of different sizes, an upper-case extension."
    for split, n in (('train', 4), ('val', 2)):
        for c, cls in enumerate(('cat', 'dog')):
            for i in range(n):
                ext = ('.jpg', '.png', '.JPEG')[i % 3]
                _save(tmp_path/split/cls/f'{i}{ext}', _rgb(40 + 10 * i, 30 + 5 * c, seed=i + 10 * c))
    return tmp_path

# ---------------------------------------------------------------- bad files

def test_truncated_jpeg_names_file(tmp_path):
    good = _save(tmp_path/'good.jpg', _rgb(64, 64))
    bad = tmp_path/'truncated.jpg'
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    il = ImageList([bad], tmp_path, tfms=[make_rgb, to_byte_tensor])
    with pytest.raises(BadImageError, match='truncated.jpg'): il[0]
    assert list(verify_images([good, bad])) == [bad]

@pytest.mark.parametrize('reduced_by', ['simplejpeg', 'PIL'])
def test_truncated_big_jpeg_names_file(tmp_path, monkeypatch, reduced_by):
    "A JPEG big enough to be decoded at reduced scale by ResizeFixed, cut short: the error still names it."
    if reduced_by == 'PIL': monkeypatch.setattr(dl2.image_folder, 'simplejpeg', None)
    elif dl2.image_folder.simplejpeg is None: pytest.skip('simplejpeg is not installed')
    good = _save(tmp_path/'big.jpg', _rgb(600, 500))
    bad = tmp_path/'cut_big.jpg'
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    assert ImageList([good], tmp_path, tfms=[make_rgb, DecodeResize(64)])[0].shape == (3, 64, 64)
    il = ImageList([bad], tmp_path, tfms=[make_rgb, DecodeResize(64)])
    with pytest.raises(BadImageError, match='cut_big.jpg'): il[0]

def test_reduced_scale_grey_jpeg(tmp_path):
    "A big grey JPEG decoded at reduced scale keeps one channel (make_grey) or becomes RGB (make_rgb)."
    g = _save(tmp_path/'grey.jpg', _rgb(600, 500).convert('L'))
    assert ImageList([g], tmp_path, tfms=[make_grey, DecodeResize(64)])[0].shape == (1, 64, 64)
    assert ImageList([g], tmp_path, tfms=[make_rgb, DecodeResize(64)])[0].shape == (3, 64, 64)

def test_reduced_scale_keeps_exif_rotation(tmp_path):
    "A big photo taken sideways comes out turned on the fast path too, as the lesson's transforms give it."
    img = _rgb(800, 600)
    exif = img.getexif(); exif[0x0112] = 8   # "rotate 90 degrees counter-clockwise to display"
    fn = _save(tmp_path/'side.jpg', img, exif=exif, quality=95)
    fast = ImageList([fn], tmp_path, tfms=[make_rgb, DecodeResize((64, 48))])[0]
    lesson = ImageList([fn], tmp_path, tfms=[make_rgb, ResizeFixed((64, 48)), to_byte_tensor])[0]
    assert fast.shape == lesson.shape == (3, 64, 48) and (fast.float() - lesson.float()).abs().mean() < 2

def test_truncated_png_names_file_on_pil_path(tmp_path):
    good = _save(tmp_path/'p.png', _rgb(64, 64).convert('P'))  # palette: decoded by PIL, not torchvision
    bad = tmp_path/'cut.png'
    bad.write_bytes(good.read_bytes()[:200])
    il = ImageList([bad], tmp_path, tfms=[make_rgb, to_byte_tensor])
    with pytest.raises(BadImageError, match='cut.png'): il[0]

@pytest.mark.parametrize('name,content', [('empty.png', b''), ('text.jpg', b'just some text'), ('html.jpeg', b'<html></html>')])
def test_not_an_image(tmp_path, name, content):
    fn = tmp_path/name
    fn.write_bytes(content)
    il = ImageList([fn], tmp_path, tfms=[make_rgb, to_byte_tensor, ResizeFixed(8)])
    with pytest.raises(BadImageError, match=name): il[0]
    assert fn in verify_images([fn])

def test_verify_images_all_good(folder):
    assert verify_images(get_files(folder, image_extensions, recurse=True)) == {}

def test_bad_file_in_databunch_names_file(folder):
    bad = folder/'train'/'cat'/'zzz.jpg'
    bad.write_bytes(b'')
    with pytest.raises(BadImageError, match='zzz.jpg'): image_databunch(folder, size=16, bs=64)

# ---------------------------------------------------------------- colour modes

def _mode_image(mode):
    if mode == 'I;16': return PIL.Image.fromarray(np.full((6, 5), 100 * 256, dtype=np.uint16))
    img = PIL.Image.new('RGB', (5, 6), (100, 100, 100))
    return img.convert('P', palette=PIL.Image.Palette.ADAPTIVE) if mode == 'P' else img.convert(mode)

@pytest.mark.parametrize('mode,ext', [('L', 'png'), ('LA', 'png'), ('P', 'png'), ('RGBA', 'png'), ('CMYK', 'jpg'),
                                      ('I;16', 'png'), ('RGB', 'jpg'), ('L', 'jpg'), ('CMYK', 'tiff')])
def test_modes_from_files(tmp_path, mode, ext):
    fn = _save(tmp_path/f'img.{ext}', _mode_image(mode))
    for tfm, c in ((make_rgb, 3), (make_grey, 1)):
        for tfms in ([to_byte_tensor, ResizeFixed(4)], [DecodeResize(4)]):
            x = ImageList([fn], tmp_path, tfms=[tfm] + tfms)[0]
            assert x.dtype == torch.uint8 and x.shape == (c, 4, 4)
            assert (x.int() - 100).abs().max() <= 3, (mode, ext, tfms, x.flatten()[:3])

def test_rgba_alpha_dropped():
    img = PIL.Image.new('RGBA', (2, 2), (10, 20, 30, 0))
    assert to_byte_tensor(make_rgb(img))[:, 0, 0].tolist() == [10, 20, 30]

def test_16bit_scaled_not_clipped():
    img = PIL.Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert to_byte_tensor(make_grey(img)).flatten().tolist() == [0, 128, 255]

def test_c_in_from_modes(tmp_path):
    for split in ('train', 'val'):
        for c in ('a', 'b'): _save(tmp_path/split/c/'x.png', PIL.Image.new('L', (8, 8), 50))
    assert image_databunch(tmp_path).c_in == 1
    _save(tmp_path/'train'/'a'/'y.jpg', _rgb(8, 8))
    data = image_databunch(tmp_path, size=8)
    assert data.c_in == 3 and next(iter(data.train_dl))[0].shape[1] == 3

# ---------------------------------------------------------------- folders

def test_upper_case_and_hidden(folder):
    (folder/'train'/'cat'/'.hidden.jpg').write_bytes(b'')
    (folder/'train'/'.ipynb_checkpoints').mkdir()
    _save(folder/'train'/'.ipynb_checkpoints'/'a.jpg', _rgb())
    names = [o.name for o in get_files(folder, image_extensions, recurse=True)]
    assert '2.JPEG' in names and '.hidden.jpg' not in names and len(names) == 12

def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'{tmp_path}.*with extensions .*\\.jpg'): ImageList.from_files(tmp_path)
    (tmp_path/'notes.txt').write_text('x')
    with pytest.raises(FileNotFoundError, match='no images'): image_databunch(tmp_path)

def test_missing_split_folder(folder):
    with pytest.raises(FileNotFoundError, match='valid'): image_databunch(folder, valid_name='valid', size=16)

def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope'): get_files(tmp_path/'nope')

def test_valid_label_not_in_train_vocab(folder):
    _save(folder/'val'/'emu'/'0.jpg', _rgb())
    _save(folder/'val'/'yak'/'0.jpg', _rgb())
    with pytest.raises(ValueError, match=r"\['emu', 'yak'\]"): image_databunch(folder, size=16)

def test_mixed_sizes_need_size(folder):
    data = image_databunch(folder, bs=4)
    with pytest.raises(ValueError, match='sizes'): next(iter(data.train_dl))
    with pytest.raises(ValueError, match='size='): image_databunch(folder, preload=True)

# ---------------------------------------------------------------- the databunch

def test_image_databunch(folder):
    data = image_databunch(folder, size=(16, 20), bs=3)
    assert (data.c_in, data.c_out, len(data.train_ds), len(data.valid_ds)) == (3, 2, 8, 4)
    assert data.train_ds.proc_y.vocab == ['cat', 'dog']
    xb, yb = next(iter(data.valid_dl))
    assert xb.shape == (4, 3, 16, 20) and xb.dtype == torch.float32 and yb.tolist() == [0, 0, 1, 1]
    pre = image_databunch(folder, size=(16, 20), bs=3, preload=True)
    xp, yp = next(iter(pre.valid_dl))
    assert torch.equal(xp, xb) and torch.equal(yp, yb)
    torch.testing.assert_close(pre.norm.mean, data.norm.mean)

def test_channel_stats_match_data(folder):
    data = image_databunch(folder, size=16, preload=True)
    x = data.train_ds.x.float() / 255
    torch.testing.assert_close(data.norm.mean, x.mean((0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(data.norm.std, x.std((0, 2, 3)), atol=1e-2, rtol=0)

# ---------------------------------------------------------------- worker processes

SPAWN = pytest.param('spawn', marks=pytest.mark.slow)   # each spawned worker imports dl2: seconds

@pytest.mark.parametrize('method', ['fork', SPAWN])
def test_workers(folder, method):
    "Two workers under each start method give the same batches as the main process (spawn pickles the dataset)."
    data = image_databunch(folder, size=16, bs=1, num_workers=2, multiprocessing_context=method)
    data0 = image_databunch(folder, size=16, bs=1)
    (xs, ys), (xs0, ys0) = [[torch.cat(o) for o in zip(*dl)] for dl in (data.valid_dl, data0.valid_dl)]
    assert data.valid_dl.num_workers == 2 and torch.equal(xs, xs0) and torch.equal(ys, ys0)

def _collate_in_shared_memory(batch):
    "Collate function for the test below: where `SharedCollate` puts a batch inside a worker."
    return torch.tensor(SharedCollate().empty((2, 3)).is_shared())

@pytest.mark.parametrize('method', ['fork', SPAWN])
def test_batches_made_in_shared_memory_by_workers(method):
    "Inside a worker a batch is made in shared memory (sending it costs no copy); in the main process, in ordinary memory."
    assert not SharedCollate().empty((2, 3)).is_shared()
    dl = DataLoader(list(range(4)), batch_size=2, num_workers=1, collate_fn=_collate_in_shared_memory, multiprocessing_context=method)
    assert all(bool(b) for b in dl)

def test_workers_report_bad_file(folder):
    (folder/'val'/'cat'/'0.jpg').write_bytes(b'GIF89a broken')
    data = image_databunch(folder, size=16, bs=4)
    dl = DataLoader(data.valid_ds, batch_size=4, num_workers=1, collate_fn=data.valid_dl.collate_fn, multiprocessing_context='fork')
    with pytest.raises(BadImageError, match='0.jpg'): next(iter(dl))

@pytest.mark.parametrize('preload', [False, True])
def test_pickles(folder, preload):
    "What workers receive under spawn survives pickling: datasets (file-backed or preloaded), collate, norm."
    data = image_databunch(folder, size=16, preload=preload)
    for ds in (data.train_ds, data.valid_ds):
        ds2 = pickle.loads(pickle.dumps(ds))
        assert torch.equal(ds2[1][0], ds[1][0]) and ds2[1][1] == ds[1][1]
    if not preload: assert torch.equal(pickle.loads(pickle.dumps(data.valid_dl.collate_fn)).norm.std, data.norm.std)

# ---------------------------------------------------------------- folders of the wrong shape

posix_only = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX: symbolic links need privileges on Windows, which has no signals to send or file size limits')

def _tree(root, spec):
    "PNGs under `root`: `{relative folder: number of images}`."
    for rel, n in spec.items():
        for i in range(n): _save(root/rel/f'{i}.png', PIL.Image.new('L', (8, 8), 40 * i))
    return root

def test_class_images_one_folder_deeper_are_used(tmp_path):
    "`train/c/sub/x.png` belongs to class c: all 27 images, not 18, with no warning."
    _tree(tmp_path, {'train/a': 6, 'train/b': 6, 'train/c/sub': 6, 'val/a': 3, 'val/b': 3, 'val/c/sub': 3})
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        data = image_databunch(tmp_path, bs=4)
    assert (len(data.train_ds), len(data.valid_ds), data.vocab) == (18, 9, ['a', 'b', 'c'])

def test_images_outside_class_folders_are_left_out_with_a_warning(tmp_path):
    _tree(tmp_path, {'train/a': 2, 'train/b': 2, 'train': 1, 'val/a': 1, 'val/b': 1})
    with pytest.warns(UserWarning, match='1 of 7 items'): data = image_databunch(tmp_path, bs=4)
    assert len(data.train_ds) == 4

@posix_only
def test_linked_class_and_split_folders(tmp_path):
    "A class folder that is a link counts (18 of 18 images); so do train/ and val/ as links; a link back up is not followed round."
    _tree(tmp_path/'elsewhere', {'b_train': 6, 'b_val': 3})
    _tree(tmp_path/'data', {'train/a': 6, 'val/a': 3})
    os.symlink(tmp_path/'elsewhere'/'b_train', tmp_path/'data'/'train'/'b')
    os.symlink(tmp_path/'elsewhere'/'b_val', tmp_path/'data'/'val'/'b')
    os.symlink(tmp_path/'data'/'train', tmp_path/'data'/'train'/'a'/'loop')
    data = image_databunch(tmp_path/'data', bs=4)
    assert (len(data.train_ds), len(data.valid_ds), data.vocab) == (12, 6, ['a', 'b'])
    (tmp_path/'linked').mkdir()
    for split in ('train', 'val'): os.symlink(tmp_path/'data'/split, tmp_path/'linked'/split)
    assert len(image_databunch(tmp_path/'linked', bs=4, preload=True).train_ds) == 12

def test_one_class_warns(tmp_path):
    _tree(tmp_path, {'train/a': 4, 'val/a': 2})
    with pytest.warns(UserWarning, match="one class, 'a'"): image_databunch(tmp_path, bs=4)

def test_building_a_databunch_closes_its_files(folder):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for preload in (False, True): next(iter(image_databunch(folder, size=16, bs=4, preload=preload).train_dl))
        import gc; gc.collect()
    assert [str(o.message) for o in w if issubclass(o.category, ResourceWarning)] == []

# ---------------------------------------------------------------- memory and disks

def _run(code, env=None, timeout=120):
    "Run `code` in a fresh interpreter: `(returncode, stdout, stderr)`."
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    return p.returncode, p.stdout, p.stderr

@pytest.mark.slow
@posix_only
def test_preload_cache_on_a_full_disk_warns_and_goes_on(folder, tmp_path):
    "Files may grow to 20 kB only (as if the disk filled up): the 150 kB cache cannot be written, and that is a warning."
    code = f'''
import resource, signal, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit then fails with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from dl2.image_folder import image_databunch
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    data = image_databunch({str(folder)!r}, size=64, preload=True)
print(len(data.train_ds), [str(o.message).split(' /')[0] for o in w if 'preload cache' in str(o.message)])
'''
    rc, out, err = _run(code, dict(DL2_DATA=str(tmp_path/'data')))
    assert rc == 0, err
    assert out.strip() == "8 ['could not write the preload cache']", out
    assert not list((tmp_path/'data'/'cache').iterdir())   # no half-written cache left

def test_preload_too_big_for_memory_is_a_clear_error(folder):
    if not Path('/proc/meminfo').exists(): pytest.skip('dl2 reads the free memory from Linux /proc/meminfo')
    with pytest.raises(ValueError, match=r'preloading 12 images of 3x100000x100000 from .* needs 335\.3 GB of memory, but .* is free'):
        image_databunch(folder, size=100_000, preload=True)

# ---------------------------------------------------------------- interrupted and killed PNG builds

def _start_build(data):
    "A fresh interpreter, in a process group of its own, writing Fashion-MNIST's PNG folder into the data folder `data`; returned once it writes."
    data.mkdir(exist_ok=True)
    (data/'fashion-mnist').symlink_to(find_mnist())
    p = subprocess.Popen([sys.executable, '-c', 'from dl2.image_folder import fashion_mnist_folder; fashion_mnist_folder(n_workers=2)'],
                         env=dict(os.environ, DL2_DATA=str(data)), stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = p.stderr.readline()
    assert 'writing fashion-mnist' in line, line + p.stderr.read()
    return p

def _group_gone(pgid, timeout=15):
    "Whether every process of group `pgid` exits within `timeout` seconds."
    for _ in range(int(timeout * 10)):
        try: os.killpg(pgid, 0)
        except ProcessLookupError: return True
        time.sleep(0.1)
    return False

def _builds(data): return [p.name for p in data.iterdir() if p.name.startswith('.fashion-mnist-png')]

@pytest.mark.slow
@posix_only
@pytest.mark.parametrize('delay', [0.2, 1.0, 2.5])
def test_png_build_interrupted_by_ctrl_c(tmp_path, delay):
    "Ctrl-C (SIGINT to the whole process group, as a terminal sends it): a prompt exit with a short traceback, no process or folder left."
    p = _start_build(tmp_path)
    time.sleep(delay)
    os.killpg(p.pid, signal.SIGINT)
    try: _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail('the build went on for 30 s after Ctrl-C')
    assert p.returncode != 0
    assert err.rstrip().endswith('KeyboardInterrupt') and 'release unlocked lock' not in err and len(err.splitlines()) < 25, err
    assert _group_gone(p.pid), 'pool workers outlived the interrupted build'
    assert _builds(tmp_path) == [] and not (tmp_path/'fashion-mnist-png').exists()

@pytest.mark.slow
@posix_only
def test_png_build_killed_by_a_signal_is_cleaned_up_by_the_next(tmp_path, monkeypatch):
    "SIGKILL to the main process: its workers exit by themselves, and the next build removes the folder it left."
    p = _start_build(tmp_path)
    time.sleep(1)
    p.kill(); p.wait()
    assert _group_gone(p.pid), 'pool workers outlived their killed main process'
    assert len(_builds(tmp_path)) == 1
    monkeypatch.setenv('DL2_DATA', str(tmp_path))
    fashion_mnist_folder(n_per_class=2)
    assert _builds(tmp_path) == []

# ---------------------------------------------------------------- what importing brings

@pytest.mark.slow
def test_imports_stay_light():
    "The lesson module loads none of the engine, speed wing, distributed code or command; nothing of dl2 loads torchvision."
    code = '''import sys, dl2.data_block
print(sorted(m for m in sys.modules if m.startswith(('dl2.fast', 'dl2.image_folder', 'dl2.distributed', 'dl2.train', 'torchvision'))))
import dl2.course, dl2.image_folder
print(sorted(m for m in sys.modules if m.startswith('torchvision')))'''
    rc, out, err = _run(code)
    assert rc == 0 and out.split() == ['[]', '[]'], out + err
