"""Which bundle and which files a command works on.

Bundle choice for ``watch`` (the command people type as ``patchcore-rt watch ./incoming``):
``--bundle`` if given, else ``$PATCHCORE_RT_BUNDLE``, else the only bundle under the models
folder (``$PATCHCORE_RT_MODELS`` or ``./models``). Several bundles and no choice is a usage error
that lists them. A bundle argument with a path separator is a folder path; a bare name is the
bundle of that name in the models folder (a folder of the same name in the current directory is
used only when the models folder has none, and a warning names the one chosen when both exist).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..bundle import find_bundles
from ..errors import UsageError
from ..images import is_image_file
from .console import warn

BUNDLE_ENV = "PATCHCORE_RT_BUNDLE"
MODELS_ENV = "PATCHCORE_RT_MODELS"

# Names that writers use while a file is still being written; such files are never read.
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".filepart", ".swp")


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(MODELS_ENV) or "models")


def resolve_bundle(arg: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The bundle folder to use (see the module docstring). Does not open the bundle."""
    env = os.environ if env is None else env
    models = models_dir(env)
    named = arg or env.get(BUNDLE_ENV)
    if named:
        p = Path(named)
        if os.sep in named or (os.altsep and os.altsep in named) or named in (".", ".."):
            return p  # a path: read_bundle names the problem if it is not a bundle
        # a bare name means the bundle of that name in the models folder; a folder of the same
        # name here is used only when the models folder has none, and never silently instead
        if (models / named).is_dir():
            if p.exists():
                warn(f"bundle {named!r}: using {models / named} (a folder ./{named} exists too; "
                     f"write ./{named} to use that one)")
            return models / named
        return p
    found = find_bundles(models)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(
            f"no bundle given and none found under {models}/ "
            f"(pass --bundle PATH, set {BUNDLE_ENV}, or put one bundle in {models}/)"
        )
    listing = "\n".join(f"  --bundle {p}" for p in found)
    raise UsageError(f"{len(found)} bundles under {models}/; choose one:\n{listing}")


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
