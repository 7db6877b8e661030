"""Evaluation metrics: image/pixel AUROC, PRO and F1-max (numpy + OpenCV; no scikit-learn).

Every curve here is built by one exact sort-based sweep (`_sweep`): scores are sorted once, and
cumulative (optionally weighted) positive/negative counts are read off at each distinct score.
Tied scores therefore move both counts in one step, as in scikit-learn's ``roc_curve``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


def _check(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name}: labels and scores differ in size ({y.size} vs {s.size})")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0/1 or bool")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores contain NaN or inf")
    return y.astype(bool), s


def _sweep(y: np.ndarray, s: np.ndarray, pos_weight: np.ndarray | None = None):
    """Cumulative (positives, negatives, threshold) for ``score >= threshold`` at each distinct
    score, thresholds descending. ``pos_weight`` weights each positive (default 1)."""
    order = np.argsort(s)[::-1]  # tie order is irrelevant: ties are grouped below
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    pos = y_sorted if pos_weight is None else np.where(y_sorted, pos_weight[order], 0.0)
    tps = np.cumsum(pos)[last]
    fps = np.cumsum(~y_sorted)[last]
    return tps, fps, s_sorted[last]


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def auroc(labels, scores) -> float:
    """ROC AUC (equals ``sklearn.metrics.roc_auc_score``, ties included). O(n log n)."""
    y, s = _check(labels, scores, "auroc")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("auroc: needs both positive and negative labels, got one class only")
    tps, fps, _ = _sweep(y, s)
    return _trapezoid(np.r_[0.0, fps / (y.size - n_pos)], np.r_[0.0, tps / n_pos])


def image_auroc(labels, image_scores) -> float:
    """AUROC of image scores; defect images (label 1) are positive."""
    return auroc(labels, image_scores)


def _check_maps(masks, maps, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(N, H, W) arrays, or sequences of per-image (H_i, W_i) arrays (images of different sizes,
    e.g. at their original resolution) -> lists of 2D bool masks and maps, image by image."""
    if isinstance(masks, np.ndarray) or isinstance(maps, np.ndarray):
        masks, maps = np.asarray(masks), np.asarray(maps)
        if masks.ndim == 2:
            masks, maps = masks[None], maps[None]
        if masks.ndim != 3 or masks.shape != maps.shape:
            raise ValueError(f"{name}: masks and maps must both be (N, H, W), got {masks.shape} and {maps.shape}")
    masks, maps = [np.asarray(m).astype(bool) for m in masks], [np.asarray(a) for a in maps]
    if len(masks) != len(maps) or any(m.ndim != 2 or m.shape != a.shape for m, a in zip(masks, maps)):
        raise ValueError(f"{name}: need one (H, W) map per (H, W) mask, got {len(masks)} masks and {len(maps)} maps "
                         "of different shapes")
    return masks, maps


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0].ravel() if len(arrays) == 1 else np.concatenate([a.ravel() for a in arrays])


def pixel_auroc(masks, maps) -> float:
    """AUROC over all pixels of all images: (N, H, W) bool masks vs (N, H, W) anomaly maps (or
    per-image lists when sizes differ)."""
    masks, maps = _check_maps(masks, maps, "pixel_auroc")
    return auroc(_flat(masks), _flat(maps))


def pro_score(masks, maps, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    PRO(t) is the mean, over all ground-truth connected components (8-connectivity, per image),
    of the fraction of the component's pixels with ``map >= t``; FPR(t) is the fraction of
    defect-free pixels (mask False, all images) with ``map >= t``. Giving each defect pixel the
    weight 1 / (component size * number of components) turns PRO(t) into a weighted
    true-positive count, so the curve comes from one sort.

    ``num_thresholds=None`` (default) is exact: every distinct map value is a threshold.
    An integer uses that many quantiles of the map values instead (binned counts, no full
    sort); the result is the exact curve sampled at those thresholds. The curve is linearly
    interpolated at exactly ``fpr_limit``; the area (trapezoids) is divided by ``fpr_limit``.
    """
    masks, maps = _check_maps(masks, maps, "pro_score")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"pro_score: fpr_limit must be in (0, 1], got {fpr_limit}")
    weights = [np.zeros(m.shape, np.float64) for m in masks]
    n_regions = 0
    for i, m in enumerate(masks):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        if n > 1:
            sizes = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
            sizes[0] = np.inf  # background gets weight 0
            weights[i] = 1.0 / sizes[lab]
            n_regions += n - 1
    n_neg = int(sum((~m).sum() for m in masks))
    if n_regions == 0 or n_neg == 0:
        raise ValueError("pro_score: needs at least one defect region and one defect-free pixel")
    y, s = _check(_flat(masks), _flat(maps), "pro_score")
    w = _flat(weights) / n_regions

    if num_thresholds is None:
        pro, fp, _ = _sweep(y, s, w)
    else:
        if num_thresholds < 2:
            raise ValueError("pro_score: num_thresholds must be >= 2")
        thr = np.unique(np.quantile(s, np.linspace(0.0, 1.0, num_thresholds), method="lower"))
        bins = np.searchsorted(thr, s, side="right") - 1  # index of the largest threshold <= s
        pro = np.cumsum(np.bincount(bins, weights=w, minlength=thr.size)[::-1])
        fp = np.cumsum(np.bincount(bins[~y], minlength=thr.size)[::-1])
    fpr = np.r_[0.0, fp / n_neg]
    pro = np.r_[0.0, pro]

    k = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:k] <= limit; fpr[-1] == 1
    x, yv = fpr[:k], pro[:k]
    if x[-1] < fpr_limit:  # then fpr[k] > fpr_limit > fpr[k-1]
        t = (fpr_limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x, yv = np.r_[x, fpr_limit], np.r_[yv, pro[k - 1] + t * (pro[k] - pro[k - 1])]
    return _trapezoid(x, yv) / fpr_limit


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over thresholds on ``scores`` and its threshold: ``score >= threshold`` is
    predicted anomalous. On equal F1 the highest threshold wins."""
    y, s = _check(labels, scores, "f1_max")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("f1_max: needs at least one positive label")
    tps, fps, thr = _sweep(y, s)
    f1 = 2.0 * tps / (tps + fps + n_pos)  # 2TP / (2TP + FP + FN), FN = P - TP
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])


@dataclass(frozen=True)
class EvalMetrics:
    """Fractions in [0, 1]; pixel metrics are None when the test set has no defect masks."""

    image_auroc: float
    pixel_auroc: float | None
    pro: float | None
    f1_max: float
    f1_threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(labels, image_scores, masks=None, maps=None) -> EvalMetrics:
    """All metrics for one class. ``masks``/``maps`` are (N, H, W) aligned with ``labels`` (or
    per-image lists of (H_i, W_i) arrays)."""
    f1, thr = f1_max(labels, image_scores)
    pix = pro = None
    if masks is not None and any(np.asarray(m).any() for m in masks):
        if maps is None:
            raise ValueError("evaluate: masks given without anomaly maps")
        pix, pro = pixel_auroc(masks, maps), pro_score(masks, maps)
    return EvalMetrics(image_auroc(labels, image_scores), pix, pro, f1, thr)
