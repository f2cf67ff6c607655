"Offline tests of `dl2.datasets` downloads and extraction against a local HTTP server."
import gzip, hashlib, http.server, io, socket, struct, tarfile, threading, time, zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

import dl2.datasets as ds


class Route(NamedTuple):
    body: bytes
    length: int | None = None  # Content-Length to claim, if not the true one
    stall: float = 0           # send half the body, then hang this long


class Server(http.server.ThreadingHTTPServer):
    "Serves `routes` on 127.0.0.1 and records every requested path."
    def __init__(self):
        self.routes, self.requests = {}, []
        super().__init__(('127.0.0.1', 0), Handler)

    def url(self, path): return f'http://127.0.0.1:{self.server_port}{path}'


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None: return self.send_error(404)
        self.send_response(200)
        self.send_header('Content-Length', str(route.length or len(route.body)))
        self.end_headers()
        if route.stall:
            self.wfile.write(route.body[:len(route.body)//2])
            self.wfile.flush()
            time.sleep(route.stall)
        else: self.wfile.write(route.body)

    def log_message(self, *args): pass


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def data(tmp_path, monkeypatch):
    "A private, empty data folder, and no Debian copy of Fashion-MNIST."
    monkeypatch.setenv('DL2_DATA', str(tmp_path/'data'))
    monkeypatch.setattr(ds, 'FASHION_MNIST_DEBIAN', tmp_path/'no-debian')
    return tmp_path/'data'


def tgz(members):
    "A .tgz as bytes from `members`: name -> bytes, or a TarInfo -> None for links and devices."
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as t:
        for k, v in members.items():
            if isinstance(k, tarfile.TarInfo): t.addfile(k)
            else:
                ti = tarfile.TarInfo(k)
                ti.size = len(v)
                t.addfile(ti, io.BytesIO(v))
    return buf.getvalue()


def tarinfo(name, type, linkname=''):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = type, linkname
    return ti


def hidden_files(root):
    "Temporary files or folders (ours are all dot-named) left anywhere under `root`."
    return [p for p in Path(root).rglob('.*')]


GOOD = {'good/a.txt': b'alpha', 'good/sub/b.txt': b'beta' * 1000}


def test_data_path_from_env(data):
    assert ds.data_path() == data and data.is_dir()


def test_good_archive_extracts_once(server, data):
    body = tgz(GOOD)
    server.routes['/good.tgz'] = Route(body)
    url = server.url('/good.tgz')
    path = ds.untar_data(url, checksum=hashlib.sha256(body).hexdigest())
    assert path == data/'good'
    assert (path/'a.txt').read_bytes() == b'alpha' and (path/'sub'/'b.txt').read_bytes() == b'beta' * 1000
    assert (data/'archive'/'good.tgz').read_bytes() == body
    assert ds.untar_data(url) == path
    assert server.requests == ['/good.tgz']
    assert hidden_files(data) == []


def test_force_replaces(server, data):
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    path = ds.untar_data(server.url('/good.tgz'))
    server.routes['/good.tgz'] = Route(tgz({'good/new.txt': b'new'}))
    assert ds.untar_data(server.url('/good.tgz'), force=True) == path
    assert sorted(p.name for p in path.iterdir()) == ['new.txt']
    assert len(server.requests) == 2 and hidden_files(data) == []


def test_custom_dest_and_zip(server, data, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z: z.writestr('x.txt', 'x'); z.writestr('y/z.txt', 'z')
    server.routes['/flat.zip'] = Route(buf.getvalue())
    path = ds.untar_data(server.url('/flat.zip'), dest=tmp_path/'mine')
    assert path == tmp_path/'mine' and (path/'x.txt').read_text() == 'x' and (path/'y'/'z.txt').read_text() == 'z'
    assert hidden_files(tmp_path) == []


@pytest.mark.parametrize('route', [Route(tgz(GOOD), length=len(tgz(GOOD)) + 1000), Route(tgz(GOOD), stall=2)],
                         ids=['short-body', 'stalled'])
def test_truncated_download(server, data, route):
    server.routes['/truncated.tgz'] = route
    with pytest.raises(ds.DownloadError, match='truncated.tgz'):
        ds.untar_data(server.url('/truncated.tgz')) if not route.stall else \
            ds.download_url(server.url('/truncated.tgz'), data/'archive'/'truncated.tgz', timeout=0.3)
    assert not (data/'truncated').exists() and not (data/'archive'/'truncated.tgz').exists()
    assert hidden_files(data) == []


@pytest.mark.parametrize('hash', [hashlib.md5, hashlib.sha256])
def test_checksum_mismatch(server, data, hash):
    body = tgz(GOOD)
    server.routes['/sum.tgz'] = Route(body)
    wrong = hash(b'something else').hexdigest()
    with pytest.raises(ds.DownloadError) as e: ds.untar_data(server.url('/sum.tgz'), checksum=wrong)
    msg = str(e.value)
    assert server.url('/sum.tgz') in msg and wrong in msg and hash(body).hexdigest() in msg
    assert not (data/'sum').exists() and not (data/'archive'/'sum.tgz').exists()
    assert hidden_files(data) == []


def test_http_error_names_url(server, data):
    with pytest.raises(ds.DownloadError, match='missing.tgz'): ds.untar_data(server.url('/missing.tgz'))
    assert list(data.rglob('*')) in ([], [data/'archive'])


UNSAFE = {
    'dotdot': ({'evil/ok.txt': b'ok', '../evil.txt': b'pwned'}, '../evil.txt'),
    'absolute': ({'/ABS/abs.txt': b'pwned'}, '/ABS/abs.txt'),
    'symlink-out': ({tarinfo('evil/link', tarfile.SYMTYPE, '../../..'): None}, 'evil/link'),
    'symlink-abs': ({tarinfo('evil/link', tarfile.SYMTYPE, '/ABS'): None}, 'evil/link'),
    'through-link': ({tarinfo('evil/link', tarfile.SYMTYPE, '.'): None, 'evil/link/x.txt': b'x'}, 'evil/link/x.txt'),
    'hardlink-out': ({tarinfo('evil/hard', tarfile.LNKTYPE, '../outside.txt'): None}, 'evil/hard'),
    'device': ({tarinfo('evil/dev', tarfile.CHRTYPE): None}, 'evil/dev'),
}


@pytest.mark.parametrize('kind', UNSAFE)
def test_unsafe_archive_refused(server, data, tmp_path, kind):
    members, bad = UNSAFE[kind]
    members = {(k.replace('/ABS', str(tmp_path)) if isinstance(k, str) else k): v for k, v in members.items()}
    for k in members:
        if isinstance(k, tarfile.TarInfo): k.linkname = k.linkname.replace('/ABS', str(tmp_path))
    server.routes['/evil.tgz'] = Route(tgz(members))
    with pytest.raises(ds.UnsafeArchiveError) as e: ds.untar_data(server.url('/evil.tgz'))
    assert 'evil.tgz' in str(e.value) and repr(bad.replace('/ABS', str(tmp_path))) in str(e.value)
    assert not (data/'evil').exists() and not (data/'archive'/'evil.tgz').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data'] and hidden_files(tmp_path) == []


def test_unsafe_zip_refused(server, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z: z.writestr('../evil.txt', 'pwned')
    server.routes['/evil.zip'] = Route(buf.getvalue())
    with pytest.raises(ds.UnsafeArchiveError, match=r"evil\.zip.*'\.\./evil\.txt'"): ds.untar_data(server.url('/evil.zip'))
    assert hidden_files(data) == [] and not (data/'evil').exists()


@pytest.mark.parametrize('body', [b'not a tarball' * 100, tgz(GOOD)[:60], tgz(GOOD)[:-12]],
                         ids=['junk', 'cut-mid', 'cut-trailer'])  # cut-trailer: all tar headers intact
def test_corrupt_archive_removed_then_retried(server, data, body):
    server.routes['/bad.tgz'] = Route(body)
    with pytest.raises(ds.ArchiveError, match='bad.tgz'): ds.untar_data(server.url('/bad.tgz'))
    assert not (data/'archive'/'bad.tgz').exists() and not (data/'bad').exists()
    assert hidden_files(data) == []
    server.routes['/bad.tgz'] = Route(tgz({'bad/a.txt': b'fixed'}))
    assert (ds.untar_data(server.url('/bad.tgz'))/'a.txt').read_bytes() == b'fixed'
    assert len(server.requests) == 2


def test_download_url_direct(server, tmp_path):
    server.routes['/f.bin'] = Route(b'x' * 3_000_000)
    dest = ds.download_url(server.url('/f.bin'), tmp_path/'sub'/'f.bin', show_progress=False)
    assert dest.read_bytes() == b'x' * 3_000_000
    assert sorted(p.name for p in (tmp_path/'sub').iterdir()) == ['f.bin']


# --- MNIST-style idx files -----------------------------------------------------------------------------

def idx_gz(a):
    "A uint8 array as a gzipped idx file."
    return gzip.compress(bytes([0, 0, 8, a.ndim]) + struct.pack(f'>{a.ndim}I', *a.shape) + a.tobytes(), compresslevel=1)


@pytest.fixture(scope='module')
def fake_mnist():
    "The four idx .gz files, full size: image i has pixel (0,0) = i % 256, label i % 10."
    def split(n):
        imgs = np.zeros((n, 28, 28), np.uint8)
        imgs[:, 0, 0] = np.arange(n) % 256
        return idx_gz(imgs), idx_gz((np.arange(n) % 10).astype(np.uint8))
    return dict(zip(ds.MNIST_FILES, [*split(60000), *split(10000)]))


def serve_mnist(server, monkeypatch, files, name):
    url_attr, sums_attr = {'fashion-mnist': ('FASHION_MNIST', 'FASHION_MNIST_CHECKSUMS'),
                           'mnist': ('MNIST', 'MNIST_CHECKSUMS')}[name]
    for fname, body in files.items(): server.routes[f'/{name}/{fname}'] = Route(body)
    monkeypatch.setattr(ds.URLs, url_attr, server.url(f'/{name}/'))
    monkeypatch.setattr(ds, sums_attr, {f: hashlib.md5(b).hexdigest() for f, b in files.items()})


@pytest.mark.parametrize('name', ['fashion-mnist', 'mnist'])
def test_mnist_download_and_cache(server, data, monkeypatch, fake_mnist, name):
    serve_mnist(server, monkeypatch, fake_mnist, name)
    assert ds.find_mnist(name) == data/name
    assert sorted(p.name for p in (data/name).iterdir()) == sorted(ds.MNIST_FILES)
    x_train, y_train, x_valid, y_valid = ds.get_data(name)
    assert x_train.shape == (60000, 784) and x_valid.shape == (10000, 784)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(x_train[:, 0], (torch.arange(60000) % 256).float() / 255)
    assert torch.equal(y_valid, torch.arange(10000) % 10)
    assert float(x_train.max()) == 1. and float(x_train.min()) == 0.
    assert len(server.requests) == 4
    (data/name/ds.MNIST_FILES[0]).unlink()  # the cache alone must serve the second call
    assert all(torch.equal(a, b) for a, b in zip(ds.get_data(name), (x_train, y_train, x_valid, y_valid)))
    assert len(server.requests) == 4 and hidden_files(data) == []


def test_mnist_bad_checksum(server, data, monkeypatch, fake_mnist):
    serve_mnist(server, monkeypatch, fake_mnist, 'fashion-mnist')
    monkeypatch.setitem(ds.FASHION_MNIST_CHECKSUMS, 't10k-images-idx3-ubyte.gz', '0' * 32)
    with pytest.raises(ds.DatasetNotFoundError) as e: ds.find_mnist()
    assert 't10k-images-idx3-ubyte.gz' in str(e.value) and '0' * 32 in str(e.value)
    assert not (data/'fashion-mnist'/'t10k-images-idx3-ubyte.gz').exists() and hidden_files(data) == []


def test_mnist_wrong_shape_rejected(server, data, monkeypatch, fake_mnist):
    files = {**fake_mnist, 't10k-labels-idx1-ubyte.gz': idx_gz(np.zeros(9999, np.uint8))}
    serve_mnist(server, monkeypatch, files, 'mnist')
    with pytest.raises(ds.DatasetNotFoundError, match=r't10k-labels.*\(9999,\)'): ds.find_mnist('mnist')


def closed_port_url():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{s.getsockname()[1]}/'


def test_no_data_anywhere(data, monkeypatch):
    monkeypatch.setattr(ds.URLs, 'FASHION_MNIST', closed_port_url())
    with pytest.raises(FileNotFoundError) as e: ds.get_data()
    assert isinstance(e.value, ds.DatasetNotFoundError)
    assert 'apt-get install dataset-fashion-mnist' in str(e.value) and 'DL2_DATA' in str(e.value)
    assert 'could not download' in str(e.value)
    assert not (data/'fashion-mnist.pt').exists()


def test_get_data_bad_name():
    with pytest.raises(ValueError, match="'fashion-mnist' or 'mnist'"): ds.get_data('cifar10')


def test_read_idx_errors(tmp_path):
    (tmp_path/'bad.gz').write_bytes(gzip.compress(b'\x89PNG rest'))
    with pytest.raises(ValueError, match='bad.gz.*not an idx file'): ds.read_idx(tmp_path/'bad.gz')
    (tmp_path/'short').write_bytes(bytes([0, 0, 8, 1]) + struct.pack('>I', 5) + b'abc')
    with pytest.raises(ValueError, match='short.*5,? bytes.*3 bytes'): ds.read_idx(tmp_path/'short')


DEBIAN = Path('/usr/share/datasets/fashion-mnist')


@pytest.mark.skipif(not DEBIAN.is_dir(), reason='Debian package dataset-fashion-mnist not installed')
def test_debian_copy_found_when_data_folder_empty(data, monkeypatch):
    monkeypatch.setattr(ds, 'FASHION_MNIST_DEBIAN', DEBIAN)
    monkeypatch.setattr(ds.URLs, 'FASHION_MNIST', closed_port_url())  # proves no download is attempted
    assert ds.find_mnist() == DEBIAN
    assert ds.read_idx(DEBIAN/'t10k-labels-idx1-ubyte.gz').shape == (10000,)
