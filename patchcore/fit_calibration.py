"""The threshold's calibration at fit time (the ``threshold`` section of the manifest).

- ``holdout``: the ``threshold_quantile`` of held-out good images' scores (``--preset paper``; its
  figures stay as they were);
- ``oof``: every good training image scored out of fold (:mod:`patchcore.out_of_fold`), the pixel threshold
  from their maps, and the operating point (:mod:`patchcore.operating_evidence`): the threshold the
  declared policy picks on good and defect evidence, with its rule and its curve;
- ``f1``: the F1-optimal threshold of a labelled folder (``export --calibrate``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.calibration import image_threshold, pixel_threshold
from runtime.errors import UsageError
from runtime.postprocess import robust_scale

from .metrics import f1_max
from .operating_evidence import EvidenceOptions, operating_point
from .out_of_fold import out_of_fold
from .presets import DEFAULT_RULE
from .streaming import EmbeddingStore


def check_options(cfg) -> None:
    """A bad ``--operating-point``, ``--rule`` or ``--ng`` is a UsageError (exit 2) before any image is
    read; they belong to ``--calibration oof``."""
    options = EvidenceOptions(policy=cfg.operating_point, rule=cfg.rule, ng=cfg.ng, seed=cfg.seed)
    given = cfg.operating_point is not None or cfg.rule != DEFAULT_RULE or cfg.ng is not None
    if given and cfg.calibration != "oof":
        raise UsageError("--operating-point, --rule and --ng choose the out-of-fold operating point: they need "
                         "--calibration oof")
    return options


def holdout(model, paths: Sequence[Path]) -> None:
    """Threshold = the ``threshold_quantile`` of held-out good images' scores; scale = their
    robust spread (:func:`runtime.postprocess.robust_scale`)."""
    scores = model.predict_paths(paths).image_scores
    section = image_threshold(scores, model.config.threshold_quantile, "holdout-quantile")
    model.threshold, model.scale = section.pop("value"), section.pop("scale")
    model.fit_info["calibration"] = section


def trust(expected: dict) -> dict:
    """How far the promised false-call rate can be trusted: the width of its 95% interval."""
    lo, hi = expected["false_calls_interval"]
    width = hi - lo
    level = "good" if width <= 0.05 else "moderate" if width <= 0.15 else "low"
    return {"level": level, "why": f"{expected['n_good']} good images: expected false calls {expected['false_calls']:.1%} "
                                   f"(95% interval {lo:.1%}-{hi:.1%})"}


def out_of_fold_calibration(model, store: EmbeddingStore, paths: Sequence[Path]) -> None:
    """Threshold, pixel threshold and operating point from every training image scored out of fold
    (``store`` holds their embeddings, image after image, in the order of ``paths``)."""
    cfg = model.config
    t0 = time.perf_counter()
    oof = out_of_fold(model, store, len(paths), cfg.folds, cfg.seed, cfg.n_reweight, cfg.blur_sigma,
                      cfg.search_backend, cfg.device, keep_banks=True)
    calibrate_from_oof(model, oof, paths, t0)


def calibrate_from_oof(model, oof, paths: Sequence[Path], t0: float) -> None:
    """The threshold section from out-of-fold scores ``oof`` (a fused fit's are its parts' combined);
    ``t0``: when scoring them began (the section's seconds count from it)."""
    cfg = model.config
    pixel = pixel_threshold(oof.maps, cfg.pixel_quantile)
    section = image_threshold(oof.image_scores, cfg.threshold_quantile, "oof-quantile", folds=len(oof.folds),
                              fold_bank_rows=oof.bank_rows, **pixel)
    t1 = time.perf_counter()
    options = EvidenceOptions(policy=cfg.operating_point, rule=cfg.rule, ng=cfg.ng, seed=cfg.seed)
    point = operating_point(model, paths, oof, pixel, options)
    good = np.asarray(point["evidence"]["good"]["scores"])
    section.update(value=point["value"], scale=robust_scale(point["value"], good), method="operating-point",
                   operating_point=point, trust=trust(point["expected"]))
    section.pop("quantile", None)
    section["seconds"] = round(time.perf_counter() - t0, 3)
    section["oof_seconds"] = round(t1 - t0, 3)
    model.threshold, model.scale = section.pop("value"), section.pop("scale")
    model.fit_info["calibration"] = section


def f1(model, labels: np.ndarray, scores: np.ndarray) -> None:
    f1_value, thr = f1_max(labels, scores)
    good = scores[labels == 0]
    model.threshold = float(thr)
    model.scale = robust_scale(float(thr), good) if len(good) else 1.0
    model.fit_info["calibration"] = {"method": "f1-max", "f1": float(f1_value), "n_images": int(len(labels))}
