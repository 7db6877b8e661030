"""The single source of truth for turning a decoded image into a network input.

Fitting, evaluation, export checks and the deployed runtime all call :func:`prepare` (or
:func:`preprocess_batch`) with the :class:`PreprocessSpec` stored in the bundle, so they can never
disagree about pixels. The geometry (crop, resize, letterbox, tiles) is planned from the image size
alone by :mod:`runtime.geometry`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from . import geometry
from .geometry import Plan

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
    """An image that cannot be preprocessed (wrong dtype, shape or channel count, too small to crop)."""


MODES = ("crop", "resize", "pad")
# fields added after the first bundle format: written only when they differ from these defaults,
# so a paper-recipe manifest stays what it always was (and an older runtime refuses the others)
_GEOMETRY_DEFAULTS = {"mode": "crop", "size": None, "tile": None, "tile_stride": None, "roi": None}


def _pair(value: Any, name: str, allow_int: bool = True) -> int | tuple[int, int]:
    """An int (a square) or an (h, w) pair of positive ints, from JSON or Python."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer or [height, width], got {value!r}")
    if isinstance(value, (int, np.integer)) and allow_int:
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be {'an integer or ' if allow_int else ''}[height, width] of positive "
                     f"integers, got {value!r}")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded RGB uint8 image becomes normalised float32 network inputs (see
    :mod:`runtime.geometry` for the geometry; sizes are height, width).

    mode: ``crop`` (the paper's recipe generalised), ``resize`` (whole image to ``size``, aspect
        not kept) or ``pad`` (whole image fitted into ``size``, aspect kept, centred).
    resize: crop mode only: the box the image is scaled to cover, aspect kept: an int R is R x R,
        i.e. the shorter side becomes R as torchvision's ``Resize(R)``; [h, w] for a non-square
        crop; 0 disables resizing. Stored as 0 in the other modes.
    crop: crop mode's square canvas side (the bundle format's original field); 0 with ``size``
        unset disables cropping (output sizes then vary). Stored as 0 when ``size`` is set.
    size: the canvas [h, w], the frame of the anomaly map: crop mode's center crop, resize mode's
        target, pad mode's letterbox.
    tile, tile_stride: tiling: the canvas is cut into tiles of ``tile`` [h, w] (the network
        input) every ``tile_stride`` pixels (default: ``tile``, no overlap).
    interpolation: ``bilinear``, ``bicubic``, ``area`` or ``nearest`` for the image resize.
    antialias: when shrinking, use area averaging instead (OpenCV's interpolating kernels do
        not low-pass filter, which aliases a 2x downscale).
    mean, std: per-channel normalisation applied to pixel values scaled to [0, 1].
    channel_order: the order of channels the network expects; images are decoded as RGB.
    roi: a fixed region of interest [x0, y0, x1, y1] in original pixels (end exclusive): only it
        is read, and the geometry above applies to it as if it were the image.
    """

    resize: int | tuple[int, int] = 256
    crop: int = 224
    interpolation: str = "bilinear"
    antialias: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    mode: str = "crop"
    size: tuple[int, int] | None = None
    tile: tuple[int, int] | None = None
    tile_stride: tuple[int, int] | None = None
    roi: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        set_ = partial(object.__setattr__, self)
        set_("resize", _pair(self.resize, "resize"))
        if isinstance(self.crop, bool) or not isinstance(self.crop, (int, np.integer)):
            raise ValueError(f"crop must be an integer, got {self.crop!r}")
        set_("crop", int(self.crop))
        for name in ("size", "tile", "tile_stride"):
            if getattr(self, name) is not None:
                set_(name, _pair(getattr(self, name), name, allow_int=False))
        if self.roi is not None:
            r = self.roi
            if not (isinstance(r, (list, tuple)) and len(r) == 4
                    and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in r)
                    and r[0] >= 0 and r[1] >= 0 and r[2] > r[0] and r[3] > r[1]):
                raise ValueError(f"roi must be [x0, y0, x1, y1] of integers with 0 <= x0 < x1 and 0 <= y0 < y1, "
                                 f"got {r!r}")
            set_("roi", tuple(int(v) for v in r))
        if (isinstance(self.resize, int) and self.resize < 0) or self.crop < 0:
            raise ValueError("resize and crop must be >= 0")
        if self.size is not None:
            set_("crop", 0)
        if self.mode != "crop":
            if self.size is None:
                raise ValueError(f"mode {self.mode} needs size [height, width]")
            set_("resize", 0)
        box, canvas = self.resize_hw, self.canvas_hw
        if box and canvas and (canvas[0] > box[0] or canvas[1] > box[1]):
            raise ValueError(f"crop {_hw(canvas)} is larger than resize {_hw(box)}")
        if self.tile_stride is not None and self.tile is None:
            raise ValueError("tile_stride needs tile")
        if self.tile is not None:
            if canvas is None:
                raise ValueError("tiling needs a fixed canvas (size, or crop > 0)")
            if self.tile[0] > canvas[0] or self.tile[1] > canvas[1]:
                raise ValueError(f"tile {_hw(self.tile)} is larger than the canvas {_hw(canvas)}")
            stride = self.tile_stride or self.tile
            if stride[0] > self.tile[0] or stride[1] > self.tile[1]:
                raise ValueError(f"tile stride {_hw(stride)} is larger than the tile {_hw(self.tile)}: "
                                 "parts of the image would never be seen")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std > 0")

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        """Crop mode's cover box (h, w); None when the image is not resized before cropping."""
        if isinstance(self.resize, tuple):
            return self.resize
        return (self.resize, self.resize) if self.resize else None

    @property
    def canvas_hw(self) -> tuple[int, int] | None:
        """The canvas (h, w): the frame of the anomaly map. None: crop mode without a crop."""
        if self.size is not None:
            return self.size
        return (self.crop, self.crop) if self.crop else None

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """The network input (h, w): a tile, or the whole canvas."""
        return self.tile or self.canvas_hw

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        for name, default in _GEOMETRY_DEFAULTS.items():
            if d[name] == default:
                del d[name]
            elif isinstance(d[name], tuple):
                d[name] = list(d[name])
        if isinstance(d["resize"], tuple):
            d["resize"] = list(d["resize"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing field(s): {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def plan(self, height: int, width: int) -> Plan:
        """The geometry of an image of this size (raises PreprocessError when it cannot be taken)."""
        try:
            return geometry.plan(int(height), int(width), self)
        except geometry.GeometryError as e:
            raise PreprocessError(str(e)) from None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the canvas (the whole network input without tiling) for an image of
        the given size."""
        return self.plan(height, width).canvas_hw


def _hw(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _resample(region: np.ndarray, size: tuple[int, int], interp_name: str, antialias: bool) -> np.ndarray:
    h, w = region.shape[:2]
    nh, nw = size
    if (nh, nw) == (h, w):
        return region
    flag = _INTERPOLATIONS[interp_name]
    if antialias and interp_name != "nearest" and (nh < h or nw < w):
        flag = cv2.INTER_AREA
    return cv2.resize(region, (nw, nh), interpolation=flag)


def content(image: np.ndarray, plan: Plan, spec: PreprocessSpec, interpolation: str | None = None) -> np.ndarray:
    """The part of the canvas that shows the image (read, resized, cropped as ``plan`` says). Any dtype."""
    y0, x0, y1, x1 = plan.read_box
    region = _resample(image[y0:y1, x0:x1], plan.resized_hw, interpolation or spec.interpolation, spec.antialias)
    cy0, cx0, cy1, cx1 = plan.crop_box
    return region[cy0:cy1, cx0:cx1]


def _paste(part: np.ndarray, plan: Plan, fill, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``part`` placed on a canvas filled with ``fill`` (no copy when it fills the canvas)."""
    if part.shape[axes[0]] == plan.canvas_hw[0] and part.shape[axes[1]] == plan.canvas_hw[1]:
        return part
    shape = list(part.shape)
    shape[axes[0]], shape[axes[1]] = plan.canvas_hw
    out = np.full(shape, fill, part.dtype)
    py, px = plan.paste_yx
    index = [slice(None)] * part.ndim
    index[axes[0]] = slice(py, py + part.shape[axes[0]])
    index[axes[1]] = slice(px, px + part.shape[axes[1]])
    out[tuple(index)] = part
    return out


def resize_and_crop(image: np.ndarray, spec: PreprocessSpec, interpolation: str | None = None, fill=0) -> np.ndarray:
    """The geometric part of the spec: the canvas (crop, resize or letterbox; any dtype), padding
    filled with ``fill``."""
    p = spec.plan(*image.shape[:2])
    return _paste(content(image, p, spec, interpolation), p, fill)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise PreprocessError(f"expected an HxWx3 RGB image, got shape {shape}")
    if image.dtype != np.uint8:
        raise PreprocessError(f"expected uint8 pixels, got {image.dtype}")


def _normalise(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxWx3 -> float32 3xHxW, ``(x / 255 - mean) / std`` per channel. The channels are moved
    first, on the uint8 pixels, and the arithmetic then runs in place: the same float32 operations
    on each value as the broadcast expression, so the same bits, at half the time (fewer passes)."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    x -= np.asarray(spec.mean, np.float32)[:, None, None]  # mean and std in the image's channel order
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    return np.ascontiguousarray(x[::-1]) if spec.channel_order == "BGR" else x


def _canvas(image: np.ndarray, spec: PreprocessSpec, p: Plan) -> np.ndarray:
    """Normalised float32 3xHxW canvas; the letterbox border is 0 (the mean colour)."""
    return _paste(_normalise(content(image, p, spec), spec), p, 0.0, axes=(1, 2))


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One RGB uint8 HxWx3 image -> the normalised float32 3xHxW canvas (all tiles together)."""
    _check_image(image)
    return _canvas(image, spec, spec.plan(*image.shape[:2]))


@dataclass
class Prepared:
    """One image made ready for the network: its tiles (or its one input) and its geometry."""

    inputs: np.ndarray  # (n_tiles, 3, h, w) float32
    plan: Plan


def cut_tiles(canvas: np.ndarray, p: Plan) -> np.ndarray:
    """3xHxW canvas -> (n_tiles, 3, h, w), in the plan's tile order."""
    th, tw = p.tile_hw
    if len(p.tiles) == 1 and (th, tw) == canvas.shape[1:]:
        return canvas[None]
    return np.stack([canvas[:, y : y + th, x : x + tw] for y, x in p.tiles])


def prepare(image: np.ndarray, spec: PreprocessSpec) -> Prepared:
    """One RGB uint8 image -> its network inputs and plan. Batches hold these, not decoded images."""
    _check_image(image)
    p = spec.plan(*image.shape[:2])
    return Prepared(cut_tiles(_canvas(image, spec, p), p), p)


def stack_inputs(prepared: Sequence[Prepared]) -> np.ndarray:
    """Prepared images -> one float32 (N, 3, h, w) batch of network inputs, image by image."""
    if not prepared:
        raise PreprocessError("no images to preprocess")
    shapes = {p.inputs.shape for p in prepared}
    if len(shapes) != 1:
        raise PreprocessError(f"images give different input sizes {sorted(shapes)}; set crop in the spec")
    return prepared[0].inputs if len(prepared) == 1 else np.concatenate([p.inputs for p in prepared])


def preprocess_batch(images: Sequence[np.ndarray] | Iterable[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Several RGB uint8 images -> float32 (N * n_tiles)xCxHxW network inputs (all must give the
    same input size)."""
    return stack_inputs([prepare(im, spec) for im in images])


def preprocess_mask(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A boolean HxW ground-truth mask through the same geometry, nearest neighbour, onto the
    canvas (letterbox border: False)."""
    m = resize_and_crop(mask.astype(np.uint8), spec, interpolation="nearest")
    return m.astype(bool)
