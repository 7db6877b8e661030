"""A new bundle version beside its parent: how ``threshold --set`` and ``update`` write one.

The parent is never modified. The new version's files are copied from the parent (or written
anew), gathered in a hidden folder beside the target, sealed by
:func:`runtime.bundle.finalize_manifest` (the manifest last), and the folder is renamed into
place: a watcher or a hot reload sees either no bundle or the whole of it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .bundle import Bundle, finalize_manifest, read_bundle, write_array
from .errors import OutputError


def write_version(parent: Bundle, out: Path, manifest: dict[str, Any], copied: Iterable[str],
                  arrays: Mapping[str, np.ndarray] | None = None, *, kind: str, what: str,
                  before_seal: Callable[[], None] | None = None) -> Bundle:
    """The bundle at ``out``: ``copied`` files from ``parent``, ``arrays`` written anew, then
    ``manifest`` sealed over both (``before_seal`` runs just before, e.g. to record the write's
    time). ``out`` may exist only as an empty folder (the callers check). A failure removes the
    hidden folder and is an OutputError (exit 9) naming ``what`` could not be written."""
    arrays = dict(arrays or {})
    copied = sorted(set(copied) - set(arrays))
    tmp = out.parent / f".{out.name}.{kind}-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for rel in copied:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(parent.path(rel), tmp / rel)
        for rel, array in arrays.items():
            write_array(tmp, rel, array)
        if before_seal is not None:
            before_seal()
        finalize_manifest(tmp, manifest, sorted({*copied, *arrays}))
        if out.exists():
            out.rmdir()  # an empty folder (the caller refused anything else)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{out}: cannot write {what} ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_bundle(out)
