"""A small MVTec-layout dataset made offline from real texture photos, with exact defect masks.

The textures are the CC0 photos that scikit-image ships inside its package (``brick``, ``grass``,
``gravel``; read from the installed package, never fetched). Good images are random crops and
flips of one texture; defective test images are further crops with one drawn defect:

- ``scratch``: a thin bright or dark line,
- ``stain``: a blob whose colour is shifted,
- ``hole``: a dark ellipse.

Each defect is blended with soft edges that stay inside its mask, so pixels outside the mask are
exactly the undamaged crop and every pixel inside it is changed. The output depends only on the
arguments (same seed, same bytes), which makes it a stable smoke test and demo dataset.

Two more layouts stand for line images that a square center crop serves badly:

- ``tall``: 1 : 2.5 parts (``size`` is the width) whose defects sit near the two ends, outside the
  central square;
- ``large``: high-resolution images (``size`` x ``size``, e.g. 1024) made from an upscaled crop with
  sensor noise, whose defects are a few pixels wide (``fine_scratch``, ``pit``, ``speck``).
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from runtime.images import read_image

# A tint per texture so colour defects are visible on the grayscale photos.
TEXTURES: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.72, 0.58),
    "grass": (0.62, 0.95, 0.48),
    "gravel": (0.92, 0.90, 0.85),
}
DEFECT_TYPES = ("scratch", "stain", "hole")
FINE_DEFECT_TYPES = ("fine_scratch", "pit", "speck")
LAYOUTS = ("square", "tall", "large")
TALL_ASPECT = 2.5  # height / width of the tall layout
_MARKER = "synthetic.json"


def load_texture(name: str) -> np.ndarray:
    """The tinted ``HxWx3 uint8 RGB`` texture photo ``name`` from scikit-image's package data."""
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose one of {', '.join(TEXTURES)}")
    try:
        path = Path(str(importlib.resources.files("skimage.data") / f"{name}.png"))
    except ModuleNotFoundError as e:
        raise ValueError("the synthetic dataset needs scikit-image (pip install 'patchcore-rt[fit]')") from e
    if not path.is_file():
        raise ValueError(f"{path}: texture missing from the installed scikit-image package")
    gray = read_image(path).astype(np.float32)
    return np.clip(gray * np.array(TEXTURES[name], np.float32), 0, 255).astype(np.uint8)


