"""Patch scores -> anomaly maps and image scores (the paper's segmentation step), torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from .geometry import Plan, TileLayout, map_to_original
from .search.scorer import Scores

DEFAULT_BLUR_SIGMA = 4.0


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each HxW map, equal to ``scipy.ndimage.gaussian_filter(sigma)``.

    scipy's default (truncate 4, mode 'reflect') is a kernel of radius ``int(4 * sigma + 0.5)``
    with half-sample symmetric borders, which is OpenCV's BORDER_REFLECT.
    """
    if sigma <= 0:
        return maps.astype(np.float32, copy=True)
    radius = int(4.0 * sigma + 0.5)
    ksize = 2 * radius + 1
    out = np.empty(maps.shape, np.float32)
    for i, m in enumerate(maps.reshape(-1, *maps.shape[-2:])):
        out.reshape(-1, *maps.shape[-2:])[i] = cv2.GaussianBlur(
            m.astype(np.float32), (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
        )
    return out


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of each map in (..., h, w) to (..., H, W), half-pixel centers
    (torch's ``interpolate(mode='bilinear', align_corners=False)``)."""
    h, w = size
    flat = maps.reshape(-1, *maps.shape[-2:]).astype(np.float32)
    out = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in flat])
    return out.reshape(*maps.shape[:-2], h, w)


def anomaly_maps(patch_scores: np.ndarray, size: tuple[int, int], sigma: float = DEFAULT_BLUR_SIGMA) -> np.ndarray:
    """(N, h, w) patch scores on the feature grid -> (N, H, W) blurred anomaly maps."""
    if patch_scores.ndim != 3:
        raise ValueError(f"patch scores must be (N, h, w), got {patch_scores.shape}")
    return gaussian_blur(upsample(patch_scores, size), sigma)


def normalise_scores(scores: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """Scores mapped so the decision threshold sits at 0.5: 0.5 + (s - t) / (2 * scale), clipped
    to [0, 1]. ``scale`` is the spread of good-image scores stored in the bundle."""
    if scale <= 0:
        raise ValueError("scale must be > 0")
    return np.clip(0.5 + (np.asarray(scores, np.float64) - threshold) / (2.0 * scale), 0.0, 1.0)


SCALE_FLOOR = 0.05  # the normalising scale is at least this fraction of the threshold's magnitude
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a normal distribution


def robust_scale(threshold: float, good_scores) -> float:
    """The score spread that maps scores to normalised scores: the larger of the threshold's
    distance to the good scores' median and three robust standard deviations (MAD), and never
    below ``SCALE_FLOOR`` of the threshold, so that a few tightly packed calibration scores cannot
    make every normalised score 0 or 1."""
    scores = np.asarray(good_scores, np.float64)
    median = float(np.median(scores)) if len(scores) else threshold
    mad = float(np.median(np.abs(scores - median))) if len(scores) else 0.0
    return max(threshold - median, 3.0 * MAD_TO_SIGMA * mad, SCALE_FLOOR * abs(threshold), 1e-12)


def quantile_threshold(good_scores, quantile: float) -> tuple[float, float]:
    """Threshold and scale from good images' scores: the ``quantile`` of the scores, and the
    robust spread of :func:`robust_scale` (normalised score 0 at the median or below, 0.5 at
    the threshold)."""
    scores = np.asarray(good_scores, np.float64)
    threshold = float(np.quantile(scores, quantile))
    return threshold, robust_scale(threshold, scores)


@dataclass
class Prediction:
    """What scoring a batch of images gives, in PyTorch (``patchcore``) and in the runtime alike."""

    image_scores: np.ndarray  # (B,) float64: max patch score over all tiles, reweighted (paper eq. 7)
    patch_scores: np.ndarray  # (B, h, w) float32 on the canvas's patch grid (tiles stitched)
    maps: np.ndarray  # (B, H, W) blurred anomaly maps on the canvas (the network input, tiles stitched)
    normalised: np.ndarray | None = None  # (B,) in [0, 1], 0.5 at the threshold; None without threshold
    verdicts: np.ndarray | None = None  # (B,) bool, True = anomalous; None without threshold
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage for this batch
    plans: list[Plan] | None = None  # (B,) each image's geometry: maps -> original, see map_on_original

    def map_on_original(self, i: int, fill: float = 0.0) -> np.ndarray:
        """Image ``i``'s anomaly map on the original image's pixels (crop, resize, padding and
        tiling undone); ``fill`` where the network did not look (outside a center crop)."""
        if self.plans is None:
            raise ValueError("this prediction does not carry the images' geometry")
        return map_to_original(self.maps[i], self.plans[i], fill)

    @classmethod
    def concat(cls, parts: Sequence["Prediction"]) -> "Prediction":
        """One Prediction for several batches (timings summed)."""
        if not parts:
            raise ValueError("no predictions to concatenate")

        def cat(name: str):
            first = getattr(parts[0], name)
            return None if first is None else np.concatenate([getattr(p, name) for p in parts])

        timings: dict[str, float] = {}
        for p in parts:
            for k, v in p.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        plans = None if any(p.plans is None for p in parts) else [x for p in parts for x in p.plans]
        return cls(cat("image_scores"), cat("patch_scores"), cat("maps"), cat("normalised"), cat("verdicts"), timings,
                   plans)


def finish(scores: Scores, layout: TileLayout, blur_sigma: float, threshold: float | None, scale: float | None,
           plans: Sequence[Plan] | None = None) -> Prediction:
    """Patch and image scores -> anomaly maps, verdicts and normalised scores: the last step of
    scoring, the same for the PyTorch model and every runtime engine.

    ``scores`` holds each image's patches of all its tiles, tile after tile (B, n_tiles * h * w);
    they are stitched onto the canvas's patch grid (overlaps: maximum, see
    :class:`~runtime.geometry.TileLayout`), upsampled to the canvas and blurred."""
    patch = layout.stitch(scores.patch_scores.reshape(len(scores.image_scores), -1))
    maps = anomaly_maps(patch, tuple(layout.canvas_hw), blur_sigma)
    pred = Prediction(scores.image_scores, patch, maps, plans=None if plans is None else list(plans))
    if threshold is not None:
        pred.verdicts = scores.image_scores >= threshold
        pred.normalised = normalise_scores(scores.image_scores, threshold, scale)
    return pred
