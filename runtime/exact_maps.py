"""Which patches a reduced-precision search must settle exactly for the anomaly maps to be exact
wherever a user can see them.

A reduced candidate step (:mod:`runtime.search.reduced`) gives each patch a score that bounds its true
score from above (a distance to a real bank row). The map is a convex combination of patch scores
(tile overlaps merged by their maximum, bilinear upsampling, a normalised Gaussian blur: every
weight >= 0, each pixel's weights summing to 1), so it too is bounded from above by the map of the
bounds, and a pixel is exact once every patch it reads is exact.

:func:`patches_to_settle` marks every patch that a pixel at or above ``level`` reads in the map of
the bounds. Once those are settled, every pixel whose map value is >= ``level`` is exact: a pixel
whose true value is >= level had a bound >= level, so all it reads was settled; and a pixel that
still reads an unsettled patch has a value below ``level`` (settling only lowers values, so the
set of pixels at or above the level can only shrink). Below the level a pixel may keep an
over-estimate, but it stays below the level. One pass suffices. The neighbours of those pixels are
settled too, so that the map resized onto the original image (each pixel a convex combination of
2 x 2 canvas pixels) is exact wherever it reaches the level as well: regions are cut there.
"""

from __future__ import annotations

import cv2
import numpy as np

from .geometry import TileLayout
from .postprocess import anomaly_maps

# Pixels within a rounding of the level count as reaching it: the blur's float32 sums may put a pixel
# whose exact value sits on the level a hair below it.
_LEVEL_SLACK = 1e-5
_NEIGHBOURS = np.ones((3, 3), np.uint8)


def _windows(n_src: int, n_out: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of a map upsampled from ``n_src`` cells to ``n_out`` pixels and blurred with a
    kernel of ``radius`` pixels: for each cell, the range ``[start, stop)`` of map pixels whose value
    reads it. The upsampling (half-pixel centres, as ``cv2.resize`` and torch) computes pixel x from
    the cells either side of ``(x + 0.5) n_src / n_out - 0.5`` (clamped; both neighbours of a centre
    within a rounding of a cell boundary), and the blur reads the pixels within ``radius`` of x (its
    reflected border reads pixels nearer than that). Both are non-decreasing in x, so the pixels that
    read a cell are contiguous."""
    pos = (np.arange(n_out) + 0.5) * n_src / n_out - 0.5
    lo = np.clip(np.floor(pos - 1e-4), 0, n_src - 1).astype(np.int64)
    hi = np.clip(np.floor(pos + 1e-4) + 1, 0, n_src - 1).astype(np.int64)
    cells = np.arange(n_src)
    first = np.searchsorted(hi, cells, side="left")  # the first pixel whose upper cell reaches it
    last = np.searchsorted(lo, cells, side="right")  # one past the last pixel whose lower cell is at most it
    start = np.clip(first - radius, 0, n_out)
    return start, np.maximum(np.clip(last + radius, 0, n_out), start)


def patches_to_settle(bounds: np.ndarray, layout: TileLayout, blur_sigma: float, level: float) -> np.ndarray:
    """(B, n_tiles * h * w) upper bounds of the patch scores -> (B, n_tiles * h * w) bool: the patches
    read by a pixel whose bound map is >= ``level`` (see the module docstring), and those whose own
    bound is (so that, once they are settled, an image whose largest exact score reaches the level
    needs no further search for its worst patch). A cell is read by the pixels of one rectangle of
    the map (:func:`_windows` on each axis): it is marked when that rectangle holds a pixel at or above
    the level, counted on the map's integral image."""
    b = len(bounds)
    floor = level - _LEVEL_SLACK * abs(level)
    out = np.asarray(bounds) >= floor
    stitched = layout.stitch(np.asarray(bounds, np.float32).reshape(b, -1))
    gh, gw = stitched.shape[1:]
    ch, cw = layout.canvas_hw
    radius = int(4.0 * blur_sigma + 0.5) if blur_sigma > 0 else 0  # runtime.postprocess.gaussian_blur's kernel
    y0, y1 = _windows(gh, ch, radius)
    x0, x1 = _windows(gw, cw, radius)
    for i in np.flatnonzero(stitched.reshape(b, -1).max(axis=1) >= floor):  # a map never exceeds its largest cell
        hot = anomaly_maps(stitched[i : i + 1], (ch, cw), blur_sigma)[0] >= floor
        # and their neighbours: the map on the original image (bilinear, runtime.geometry.map_to_original)
        # reads 2 x 2 canvas pixels, so an original pixel at or above the level reads only exact ones
        hot = cv2.dilate(hot.view(np.uint8), _NEIGHBOURS).view(bool)
        area = cv2.integral(hot.view(np.uint8), sdepth=cv2.CV_32S)  # area[y, x]: hot pixels above and left of (y, x)
        count = (area[y1[:, None], x1] - area[y0[:, None], x1] - area[y1[:, None], x0] + area[y0[:, None], x0])
        out[i] |= _tiles(count > 0, layout)
    return out


def _tiles(cells: np.ndarray, layout: TileLayout) -> np.ndarray:
    """A mask on the canvas's patch grid -> the same mask on each tile's patches, tiles in order."""
    if layout.n_tiles == 1 and layout.tile_hw == layout.canvas_hw:
        return cells.ravel()
    fy, fx = layout.cell
    th, tw = layout.grid_hw
    return np.concatenate([cells[y // fy : y // fy + th, x // fx : x // fx + tw].ravel() for y, x in layout.origins])
