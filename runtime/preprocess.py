"""The single source of truth for turning a decoded image into a network input.

Fitting, evaluation, export checks and the deployed runtime all call :func:`preprocess_batch`
with the :class:`PreprocessSpec` stored in the bundle, so they can never disagree about pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST_EXACT,  # pixel centres, as PIL (plain INTER_NEAREST shifts half a pixel)
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


class PreprocessError(ValueError):
    """An image that cannot be preprocessed (wrong dtype, shape or channel count)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded RGB uint8 image becomes a normalised float32 NCHW tensor.

    resize: length of the shorter side after resizing (aspect ratio kept), as torchvision's
        ``Resize(int)``; 0 disables resizing.
    crop: side of the square center crop taken after resizing; 0 disables cropping.
    interpolation: ``bilinear``, ``bicubic``, ``area`` or ``nearest`` for the image resize.
    antialias: when shrinking, use area averaging instead (OpenCV's interpolating kernels do
        not low-pass filter, which aliases a 2x downscale).
    mean, std: per-channel normalisation applied to pixel values scaled to [0, 1].
    channel_order: the order of channels the network expects; images are decoded as RGB.
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    antialias: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.resize < 0 or self.crop < 0:
            raise ValueError("resize and crop must be >= 0")
        if self.resize and self.crop and self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing field(s): {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the network input for an image of the given size."""
        h, w = _resized_size(height, width, self.resize)
        if self.crop:
            return self.crop, self.crop
        return h, w


def _resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    if not shorter:
        return height, width
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


def _center_crop_box(height: int, width: int, crop: int) -> tuple[int, int]:
    """Top-left corner of torchvision's CenterCrop (rounding as torchvision does)."""
    if crop > height or crop > width:
        raise PreprocessError(f"cannot crop {crop}x{crop} from a {height}x{width} image")
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def resize_and_crop(image: np.ndarray, spec: PreprocessSpec, interpolation: str | None = None) -> np.ndarray:
    """The geometric part of the spec: shorter-side resize, then center crop. Any dtype."""
    interp_name = interpolation or spec.interpolation
    h, w = image.shape[:2]
    nh, nw = _resized_size(h, w, spec.resize)
    if (nh, nw) != (h, w):
        flag = _INTERPOLATIONS[interp_name]
        if spec.antialias and interp_name != "nearest" and (nh < h or nw < w):
            flag = cv2.INTER_AREA
        image = cv2.resize(image, (nw, nh), interpolation=flag)
    if spec.crop:
        top, left = _center_crop_box(nh, nw, spec.crop)
        image = image[top : top + spec.crop, left : left + spec.crop]
    return image


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One RGB uint8 HxWx3 image -> normalised float32 3xHxW."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise PreprocessError(f"expected an HxWx3 RGB image, got shape {shape}")
    if image.dtype != np.uint8:
        raise PreprocessError(f"expected uint8 pixels, got {image.dtype}")
    image = resize_and_crop(image, spec)
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.channel_order == "BGR":
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[np.ndarray] | Iterable[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Several RGB uint8 images -> float32 NxCxHxW (all must give the same output size)."""
    arrays = [preprocess(im, spec) for im in images]
    if not arrays:
        raise PreprocessError("no images to preprocess")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise PreprocessError(f"images give different input sizes {sorted(shapes)}; set crop in the spec")
    return np.stack(arrays)


def preprocess_mask(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A boolean HxW ground-truth mask through the same geometry, nearest neighbour."""
    m = resize_and_crop(mask.astype(np.uint8), spec, interpolation="nearest")
    return m.astype(bool)
