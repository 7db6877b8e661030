"""Which patches a reduced-precision search must settle exactly for the anomaly maps to be exact
wherever a user can see them.

A reduced candidate step (:mod:`runtime.candidates`) gives each patch a score that bounds its true
score from above (a distance to a real bank row). The map is a convex combination of patch scores
(tile overlaps merged by their maximum, bilinear upsampling, a normalised Gaussian blur: every
weight >= 0, each pixel's weights summing to 1), so it too is bounded from above by the map of the
bounds, and a pixel is exact once every patch it reads is exact.

:func:`patches_to_settle` marks every patch that a pixel at or above ``level`` reads in the map of
the bounds. Once those are settled, every pixel whose map value is >= ``level`` is exact: a pixel
whose true value is >= level had a bound >= level, so all it reads was settled; and a pixel that
still reads an unsettled patch has a value below ``level`` (settling only lowers values, so the
set of pixels at or above the level can only shrink). Below the level a pixel may keep an
over-estimate, but it stays below the level. One pass suffices.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .geometry import TileLayout
from .postprocess import anomaly_maps

# Pixels within a rounding of the level count as reaching it: the blur's float32 sums may put a pixel
# whose exact value sits on the level a hair below it.
_LEVEL_SLACK = 1e-5


def reach(layout: TileLayout, blur_sigma: float) -> int:
    """Patch-grid cells, either way, that one map pixel reads: the blur's radius (scipy's truncate 4,
    as :func:`runtime.postprocess.gaussian_blur`) in cells, one more for the bilinear upsampling's
    neighbour and one more for a canvas that is not a whole number of cells."""
    (ch, cw), (gh, gw) = layout.canvas_hw, layout.map_grid
    cell = min(ch / gh, cw / gw)
    radius = int(4.0 * blur_sigma + 0.5) if blur_sigma > 0 else 0
    return math.ceil(radius / cell) + 1 + (1 if ch % gh or cw % gw else 0)


def patches_to_settle(bounds: np.ndarray, layout: TileLayout, blur_sigma: float, level: float) -> np.ndarray:
    """(B, n_tiles * h * w) upper bounds of the patch scores -> (B, n_tiles * h * w) bool: the patches
    read by a pixel whose bound map is >= ``level`` (see the module docstring), and those whose own
    bound is (so that, once they are settled, an image whose largest exact score reaches the level
    needs no further search for its worst patch)."""
    b = len(bounds)
    floor = level - _LEVEL_SLACK * abs(level)
    out = np.asarray(bounds) >= floor
    stitched = layout.stitch(np.asarray(bounds, np.float32).reshape(b, -1))
    gh, gw = stitched.shape[1:]
    ch, cw = layout.canvas_hw
    spread = 2 * reach(layout, blur_sigma) + 1
    kernel = np.ones((spread, spread), np.uint8)
    for i in range(b):
        if stitched[i].max() < floor:  # a map never exceeds its largest cell
            continue
        hot = anomaly_maps(stitched[i : i + 1], (ch, cw), blur_sigma)[0] >= floor
        ys, xs = np.nonzero(hot)
        if len(ys) == 0:
            continue
        cells = np.zeros((gh, gw), np.uint8)
        cells[ys * gh // ch, xs * gw // cw] = 1
        read = cv2.dilate(cells, kernel).astype(bool)
        out[i] |= _tiles(read, layout)
    return out


def _tiles(cells: np.ndarray, layout: TileLayout) -> np.ndarray:
    """A mask on the canvas's patch grid -> the same mask on each tile's patches, tiles in order."""
    if layout.n_tiles == 1 and layout.tile_hw == layout.canvas_hw:
        return cells.ravel()
    fy, fx = layout.cell
    th, tw = layout.grid_hw
    return np.concatenate([cells[y // fy : y // fy + th, x // fx : x // fx + tw].ravel() for y, x in layout.origins])
