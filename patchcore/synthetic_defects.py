"""Synthetic defects with exact masks, drawn on good images: recipe selection's validation
(:mod:`patchcore.recipe`) and the operating point's defect evidence (:mod:`patchcore.operating_evidence`).

Six families, each sized in native pixels (an area in a few buckets relative to the part) and
placed on the part (the foreground), not on empty background:

- ``perlin``: a Perlin-like noise shape filled with another good image's texture, blended at a
  strength in [0.1, 1] (DRAEM's and anomalib's synthetic anomalies);
- ``paste``: a patch of another good image Poisson-blended in (``cv2.seamlessClone``, as NSA does);
- ``scratch``: a thin bright or dark curve;
- ``stain``: an irregular blob whose colour is shifted;
- ``missing``: material gone, the background showing through;
- ``warp``: a local smooth displacement of the image.

Every defect changes pixels only inside its mask (the result is copied back outside it), so the
mask is exact; where a family left a masked pixel unchanged it stays part of the defect (a faint
blend is a faint defect). The output depends only on the inputs and the generator.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

FAMILIES = ("perlin", "paste", "scratch", "stain", "missing", "warp")
# defect area as a fraction of the part's area (the foreground's pixels)
SIZE_BUCKETS = (0.0005, 0.003, 0.02)
MIN_AREA = 9  # pixels: the smallest defect drawn, whatever the bucket


def border_colour(img: np.ndarray) -> np.ndarray:
    """The median colour of the image's one-pixel frame: the background where a part is shown whole."""
    frame = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).reshape(-1, img.shape[2])
    return np.median(frame, axis=0).astype(np.float32)


def foreground(img: np.ndarray, min_share: float = 0.05, max_share: float = 0.97) -> np.ndarray:
    """Where the part is: pixels that differ clearly from the border's colour, cleaned by a
    morphological opening; the whole image when the border is not a plain colour, or when the
    part is less than ``min_share`` or more than ``max_share`` of it (a texture, or a part filling
    the frame)."""
    h, w = img.shape[:2]
    frame = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).reshape(-1, img.shape[2]).astype(np.float32)
    if np.median(np.abs(frame - border_colour(img)).max(axis=1)) > 15:
        return np.ones((h, w), bool)  # no plain background around: a texture, or a part filling the frame
    diff = np.abs(img.astype(np.float32) - border_colour(img)).max(axis=2)
    fg = (diff > 30).astype(np.uint8)
    k = max(3, int(round(min(h, w) / 100)) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((3 * k, 3 * k), np.uint8))
    share = fg.mean()
    if not min_share <= share <= max_share:
        return np.ones((h, w), bool)
    return fg.astype(bool)


