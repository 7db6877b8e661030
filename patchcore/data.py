"""Read one class of a dataset in the MVTec AD layout.

::

    <class>/train/good/*.png
    <class>/test/good/*.png
    <class>/test/<defect_type>/*.png
    <class>/ground_truth/<defect_type>/<stem>_mask.png

Fitting and export need only ``train/good`` (``need_test=False``: a line without labelled test
images still gets a bundle, its threshold from the out-of-fold scores of the good images);
evaluation needs ``test/`` and says so with :class:`NoTestImages`.

Only file lists are built here; pixels are decoded lazily by callers with
:func:`runtime.images.read_image` and :func:`load_mask`, so listing a large class is instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.images import IMAGE_SUFFIXES, ImageReadError, is_image_file, read_mask

GOOD = "good"


class DatasetError(ValueError):
    """A dataset folder that does not match the MVTec AD layout; the message names the path."""


class NoTestImages(DatasetError):
    """A class folder with good training images but no test images: nothing to measure (exit 2)."""


@dataclass(frozen=True)
class Sample:
    """One test image. ``label`` is 0 for good, 1 for defective; ``mask_path`` is None for good
    images and, with ``image_level_only``, for every image."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class ClassDataset:
    name: str
    root: Path
    train: list[Path]
    test: list[Sample]
    image_level_only: bool = False
    defect_types: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.defect_types = sorted({s.defect_type for s in self.test if s.label == 1})

    @property
    def has_masks(self) -> bool:
        """True when every defective test image has a mask, so pixel metrics can be computed."""
        return not self.image_level_only and all(s.mask_path for s in self.test if s.label == 1)


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: p.name)


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for cand in (gt_dir / f"{stem}_mask{suffix}", gt_dir / f"{stem}_mask{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


def load_class(root: str | Path, image_level_only: bool = False, need_test: bool = True) -> ClassDataset:
    """List the train and test images (and defect masks) of the class folder ``root``.

    With ``image_level_only=True`` masks are not looked up (every ``mask_path`` is None), so a
    dataset without ``ground_truth`` loads; callers then compute image-level metrics only.
    Masks without a matching test image are ignored. With ``need_test=False`` a folder with only
    ``train/good`` loads with an empty ``test`` (what fitting and export need); otherwise it is
    :class:`NoTestImages`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    train_dir, test_dir = root / "train" / GOOD, root / "test"
    if not train_dir.is_dir():
        plain = any(p.is_file() and is_image_file(p) for p in root.iterdir())
        raise DatasetError(
            f"{root}: not an MVTec AD class folder (missing train/good/); expected "
            "<class>/train/good/*.png, and for measuring <class>/test/<type>/*.png, "
            "<class>/ground_truth/<type>/<stem>_mask.png"
            + (f" (the images directly in {root} belong in {train_dir})" if plain else "")
        )
    train = _images(train_dir)
    if not train:
        raise DatasetError(f"{train_dir}: no training images (suffixes {' '.join(IMAGE_SUFFIXES)})")

    type_dirs = sorted((d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                       key=lambda d: (d.name != GOOD, d.name)) if test_dir.is_dir() else []
    test: list[Sample] = []
    unmasked: list[Path] = []
    for type_dir in type_dirs:
        label = int(type_dir.name != GOOD)
        for img in _images(type_dir):
            mask = None
            if label and not image_level_only:
                mask = _find_mask(root / "ground_truth" / type_dir.name, img.stem)
                if mask is None:
                    unmasked.append(img)
            test.append(Sample(img, label, type_dir.name, mask))
    if not test and need_test:
        raise NoTestImages(
            f"{root}: no test images under test/ (test/good/*.png, test/<defect>/*.png): nothing to measure; "
            f"`patchcore export --data {root}` makes a bundle from train/good alone")
    if unmasked:
        first = unmasked[0]
        raise DatasetError(
            f"{root}: {len(unmasked)} defective test image(s) have no mask, first {first} "
            f"(expected {root / 'ground_truth' / first.parent.name / (first.stem + '_mask.png')}); "
            "add the masks or load with image_level_only=True to skip pixel metrics"
        )
    return ClassDataset(root.name, root, train, test, image_level_only)


def load_mask(sample: Sample, shape: tuple[int, ...]) -> np.ndarray:
    """The ``HxW`` bool ground-truth mask of ``sample``; all False for a good image.

    ``shape`` is the shape of the decoded image (``(H, W)`` or ``(H, W, C)``); a mask of another
    size is an error, since resizing it silently would misplace the defect.
    """
    hw = tuple(shape[:2])
    if sample.label == 0:
        return np.zeros(hw, bool)
    if sample.mask_path is None:
        raise DatasetError(f"{sample.path}: defective image has no mask (loaded with image_level_only?)")
    try:
        mask = read_mask(sample.mask_path)
    except ImageReadError as e:
        raise DatasetError(str(e)) from e
    if mask.shape != hw:
        raise DatasetError(
            f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {sample.path} "
            f"is {hw[1]}x{hw[0]} (width x height)"
        )
    return mask



def load_test_set(root: str | Path, need_test: bool = True) -> ClassDataset:
    """A class folder for scoring its test images: with masks when every defective image has one,
    image-level only otherwise (parity and calibration need labels, not necessarily masks)."""
    try:
        return load_class(root, need_test=need_test)
    except DatasetError as e:
        if "no mask" not in str(e):
            raise
        return load_class(root, image_level_only=True, need_test=need_test)
