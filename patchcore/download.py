"""Download and unpack classes of the full MVTec AD dataset.

Each class is one archive. The download streams into ``<dest>/.downloads/<file>.part`` and resumes
with an HTTP Range request when run again after an interruption; the archive is checked (size, and
sha256 when given), unpacked into a temporary folder next to the destination with every member
path validated, and only then renamed to ``<dest>/<class>``, so a class folder is never half
written. Without internet, place the extracted class by hand at ``<dest>/<class>``.

MVTec AD is licensed CC BY-NC-SA 4.0; it is downloaded from MVTec's servers, never shipped here.
"""

from __future__ import annotations

import difflib
import http.client
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from runtime import errors
from runtime.fileio import sha256_file

DEFAULT_DEST = Path("datasets") / "mvtec_ad"
TIMEOUT_S = 60
CHUNK = 1 << 20

_BASE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
MVTEC_AD_URLS: dict[str, str] = {
    "bottle": _BASE + "420937370-1629951468/bottle.tar.xz",
    "cable": _BASE + "420937413-1629951498/cable.tar.xz",
    "capsule": _BASE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _BASE + "420937484-1629951672/carpet.tar.xz",
    "grid": _BASE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _BASE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _BASE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _BASE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
    "420938129-1629953099/pill.tar.xz",
    "screw": _BASE + "420938130-1629953152/screw.tar.xz",
    "tile": _BASE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _BASE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _BASE + "420938166-1629953277/transistor.tar.xz",
    "wood": _BASE + "420938383-1629953354/wood.tar.xz",
    "zipper": _BASE + "420938385-1629953449/zipper.tar.xz",
}
MVTEC_AD_CLASSES = tuple(MVTEC_AD_URLS)

_ARCHIVE_SUFFIXES = (".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar", ".zip")


class DownloadError(RuntimeError):
    """A download, verification or extraction that failed; the message names the URL or file."""

    exit_code = errors.USAGE


def _by_hand(url: str, target: Path) -> str:
    return (f"Without internet access, fetch {url} elsewhere and extract it so that "
            f"{target / 'train' / 'good'} exists.")


