"Offline tests of `dl2.datasets` downloads, extraction and caches against a local HTTP server and hostile inputs."
import errno, fcntl, gzip, hashlib, http.server, inspect, io, os, re, shutil, signal, socket, stat, struct, subprocess
import sys, tarfile, tempfile, threading, time, tracemalloc, zipfile, zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

import dl2.datasets as ds

ROOT = Path(ds.__file__).resolve().parents[1]  # the checkout whose dl2 these tests import; child processes use it too


class Route(NamedTuple):
    body: bytes = b''
    length: int | str | None = None  # Content-Length to claim, if not the true one; '' sends none
    stall: float = 0                 # send half the body, then hang this long
    trickle: float = 0               # send the body a byte at a time, this many seconds apart
    head_trickle: float = 0          # send even the status line and headers a byte at a time
    delay: float = 0                 # wait this long before answering
    endless: bool = False            # no Content-Length, and a body that never ends
    status: int = 200
    location: str | None = None      # where a redirect points


class Server(http.server.ThreadingHTTPServer):
    "Serves `routes` on 127.0.0.1 and records every requested path."
    block_on_close = False  # a handler still trickling to a client that gave up must not hold up the teardown

    def __init__(self):
        self.routes, self.requests = {}, []
        super().__init__(('127.0.0.1', 0), Handler)

    def url(self, path): return f'http://127.0.0.1:{self.server_port}{path}'

    def handle_error(self, request, client_address): pass  # clients hang up on purpose here


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None: return self.send_error(404)
        time.sleep(route.delay)
        if route.head_trickle:
            head = f'HTTP/1.0 200 OK\r\nServer: slow\r\nContent-Length: {len(route.body)}\r\n\r\n'.encode()
            return self.trickle(head + route.body, route.head_trickle)
        self.send_response(route.status)
        if route.location: self.send_header('Location', route.location)
        length = len(route.body) if route.length is None else route.length
        if length != '' and not route.endless: self.send_header('Content-Length', str(length))
        self.end_headers()
        if route.endless:
            while True: self.wfile.write(bytes(1 << 16))
        elif route.trickle: self.trickle(route.body, route.trickle)
        elif route.stall:
            self.wfile.write(route.body[:len(route.body)//2])
            self.wfile.flush()
            time.sleep(route.stall)
        else: self.wfile.write(route.body)

    def trickle(self, data, gap):
        for i in range(len(data)):
            self.wfile.write(data[i:i+1])
            self.wfile.flush()
            time.sleep(gap)

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


def zipped(members):
    "A .zip as bytes from `members`: name (or ZipInfo) -> bytes."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items(): z.writestr(k, v)
    return buf.getvalue()


def patch_zip(body, **fields):
    "`body`, a one-member zip, with header fields changed in both its local header and its central directory."
    offsets = {'flags': (6, 8, '<H'), 'method': (8, 10, '<H'), 'size': (22, 24, '<I')}  # local, central, format
    data = bytearray(body)
    central = data.rfind(b'PK\x01\x02')
    for name, value in fields.items():
        local, cd, fmt = offsets[name]
        struct.pack_into(fmt, data, local, value)
        struct.pack_into(fmt, data, central + cd, value)
    return bytes(data)


def tarinfo(name, type, linkname=''):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = type, linkname
    return ti


TMP_NAME = re.compile(r'\..+\.[0-9a-f]{8}\.[0-9]+-[0-9a-f]{8}\.[a-z]+')

def leftovers(root):
    "Temporary files or folders (dl2 names them `.<name>.<8 hex>.<pid>-<machine>.<kind>`) left anywhere under `root`."
    return [p for p in Path(root).rglob('.*') if TMP_NAME.fullmatch(p.name)]


def archives(data):
    "The archives cached in the data folder `data`."
    return sorted(p for p in (data/'archive').glob('*') if not p.name.startswith('.')) if (data/'archive').exists() else []


def full_disk_open(limit):
    "An `open` whose files for writing fail with ENOSPC once `limit` bytes have been written in all."
    written = 0
    class Full(io.FileIO):
        def write(self, b):
            nonlocal written
            written += len(b)
            if written > limit: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)
    def fake_open(file, mode='r', *args, **kwargs):
        return Full(file, mode) if set(mode) & set('wxa') else open(file, mode, *args, **kwargs)
    return fake_open


def child_env(**env):
    "The environment for a child Python that imports the same dl2 as these tests."
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), **env}


GOOD = {'good/a.txt': b'alpha', 'good/sub/b.txt': b'beta' * 1000}
TRICKLE = Route(bytes(2000), trickle=0.02)  # 50 bytes/s for 40 s


def test_data_path_from_env(data):
    assert ds.data_path() == data and data.is_dir()


def test_dl2_data_is_a_file(tmp_path, monkeypatch):
    (tmp_path/'f').write_text('x')
    monkeypatch.setenv('DL2_DATA', str(tmp_path/'f'))
    with pytest.raises(NotADirectoryError, match=r'\$DL2_DATA'): ds.data_path()
    with pytest.raises(NotADirectoryError, match=r'\$DL2_DATA'): ds.get_data()
    assert (tmp_path/'f').read_text() == 'x'


def test_public_names():
    assert 'atomic_write' in ds.__all__
    assert ds.URLs.IMAGENETTE == 'https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz'
    params = inspect.signature(ds.untar_data).parameters
    assert list(params)[:4] == ['url', 'dest', 'checksum', 'force']
    assert all(p.kind == p.KEYWORD_ONLY for p in list(params.values())[4:])
    # imagenette2.tgz is 1.5 GB and unpacks to about as much (JPEGs don't compress); mnist_png holds 70,023 members
    assert params['max_bytes'].default >= 2e9 and params['max_files'].default >= 70_023


