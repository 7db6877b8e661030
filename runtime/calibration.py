"""What a threshold rests on: the image threshold's and the pixel threshold's calibration facts,
written into the manifest's ``threshold`` section at export and read back by the runtime.

The image threshold is a quantile of good images' scores; its normalising scale a robust spread
with a floor (:func:`runtime.postprocess.robust_scale`). How far to trust it depends on how many
good images it rests on: a 0.99 quantile of 30 scores is their maximum, and a new good part
exceeds the maximum of ``n`` scores with probability about 1 / (n + 1).

The pixel threshold is a high quantile of good images' anomaly-map values; regions
(:mod:`runtime.regions`) are the connected parts of a map above it. A bundle written before
pixel thresholds existed falls back to its image threshold, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .postprocess import quantile_threshold

DEFAULT_PIXEL_QUANTILE = 0.999
PIXEL_SAMPLE = 2_000_000  # map values kept for the pixel quantile (an even subsample beyond this)


def trust(n_images: int, quantile: float) -> dict[str, Any]:
    """How much a ``quantile`` threshold of ``n_images`` good scores can be trusted, in words and
    as a level: ``low`` when the quantile is (about) the largest score, ``moderate`` when a few
    scores lie above it, ``good`` from five times the images the quantile needs on."""
    need = 1.0 / max(1e-9, 1.0 - quantile) if quantile < 1 else float("inf")
    resolution = 1.0 / (n_images + 1)
    if n_images < need:
        level, why = "low", (f"{n_images} good images: the {quantile:g} quantile is about their largest score; a new "
                             f"good part exceeds it with a probability near {resolution:.1%}, not {1 - quantile:.1%} "
                             f"(about {int(np.ceil(need))} images resolve this quantile)")
    elif n_images < 5 * need:
        level, why = "moderate", (f"{n_images} good images: about {n_images * (1 - quantile):.1f} of them score above "
                                  f"the {quantile:g} quantile; its false-call rate is known to a few points")
    else:
        level, why = "good", f"{n_images} good images, {n_images * (1 - quantile):.0f} of them above the {quantile:g} quantile"
    return {"level": level, "why": why}


def threshold_words(thr: dict[str, Any]) -> str:
    """The manifest's threshold and how far to trust it, in one line (``export`` prints it)."""
    if thr.get("value") is None:
        return "no threshold (no verdicts)"
    line = f"threshold {thr['value']:.6g} ({thr.get('method', '?')}, {thr.get('n_images', '?')} good images)"
    tr = thr.get("trust")
    if isinstance(tr, dict):
        line += f"; trust {tr.get('level')}: {tr.get('why')}"
    return line


def spread(scores) -> dict[str, float]:
    """Summary of the calibration scores: median, MAD, interquartile range, max."""
    s = np.asarray(scores, np.float64)
    q1, med, q3 = (float(v) for v in np.quantile(s, [0.25, 0.5, 0.75]))
    return {"median": med, "mad": float(np.median(np.abs(s - med))), "iqr": q3 - q1, "max": float(s.max())}


def image_threshold(scores, quantile: float, method: str, **facts: Any) -> dict[str, Any]:
    """The manifest's ``threshold`` section from good images' scores (``calibration_scores``
    are what a bank update recalibrates from)."""
    s = np.asarray(scores, np.float64)
    value, scale = quantile_threshold(s, quantile)
    return {"value": value, "scale": scale, "method": method, "quantile": quantile, "n_images": int(len(s)),
            **facts, "spread": spread(s), "trust": trust(len(s), quantile),
            "calibration_scores": [float(v) for v in s]}


def pixel_threshold(maps: np.ndarray, quantile: float = DEFAULT_PIXEL_QUANTILE, seed: int = 0) -> dict[str, Any]:
    """The ``quantile`` of good images' anomaly-map values (an even subsample of at most
    ``PIXEL_SAMPLE`` values): the level above which a map's pixels form regions; and their
    median (``pixel_base``), from which a region's size is measured at half its peak's height."""
    values = np.asarray(maps, np.float32).ravel()
    if len(values) > PIXEL_SAMPLE:
        values = values[np.random.default_rng(seed).choice(len(values), PIXEL_SAMPLE, replace=False)]
    return {"pixel_value": float(np.quantile(values, quantile)), "pixel_quantile": quantile,
            "pixel_base": float(np.median(values))}


@dataclass(frozen=True)
class PixelLevel:
    """The level regions are cut at, and where it comes from (said in ``info`` and records)."""

    value: float | None
    source: str
    base: float | None = None  # good parts' typical map value (None: region sizes are their whole extent)


def pixel_level(threshold: Mapping[str, Any]) -> PixelLevel:
    """The bundle's pixel threshold; a bundle without one uses its image threshold, with the reason."""
    if threshold.get("pixel_value") is not None:
        base = threshold.get("pixel_base")
        return PixelLevel(float(threshold["pixel_value"]),
                          f"pixel threshold: the {threshold.get('pixel_quantile')} quantile of good images' map values "
                          f"({threshold.get('method', '?')})", None if base is None else float(base))
    if threshold.get("value") is not None:
        return PixelLevel(float(threshold["value"]), "no pixel threshold in this bundle (exported before they "
                                                     "existed): regions are cut at the image threshold; re-export "
                                                     "to calibrate one")
    return PixelLevel(None, "the bundle has no threshold: no regions")