def _resolve_url(name: str, url: str | None) -> str:
    if url is not None:
        return url
    if name not in MVTEC_AD_URLS:
        close = difflib.get_close_matches(name, MVTEC_AD_CLASSES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DownloadError(f"unknown MVTec AD class {name!r}.{hint} Known: {', '.join(MVTEC_AD_CLASSES)}")
    return MVTEC_AD_URLS[name]


# ---------------------------------------------------------------------------------------- fetch


@contextmanager
def _progress(enabled: bool, label: str, total: int | None, done: int) -> Iterator:
    """Yield ``advance(n)``; draws a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda n: None
        return
    cols = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    return start, (int(m.group(2)) if m.group(2) != "*" else None)


def _fetch(url: str, part: Path, expected_size: int | None, progress: bool) -> None:
    """Bring ``part`` to the complete content of ``url``, resuming from what it already holds."""
    for _ in range(2):  # a second try only after the server refused or botched the resume
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None:
            if have == expected_size:
                return
            if have > expected_size:
                part.unlink()
                have = 0
        headers = {"User-Agent": "patchcore-rt"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urlopen(Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
                if resp.status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range"))
                    if start != have:
                        part.unlink()
                        continue
                    mode = "ab"
                else:  # 200: the server ignored the Range header; start over
                    have, mode = 0, "wb"
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if expected_size is not None and total is not None and total != expected_size:
                    raise DownloadError(f"{url}: server reports {total} bytes, expected {expected_size}")
                with open(part, mode) as f, _progress(progress, part.name[:-5], total, have) as advance:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        advance(len(chunk))
        except HTTPError as e:
            if e.code == 416 and have:
                _, total = _content_range(e.headers.get("Content-Range"))
                if total == have:  # already complete
                    return
                part.unlink()
                continue
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            done = part.stat().st_size if part.exists() else 0
            raise DownloadError(f"could not download {url}: {reason} ({done} bytes kept in {part}; "
                                "run again to resume)") from e
        size = part.stat().st_size
        total = total if total is not None else expected_size
        if total is not None and size != total:
            raise DownloadError(f"{url}: download incomplete ({size} of {total} bytes kept in {part}; "
                                "run again to resume)")
        return
    raise DownloadError(f"{url}: the server did not resume the download correctly twice")


# -------------------------------------------------------------------------------------- extract


def _check_member(name: str, archive: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if not name or p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"{archive}: refusing unsafe path {name!r} in archive (absolute or '..')")


def _extract(archive: Path, into: Path) -> None:
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(info.filename, archive)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise DownloadError(f"{archive}: refusing link {info.filename!r} in archive")
                zf.extractall(into)
            return
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(m.name, archive)
                if not (m.isfile() or m.isdir()):
                    raise DownloadError(f"{archive}: refusing link or special file {m.name!r} in archive")
            if hasattr(tarfile, "data_filter"):  # belt and braces where Python has PEP 706
                tf.extractall(into, members=members, filter="data")
            else:
                tf.extractall(into, members=members)
    except DownloadError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DownloadError(f"{archive}: cannot extract archive ({e}); delete it and download again") from e


def _class_root(tmp: Path, name: str, archive: Path) -> Path:
    """The folder holding ``train/good`` inside an extracted archive (``<class>/...`` or flat)."""
    entries = [e for e in tmp.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
    dirs = [e for e in entries if e.is_dir()]
    for cand in (tmp / name, dirs[0] if len(dirs) == 1 else None, tmp):
        if cand is not None and (cand / "train" / "good").is_dir():
            return cand
    raise DownloadError(f"{archive}: archive does not contain an MVTec AD class (no train/good folder)")


# ------------------------------------------------------------------------------------------ API


def download_class(name: str, dest_root: str | Path = DEFAULT_DEST, url: str | None = None,
                   expected_size: int | None = None, sha256: str | None = None, progress: bool = True,
                   keep_archive: bool = False) -> Path:
    """Download and extract one class into ``<dest_root>/<name>``; returns that folder.

    A class already present (``train/good`` exists) is returned without any network access.
    ``url`` overrides the official archive (then ``name`` may be any folder name). A partial
    download is resumed; a size or sha256 mismatch deletes the archive and raises
    :class:`DownloadError` before anything is extracted.
    """
    url = _resolve_url(name, url)
    dest_root = Path(dest_root)
    target = dest_root / name
    if (target / "train" / "good").is_dir():
        return target
    if target.exists():
        raise DownloadError(f"{target} exists but is not a complete class (no train/good); "
                            "remove it and run again")
    filename = PurePosixPath(urlparse(url).path).name
    if not filename.lower().endswith(_ARCHIVE_SUFFIXES):
        raise DownloadError(f"{url}: unsupported archive type (expected {', '.join(_ARCHIVE_SUFFIXES)})")
    downloads = dest_root / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive, part = downloads / filename, downloads / f"{filename}.part"

    if not archive.exists():
        try:
            _fetch(url, part, expected_size, progress)
        except DownloadError as e:
            raise DownloadError(f"{e}. {_by_hand(url, target)}") from e
        part.replace(archive)
    if expected_size is not None and archive.stat().st_size != expected_size:
        archive.unlink()
        raise DownloadError(f"{url}: size mismatch, expected {expected_size} bytes; archive deleted")
    if sha256 is not None:
        got = sha256_file(archive)
        if got.lower() != sha256.lower():
            archive.unlink()
            raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {got}); archive deleted")

    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{name}-", dir=dest_root))
    try:
        _extract(archive, tmp)
        _class_root(tmp, name, archive).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    return target


def download_all(classes: Iterable[str] | None = None, dest_root: str | Path = DEFAULT_DEST,
                 progress: bool = True) -> list[Path]:
    """Download every class in ``classes`` (default: all 15 of MVTec AD); returns their folders."""
    names = list(classes) if classes is not None else list(MVTEC_AD_CLASSES)
    for n in names:  # fail fast on a typo before downloading gigabytes
        _resolve_url(n, None)
    return [download_class(n, dest_root, progress=progress) for n in names]

