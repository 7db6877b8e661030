"""Where each network input comes from in the camera image, and how maps go back onto it.

A :class:`Plan` is computed from an image's size and the bundle's preprocessing spec alone, before
a pixel is touched::

    original (h, w) --read box--> region --resize--> resized --crop box--> content
        --paste--> canvas (the map's frame) --tiles--> network inputs

- ``crop`` mode: the image is scaled, aspect kept, to the smallest size that covers the spec's
  ``resize`` box (an int R: shorter side R, torchvision's ``Resize(R)``), then the canvas is cut
  from its centre (torchvision's ``CenterCrop`` rounding): the paper's recipe, generalised.
- ``resize`` mode: the whole image is resized to the canvas (aspect not kept, nothing lost).
- ``pad`` mode: the whole image is resized, aspect kept, to fit the canvas and centred on it
  (letterbox); the border is 0 after normalisation (the mean colour).

With tiling, the canvas is cut into tiles of the network's input size at a fixed stride (the last
tile of each row and column is moved back to end at the canvas edge); the tiles' patch scores are
stitched into one map of the canvas by :class:`TileLayout`.

Crop mode reads only what it keeps where that gives the same pixels (no resampling, or an integer
downscale whose blocks align with the crop); otherwise it resizes the whole image and crops, as the
paper's code does, while the resized image stays under :data:`MAX_INTERMEDIATE_PIXELS`; beyond
that (extreme aspect ratios) it crops in the original's coordinates first, with a margin, so the
memory stays bounded at the cost of sub-pixel differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

# Pixels of the largest resized image crop mode builds before cropping (12 MB as RGB uint8).
MAX_INTERMEDIATE_PIXELS = 1 << 22
_CROP_MARGIN = 2  # source pixels read beyond the crop when cropping first (the resampling kernels' reach)

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive


class GeometrySpec(Protocol):
    """What the geometry reads of a preprocessing spec (:class:`runtime.preprocess.PreprocessSpec` is
    one; a dataclass, so a plan of its region of interest can drop it with ``replace``). Declared
    here, so the geometry needs nothing of the preprocessing above it."""

    mode: str
    interpolation: str
    antialias: bool
    tile: tuple[int, int] | None
    tile_stride: tuple[int, int] | None
    roi: tuple[int, int, int, int] | None

    @property
    def resize_hw(self) -> tuple[int, int] | None: ...

    @property
    def canvas_hw(self) -> tuple[int, int] | None: ...


class GeometryError(ValueError):
    """An image that this geometry cannot take (too small to crop, say); the message says why."""


@dataclass(frozen=True)
class Plan:
    """How one image of ``image_hw`` becomes the canvas and its tiles (sizes are (height, width))."""

    image_hw: tuple[int, int]
    read_box: Box  # the part of the original that is read
    resized_hw: tuple[int, int]  # the read part resized to this size (equal to its size: no resampling)
    crop_box: Box  # the part of the resized region that is kept (the content)
    paste_yx: tuple[int, int]  # where the content lands on the canvas (pad mode: the border)
    canvas_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    tiles: tuple[tuple[int, int], ...]  # tile origins (y, x) on the canvas

    @property
    def content_hw(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.crop_box
        return y1 - y0, x1 - x0

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per canvas pixel, (y, x)."""
        y0, x0, y1, x1 = self.read_box
        return (y1 - y0) / self.resized_hw[0], (x1 - x0) / self.resized_hw[1]

    def _offset(self) -> tuple[float, float]:
        """Original coordinate of the canvas origin (continuous coordinates: pixel i spans [i, i+1))."""
        sy, sx = self.scale
        return (self.read_box[0] + (self.crop_box[0] - self.paste_yx[0]) * sy,
                self.read_box[1] + (self.crop_box[1] - self.paste_yx[1]) * sx)

    def to_original(self, y: float, x: float) -> tuple[float, float]:
        """A canvas point (continuous coordinates) -> the same point in the original."""
        sy, sx = self.scale
        oy, ox = self._offset()
        return oy + y * sy, ox + x * sx

    def roi(self) -> tuple[float, float, float, float]:
        """The part of the original that the canvas shows, as (x0, y0, x1, y1) in original pixels."""
        py, px = self.paste_yx
        ch, cw = self.content_hw
        y0, x0 = self.to_original(py, px)
        y1, x1 = self.to_original(py + ch, px + cw)
        h, w = self.image_hw
        return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)

    def covers_whole_image(self) -> bool:
        x0, y0, x1, y1 = self.roi()
        h, w = self.image_hw
        return x0 <= 0.5 and y0 <= 0.5 and x1 >= w - 0.5 and y1 >= h - 0.5


