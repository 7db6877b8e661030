"""Read one class of a dataset in the MVTec AD layout.

::

    <class>/train/good/*.png
    <class>/test/good/*.png
    <class>/test/<defect_type>/*.png
    <class>/ground_truth/<defect_type>/<stem>_mask.png

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


def load_class(root: str | Path, image_level_only: bool = False) -> ClassDataset:
    """List the train and test images (and defect masks) of the class folder ``root``.

    With ``image_level_only=True`` masks are not looked up (every ``mask_path`` is None), so a
    dataset without ``ground_truth`` loads; callers then compute image-level metrics only.
    Masks without a matching test image are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    train_dir, test_dir = root / "train" / GOOD, root / "test"
    for needed in (train_dir, test_dir):
        if not needed.is_dir():
            raise DatasetError(
                f"{root}: not an MVTec AD class folder (missing {needed.relative_to(root)}/); expected "
                "<class>/train/good/*.png, <class>/test/<type>/*.png, "
                "<class>/ground_truth/<type>/<stem>_mask.png"
            )
    train = _images(train_dir)
    if not train:
        raise DatasetError(f"{train_dir}: no training images (suffixes {' '.join(IMAGE_SUFFIXES)})")

    type_dirs = sorted((d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                       key=lambda d: (d.name != GOOD, d.name))
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
    if not test:
        raise DatasetError(f"{test_dir}: no test images")
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



def load_test_set(root: str | Path) -> ClassDataset:
    """A class folder for scoring its test images: with masks when every defective image has one,
    image-level only otherwise (parity and calibration need labels, not necessarily masks)."""
    try:
        return load_class(root)
    except DatasetError as e:
        if "no mask" not in str(e):
            raise
        return load_class(root, image_level_only=True)
