"""Defect regions: the connected parts of an anomaly map above the pixel threshold, on the original
image, with their sizes; and the line's rule that can require a region of a least size.

A region is one 8-connected component (OpenCV ``connectedComponentsWithStats``) of the map taken
back onto the original image's pixels (:func:`runtime.geometry.map_to_original`) and cut at the
bundle's pixel threshold (:mod:`runtime.calibration`). Its box and area are in original pixels,
its area also in mm² when a scale is known (``--mm-per-px``, or ``units.mm_per_px`` recorded at
export); its peak and mean are anomaly-map values (the pixel threshold's units).

The rule: by default, the bundle's (``threshold.operating_point.rule``, :mod:`runtime.operating_point`):
``image-score``, a part is NG when its image score is at or above the image threshold (also the
rule of bundles exported before operating points existed); or ``either``, a part is NG when its
image score is at or above the threshold OR its largest region is at least ``min_area_px``
original pixels (a region alone turns a part NG). With ``--min-area A`` the line overrides it: a
part is NG when its image score is at or above the image threshold AND its largest region is at
least ``A`` large: small regions turn NG parts into OK ones, and nothing turns an OK part NG.
Each record says which test decided (``decided_by``: ``image-score``, ``region`` or ``min-area``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from .calibration import PixelLevel, pixel_level
from .errors import UsageError
from .geometry import Plan, map_to_original
from .operating_point import Rule

MAX_REGIONS = 5  # the largest regions a record carries
_AREA = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|mm2|mm²)?\s*$")


# float32 rounding of the bilinear weights: the map on the original may exceed its canvas's largest
# value by a few units in the last place, never by this share of it
_RESIZE_SLACK = 1e-6


def below_level(amap: np.ndarray, level: float) -> bool:
    """Whether no pixel of the canvas map ``amap`` taken onto the original image
    (:func:`~runtime.geometry.map_to_original`: bilinear, each pixel a convex combination of canvas
    pixels) can reach ``level``: its largest value, with a rounding's slack, stays below it."""
    peak = float(np.max(amap))
    return peak + _RESIZE_SLACK * abs(peak) < level  # False for a NaN map: cut as before


def find_regions(amap: np.ndarray, level: float, mm_per_px: float | None = None, base: float | None = None,
                 top: int = MAX_REGIONS) -> tuple[list[dict[str, Any]], int]:
    """Connected regions of ``amap`` (on the original image) at or above ``level``: the ``top``
    largest (largest first) and how many there are.

    Each: ``extent_px`` (the component's pixels at or above ``level``); ``area_px`` and ``box``
    [x, y, w, h], the defect's size: the component's pixels at or above half its peak's height
    over ``base`` (good parts' typical map value), since the blur and the patches' footprint
    spread a defect's scores beyond its edge and a blurred edge passes half its height at the
    edge itself (without ``base``: the whole component); ``area_mm2`` (with a scale); ``peak``
    [x, y], ``peak_score`` and ``mean_score`` (map values over the component)."""
    mask = (amap >= level).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return [], 0
    found = []
    for i in range(1, n):
        x, y, w, h, extent = (int(v) for v in stats[i, :5])
        window = amap[y:y + h, x:x + w]
        inside = labels[y:y + h, x:x + w] == i
        values = np.where(inside, window, -np.inf)
        py, px = np.unravel_index(int(np.argmax(values)), values.shape)
        peak = float(window[py, px])
        core = inside if base is None else inside & (window >= base + 0.5 * (peak - base))
        ys, xs = np.nonzero(core)
        r = {"box": [x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1],
             "area_px": int(core.sum()), "extent_px": extent, "peak": [x + int(px), y + int(py)],
             "peak_score": round(peak, 4), "mean_score": round(float(window[inside].mean()), 4)}
        if mm_per_px:
            r["area_mm2"] = round(r["area_px"] * mm_per_px * mm_per_px, 4)
        found.append(r)
    found.sort(key=lambda r: (-r["area_px"], -r["extent_px"]))
    return found[:top], n - 1


@dataclass(frozen=True)
class MinArea:
    """``--min-area``: a number of original pixels, or of mm² (then a scale is needed)."""

    value: float
    unit: str  # "px" or "mm2"

    def in_px(self, mm_per_px: float | None) -> float:
        return self.value if self.unit == "px" else self.value / (mm_per_px * mm_per_px)

    def __str__(self) -> str:
        return f"{self.value:g} {'px' if self.unit == 'px' else 'mm²'}"


