"Real-world files through `dl2.data_block`: bad files, colour modes, odd folders, and worker processes."
import pickle
from pathlib import Path
import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader
from dl2.data_block import *

# torchvision 0.29 deprecated its image decoders (in favour of torchcodec); dl2 falls back to PIL once they go
pytestmark = pytest.mark.filterwarnings('ignore:The image decoding:DeprecationWarning')


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
    import dl2.data_block as db
    if reduced_by == 'PIL': monkeypatch.setattr(db, 'simplejpeg', None)
    elif db.simplejpeg is None: pytest.skip('simplejpeg is not installed')
    good = _save(tmp_path/'big.jpg', _rgb(600, 500))
    bad = tmp_path/'cut_big.jpg'
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    assert ImageList([good], tmp_path, tfms=[make_rgb, ResizeFixed(64)])[0].shape == (3, 64, 64)
    il = ImageList([bad], tmp_path, tfms=[make_rgb, ResizeFixed(64)])
    with pytest.raises(BadImageError, match='cut_big.jpg'): il[0]

def test_reduced_scale_grey_jpeg(tmp_path):
    "A big grey JPEG decoded at reduced scale keeps one channel (make_grey) or becomes RGB (make_rgb)."
    g = _save(tmp_path/'grey.jpg', _rgb(600, 500).convert('L'))
    assert ImageList([g], tmp_path, tfms=[make_grey, ResizeFixed(64)])[0].shape == (1, 64, 64)
    assert ImageList([g], tmp_path, tfms=[make_rgb, ResizeFixed(64)])[0].shape == (3, 64, 64)

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
        x = ImageList([fn], tmp_path, tfms=[tfm, to_byte_tensor, ResizeFixed(4)])[0]
        assert x.dtype == torch.uint8 and x.shape == (c, 4, 4)
        assert (x.int() - 100).abs().max() <= 3, (mode, ext, x.flatten()[:3])

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

@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_workers(folder, method):
    "Two workers under each start method give the same batches as the main process (spawn pickles the dataset)."
    data = image_databunch(folder, size=16, bs=1, num_workers=2, multiprocessing_context=method)
    data0 = image_databunch(folder, size=16, bs=1)
    (xs, ys), (xs0, ys0) = [[torch.cat(o) for o in zip(*dl)] for dl in (data.valid_dl, data0.valid_dl)]
    assert data.valid_dl.num_workers == 2 and torch.equal(xs, xs0) and torch.equal(ys, ys0)

def _collate_in_shared_memory(batch):
    "Collate function for the test below: where `_batch_tensor` puts a batch inside a worker."
    from dl2.data_block import _batch_tensor
    return torch.tensor(_batch_tensor((2, 3), torch.float32).is_shared())

@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_batches_made_in_shared_memory_by_workers(method):
    "Inside a worker a batch is made in shared memory (sending it costs no copy); in the main process, in ordinary memory."
    from dl2.data_block import _batch_tensor
    assert not _batch_tensor((2, 3), torch.float32).is_shared()
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