# ------------------------------------------------------------------------------------- planning
def cover_size(h: int, w: int, box: tuple[int, int]) -> tuple[int, int]:
    """Size of an (h, w) image scaled, aspect kept, to the smallest size covering ``box``. The
    binding side gets the box's length exactly and the other is floored, as torchvision's
    ``Resize(int)`` does (for a square box: shorter side = box, longer = int(box * long / short))."""
    bh, bw = box
    if bh * w >= bw * h:  # the height binds
        return bh, max(1, (bh * w) // h)
    return max(1, (bw * h) // w), bw


def fit_size(h: int, w: int, box: tuple[int, int]) -> tuple[int, int]:
    """Size of an (h, w) image scaled, aspect kept, to the largest size inside ``box``."""
    bh, bw = box
    if bh * w <= bw * h:  # the height binds
        return bh, min(bw, max(1, int(round(bh * w / h))))
    return min(bh, max(1, int(round(bw * h / w)))), bw


def center_offset(outer: int, inner: int) -> int:
    """Start of a centred span (torchvision's CenterCrop rounding)."""
    return int(round((outer - inner) / 2.0))


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, the last moved back to end at ``length``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def _exact_downscale(h: int, w: int, rh: int, rw: int, interpolation: str, antialias: bool) -> tuple[int, int] | None:
    """The integer factors (ky, kx) when resizing (h, w) to (rh, rw) averages aligned blocks, so a
    crop of the result equals the resize of the matching crop of the original; None otherwise."""
    if h % rh or w % rw or (h, w) == (rh, rw):
        return None
    area = antialias and interpolation != "nearest"
    if area or interpolation in ("nearest", "bilinear"):
        return h // rh, w // rw
    return None


def _crop_plan(h: int, w: int, spec: GeometrySpec) -> tuple[Box, tuple[int, int], Box]:
    """(read box, resized size, crop box) of crop mode for an (h, w) image."""
    box = spec.resize_hw
    rh, rw = cover_size(h, w, box) if box else (h, w)
    canvas = spec.canvas_hw
    ch, cw = canvas if canvas else (rh, rw)
    if ch > rh or cw > rw:
        raise GeometryError(f"cannot crop {ch}x{cw} from a {rh}x{rw} image (a {h}x{w} image "
                            f"{'resized' if box else 'not resized'}); height x width")
    top, left = center_offset(rh, ch), center_offset(rw, cw)
    if (rh, rw) == (h, w):  # no resampling: read the crop only
        return (top, left, top + ch, left + cw), (ch, cw), (0, 0, ch, cw)
    k = _exact_downscale(h, w, rh, rw, spec.interpolation, spec.antialias)
    if k is not None:
        ky, kx = k
        return (top * ky, left * kx, (top + ch) * ky, (left + cw) * kx), (ch, cw), (0, 0, ch, cw)
    if rh * rw <= max(MAX_INTERMEDIATE_PIXELS, 4 * ch * cw):
        return (0, 0, h, w), (rh, rw), (top, left, top + ch, left + cw)
    # bounded: read the crop's footprint in the original (with a margin) and resize only that
    sy, sx = h / rh, w / rw
    y0 = max(0, math.floor(top * sy) - _CROP_MARGIN)
    y1 = min(h, math.ceil((top + ch) * sy) + _CROP_MARGIN)
    x0 = max(0, math.floor(left * sx) - _CROP_MARGIN)
    x1 = min(w, math.ceil((left + cw) * sx) + _CROP_MARGIN)
    ry, rx = max(ch, int(round((y1 - y0) / sy))), max(cw, int(round((x1 - x0) / sx)))
    cy = min(max(0, int(round(top - y0 / sy))), ry - ch)
    cx = min(max(0, int(round(left - x0 / sx))), rx - cw)
    return (y0, x0, y1, x1), (ry, rx), (cy, cx, cy + ch, cx + cw)


def plan(h: int, w: int, spec: GeometrySpec) -> Plan:
    """The geometry of an (h, w) image under ``spec``, from its size alone. With a region of
    interest the region is planned as the image, and its read box moved to where it lies."""
    if h < 1 or w < 1:
        raise GeometryError(f"image has no pixels ({h}x{w})")
    if spec.roi is None:
        return _plan(h, w, spec)
    x0, y0, x1, y1 = spec.roi
    if x1 > w or y1 > h:
        raise GeometryError(f"the region of interest {x0},{y0},{x1},{y1} (x0,y0,x1,y1) reaches outside a "
                            f"{w}x{h} (width x height) image")
    p = _plan(y1 - y0, x1 - x0, spec)
    ry0, rx0, ry1, rx1 = p.read_box
    return Plan((h, w), (ry0 + y0, rx0 + x0, ry1 + y0, rx1 + x0), p.resized_hw, p.crop_box, p.paste_yx,
                p.canvas_hw, p.tile_hw, p.tiles)


def _plan(h: int, w: int, spec: GeometrySpec) -> Plan:
    canvas = spec.canvas_hw
    if spec.mode == "crop":
        read, resized, crop = _crop_plan(h, w, spec)
        canvas = canvas or (crop[2] - crop[0], crop[3] - crop[1])
        paste = (0, 0)
    elif spec.mode == "resize":
        read, resized, crop, paste = (0, 0, h, w), canvas, (0, 0, *canvas), (0, 0)
    else:  # pad
        nh, nw = fit_size(h, w, canvas)
        read, resized, crop = (0, 0, h, w), (nh, nw), (0, 0, nh, nw)
        paste = ((canvas[0] - nh) // 2, (canvas[1] - nw) // 2)
    tile = spec.tile or canvas
    stride = spec.tile_stride or tile
    origins = tuple((y, x) for y in tile_origins(canvas[0], tile[0], stride[0])
                    for x in tile_origins(canvas[1], tile[1], stride[1]))
    return Plan((h, w), read, tuple(resized), crop, paste, tuple(canvas), tuple(tile), origins)


# ------------------------------------------------------------------------------------- stitching
@dataclass(frozen=True)
class TileLayout:
    """Where each tile's patch grid lies on the canvas's patch grid, and how they are merged.

    Overlapping patches are merged by their maximum: every cell of the stitched map is then the
    score of one real patch, so the image score (the largest patch score, reweighted with eq. 7 from
    that patch) is also the maximum of the stitched map. Tiles are aligned to the patch grid (the
    spec's tile, stride and canvas are multiples of the grid's stride), so no cell is resampled.
    """

    grid_hw: tuple[int, int]  # patch grid of one network input
    canvas_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    origins: tuple[tuple[int, int], ...]  # tile origins on the canvas, pixels

    @classmethod
    def for_spec(cls, spec: GeometrySpec, grid: Sequence[int]) -> "TileLayout":
        """The layout of a fixed-canvas spec whose network input has the patch grid ``grid``;
        ValueError when the tiles do not fall on that grid."""
        canvas = spec.canvas_hw
        if canvas is None:
            raise ValueError("the preprocessing has no fixed canvas (crop 0): maps and the bank need one")
        # a canvas-sized image (the region of interest aside): the layout is the same for every image
        probe = plan(*canvas, replace(spec, roi=None) if spec.roi is not None else spec)
        layout = cls(tuple(int(g) for g in grid), canvas, probe.tile_hw, probe.tiles)
        if layout.n_tiles > 1:
            layout.cell  # raises when the tiles are not aligned to the patch grid
        return layout

    @property
    def n_tiles(self) -> int:
        return len(self.origins)

    @property
    def patches_per_tile(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    @property
    def cell(self) -> tuple[int, int]:
        """Pixels per patch-grid cell, (y, x); ValueError when tiles and grid do not align."""
        (gh, gw), (th, tw) = self.grid_hw, self.tile_hw
        if th % gh or tw % gw:
            raise ValueError(f"tile {th}x{tw} is not a multiple of its {gh}x{gw} patch grid")
        fy, fx = th // gh, tw // gw
        ch, cw = self.canvas_hw
        if ch % fy or cw % fx or any(y % fy or x % fx for y, x in self.origins):
            raise ValueError(f"canvas {ch}x{cw}, tile {th}x{tw} and tile stride must be multiples of the patch "
                             f"grid's stride ({fy}x{fx} pixels)")
        return fy, fx

    @property
    def map_grid(self) -> tuple[int, int]:
        """The stitched patch grid of the canvas."""
        if self.n_tiles == 1 and self.tile_hw == self.canvas_hw:
            return self.grid_hw
        fy, fx = self.cell
        return self.canvas_hw[0] // fy, self.canvas_hw[1] // fx

    def stitch(self, patch: np.ndarray) -> np.ndarray:
        """(B, n_tiles * h * w) patch scores, tiles in order -> (B, H, W) on the canvas's grid."""
        b = patch.shape[0]
        gh, gw = self.grid_hw
        per_tile = patch.reshape(b, self.n_tiles, gh, gw)
        if self.n_tiles == 1 and self.tile_hw == self.canvas_hw:
            return per_tile[:, 0]
        fy, fx = self.cell
        out = np.full((b, *self.map_grid), -np.inf, per_tile.dtype)
        for t, (y, x) in enumerate(self.origins):
            view = out[:, y // fy : y // fy + gh, x // fx : x // fx + gw]
            np.maximum(view, per_tile[:, t], out=view)
        return out


# ----------------------------------------------------------------------------- back to the original
def _axis_weights(n_out: int, scale: float, offset: float, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation along one axis: for each output pixel, the two source pixels and the
    weight of the second (pixel centres; source borders replicated)."""
    # output pixel i has its centre at i + 0.5 in the original; in canvas pixel-index units:
    pos = ((np.arange(n_out, dtype=np.float64) + 0.5 - offset) / scale) - 0.5
    pos = np.clip(pos, 0.0, n_src - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_src - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def map_to_original(amap: np.ndarray, plan: Plan, fill: float = 0.0) -> np.ndarray:
    """A canvas-sized (H, W) map -> the original's (h, w): bilinear, crop/resize/padding undone.
    Pixels of the original that the canvas does not show (outside a center crop) get ``fill``."""
    amap = np.asarray(amap, np.float32)
    if amap.shape != tuple(plan.canvas_hw):
        raise ValueError(f"map is {amap.shape}, the plan's canvas is {plan.canvas_hw}")
    h, w = plan.image_hw
    sy, sx = plan.scale
    oy, ox = plan._offset()
    r0, r1, wr = _axis_weights(h, sy, oy, amap.shape[0])
    rows = amap[r0] * (1 - wr)[:, None] + amap[r1] * wr[:, None]  # (h, W)
    c0, c1, wc = _axis_weights(w, sx, ox, amap.shape[1])
    out = rows[:, c0] * (1 - wc) + rows[:, c1] * wc
    x0, y0, x1, y1 = plan.roi()
    if not plan.covers_whole_image():
        ys = np.arange(h) + 0.5
        xs = np.arange(w) + 0.5
        outside = ~(((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :])
        out[outside] = fill
    return out.astype(np.float32, copy=False)


def peak_on_original(amap: np.ndarray, plan: Plan) -> tuple[float, float]:
    """(x, y) in original pixels of the canvas map's maximum (the centre of that canvas pixel)."""
    y, x = np.unravel_index(int(np.argmax(amap)), np.shape(amap))
    oy, ox = plan.to_original(y + 0.5, x + 0.5)
    return ox, oy