def _flipped(out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``out`` mirrored left to right, then upside down, each at even odds."""
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return out


def _crop(tex: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = tex.shape[:2]
    side = int(rng.integers(int(0.55 * min(h, w)), int(0.7 * min(h, w)) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    out = _flipped(tex[y:y + side, x:x + side], rng)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(out), (size, size), interpolation=interp)


# Each defect draws its binary shape and says what the damaged pixels look like.
def _line_defect(img, rng, size, length, centre, thick, bright, dark):
    """A straight line ``length`` long at a random angle, its centre drawn within ``centre`` (shares
    of the side), ``thick()`` pixels wide (drawn after the centre), then at even odds bright
    (``bright[0] * f + bright[1]``) or dark (``dark * f``)."""
    shape = np.zeros(img.shape[:2], np.uint8)
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(centre[0], centre[1], 2) * size
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    cv2.line(shape, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, thick(), cv2.LINE_8)
    f = img.astype(np.float32)
    target = bright[0] * f + bright[1] if rng.random() < 0.5 else dark * f
    return shape.astype(bool), target


def _scratch(img, rng, size):
    return _line_defect(img, rng, size, rng.uniform(0.3, 0.6) * size, (0.3, 0.7),
                        lambda: max(1, int(round(rng.uniform(1, 3) * size / 256))), (0.3, 175), 0.25)


def _stain(img, rng, size):
    shape = np.zeros(img.shape[:2], np.uint8)
    c = rng.uniform(0.25, 0.75, 2) * size
    for _ in range(3):  # a few overlapping ellipses make an irregular blob
        off = rng.normal(0, 0.03 * size, 2)
        axes = (rng.uniform(0.04, 0.1, 2) * size).astype(int) + 2
        cv2.ellipse(shape, tuple(int(v) for v in c + off), tuple(int(a) for a in axes),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    colour = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(1.2, 1.6)], np.float32)
    target = img.astype(np.float32) * colour[rng.permutation(3)] + 25
    return shape.astype(bool), target


def _hole(img, rng, size):
    shape = np.zeros(img.shape[:2], np.uint8)
    c = rng.uniform(0.2, 0.8, 2) * size
    axes = (rng.uniform(0.03, 0.08, 2) * size).astype(int) + 2
    cv2.ellipse(shape, tuple(int(v) for v in c), tuple(int(a) for a in axes),
                float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return shape.astype(bool), img.astype(np.float32) * 0.12 + 5


# Defects a few pixels wide, for the large layout: sizes in pixels, not relative to the image.
def _fine_scratch(img, rng, size):
    return _line_defect(img, rng, size, rng.uniform(40, 110), (0.08, 0.92), lambda: 2, (0.25, 185), 0.1)


def _pit(img, rng, size):
    shape = np.zeros(img.shape[:2], np.uint8)
    c = rng.uniform(0.08, 0.92, 2) * size
    cv2.circle(shape, tuple(int(v) for v in c), int(rng.integers(2, 4)), 1, -1)
    return shape.astype(bool), img.astype(np.float32) * 0.1


def _speck(img, rng, size):
    shape = np.zeros(img.shape[:2], np.uint8)
    c = rng.uniform(0.08, 0.92, 2) * size
    axes = tuple(int(v) for v in rng.integers(2, 5, 2))
    cv2.ellipse(shape, tuple(int(v) for v in c), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    colour = np.array([0.35, 0.5, 1.7], np.float32)[rng.permutation(3)]
    return shape.astype(bool), img.astype(np.float32) * colour + 40


_DEFECTS: dict[str, Callable] = {"scratch": _scratch, "stain": _stain, "hole": _hole,
                                 "fine_scratch": _fine_scratch, "pit": _pit, "speck": _speck}


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(damaged image, bool mask)``; pixels differ from ``img`` exactly where the mask is set."""
    size = img.shape[0]
    mask, target = _DEFECTS[kind](img, rng, size)
    # Soft edges, but only inside the mask: weight >= 0.4 on every masked pixel, 0 outside.
    sigma = 0.8 if kind in FINE_DEFECT_TYPES else max(0.8, size / 256)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    alpha = np.where(mask, 0.4 + 0.6 * soft, 0.0)[..., None]
    out = np.clip(img + alpha * (target - img), 0, 255).round().astype(np.uint8)
    # Where rounding left a masked pixel unchanged, invert it (255 - v != v for every uint8 v).
    same = mask & np.all(out == img, axis=2)
    out[same] = 255 - img[same]
    return out, mask


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", arr[..., ::-1] if arr.ndim == 3 else arr)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 PNG
        raise OSError(f"{path}: PNG encoding failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


@dataclass(frozen=True)
class SyntheticImage:
    """One generated file: ``relpath`` inside the class folder, the image written there, the
    undamaged crop it was made from and its mask (both None for good images)."""

    relpath: str
    image: np.ndarray
    clean: np.ndarray | None = None
    mask: np.ndarray | None = None


def _tall_crop(tex: np.ndarray, rng: np.random.Generator, width: int) -> np.ndarray:
    """A 1 : 2.5 (width : height) crop of the texture, flipped at random, resized to ``width``."""
    h, w = tex.shape[:2]
    ch = int(rng.integers(int(0.8 * h), h + 1))
    cw = int(round(ch / TALL_ASPECT))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = _flipped(tex[y:y + ch, x:x + cw], rng)
    return cv2.resize(np.ascontiguousarray(out), (width, int(round(width * TALL_ASPECT))), interpolation=cv2.INTER_AREA)


def _defect_near_an_end(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A defect inside a square window at the top or bottom end, covering 28% of the height: never
    in the central square a center crop keeps."""
    h, w = img.shape[:2]
    side = min(w, int(0.28 * h))
    y0 = 0 if rng.random() < 0.5 else h - side
    x0 = int(rng.integers(0, w - side + 1))
    out, mask = img.copy(), np.zeros((h, w), bool)
    window, wmask = add_defect(np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side]), kind, rng)
    out[y0:y0 + side, x0:x0 + side] = window
    mask[y0:y0 + side, x0:x0 + side] = wmask
    return out, mask


def _large_crop(tex: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """An upscaled crop with per-pixel sensor noise (sigma 3 grey levels)."""
    img = _crop(tex, rng, size).astype(np.float32)
    img += rng.normal(0.0, 3.0, img.shape[:2])[..., None]
    return np.clip(img, 0, 255).round().astype(np.uint8)


def iter_images(name: str = "brick", n_train: int = 40, n_test_good: int = 10, n_test_defect: int = 10,
                size: int = 256, seed: int = 0, defects: tuple[str, ...] | None = None, layout: str = "square"
                ) -> Iterator[SyntheticImage]:
    """Generate the images of :func:`make_synthetic_class` in memory, in the order they are drawn."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    defects = defects or (FINE_DEFECT_TYPES if layout == "large" else DEFECT_TYPES)
    unknown = [d for d in defects if d not in _DEFECTS]
    if unknown:
        raise ValueError(f"unknown defect type(s) {unknown}; choose from {', '.join(_DEFECTS)}")
    if min(n_test_good, n_test_defect) < 0 or n_train < 1 or size < 32:
        raise ValueError("need n_train >= 1, non-negative test counts and size >= 32")
    tex = load_texture(name)
    rng = np.random.default_rng(seed)
    crop = {"square": _crop, "tall": _tall_crop, "large": _large_crop}[layout]
    damage = _defect_near_an_end if layout == "tall" else add_defect
    for i in range(n_train):
        yield SyntheticImage(f"train/good/{i:03d}.png", crop(tex, rng, size))
    for i in range(n_test_good):
        yield SyntheticImage(f"test/good/{i:03d}.png", crop(tex, rng, size))
    for kind in defects:
        for i in range(n_test_defect):
            clean = crop(tex, rng, size)
            img, mask = damage(clean, kind, rng)
            yield SyntheticImage(f"test/{kind}/{i:03d}.png", img, clean, mask)


def make_synthetic_class(dest: str | Path, name: str = "brick", n_train: int = 40, n_test_good: int = 10,
                         n_test_defect: int = 10, size: int = 256, seed: int = 0,
                         defects: tuple[str, ...] | None = None, layout: str = "square") -> Path:
    """Write the class ``<dest>/<name>`` (``<name>-<layout>`` for the tall and large layouts) in
    the MVTec AD layout and return its folder.

    ``name`` is the texture; ``n_test_defect`` images are made per defect type, each with its
    mask at ``ground_truth/<type>/<stem>_mask.png`` (0/255). A folder left by an earlier call
    with the same arguments is reused; one with other arguments is replaced; any other existing
    folder is an error. The class is built in a temporary folder and renamed into place.
    """
    defects = tuple(defects or (FINE_DEFECT_TYPES if layout == "large" else DEFECT_TYPES))
    params = dict(texture=name, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect,
                  size=size, seed=seed, defects=list(defects))
    if layout != "square":
        params["layout"] = layout
    dest = Path(dest)
    target = dest / (name if layout == "square" else f"{name}-{layout}")
    if target.exists():
        marker = target / _MARKER
        if not marker.is_file():
            raise ValueError(f"{target} exists and was not made by make_synthetic_class; remove it first")
        if json.loads(marker.read_text()) == params:
            return target
    images = iter_images(name, n_train, n_test_good, n_test_defect, size, seed, defects, layout)
    first = next(images)  # validates the arguments before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".synthetic-{name}-", dir=dest))
    try:
        for item in itertools.chain([first], images):
            _write_png(tmp / item.relpath, item.image)
            if item.mask is not None:
                kind, stem = item.relpath.split("/")[1], Path(item.relpath).stem
                _write_png(tmp / "ground_truth" / kind / f"{stem}_mask.png", item.mask.astype(np.uint8) * 255)
        (tmp / _MARKER).write_text(json.dumps(params, indent=1) + "\n")
        (tmp / "license.txt").write_text(
            f"Made by patchcore.synthetic from scikit-image's '{name}' texture photo (CC0 1.0).\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