def parse_min_area(text: str | None) -> MinArea | None:
    """``"50"`` / ``"50px"`` (pixels) or ``"1.5mm2"`` (mm²); a UsageError (exit 2) otherwise."""
    if text is None:
        return None
    m = _AREA.match(text)
    value = float(m.group(1)) if m else math.nan
    if not m or not math.isfinite(value):
        raise UsageError(f"--min-area must be a number >= 0 of pixels (50, 50px) or of mm² (1.5mm2), got {text!r}")
    return MinArea(value, "px" if (m.group(2) or "px") == "px" else "mm2")


def check_scale(mm_per_px: float | None, where: str = "--mm-per-px") -> None:
    if mm_per_px is not None and not (math.isfinite(mm_per_px) and mm_per_px > 0):
        raise UsageError(f"{where} must be a finite number > 0, got {mm_per_px}")


@dataclass(frozen=True)
class Judge:
    """How a scored image becomes regions and a verdict: the bundle's pixel level, the scale in
    mm per pixel (the command's, else the bundle's), the line's ``--min-area`` (None: off) and
    the bundle's rule (``threshold.operating_point.rule``; image-score when it has none)."""

    level: PixelLevel
    mm_per_px: float | None = None
    min_area: MinArea | None = None
    trust: str | None = None  # said in every verdict's record when the threshold rests on too few images
    bundle_rule: Rule = Rule()

    @classmethod
    def for_manifest(cls, manifest: Mapping[str, Any], mm_per_px: float | None = None,
                     min_area: MinArea | None = None) -> "Judge":
        """The judge of a bundle; a UsageError (exit 2) for a mm² area without any scale."""
        check_scale(mm_per_px)
        scale = mm_per_px if mm_per_px is not None else (manifest.get("units") or {}).get("mm_per_px")
        if min_area is not None and min_area.unit == "mm2" and scale is None:
            raise UsageError(f"--min-area {min_area} needs a scale: give --mm-per-px (or export the bundle with "
                             "--mm-per-px)")
        thr = manifest["threshold"]
        low = isinstance(thr.get("trust"), Mapping) and thr["trust"].get("level") == "low"
        trust = f"low: the threshold rests on {thr.get('n_images')} good images (patchcore-rt info)" if low else None
        return cls(pixel_level(thr), scale, min_area, trust, bundle_rule(manifest))

    @property
    def rule(self) -> str:
        """The rule in words (each record carries it)."""
        if self.min_area is not None:
            return f"image-score and min-area {self.min_area}"
        if self.bundle_rule.kind == "either":
            return str(self.bundle_rule)
        return "image-score"

    def regions(self, amap: np.ndarray, plan: Plan) -> tuple[list[dict[str, Any]], int, str | None]:
        """The canvas map's regions on the original image, their count, and why there are none."""
        if self.level.value is None:
            return [], 0, self.level.source
        why = f"no pixel reaches the pixel threshold {self.level.value:.6g}"
        if below_level(amap, self.level.value):
            return [], 0, why  # the map on the original cannot reach the level: nothing to cut (most good parts)
        found, total = find_regions(map_to_original(amap, plan, fill=-np.inf), self.level.value, self.mm_per_px,
                                    self.level.base)
        return found, total, None if found else why

    def decide(self, score_ng: bool, regions: list[dict[str, Any]] | None) -> tuple[bool, str]:
        """The verdict (True = NG) and which test decided it: ``image-score``, ``region`` (the
        either rule: the score did not reach the threshold, the largest region is large enough)
        or ``min-area`` (the line's AND rule, which replaces the bundle's)."""
        largest = regions[0]["area_px"] if regions else 0
        if self.min_area is not None:
            if not score_ng:
                return False, "image-score"
            return bool(largest >= self.min_area.in_px(self.mm_per_px)), "min-area"
        if not score_ng and self.bundle_rule.kind == "either" and largest >= self.bundle_rule.min_area_px:
            return True, "region"
        return score_ng, "image-score"


def bundle_rule(manifest: Mapping[str, Any]) -> Rule:
    """The verdict rule a bundle states (``threshold.operating_point.rule``); image-score for a
    bundle without an operating point (exported before they existed). The manifest's validator
    has checked the section's shape."""
    op = (manifest.get("threshold") or {}).get("operating_point")
    return Rule.from_dict(op.get("rule")) if isinstance(op, Mapping) else Rule()
