"""The parity verdict an export records for each reduced-precision variant (int8, bf16) it measured:
``approved`` true or false, with the criterion that judged it, its figures and the reasons of a
refusal. ``--graph auto`` (:mod:`runtime.graph_choice`) chooses only among approved variants.

Judged against the bundle's float32 runtime on the same check images, with the tolerances that
``patchcore parity`` applies to reduced precision (:data:`export.parity.REDUCED`):

- labelled check images (good and defective test images), criterion ``auroc+verdicts``: the
  variant's image AUROC within ``REDUCED.auroc`` (0.5 points) of float32's on the same images;
- good images only (no defects to rank), criterion ``image-error+verdicts``: every image's score
  before eq. 7 reweighting within ``REDUCED.image`` (5%) relative of float32's;
- both: no image whose float32 score lies outside the band of ``REDUCED.band`` (10%) x the
  threshold around it gets another verdict (inside the band a flip is allowed and counted). A
  bundle without a threshold has no verdicts to compare.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patchcore.metrics import image_auroc
from runtime.manifest import REDUCED_CRITERIA

from .parity import REDUCED, verdict_agreement

AUROC_CRITERION, ERROR_CRITERION = REDUCED_CRITERIA


def judge_reduced(labels: np.ndarray, ref_scores: np.ndarray, got_scores: np.ndarray, unweighted_error: float,
                  threshold: float | None) -> dict[str, Any]:
    """The verdict fields of one variant: ``approved``, ``criterion``, ``tolerance``, the figures
    (``image_auroc`` or the image-score error already measured), ``verdicts``, ``labels`` and
    ``reasons`` (empty when approved)."""
    labels = np.asarray(labels).astype(int)
    ref, got = np.asarray(ref_scores, np.float64), np.asarray(got_scores, np.float64)
    reasons: list[str] = []
    out: dict[str, Any] = {"labels": {"good": int((labels == 0).sum()), "defective": int((labels == 1).sum())}}
    if not np.all(np.isfinite(got)):
        reasons.append("non-finite image scores")
        got = np.where(np.isfinite(got), got, np.inf)
    if out["labels"]["good"] and out["labels"]["defective"]:
        out["criterion"] = AUROC_CRITERION
        out["tolerance"] = {"image_auroc": REDUCED.auroc, "band_rel": REDUCED.band}
        a_ref, a_got = image_auroc(labels, ref), image_auroc(labels, got)
        diff = abs(a_got - a_ref)
        out["image_auroc"] = {"fp32": round(a_ref, 6), "variant": round(a_got, 6), "diff": round(diff, 6)}
        if not diff <= REDUCED.auroc:
            reasons.append(f"image AUROC {a_got:.4f} differs from float32's {a_ref:.4f} by {diff * 100:.2f} points "
                           f"> {REDUCED.auroc * 100:.1f}")
    else:
        out["criterion"] = ERROR_CRITERION
        out["tolerance"] = {"image_unweighted": REDUCED.image, "band_rel": REDUCED.band}
        if not unweighted_error <= REDUCED.image:
            reasons.append(f"image scores (before reweighting) differ by up to {unweighted_error:.2%} "
                           f"> {REDUCED.image:.0%}")
    verdicts = verdict_agreement(ref, got, threshold, REDUCED)
    out["verdicts"] = verdicts
    if verdicts.get("disagree_outside"):
        reasons.append(f"{verdicts['disagree_outside']} verdict(s) flip outside the band +-{REDUCED.band:.0%} x "
                       "threshold")
    out["approved"] = not reasons
    out["reasons"] = reasons
    return out


def image_labels(paths) -> np.ndarray:
    """0 for a good image (in a ``good`` folder: ``test/good``, ``train/good``), 1 for a defective one."""
    return np.array([int(p.parent.name != "good") for p in paths], int)