def test_good_archive_extracts_once(server, data):
    body = tgz(GOOD)
    server.routes['/good.tgz'] = Route(body)
    url = server.url('/good.tgz')
    path = ds.untar_data(url, checksum=hashlib.sha256(body).hexdigest())
    assert path == data/'good'
    assert (path/'a.txt').read_bytes() == b'alpha' and (path/'sub'/'b.txt').read_bytes() == b'beta' * 1000
    assert (path/'.dl2_source').read_text().strip() == url
    assert [a.read_bytes() for a in archives(data)] == [body]
    assert ds.untar_data(url) == path
    assert server.requests == ['/good.tgz']
    assert leftovers(data) == []


def test_imagenette_folder_name(server, data, monkeypatch):
    server.routes['/fast-ai-imageclas/imagenette2-160.tgz'] = Route(tgz({'imagenette2-160/train/n01/x.JPEG': b'jpeg'}))
    monkeypatch.setattr(ds.URLs, 'IMAGENETTE_160', server.url('/fast-ai-imageclas/imagenette2-160.tgz'))
    path = ds.untar_data(ds.URLs.IMAGENETTE_160)
    assert path == data/'imagenette2-160' and (path/'train'/'n01'/'x.JPEG').read_bytes() == b'jpeg'


def test_force_replaces(server, data):
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    path = ds.untar_data(server.url('/good.tgz'))
    server.routes['/good.tgz'] = Route(tgz({'good/new.txt': b'new'}))
    assert ds.untar_data(server.url('/good.tgz'), force=True) == path
    assert sorted(p.name for p in path.iterdir()) == ['.dl2_source', 'new.txt']
    assert len(server.requests) == 2 and leftovers(data) == []


def test_custom_dest_and_zip(server, data, tmp_path):
    server.routes['/flat.zip'] = Route(zipped({'x.txt': 'x', 'y/z.txt': 'z'}))
    path = ds.untar_data(server.url('/flat.zip'), dest=tmp_path/'mine')
    assert path == tmp_path/'mine' and (path/'x.txt').read_text() == 'x' and (path/'y'/'z.txt').read_text() == 'z'
    assert leftovers(tmp_path) == []


# --- the cache: one entry per URL, checked before use -------------------------------------------------

def test_cached_archive_checked_against_checksum(server, data):
    body = tgz(GOOD)
    sha = hashlib.sha256(body).hexdigest()
    server.routes['/good.tgz'] = Route(body)
    url = server.url('/good.tgz')
    path = ds.untar_data(url, checksum=sha)
    [archive] = archives(data)
    archive.write_bytes(tgz({'good/a.txt': b'tampered'}))
    shutil.rmtree(path)
    assert (ds.untar_data(url, checksum=sha)/'a.txt').read_bytes() == b'alpha'
    assert archive.read_bytes() == body and len(server.requests) == 2
    # the server now serves the tampered archive too: an error, and nothing extracted
    archive.write_bytes(b'junk')
    shutil.rmtree(path)
    server.routes['/good.tgz'] = Route(tgz({'good/a.txt': b'tampered'}))
    with pytest.raises(ds.DownloadError, match='mismatch'): ds.untar_data(url, checksum=sha)
    assert not path.exists() and leftovers(data) == []


def test_same_file_name_different_urls(server, data, tmp_path):
    server.routes['/a/data.tgz'] = Route(tgz({'data/which.txt': b'A'}))
    server.routes['/b/data.tgz'] = Route(tgz({'data/which.txt': b'B'}))
    a, b = server.url('/a/data.tgz'), server.url('/b/data.tgz')
    assert (ds.untar_data(a)/'which.txt').read_bytes() == b'A'
    assert (ds.untar_data(b, tmp_path/'b')/'which.txt').read_bytes() == b'B'
    assert len(archives(data)) == 2
    with pytest.raises(FileExistsError) as e: ds.untar_data(b)
    assert a in str(e.value) and b in str(e.value) and 'dest=' in str(e.value)
    assert (ds.untar_data(b, force=True)/'which.txt').read_bytes() == b'B'
    with pytest.raises(FileExistsError, match=re.escape(b)): ds.untar_data(a)
    assert server.requests == ['/a/data.tgz', '/b/data.tgz', '/b/data.tgz']


@pytest.mark.parametrize('name', ['.tgz', '..tgz', '...tgz', 'archive.tgz'])
def test_unusable_folder_names(server, data, tmp_path, name):
    server.routes[f'/{name}'] = Route(tgz(GOOD))
    with pytest.raises(ValueError, match='dest='): ds.untar_data(server.url(f'/{name}'))
    assert server.requests == [] and sorted(p.name for p in data.iterdir()) == []
    assert (ds.untar_data(server.url(f'/{name}'), tmp_path/'elsewhere')/'a.txt').read_bytes() == b'alpha'


def test_dest_is_a_file(server, data, tmp_path):
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    (tmp_path/'f').write_text('keep')
    with pytest.raises(NotADirectoryError, match=re.escape(str(tmp_path/'f'))): ds.untar_data(server.url('/good.tgz'), tmp_path/'f')
    data.mkdir()
    (data/'good').write_text('keep too')
    with pytest.raises(NotADirectoryError, match=re.escape(str(data/'good'))): ds.untar_data(server.url('/good.tgz'))
    assert (tmp_path/'f').read_text() == 'keep' and (data/'good').read_text() == 'keep too'
    assert server.requests == []


def test_download_onto_a_folder(server, tmp_path):
    server.routes['/f.bin'] = Route(b'x')
    (tmp_path/'d').mkdir()
    with pytest.raises(IsADirectoryError, match='is a folder'): ds.download_url(server.url('/f.bin'), tmp_path/'d')
    assert server.requests == [] and list((tmp_path/'d').iterdir()) == []


