"""patchcore.download against a real HTTP server on 127.0.0.1 that honours (or ignores) Range."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.data import load_class
from patchcore.download import MVTEC_AD_URLS, DownloadError, download_all, download_class


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; answers ``Range: bytes=N-`` with 206 unless ``server.ranges`` is off."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: srv.cut] if srv.cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.ranges, srv.cut = {}, [], True, None
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _tiny_class_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)

    def png(shape=(16, 16, 3)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    mbuf = io.BytesIO()
    Image.fromarray(mask).save(mbuf, format="PNG")
    files = {f"tiny/train/good/{i:03d}.png": png() for i in range(4)}
    files["tiny/test/good/000.png"] = png()
    files["tiny/test/hole/000.png"] = png()
    files["tiny/ground_truth/hole/000_mask.png"] = mbuf.getvalue()
    files["tiny/license.txt"] = b"test"
    return files


def _tar(files: dict[str, bytes], mode="w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def archive():
    files = _tiny_class_files()
    return files, _tar(files)


def _check_extracted(path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (path.parent / name).read_bytes() == data, name
    ds = load_class(path)
    assert len(ds.train) == 4 and [s.label for s in ds.test] == [0, 1]


def test_full_download_and_extract(server, archive, tmp_path):
    files, blob = archive
    server.files["/d/tiny.tar.xz"] = blob
    dest = tmp_path / "mvtec_ad"
    out = download_class("tiny", dest, url=server.url + "/d/tiny.tar.xz", expected_size=len(blob),
                         sha256=hashlib.sha256(blob).hexdigest(), progress=False)
    assert out == dest / "tiny"
    _check_extracted(out, files)
    assert server.log == [("/d/tiny.tar.xz", None)]
    # Archive removed, no temp folders left beside the class.
    assert sorted(p.name for p in dest.iterdir()) == [".downloads", "tiny"]
    assert list((dest / ".downloads").iterdir()) == []
    # A second call finds the class and does not touch the network.
    assert download_class("tiny", dest, url=server.url + "/d/tiny.tar.xz", progress=False) == out
    assert len(server.log) == 1


def test_resume_with_range(server, archive, tmp_path):
    files, blob = archive
    server.files["/tiny.tar.xz"] = blob
    dest = tmp_path / "mvtec_ad"
    (dest / ".downloads").mkdir(parents=True)
    half = len(blob) // 2
    (dest / ".downloads" / "tiny.tar.xz.part").write_bytes(blob[:half])
    out = download_class("tiny", dest, url=server.url + "/tiny.tar.xz",
                         sha256=hashlib.sha256(blob).hexdigest(), progress=False)
    assert server.log == [("/tiny.tar.xz", f"bytes={half}-")]
    _check_extracted(out, files)


def test_interrupted_then_resumed(server, archive, tmp_path):
    files, blob = archive
    server.files["/tiny.tar.xz"] = blob
    server.cut = len(blob) // 3  # the connection drops after a third of the body
    dest = tmp_path / "m"
    url = server.url + "/tiny.tar.xz"
    with pytest.raises(DownloadError, match="run again to resume") as e:
        download_class("tiny", dest, url=url, progress=False)
    assert url in str(e.value) and str(dest / "tiny" / "train" / "good") in str(e.value)
    part = dest / ".downloads" / "tiny.tar.xz.part"
    assert part.read_bytes() == blob[: len(blob) // 3]
    assert not (dest / "tiny").exists()
    server.cut = None
    _check_extracted(download_class("tiny", dest, url=url, progress=False), files)
    assert server.log[-1] == ("/tiny.tar.xz", f"bytes={len(blob) // 3}-")


def test_server_without_range_restarts(server, archive, tmp_path):
    files, blob = archive
    server.files["/tiny.tar.xz"] = blob
    server.ranges = False
    dest = tmp_path / "m"
    (dest / ".downloads").mkdir(parents=True)
    (dest / ".downloads" / "tiny.tar.xz.part").write_bytes(b"stale bytes from something else")
    _check_extracted(download_class("tiny", dest, url=server.url + "/tiny.tar.xz", progress=False), files)
    assert server.log[0][1] is not None  # asked to resume, got 200, started over


def test_complete_part_gets_416(server, archive, tmp_path):
    files, blob = archive
    server.files["/tiny.tar.xz"] = blob
    dest = tmp_path / "m"
    (dest / ".downloads").mkdir(parents=True)
    (dest / ".downloads" / "tiny.tar.xz.part").write_bytes(blob)
    _check_extracted(download_class("tiny", dest, url=server.url + "/tiny.tar.xz", progress=False), files)
    assert server.log == [("/tiny.tar.xz", f"bytes={len(blob)}-")]


def test_checksum_mismatch_extracts_nothing(server, archive, tmp_path):
    _, blob = archive
    server.files["/tiny.tar.xz"] = blob
    dest = tmp_path / "m"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_class("tiny", dest, url=server.url + "/tiny.tar.xz", sha256="0" * 64, progress=False)
    assert not (dest / "tiny").exists()
    assert list((dest / ".downloads").iterdir()) == []  # bad archive deleted, next run starts fresh
    assert [p.name for p in dest.iterdir()] == [".downloads"]


def test_size_mismatch(server, archive, tmp_path):
    _, blob = archive
    server.files["/tiny.tar.xz"] = blob
    with pytest.raises(DownloadError, match=f"server reports {len(blob)} bytes, expected {len(blob) + 1}"):
        download_class("tiny", tmp_path, url=server.url + "/tiny.tar.xz", expected_size=len(blob) + 1,
                       progress=False)
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("evil", ["../evil.txt", "tiny/../../evil.txt", "/tmp/evil_abs.txt"])
def test_escaping_paths_refused(server, tmp_path, evil):
    files = _tiny_class_files()
    files[evil] = b"pwned"
    server.files["/tiny.tar.gz"] = _tar(files, "w:gz")
    dest = tmp_path / "a" / "b"
    with pytest.raises(DownloadError, match="refusing unsafe path"):
        download_class("tiny", dest, url=server.url + "/tiny.tar.gz", progress=False)
    assert not list(tmp_path.rglob("evil*"))
    assert not (dest / "tiny").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract")]


def test_symlink_refused(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        link = tarfile.TarInfo("tiny/train/good/x.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    server.files["/tiny.tgz"] = buf.getvalue()
    with pytest.raises(DownloadError, match="refusing link"):
        download_class("tiny", tmp_path, url=server.url + "/tiny.tgz", progress=False)


def test_zip_archive_and_zip_slip(server, tmp_path):
    files = _tiny_class_files()

    def zipped(extra=None):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in {**files, **(extra or {})}.items():
                zf.writestr(name, data)
        return buf.getvalue()

    server.files["/tiny.zip"] = zipped()
    _check_extracted(download_class("tiny", tmp_path / "ok", url=server.url + "/tiny.zip", progress=False), files)
    server.files["/bad.zip"] = zipped({"../evil.txt": b"x"})
    with pytest.raises(DownloadError, match="unsafe path '../evil.txt'"):
        download_class("tiny", tmp_path / "bad", url=server.url + "/bad.zip", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_not_a_class_archive(server, tmp_path):
    server.files["/x.tar"] = _tar({"readme.txt": b"hello"}, "w")
    with pytest.raises(DownloadError, match="does not contain an MVTec AD class"):
        download_class("x", tmp_path, url=server.url + "/x.tar", progress=False)
    assert not (tmp_path / "x").exists()


def test_network_error_names_url_and_manual_path(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/bottle.tar.xz"
    with pytest.raises(DownloadError) as e:
        download_class("bottle", tmp_path, url=url, progress=False)
    msg = str(e.value)
    assert url in msg and "Without internet access" in msg and str(tmp_path / "bottle" / "train" / "good") in msg


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_class("tiny", tmp_path, url=server.url + "/missing.tar.xz", progress=False)


def test_url_table_and_unknown_class(tmp_path):
    assert len(MVTEC_AD_URLS) == 15
    urls = (Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mvtec_ad_urls.txt")
    if urls.is_file():
        assert sorted(MVTEC_AD_URLS.values()) == sorted(urls.read_text().split())
    assert all(u.startswith("https://") and u.endswith(f"/{c}.tar.xz") for c, u in MVTEC_AD_URLS.items())
    with pytest.raises(DownloadError, match="Did you mean 'bottle'"):
        download_class("botle", tmp_path)
    with pytest.raises(DownloadError, match="unknown MVTec AD class 'nope'"):
        download_all(["bottle", "nope"], tmp_path)  # validated before any download
    assert not (tmp_path / "bottle").exists()


def test_progress_bar_on_stderr(server, archive, tmp_path, capsys):
    _, blob = archive
    server.files["/tiny.tar.xz"] = blob
    download_class("tiny", tmp_path, url=server.url + "/tiny.tar.xz", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "tiny.tar.xz" in err
