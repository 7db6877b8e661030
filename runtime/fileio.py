"""Durable file writes shared by the bundle writer and the runtime's outputs."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import OutputError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def synced_temp(dst: Path, data: bytes) -> Path:
    """``data`` in a fsynced temporary file beside ``dst``, with the permissions a plain new file
    would get (mkstemp's 0600 would hide bundles and outputs from a service user). The caller
    renames it into place."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(dst: Path, data: bytes) -> Path:
    """Replace ``dst`` with ``data`` atomically: readers see the old file or the new, never half."""
    tmp = synced_temp(dst, data)
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def check_output_folder(path: Path, what: str) -> None:
    """Refuse (OutputError, exit 9) an output folder that cannot be created or written, before
    any long work: a file in its place or on its way, or a nearest existing folder we cannot
    write. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: a file is there, not a folder")
    nearest = path.absolute()
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise OutputError(f"{what} {path}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {nearest} is not writable")
