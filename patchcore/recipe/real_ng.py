"""Real NG images for the selection (``--ng DIR``): the same folder the operating point reads
(:func:`patchcore.operating_evidence.ng_images`: image files under DIR, recursively, ``mask``
files left out), and the same seeded half of it: the half that sets the operating point also
enters the recipe's ranking, so the other half checks a bundle neither choice has seen.

Masks are optional and found per image, first match wins:
1. beside the image: ``<stem>_mask.png`` in the image's folder;
2. MVTec AD's layout: ``DIR/../ground_truth/<DIR's name>/<sub-folders>/<stem>_mask.png``.
The real cells get AU-PRO only when every image used has its mask; otherwise image recall alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import UsageError
from runtime.images import ImageReadError, read_image, read_mask



@dataclass
class RealNG:
    path: Path
    image: np.ndarray
    mask: np.ndarray | None  # HxW bool, or None when the image has no mask


def ng_files(folder: str | Path) -> list[Path]:
    """Every image of ``--ng`` (a UsageError, exit 2, when the folder is missing or holds fewer than 2)."""
    from ..operating_evidence import ng_images

    return ng_images(folder)


def choosing_half(files: Sequence[Path], seed: int) -> list[Path]:
    """The half of ``files`` that takes part in choices (the operating point's "set" half); the rest
    checks them."""
    from ..operating_evidence import ng_split

    perm = ng_split(len(files), seed)
    return sorted(files[i] for i in perm[:len(files) // 2])


def mask_path(image: Path, folder: Path) -> Path | None:
    """The mask of ``image`` (under ``folder``, the ``--ng`` root) in one of the two layouts, or None."""
    name = f"{image.stem}_mask.png"
    beside = image.parent / name
    if beside.is_file():
        return beside
    mvtec = folder.parent.parent / "ground_truth" / folder.name / image.parent.relative_to(folder) / name
    if folder.parent.name == "test" and mvtec.is_file():
        return mvtec
    return None


def load(folder: str | Path, seed: int, files: Sequence[Path] | None = None) -> list[RealNG]:
    """The choosing half of ``--ng`` decoded, with masks where found; a corrupt image or mask, or a
    mask of another size, is a UsageError (exit 2) naming the file."""
    root = Path(folder)
    files = list(files if files is not None else ng_files(root))
    use = set(choosing_half(files, seed))
    out = []
    for p in files:  # every file is decoded (the checking half too), so a bad one is found before the fit
        try:
            img = read_image(p)
            mp = mask_path(p, root)
            mask = None if mp is None else read_mask(mp)
        except ImageReadError as e:
            raise UsageError(f"--ng {folder}: {e}") from None
        if mask is not None and mask.shape != img.shape[:2]:
            raise UsageError(f"--ng {folder}: mask {mp} is {mask.shape[1]}x{mask.shape[0]}, its image "
                             f"{img.shape[1]}x{img.shape[0]}")
        if p in use:
            out.append(RealNG(p, img, mask))
    return out