def test_force_never_deletes_a_foreign_folder(server, data, tmp_path):
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    mine = tmp_path/'mine'
    mine.mkdir()
    (mine/'thesis.tex').write_text('years of work')
    with pytest.raises(FileExistsError, match='remove it yourself'): ds.untar_data(server.url('/good.tgz'), mine, force=True)
    assert ds.untar_data(server.url('/good.tgz'), mine) == mine  # without force it is used as it is
    assert [p.name for p in mine.iterdir()] == ['thesis.tex'] and (mine/'thesis.tex').read_text() == 'years of work'


def test_empty_dest_is_filled(server, data, tmp_path):
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    (tmp_path/'empty').mkdir()
    assert (ds.untar_data(server.url('/good.tgz'), tmp_path/'empty')/'a.txt').read_bytes() == b'alpha'


class WindowsLocking:
    "msvcrt's byte-range locks as Windows answers (EACCES while another open file holds the range), made of flock so they exclude for real."
    LK_UNLCK, LK_NBLCK = 0, 2
    def __init__(self): self.calls = []
    def locking(self, fd, mode, nbytes):
        self.calls.append((mode, nbytes, os.lseek(fd, 0, os.SEEK_CUR)))
        try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if mode == self.LK_NBLCK else fcntl.LOCK_UN)
        except BlockingIOError: raise PermissionError(errno.EACCES, os.strerror(errno.EACCES)) from None


@pytest.mark.parametrize('locks', ['posix', 'windows'])
def test_concurrent_calls_download_once(server, data, monkeypatch, capsys, locks):
    "Three callers at once: one downloads, two wait for the data folder's lock; on Windows that lock comes from msvcrt."
    if locks == 'windows':
        msvcrt = WindowsLocking()
        monkeypatch.setattr(ds, 'fcntl', None)
        monkeypatch.setattr(ds, 'msvcrt', msvcrt, raising=False)
    server.routes['/good.tgz'] = Route(tgz(GOOD), delay=0.5)
    url, results, errors = server.url('/good.tgz'), [], []
    def call():
        try: results.append(ds.untar_data(url))
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert errors == [] and results == [data/'good'] * 3
    assert server.requests == ['/good.tgz'] and leftovers(data) == []
    assert 'waiting for another process' in capsys.readouterr().out
    if locks == 'windows':
        modes = [mode for mode, nbytes, pos in msvcrt.calls]
        assert modes.count(msvcrt.LK_UNLCK) == 3 and modes.count(msvcrt.LK_NBLCK) > 3  # the waiters tried more than once
        assert all(nbytes == 1 and pos == 0 for mode, nbytes, pos in msvcrt.calls)


NO_FCNTL_CHILD = '''
import errno, fcntl as posix, subprocess, sys, types  # subprocess first: it takes an importable msvcrt to mean Windows
calls = []
def locking(fd, mode, nbytes):  # msvcrt.locking as Windows answers, made of flock
    calls.append(mode)
    try: posix.flock(fd, posix.LOCK_EX | posix.LOCK_NB if mode == 2 else posix.LOCK_UN)
    except BlockingIOError: raise PermissionError(errno.EACCES, 'Permission denied') from None
sys.modules['fcntl'] = None  # import fcntl fails, as on Windows
sys.modules['msvcrt'] = types.SimpleNamespace(locking=locking, LK_UNLCK=0, LK_NBLCK=2)
import dl2.imports, dl2.course, dl2.train, dl2.datasets as ds
print(ds.untar_data(sys.argv[1]))
print(*calls)
'''

