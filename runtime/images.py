"""Decode image and mask files into the arrays every other part of patchcore-rt expects.

Images become ``HxWx3 uint8 RGB`` whatever their mode on disk (gray, gray+alpha, RGB, RGBA,
16-bit, palette, 1-bit); masks become ``HxW bool``. Decoding goes through
``cv2.imdecode(bytes)`` rather than ``cv2.imread(path)`` so paths with non-ASCII characters work
on every platform and the same code serves files, camera frames and uploaded bytes.

8-bit RGB PNGs (what line cameras and most tools write) are decoded by libspng (``pyspng``) where it
is installed, to RGB directly: the same pixels as OpenCV's libpng (tested on real and generated
images) for a quarter less time (BENCHMARKS.md "Decoding"); every other kind, and any PNG libspng
refuses, goes through OpenCV, which names what is wrong.

Pixels are returned as stored: EXIF orientation tags are ignored, so training, export checks and
the runtime all see the same array for the same file.

Hostile files are refused before they cost memory: only regular files are read (a symlink to
``/dev/zero`` or a FIFO named ``x.png`` is an error at once, never a hang), with a byte cap, and
the image's width and height are read from its header (Pillow, which parses headers without
decoding) and checked against a pixel cap before OpenCV decodes anything: a 30000 x 30000 PNG of
zeros is under a megabyte on disk and 2.7 GB decoded.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from . import errors

try:  # optional: without it every image goes through OpenCV
    import pyspng as _spng
except ImportError:  # pragma: no cover - the base install has it where a wheel exists
    _spng = None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS_ENV = "PATCHCORE_RT_MAX_PIXELS"
MAX_BYTES_ENV = "PATCHCORE_RT_MAX_BYTES"


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost: pixels (width x height, from the header) and bytes on disk.
    The defaults fit real line cameras (up to 100 megapixels; 20 MP is common) with room."""

    max_pixels: int = 100_000_000
    max_bytes: int = 512 << 20

    @classmethod
    def from_env(cls, env=None) -> "ImageLimits":
        """Defaults, overridden by $PATCHCORE_RT_MAX_PIXELS / $PATCHCORE_RT_MAX_BYTES."""
        env = os.environ if env is None else env
        out = {}
        for field, name in (("max_pixels", MAX_PIXELS_ENV), ("max_bytes", MAX_BYTES_ENV)):
            if env.get(name):
                try:
                    out[field] = int(env[name])
                except ValueError:
                    raise ValueError(f"${name} must be an integer, got {env[name]!r}") from None
                if out[field] < 1:
                    raise ValueError(f"${name} must be >= 1")
        return cls(**out)


DEFAULT_LIMITS = ImageLimits()


class ImageReadError(ValueError):
    """A file or buffer that cannot be decoded as an image; the message names it and says why."""

    exit_code = errors.USAGE


class ImageOverLimit(ImageReadError):
    """An image over the byte or pixel limit (a file that may be fine, but costs too much)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive) and is not hidden."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def read_file_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_LIMITS.max_bytes) -> bytes:
    """The bytes of a regular file, at most ``max_bytes``; ImageReadError for anything else
    (missing, a folder, a device, a FIFO, too large). Opened without blocking, so a FIFO is
    refused at once instead of waiting for a writer."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageReadError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{p}: is a directory, not an image file") from None
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(f"{p}: is a directory, not an image file")
        raise ImageReadError(f"{p}: not a regular file (a device, FIFO or socket); only files are read")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise ImageOverLimit(f"{p}: {st.st_size} bytes is over the {max_bytes}-byte limit per image "
                                 f"(${MAX_BYTES_ENV})")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from None
    if len(data) > max_bytes:  # grew while we read it
        raise ImageOverLimit(f"{p}: over the {max_bytes}-byte limit per image (${MAX_BYTES_ENV})")
    return data


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: our cap decides
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        return 1 << 31, 1 << 31  # Pillow's own limit is far over any cap we accept
    except UnidentifiedImageError:  # its message names Pillow's buffer object, not the file
        raise ImageReadError(
            f"{name}: cannot decode image (not a supported image format, or its header is corrupt; "
            f"supported suffixes: {' '.join(IMAGE_SUFFIXES)})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct_error) as e:
        raise ImageReadError(
            f"{name}: cannot decode image (corrupt, truncated or not a supported image format: {e}; "
            f"supported suffixes: {' '.join(IMAGE_SUFFIXES)})"
        ) from None


def check_size(data: bytes, name: str, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) of an encoded image, refused when over the pixel cap."""
    w, h = image_size(data, name)
    if w < 1 or h < 1:
        raise ImageReadError(f"{name}: image header declares {w}x{h} pixels")
    if w * h > limits.max_pixels:
        raise ImageOverLimit(f"{name}: {w}x{h} pixels is over the {limits.max_pixels}-pixel limit per image "
                             f"(${MAX_PIXELS_ENV})")
    return w, h


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


_ROWS = 512  # rows converted at a time, so the temporaries of a 16-bit or float conversion stay small


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """8-bit pixels (``arr`` is one band of rows of the decoded image)."""
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png_rgb8(data: bytes) -> bool:
    """The IHDR says 8 bits per sample, colour type 2 (RGB), not interlaced."""
    return (len(data) > 33 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR"
            and data[24] == 8 and data[25] == 2 and data[28] == 0)


def _decode_png_rgb8(data: bytes) -> np.ndarray | None:
    """An 8-bit RGB PNG through libspng, or None where that path does not apply or refuses the file."""
    if _spng is None or not _is_png_rgb8(data):
        return None
    try:
        arr = _spng.load(data)
    except Exception:  # corrupt or truncated: OpenCV decodes it again and says what is wrong
        return None
    return arr if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 else None


def decode_image(data: bytes, name: str, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to an ``HxWx3 uint8 RGB`` array.

    ``name`` is used only in error messages (a file path, camera id or upload name).
    Alpha channels are dropped, not composited: anomaly detection must see the stored colour.
    The header's size is checked against ``limits`` first.
    """
    if len(data) == 0:
        raise ImageReadError(f"{name}: file is empty")
    check_size(data, name, limits)
    fast = _decode_png_rgb8(data)
    if fast is not None:
        return fast
    raw = _decode_raw(data, name)
    c = _channels(raw)
    if c not in (1, 2, 3, 4):
        raise ImageReadError(f"{name}: unsupported channel count {c}")
    if raw.dtype == np.uint8 and c == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB, dst=raw)  # in place: the common case costs one array
    # otherwise converted band by band into the result: the decoded array and the result are the
    # only full-size arrays alive at once (a 16-bit RGBA image costs 8 + 3 bytes per pixel)
    out = np.empty((*raw.shape[:2], 3), np.uint8)
    code = {1: cv2.COLOR_GRAY2RGB, 2: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[c]
    for s in range(0, raw.shape[0], _ROWS):
        band = _to_uint8(raw[s : s + _ROWS], name)
        band = band.reshape(band.shape[:2]) if c == 1 else band[:, :, 0] if c == 2 else band
        out[s : s + _ROWS] = cv2.cvtColor(np.ascontiguousarray(band), code)
    return out


def read_image(path: str | os.PathLike, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Read an image file as ``HxWx3 uint8 RGB``; raises :class:`ImageReadError` naming the file."""
    return decode_image(read_file_bytes(path, limits.max_bytes), str(path), limits)


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


def read_mask(path: str | os.PathLike, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Read a mask file as ``HxW bool``; raises :class:`ImageReadError` naming the file."""
    data = read_file_bytes(path, limits.max_bytes)
    check_size(data, str(path), limits)
    return decode_mask(data, str(path))
