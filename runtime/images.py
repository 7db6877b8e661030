"""Decode image and mask files into the arrays every other part of patchcore-rt expects.

Images become ``HxWx3 uint8 RGB`` whatever their mode on disk (gray, gray+alpha, RGB, RGBA,
16-bit, palette, 1-bit); masks become ``HxW bool``. Decoding goes through
``cv2.imdecode(bytes)`` rather than ``cv2.imread(path)`` so paths with non-ASCII characters work
on every platform and the same code serves files, camera frames and uploaded bytes.

Pixels are returned as stored: EXIF orientation tags are ignored, so training, export checks and
the runtime all see the same array for the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from . import errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """A file or buffer that cannot be decoded as an image; the message names it and says why."""

    exit_code = errors.USAGE


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive) and is not hidden."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a directory, not an image file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from e


def _decode_raw(data: bytes, name: str) -> np.ndarray:
    """Decode to OpenCV's native layout (BGR/BGRA/gray, 8- or 16-bit), with clear errors."""
    if len(data) == 0:
        raise ImageReadError(f"{name}: file is empty")
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # some codecs raise instead of returning None
        raise ImageReadError(f"{name}: cannot decode image ({str(e).strip().splitlines()[-1]})") from e
    if arr is None or arr.size == 0:
        raise ImageReadError(
            f"{name}: cannot decode image (corrupt, truncated or not a supported image format; "
            f"supported suffixes: {' '.join(IMAGE_SUFFIXES)})"
        )
    return arr


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        # Rounded division by 257 maps 0..65535 exactly onto 0..255 (65535/257 == 255).
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        # Float TIFF/EXR: assume the usual [0, 1] range.
        return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ImageReadError(f"{name}: unsupported pixel type {arr.dtype}")


def _channels(arr: np.ndarray) -> int:
    return 1 if arr.ndim == 2 else arr.shape[2]


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to an ``HxWx3 uint8 RGB`` array.

    ``name`` is used only in error messages (a file path, camera id or upload name).
    Alpha channels are dropped, not composited: anomaly detection must see the stored colour.
    """
    arr = _to_uint8(_decode_raw(data, name), name)
    c = _channels(arr)
    if c == 1:
        return cv2.cvtColor(arr.reshape(arr.shape[:2]), cv2.COLOR_GRAY2RGB)
    if c == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(arr[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if c == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if c == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"{name}: unsupported channel count {c}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``HxWx3 uint8 RGB``; raises :class:`ImageReadError` naming the file."""
    return decode_image(_read_bytes(path), str(path))


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """Decode a mask to ``HxW bool``: a pixel is set when any colour channel is > 0.

    Accepts 1-bit, gray, RGB, 16-bit and 0/1 as well as 0/255 masks. An alpha channel is
    ignored (it is opacity, not the mask), so an opaque black background stays unset.
    """
    arr = _decode_raw(data, name)
    c = _channels(arr)
    if c == 1:
        return arr.reshape(arr.shape[:2]) > 0
    colour = arr[:, :, :1] if c == 2 else arr[:, :, :3]
    return np.any(colour > 0, axis=2)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file as ``HxW bool``; raises :class:`ImageReadError` naming the file."""
    return decode_mask(_read_bytes(path), str(path))