def _noise(shape: tuple[int, int], rng: np.random.Generator, cell: float) -> np.ndarray:
    """Smooth value noise (Perlin-like) of the given cell size in pixels, in [0, 1]."""
    h, w = shape
    gh, gw = max(2, int(math.ceil(h / cell)) + 1), max(2, int(math.ceil(w / cell)) + 1)
    n = cv2.resize(rng.random((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    n += 0.5 * cv2.resize(rng.random((2 * gh, 2 * gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    n -= n.min()
    return n / max(float(n.max()), 1e-6)


def _blob(shape: tuple[int, int], centre: tuple[float, float], area: float, rng: np.random.Generator,
          irregular: bool = True) -> np.ndarray:
    """A filled shape of about ``area`` pixels around ``centre`` (x, y): overlapping ellipses."""
    m = np.zeros(shape, np.uint8)
    r = math.sqrt(area / math.pi)
    parts = 3 if irregular else 1
    for _ in range(parts):
        off = rng.normal(0, 0.35 * r, 2) if irregular else np.zeros(2)
        ratio = rng.uniform(0.5, 1.0)
        ax = (max(1, int(round(r * math.sqrt(1 / ratio) * 0.85))), max(1, int(round(r * math.sqrt(ratio) * 0.85))))
        cv2.ellipse(m, (int(round(centre[0] + off[0])), int(round(centre[1] + off[1]))), ax,
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def _perlin_shape(shape, centre, area, rng):
    r = math.sqrt(area / math.pi)
    window = _blob(shape, centre, 2.2 * area, rng, irregular=False)
    noise = _noise(shape, rng, max(2.0, r / 1.5))
    vals = noise[window]
    if vals.size == 0:
        return window
    cut = np.quantile(vals, 1 - min(1.0, area / vals.size))
    return window & (noise >= cut)


def _perlin(img, shape, rng, donor):
    beta = rng.uniform(0.1, 1.0)
    tex = np.rot90(donor, int(rng.integers(4)))
    tex = cv2.resize(np.ascontiguousarray(tex), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    tex = np.clip(tex.astype(np.float32) * rng.uniform(0.6, 1.4, 3) + rng.uniform(-40, 40, 3), 0, 255)
    return (1 - beta) * img.astype(np.float32) + beta * tex, {"strength": round(float(beta), 3)}


def _paste(img, shape, rng, donor):
    ys, xs = np.nonzero(shape)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = img.shape[:2]
    dh, dw = donor.shape[:2]
    # a source patch of the donor at another place (or flipped), the same size as the shape's box
    sy = int(rng.integers(0, max(1, dh - (y1 - y0)) + 0))
    sx = int(rng.integers(0, max(1, dw - (x1 - x0)) + 0))
    src = np.ascontiguousarray(donor[sy:sy + (y1 - y0), sx:sx + (x1 - x0)])
    if src.shape[:2] != (y1 - y0, x1 - x0):
        src = cv2.resize(donor, (x1 - x0, y1 - y0))
    if rng.random() < 0.5:
        src = np.ascontiguousarray(src[::-1, ::-1])
    full = img.copy()
    full[y0:y1, x0:x1] = src
    sub = (shape[y0:y1, x0:x1] * 255).astype(np.uint8)
    try:
        pad = 2  # seamlessClone needs the mask away from the image's edge
        if y0 >= pad and x0 >= pad and y1 <= h - pad and x1 <= w - pad and (y1 - y0) > 2 and (x1 - x0) > 2:
            centre = (int(x0 + (x1 - x0) // 2), int(y0 + (y1 - y0) // 2))
            out = cv2.seamlessClone(np.ascontiguousarray(src[..., ::-1]), np.ascontiguousarray(img[..., ::-1]), sub,
                                    centre, cv2.NORMAL_CLONE)[..., ::-1]
            return out.astype(np.float32), {"blend": "poisson"}
    except cv2.error:
        pass
    return full.astype(np.float32), {"blend": "copy"}


def _scratch_shape(shape, centre, area, rng):
    h, w = shape
    width = max(1, int(round(math.sqrt(area) / 6)))
    length = max(4.0, area / width)
    m = np.zeros(shape, np.uint8)
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.5, 0.5)
    pts = []
    for t in np.linspace(-0.5, 0.5, 12):
        a = angle + bend * t
        pts.append((centre[0] + math.cos(a) * t * length, centre[1] + math.sin(a) * t * length))
    cv2.polylines(m, [np.array(pts, np.int32).reshape(-1, 1, 2)], False, 1, width, cv2.LINE_8)
    return m.astype(bool)


def _scratch(img, shape, rng, donor):
    f = img.astype(np.float32)
    bright = rng.random() < 0.5
    return (0.3 * f + 175) if bright else (0.2 * f), {"tone": "bright" if bright else "dark"}


def _stain(img, shape, rng, donor):
    colour = np.array([rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.8), rng.uniform(1.1, 1.5)], np.float32)
    return img.astype(np.float32) * colour[rng.permutation(3)] + rng.uniform(-30, 30), {}


def _missing(img, shape, rng, donor):
    bg = border_colour(img)
    noise = rng.normal(0, 4, img.shape[:2])[..., None]
    return np.broadcast_to(bg, img.shape).astype(np.float32) + noise, {}


def _warp(img, shape, rng, donor):
    ys, xs = np.nonzero(shape)
    cy, cx = ys.mean(), xs.mean()
    r = max(2.0, math.sqrt(len(ys) / math.pi))
    h, w = img.shape[:2]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((gy - cy) ** 2 + (gx - cx) ** 2) / (r * r)
    fall = np.clip(1 - d2, 0, 1) ** 2
    amp = rng.uniform(0.3, 0.6) * r
    # a swirl and a bulge: pixels pulled along and towards the centre
    ang = amp / r * fall * (1 if rng.random() < 0.5 else -1)
    dy, dx = gy - cy, gx - cx
    map_x = cx + dx * np.cos(ang) - dy * np.sin(ang) - 0.3 * dx * fall
    map_y = cy + dx * np.sin(ang) + dy * np.cos(ang) - 0.3 * dy * fall
    out = cv2.remap(img, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    return out.astype(np.float32), {}


_SHAPES: dict[str, Callable] = {"perlin": _perlin_shape, "scratch": _scratch_shape}
_LOOKS: dict[str, Callable] = {"perlin": _perlin, "paste": _paste, "scratch": _scratch, "stain": _stain,
                               "missing": _missing, "warp": _warp}


def part_area(fg: np.ndarray) -> int:
    return int(fg.sum())


def draw(img: np.ndarray, family: str, area: float, rng: np.random.Generator, fg: np.ndarray | None = None,
         donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One defect of ``family`` and about ``area`` pixels on the part of ``img`` (HxWx3 uint8 RGB):
    ``(damaged image, bool mask, facts)``. Pixels outside the mask are exactly ``img``'s.
    ``fg``: where the part is (default :func:`foreground`); ``donor``: another good image
    (texture and paste families; default ``img`` flipped)."""
    if family not in _LOOKS:
        raise ValueError(f"unknown defect family {family!r}; choose from {', '.join(FAMILIES)}")
    h, w = img.shape[:2]
    fg = foreground(img) if fg is None else fg
    donor = np.ascontiguousarray(img[::-1, ::-1]) if donor is None else donor
    area = max(float(MIN_AREA), float(area))
    # centres well inside the part, so the defect lies on it
    r = int(max(1, min(math.sqrt(area / math.pi), min(h, w) / 6)))
    inner = cv2.erode(fg.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)
    if not inner.any():
        inner = fg if fg.any() else np.ones((h, w), bool)
    ys, xs = np.nonzero(inner)
    mask = np.zeros((h, w), bool)
    for _ in range(20):
        i = int(rng.integers(len(ys)))
        centre = (float(xs[i]), float(ys[i]))
        shape_fn = _SHAPES.get(family, lambda s, c, a, g: _blob(s, c, a, g))
        mask = shape_fn((h, w), centre, area, rng) & fg
        if mask.sum() >= min(MIN_AREA, area) // 2:
            break
    if not mask.any():
        mask[int(ys[0]), int(xs[0])] = True
    target, facts = _LOOKS[family](img, mask, rng, donor)
    out = np.clip(np.asarray(target, np.float32), 0, 255).round().astype(np.uint8)
    out = np.where(mask[..., None], out, img)
    return out, mask, {"family": family, "area_px": int(mask.sum()), **facts}
