"""Which image files a command or the watcher scores: the images of folders (sorted; sub-folders on
request), the files given, and the names a writer uses while a file is still being written (never
read)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from ..images import is_image_file
from .messages import warn

# Names that writers use while a file is still being written; such files are never read.
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".filepart", ".swp")


def is_temporary_name(name: str) -> bool:
    """True for names that mean 'still being written' or 'not meant for us': dot-files,
    editor/backup files and partial-download suffixes."""
    low = name.lower()
    return name.startswith(".") or name.startswith("~$") or name.endswith("~") or low.endswith(TEMPORARY_SUFFIXES)


def folder_images(folder: Path, recursive: bool) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if is_image_file(f) and not is_temporary_name(f))
    return out


def collect_inputs(paths: list[Path], recursive: bool = False) -> list[tuple[Path, str]]:
    """Files to score for ``predict``: ``(path, name)`` pairs in argument order.

    A file argument is taken whatever its suffix (a non-image gives an error record); a folder
    contributes its image files (sorted; sub-folders with ``recursive``). ``name`` is the path
    as given for files and ``<folder arg>/<relative path>`` for folder contents. A folder
    argument without image files is itself an input (its record says it is a folder, and a
    warning says it was empty), unless nothing else was given: then it is a usage error.
    """
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    out: list[tuple[Path, str]] = []
    empty: list[Path] = []
    hint = "" if recursive else " (use --recursive for sub-folders)"
    for p in paths:
        if p.is_dir():
            found = folder_images(p, recursive)
            if not found:
                empty.append(p)
                warn(f"{p}: folder holds no image files{hint}")
                out.append((p, str(p)))
            out.extend((f, str(f)) for f in found)
        else:
            out.append((p, str(p)))
    if len(empty) == len(out):
        raise UsageError(f"no image files found in {', '.join(map(str, empty))}{hint}")
    return out


def output_relpath(path: Path, args: list[Path]) -> Path:
    """Where a file's outputs go inside an output folder: its path relative to the folder
    argument that holds it (``good/000.png`` for ``test/good/000.png`` given ``test``), or its
    own name for a file given directly. The same tree as the input, as ``score`` and
    ``watch --move`` keep it."""
    for a in args:
        if a.is_dir():
            try:
                return path.relative_to(a)
            except ValueError:
                continue
    return Path(path.name)