@pytest.mark.slow
def test_dl2_imports_and_untars_without_fcntl(data, tmp_path):
    "Windows has no fcntl: dl2 must import all the same, and lock the data folder through msvcrt (a stand-in here)."
    (tmp_path/'good.tgz').write_bytes(tgz(GOOD))
    r = subprocess.run([sys.executable, '-c', NO_FCNTL_CHILD, (tmp_path/'good.tgz').as_uri()], env=child_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [str(data/'good'), '2 0'] and (data/'good'/'a.txt').read_bytes() == b'alpha'


def test_data_folder_without_file_locks(server, data, monkeypatch):
    "Some network and FUSE filesystems have no locks: the work goes ahead unlocked, with a warning that says so."
    def no_locks(f, operation): raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(ds.fcntl, 'flock', no_locks)
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    with pytest.warns(UserWarning, match=rf'{re.escape(str(data/".lock"))}: no file locks here \(No locks available\)'):
        path = ds.untar_data(server.url('/good.tgz'))
    assert (path/'a.txt').read_bytes() == b'alpha' and leftovers(data) == []


KILLED_CHILD = '''
import os, sys
import dl2.datasets as ds
if sys.argv[2] == 'download': os.replace = lambda *a: os._exit(3)   # dies just before the download lands
else: ds._replace_dir = lambda *a: os._exit(3)                      # dies just before the folder moves in
ds.untar_data(sys.argv[1])
'''

@pytest.mark.slow
def test_killed_runs_leave_nothing_for_long(server, data):
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    for stage in ['download', 'extract']:
        r = subprocess.run([sys.executable, '-c', KILLED_CHILD, server.url('/good.tgz'), stage], env=child_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 3, r.stderr
    assert any(p.name.endswith('.extracting') for p in leftovers(data))
    assert not (data/'good').exists()
    assert (ds.untar_data(server.url('/good.tgz'))/'a.txt').read_bytes() == b'alpha'
    assert leftovers(data) == []


def waiting_child(code, *args):
    "Start a child running `code`, which prints the name of a temporary it made and then waits; the process, and that path."
    p = subprocess.Popen([sys.executable, '-c', code, *map(str, args)], env=child_env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    name = p.stdout.readline().strip()
    assert name, 'the child died before making its temporary'
    return p, Path(args[0]).parent/name


def stop(p):
    p.kill()
    p.communicate(timeout=60)


WRITER_CHILD = '''
import os, signal, sys
from dl2.datasets import atomic_write
with atomic_write(sys.argv[1]) as tmp:
    tmp.write_bytes(b'half a checkpoint')
    print(tmp.name, flush=True)
    if sys.argv[2] == 'kill': os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    sys.stdin.read()  # a writer that is still at work
'''

@pytest.mark.slow
def test_killed_writer_leftover_removed_by_the_next_write(tmp_path):
    dest = tmp_path/'checkpoint.pth'
    killed, dead_tmp = waiting_child(WRITER_CHILD, dest, 'kill')
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert dead_tmp.read_bytes() == b'half a checkpoint' and f'.{killed.pid}-' in dead_tmp.name
    live, live_tmp = waiting_child(WRITER_CHILD, dest, 'live')
    try:
        with ds.atomic_write(dest) as tmp: tmp.write_bytes(b'whole')
        assert dest.read_bytes() == b'whole' and not dead_tmp.exists()
        assert live_tmp.read_bytes() == b'half a checkpoint'  # never pulled from under a running writer
        assert ds.remove_dead_temps(dest) == []
    finally: stop(live)
    assert ds.remove_dead_temps(dest) == [live_tmp]
    assert list(tmp_path.iterdir()) == [dest] and dest.read_bytes() == b'whole'


HOLDER_CHILD = '''
import sys
from dl2.datasets import temp_beside
tmp = temp_beside(sys.argv[1], 'extracting')
tmp.mkdir()
(tmp/'half.txt').write_text('half')
print(tmp.name, flush=True)
sys.stdin.read()
'''

@pytest.mark.slow
def test_untar_data_spares_a_running_process_leftover(server, data, tmp_path):
    "untar_data's cleanup deletes the leftovers of ended processes only, even beside a `dest` outside the data folder."
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    dest = tmp_path/'good'
    holder, held = waiting_child(HOLDER_CHILD, dest)
    try:
        assert (ds.untar_data(server.url('/good.tgz'), dest)/'a.txt').read_bytes() == b'alpha'
        assert (held/'half.txt').read_text() == 'half'
    finally: stop(holder)
    assert ds.untar_data(server.url('/good.tgz'), dest, force=True) == dest
    assert not held.exists() and leftovers(tmp_path) == []


READ_ONLY_CHILD = '''
import sys, warnings
import dl2.datasets as ds
try: ds.untar_data(sys.argv[1])
except PermissionError as e: print('untar_data:', e)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    x_train = ds.get_data('mnist')[0]
print('get_data:', tuple(x_train.shape), *[str(w.message) for w in caught])
'''

# root ignores file permissions; without these capabilities it obeys them like anyone else
AS_UNPRIVILEGED = ['setpriv', '--bounding-set=-dac_override,-dac_read_search,-fowner'] if os.geteuid() == 0 else []

@pytest.mark.slow
@pytest.mark.skipif(AS_UNPRIVILEGED and not shutil.which('setpriv'), reason='running as root, and no setpriv to drop its privileges')
def test_read_only_data_folder(server, fake_mnist):
    "A shared, read-only data folder: nothing can be added, but what is there loads (uncached), and errors say why."
    root = Path(tempfile.mkdtemp())
    data = root/'data'
    try:
        (data/'mnist').mkdir(parents=True)
        for fname, body in fake_mnist.items(): (data/'mnist'/fname).write_bytes(body)
        for p in (data/'mnist', data): p.chmod(0o555)
        server.routes['/good.tgz'] = Route(tgz(GOOD))
        r = subprocess.run([*AS_UNPRIVILEGED, sys.executable, '-c', READ_ONLY_CHILD, server.url('/good.tgz')],
                           env=child_env(DL2_DATA=str(data)), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f'cannot write to the data folder {data} (Permission denied)' in r.stdout and 'DL2_DATA' in r.stdout
        assert 'get_data: (60000, 784)' in r.stdout and f'could not cache the decoded data at {data}' in r.stdout
        assert sorted(p.name for p in data.iterdir()) == ['mnist'] and server.requests == []
    finally:
        for p in (data, data/'mnist'): p.chmod(0o755)
        shutil.rmtree(root)


UNCREATABLE_CHILD = '''
import sys, warnings
from pathlib import Path
import dl2.datasets as ds
ds.FASHION_MNIST_DEBIAN, ds.URLs.MNIST = Path(sys.argv[2]), sys.argv[3]
print('data_path:', ds.data_path())
try: ds.untar_data(sys.argv[1])
except PermissionError as e: print('untar_data:', e)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    print('get_data:', tuple(ds.get_data()[0].shape), *[str(w.message) for w in caught])
try: ds.find_mnist('mnist')
except ds.DatasetNotFoundError as e: print('find_mnist:', e)
'''

@pytest.mark.slow
@pytest.mark.skipif(AS_UNPRIVILEGED and not shutil.which('setpriv'), reason='running as root, and no setpriv to drop its privileges')
def test_data_folder_that_cannot_be_created(server, fake_mnist, tmp_path):
    "$DL2_DATA (or ~/.dl2) on a read-only disk: what is readable elsewhere still loads, and writers name the folder."
    root = Path(tempfile.mkdtemp())
    data = root/'ro'/'data'
    try:
        (root/'ro').mkdir()
        (root/'ro').chmod(0o555)
        (tmp_path/'debian').mkdir()
        for fname, body in fake_mnist.items(): (tmp_path/'debian'/fname).write_bytes(body)
        server.routes['/good.tgz'] = Route(tgz(GOOD))
        r = subprocess.run([*AS_UNPRIVILEGED, sys.executable, '-c', UNCREATABLE_CHILD, server.url('/good.tgz'), tmp_path/'debian',
                            server.url('/mnist/')], env=child_env(DL2_DATA=str(data)), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f'data_path: {data}' in r.stdout
        assert f'cannot write to the data folder {data} (Permission denied); set DL2_DATA' in r.stdout
        assert 'get_data: (60000, 784)' in r.stdout and f'could not cache the decoded data at {data}' in r.stdout
        assert re.search(rf"find_mnist: mnist not found \(.*Permission denied: '{re.escape(str(data))}.*DL2_DATA", r.stdout)
        assert not data.exists() and server.requests == []
    finally:
        (root/'ro').chmod(0o755)
        shutil.rmtree(root)


# --- downloads ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('route', [Route(tgz(GOOD), length=len(tgz(GOOD)) + 1000), Route(tgz(GOOD), stall=2)],
                         ids=['short-body', 'stalled'])
def test_truncated_download(server, data, route):
    server.routes['/truncated.tgz'] = route
    with pytest.raises(ds.DownloadError, match='truncated.tgz'):
        ds.untar_data(server.url('/truncated.tgz')) if not route.stall else \
            ds.download_url(server.url('/truncated.tgz'), data/'archive'/'truncated.tgz', timeout=0.3)
    assert not (data/'truncated').exists() and archives(data) == []
    assert leftovers(data) == []


@pytest.mark.parametrize('hash', [hashlib.md5, hashlib.sha256])
def test_checksum_mismatch(server, data, hash):
    body = tgz(GOOD)
    server.routes['/sum.tgz'] = Route(body)
    wrong = hash(b'something else').hexdigest()
    with pytest.raises(ds.DownloadError) as e: ds.untar_data(server.url('/sum.tgz'), checksum=wrong)
    msg = str(e.value)
    assert server.url('/sum.tgz') in msg and wrong in msg and hash(body).hexdigest() in msg
    assert not (data/'sum').exists() and archives(data) == []
    assert leftovers(data) == []


@pytest.mark.parametrize('status', [403, 404, 500])
def test_http_error_names_url(server, data, status):
    server.routes['/broken.tgz'] = Route(b'an error page', status=status)
    url = server.url('/broken.tgz' if status != 404 else '/missing.tgz')
    with pytest.raises(ds.DownloadError, match=re.escape(url)) as e: ds.untar_data(url)
    assert str(status) in str(e.value)
    assert archives(data) == [] and leftovers(data) == []


def test_deadline_ends_a_trickle(server, data):
    server.routes['/slow.tgz'] = TRICKLE
    start = time.monotonic()
    with pytest.raises(ds.DownloadError, match='deadline'): ds.untar_data(server.url('/slow.tgz'), deadline=1, min_rate=0)
    assert time.monotonic() - start < 3
    assert archives(data) == [] and leftovers(data) == []


def test_deadline_covers_trickled_headers(server, tmp_path):
    server.routes['/slow.bin'] = Route(b'x' * 10, head_trickle=0.1)  # the headers alone take 5 s
    start = time.monotonic()
    with pytest.raises(ds.DownloadError, match='deadline'): ds.download_url(server.url('/slow.bin'), tmp_path/'f', deadline=1, min_rate=0)
    assert time.monotonic() - start < 3 and list(tmp_path.iterdir()) == []


def test_min_rate_ends_a_trickle(server, tmp_path):
    server.routes['/slow.bin'] = TRICKLE
    start = time.monotonic()
    with pytest.raises(ds.DownloadError, match='too slow.*min_rate=1,024'): ds.download_url(server.url('/slow.bin'), tmp_path/'f', timeout=0.5)
    assert time.monotonic() - start < 3 and list(tmp_path.iterdir()) == []


def test_ctrl_c_removes_part(server, tmp_path):
    server.routes['/slow.bin'] = TRICKLE
    ctrl_c = threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt): ds.download_url(server.url('/slow.bin'), tmp_path/'f', min_rate=0)
    finally: ctrl_c.cancel()  # should the download end first, the Ctrl-C must not hit a later test
    assert list(tmp_path.iterdir()) == []


def test_endless_body_capped(server, tmp_path):
    server.routes['/endless.bin'] = Route(endless=True)
    with pytest.raises(ds.DownloadError, match='max_bytes=1,000,000'):
        ds.download_url(server.url('/endless.bin'), tmp_path/'f', max_bytes=1_000_000)
    assert list(tmp_path.iterdir()) == []


def test_announced_size_over_limit_refused_before_the_body(server, tmp_path):
    server.routes['/huge.bin'] = Route(b'x' * 100, length=10**12)
    with pytest.raises(ds.DownloadError, match=r'announces 1,000,000,000,000 bytes.*max_bytes='):
        ds.download_url(server.url('/huge.bin'), tmp_path/'f')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('length', ['abc', '-5', ''])
def test_malformed_content_length_ignored(server, tmp_path, length):
    server.routes['/f.bin'] = Route(b'x' * 5000, length=length)
    assert ds.download_url(server.url('/f.bin'), tmp_path/'f').read_bytes() == b'x' * 5000


@pytest.mark.parametrize('target', ['ftp://127.0.0.1:9/x.tgz', 'file:///etc/passwd'])
def test_redirect_off_http_refused(server, tmp_path, target):
    server.routes['/r.tgz'] = Route(status=302, location=target)
    with pytest.raises(ds.DownloadError, match=f'(?i)redirect.*{re.escape(target)}'): ds.download_url(server.url('/r.tgz'), tmp_path/'f')
    assert list(tmp_path.iterdir()) == []


def test_redirect_loop_is_an_error(server, tmp_path):
    server.routes['/loop.tgz'] = Route(status=302, location='/loop.tgz')
    with pytest.raises(ds.DownloadError, match='loop'): ds.download_url(server.url('/loop.tgz'), tmp_path/'f')
    assert list(tmp_path.iterdir()) == [] and len(server.requests) <= 10


def test_understated_content_length(server, data):
    "http.client stops reading at the announced length, so the archive arrives cut; it must not survive."
    server.routes['/short.tgz'] = Route(tgz(GOOD), length=100)
    with pytest.raises(ds.ArchiveError, match=r'short-\w+\.tgz'): ds.untar_data(server.url('/short.tgz'))
    assert not (data/'short').exists() and archives(data) == [] and leftovers(data) == []


def test_url_with_an_accent_and_a_space(server, data):
    "http.client takes ASCII only; the URL is percent-encoded as a browser would, and its folder keeps the readable name."
    server.routes['/caf%C3%A9%20menu.tgz'] = Route(tgz({'x/a.txt': b'a'}))
    url = server.url('/café menu.tgz')
    path = ds.untar_data(url)
    assert path == data/'café menu' and (path/'a.txt').read_bytes() == b'a'
    assert ds.untar_data(url) == path and server.requests == ['/caf%C3%A9%20menu.tgz']


def test_redirect_within_http_followed(server, data):
    server.routes['/old.tgz'] = Route(status=301, location='/good.tgz')
    server.routes['/good.tgz'] = Route(tgz(GOOD))
    assert (ds.untar_data(server.url('/old.tgz'))/'a.txt').read_bytes() == b'alpha'
    assert server.requests == ['/old.tgz', '/good.tgz']


def test_download_url_direct(server, tmp_path):
    server.routes['/f.bin'] = Route(b'x' * 3_000_000)
    dest = ds.download_url(server.url('/f.bin'), tmp_path/'sub'/'f.bin', show_progress=False)
    assert dest.read_bytes() == b'x' * 3_000_000
    assert sorted(p.name for p in (tmp_path/'sub').iterdir()) == ['f.bin']


def test_disk_full_while_downloading(server, tmp_path, monkeypatch):
    server.routes['/f.bin'] = Route(b'x' * 3_000_000)
    monkeypatch.setattr(ds, 'open', full_disk_open(1_000_000), raising=False)
    with pytest.raises(ds.DownloadError) as e: ds.download_url(server.url('/f.bin'), tmp_path/'f.bin')
    assert os.strerror(errno.ENOSPC) in str(e.value) and str(tmp_path/'f.bin') in str(e.value)
    assert list(tmp_path.iterdir()) == []


# --- archives -----------------------------------------------------------------------------------------

UNSAFE = {
    'dotdot': ({'evil/ok.txt': b'ok', '../evil.txt': b'pwned'}, '../evil.txt'),
    'absolute': ({'/ABS/abs.txt': b'pwned'}, '/ABS/abs.txt'),
    'symlink-out': ({tarinfo('evil/link', tarfile.SYMTYPE, '../../..'): None}, 'evil/link'),
    'symlink-abs': ({tarinfo('evil/link', tarfile.SYMTYPE, '/ABS'): None}, 'evil/link'),
    'through-link': ({tarinfo('evil/link', tarfile.SYMTYPE, '.'): None, 'evil/link/x.txt': b'x'}, 'evil/link/x.txt'),
    'hardlink-out': ({tarinfo('evil/hard', tarfile.LNKTYPE, '../outside.txt'): None}, 'evil/hard'),
    'hardlink-abs': ({tarinfo('evil/hard', tarfile.LNKTYPE, '/ABS/outside.txt'): None}, 'evil/hard'),
    'device': ({tarinfo('evil/dev', tarfile.CHRTYPE): None}, 'evil/dev'),
    # inside the temporary folder while extracting, outside `dest` once the single top folder `evil` becomes it
    'symlink-up-after-move': ({'evil/ok.txt': b'ok', tarinfo('evil/up', tarfile.SYMTYPE, '..'): None}, 'evil/up'),
    'symlink-out-and-back': ({'evil/ok.txt': b'ok', tarinfo('evil/sub/back', tarfile.SYMTYPE, '../../evil/ok.txt'): None}, 'evil/sub/back'),
}


@pytest.mark.parametrize('kind', UNSAFE)
def test_unsafe_archive_refused(server, data, tmp_path, kind):
    members, bad = UNSAFE[kind]
    members = {(k.replace('/ABS', str(tmp_path)) if isinstance(k, str) else k): v for k, v in members.items()}
    for k in members:
        if isinstance(k, tarfile.TarInfo): k.linkname = k.linkname.replace('/ABS', str(tmp_path))
    (tmp_path/'outside.txt').write_text('untouched')
    server.routes['/evil.tgz'] = Route(tgz(members))
    with pytest.raises(ds.UnsafeArchiveError) as e: ds.untar_data(server.url('/evil.tgz'))
    assert 'evil-' in str(e.value) and repr(bad.replace('/ABS', str(tmp_path))) in str(e.value)
    assert not (data/'evil').exists() and archives(data) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data', 'outside.txt'] and leftovers(tmp_path) == []
    assert (tmp_path/'outside.txt').read_text() == 'untouched'


def test_links_within_the_dataset_kept(server, data):
    server.routes['/links.tgz'] = Route(tgz({'links/a.txt': b'a', tarinfo('links/sub/a', tarfile.SYMTYPE, '../a.txt'): None,
                                             tarinfo('links/same', tarfile.SYMTYPE, 'a.txt'): None}))
    path = ds.untar_data(server.url('/links.tgz'))
    assert (path/'sub'/'a').read_bytes() == b'a' and (path/'same').is_symlink() and (path/'same').read_bytes() == b'a'


def plain_tar(n):
    "A plain .tar as bytes: `n` members of 1000 bytes, each a 512-byte header and 1024 bytes of padded data."
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as t:
        for i in range(n):
            ti = tarfile.TarInfo(f'cut/{i:03d}.txt')
            ti.size = 1000
            t.addfile(ti, io.BytesIO(bytes(1000)))
    return buf.getvalue()


@pytest.mark.parametrize('cut', [40 * 1536, 40 * 1536 + 100, 40 * 1536 + 700], ids=['at-a-member', 'in-a-header', 'in-data'])
@pytest.mark.parametrize('ext', ['.tar', '.tgz'])
def test_tar_cut_short_without_a_length(server, data, ext, cut):
    "A server that announces no length hangs up after 40 of 100 members: no byte count to check, and a tar has no CRC."
    pack = gzip.compress if ext == '.tgz' else bytes  # .tgz: a whole gzip stream of a cut tar
    whole = plain_tar(100)
    server.routes[f'/cut{ext}'] = Route(pack(whole[:cut]), length='')
    with pytest.raises(ds.ArchiveError, match=rf'archive/cut-\w+\{ext}'): ds.untar_data(server.url(f'/cut{ext}'))
    assert archives(data) == [] and not (data/'cut').exists() and leftovers(data) == []
    server.routes[f'/cut{ext}'] = Route(pack(whole), length='')
    assert len(list(ds.untar_data(server.url(f'/cut{ext}')).glob('*.txt'))) == 100
    assert len(server.requests) == 2


def test_every_cut_of_a_tar_refused(data, tmp_path):
    "Wherever a tar is cut before the end of its end-of-archive marker, it is refused; from there on nothing is missing."
    whole = plain_tar(10)
    marker_end = 10 * 1536 + 512
    src = tmp_path/'cut.tar'
    for cut in sorted([*range(0, marker_end, 512), *range(100, marker_end, 512), marker_end, len(whole)]):
        src.write_bytes(whole[:cut])
        if cut < marker_end:
            with pytest.raises(ds.ArchiveError, match=r'cut-\w+\.tar'): ds.untar_data(src.as_uri(), tmp_path/f'out{cut}')
        else: assert len(list(ds.untar_data(src.as_uri(), tmp_path/f'out{cut}').glob('*.txt'))) == 10
    assert sorted(p.name for p in tmp_path.glob('out*')) == [f'out{marker_end}', f'out{len(whole)}']


def test_unsafe_zip_refused(server, data):
    server.routes['/evil.zip'] = Route(zipped({'../evil.txt': 'pwned'}))
    with pytest.raises(ds.UnsafeArchiveError, match=r"evil-\w+\.zip.*'\.\./evil\.txt'"): ds.untar_data(server.url('/evil.zip'))
    assert leftovers(data) == [] and not (data/'evil').exists()


def test_zip_symlink_member_written_as_plain_file(server, data, tmp_path):
    link = zipfile.ZipInfo('links/etc')
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    server.routes['/links.zip'] = Route(zipped({link: '/etc', 'links/a.txt': 'a'}))
    path = ds.untar_data(server.url('/links.zip'))
    assert not (path/'etc').is_symlink() and (path/'etc').read_text() == '/etc'
    assert (path/'a.txt').read_text() == 'a' and not any(p.is_symlink() for p in path.rglob('*'))


@pytest.mark.parametrize('kind', ['encrypted', 'unknown-method'])
def test_unreadable_zip_refused(server, data, kind):
    body = zipped({'secret/a.txt': 'a'})
    body = patch_zip(body, flags=1) if kind == 'encrypted' else patch_zip(body, method=99)
    server.routes['/secret.zip'] = Route(body)
    with pytest.raises(ds.ArchiveError, match=r'secret-\w+\.zip.*' + ('encrypted' if kind == 'encrypted' else 'unreadable')):
        ds.untar_data(server.url('/secret.zip'))
    assert not (data/'secret').exists() and archives(data) == [] and leftovers(data) == []


def no_writing(*args, **kwargs): raise AssertionError('extraction started before the limits were checked')

LIMITS = {  # archive, limits, what the error names
    'tar-bytes': ('.tgz', lambda: tgz({'bomb/zeros.bin': bytes(5_000_000)}), dict(max_bytes=1_000_000), 'max_bytes=1,000,000'),
    'tar-files': ('.tgz', lambda: tgz({f'bomb/{i}': b'' for i in range(50)}), dict(max_files=20), 'max_files=20'),
    'zip-bytes': ('.zip', lambda: zipped({'bomb/zeros.bin': bytes(5_000_000)}), dict(max_bytes=1_000_000), 'max_bytes=1,000,000'),
    'zip-files': ('.zip', lambda: zipped({f'bomb/{i}': b'' for i in range(50)}), dict(max_files=20), 'max_files=20'),
}


@pytest.mark.parametrize('kind', LIMITS)
def test_size_limits_checked_before_writing(server, data, monkeypatch, kind):
    ext, make, limits, named = LIMITS[kind]
    body = make()
    assert len(body) < 50_000  # small to download, big to unpack
    server.routes[f'/bomb{ext}'] = Route(body)
    monkeypatch.setattr(tarfile.TarFile, 'extractall', no_writing)
    monkeypatch.setattr(zipfile.ZipFile, 'extractall', no_writing)
    with pytest.raises(ds.ArchiveError) as e: ds.untar_data(server.url(f'/bomb{ext}'), **limits)
    assert re.search(rf'archive/bomb-\w+\{ext}', str(e.value)) and named in str(e.value)
    assert not (data/'bomb').exists() and archives(data) == [] and leftovers(data) == []


def test_zip_member_bigger_than_declared(server, data):
    "The size check trusts the zip headers, so a member holding more than its header says must not get written."
    server.routes['/liar.zip'] = Route(patch_zip(zipped({'liar/big.bin': bytes(1 << 20)}), size=100))
    with pytest.raises(ds.ArchiveError, match=r'liar-\w+\.zip'): ds.untar_data(server.url('/liar.zip'), max_bytes=5000)
    assert not (data/'liar').exists() and leftovers(data) == []


def pax_bomb(claimed):
    "A .tgz whose first member is a pax header claiming `claimed` bytes (zeros, so it compresses to almost nothing)."
    head = tarinfo('././@PaxHeader', tarfile.XHDTYPE)
    head.size = claimed
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts, left = [z.compress(head.tobuf(tarfile.USTAR_FORMAT))], claimed + (-claimed % 512) + 1024
    while left:
        n = min(left, 1 << 20)
        parts.append(z.compress(bytes(n)))
        left -= n
    return b''.join(parts) + z.flush()


def test_huge_tar_header_refused_without_reading_it(server, data):
    server.routes['/pax.tgz'] = Route(pax_bomb(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(ds.ArchiveError, match=r'pax-\w+\.tgz.*member header'): ds.untar_data(server.url('/pax.tgz'))
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 16 << 20
    assert archives(data) == [] and leftovers(data) == []


@pytest.mark.parametrize('body', [b'not a tarball' * 100, tgz(GOOD)[:60], tgz(GOOD)[:-12]],
                         ids=['junk', 'cut-mid', 'cut-trailer'])  # cut-trailer: all tar headers intact
def test_corrupt_archive_removed_then_retried(server, data, body):
    server.routes['/bad.tgz'] = Route(body)
    with pytest.raises(ds.ArchiveError, match=r'bad-\w+\.tgz'): ds.untar_data(server.url('/bad.tgz'))
    assert archives(data) == [] and not (data/'bad').exists()
    assert leftovers(data) == []
    server.routes['/bad.tgz'] = Route(tgz({'bad/a.txt': b'fixed'}))
    assert (ds.untar_data(server.url('/bad.tgz'))/'a.txt').read_bytes() == b'fixed'
    assert len(server.requests) == 2


def test_disk_full_while_extracting(server, data, monkeypatch):
    body = tgz({'big/a.bin': bytes(2_000_000), 'big/b.bin': bytes(2_000_000)})
    server.routes['/big.tgz'] = Route(body)
    url = server.url('/big.tgz')
    with monkeypatch.context() as m:
        m.setattr(tarfile, 'bltn_open', full_disk_open(1_000_000))
        with pytest.raises(OSError) as e: ds.untar_data(url)
    assert e.value.errno == errno.ENOSPC and not isinstance(e.value, ds.ArchiveError)
    assert re.search(r'archive/big-\w+\.tgz', str(e.value)) and str(data/'big') in str(e.value)
    assert not (data/'big').exists() and leftovers(data) == []
    assert [a.read_bytes() for a in archives(data)] == [body]  # the archive is fine, so it is kept ...
    assert (ds.untar_data(url)/'a.bin').stat().st_size == 2_000_000
    assert len(server.requests) == 1                            # ... and the retry does not download again


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
    assert len(server.requests) == 4 and leftovers(data) == []


class Planted:
    "A pickle that would create the file `path` when loaded without `weights_only`."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (Path.touch, (self.path,))


@pytest.mark.slow
def test_get_data_rebuilds_a_bad_cache(server, data, monkeypatch, fake_mnist, tmp_path):
    serve_mnist(server, monkeypatch, fake_mnist, 'mnist')
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, 'load', lambda *a, **k: loads.append(k) or real_load(*a, **k))
    good = ds.get_data('mnist')
    cache = data/'mnist.pt'
    saved = cache.read_bytes()
    damages = {
        'truncated': lambda: cache.write_bytes(saved[:len(saved) // 2]),
        'junk': lambda: cache.write_bytes(b'junk' * 100),
        'foreign': lambda: torch.save({'weights': torch.zeros(3)}, cache),
        'wrong-shape': lambda: torch.save([torch.zeros(5, 28, 28, dtype=torch.uint8)] * 4, cache),
        'planted-code': lambda: torch.save([Planted(tmp_path/'pwned')], cache),
    }
    for kind, damage in damages.items():
        damage()
        with pytest.warns(UserWarning, match=re.escape(str(cache))): again = ds.get_data('mnist')
        assert all(torch.equal(a, b) for a, b in zip(again, good)), kind
        assert [t.shape for t in torch.load(cache, weights_only=True)] == [t.shape for t in real_load(io.BytesIO(saved))], kind
    assert not (tmp_path/'pwned').exists()
    assert loads and all(k.get('weights_only') is True for k in loads)
    assert len(server.requests) == 4 and leftovers(data) == []


def test_get_data_when_the_cache_cannot_be_written(server, data, monkeypatch, fake_mnist):
    serve_mnist(server, monkeypatch, fake_mnist, 'mnist')
    def disk_full(obj, f, *args, **kwargs): raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.warns(UserWarning, match='could not cache'): x_train = ds.get_data('mnist')[0]
    assert x_train.shape == (60000, 784)
    assert not (data/'mnist.pt').exists() and leftovers(data) == []


def test_mnist_bad_checksum(server, data, monkeypatch, fake_mnist):
    serve_mnist(server, monkeypatch, fake_mnist, 'fashion-mnist')
    monkeypatch.setitem(ds.FASHION_MNIST_CHECKSUMS, 't10k-images-idx3-ubyte.gz', '0' * 32)
    with pytest.raises(ds.DatasetNotFoundError) as e: ds.find_mnist()
    assert 't10k-images-idx3-ubyte.gz' in str(e.value) and '0' * 32 in str(e.value)
    assert not (data/'fashion-mnist'/'t10k-images-idx3-ubyte.gz').exists() and leftovers(data) == []


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
