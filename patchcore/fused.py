"""The fused aggregation's fit (``--aggregation fused``): the trunk runs once per image, and both
aggregations (the paper's at ``target_dim``, local-mean at its native dims; :class:`FusedAggregator`)
give patch features from its maps. Each part gets its own coreset bank and its own out-of-fold scores
(:mod:`patchcore.out_of_fold`: the same folds for both, as they depend only on the image count and
the seed); each part's normaliser is fitted on its out-of-fold good images; the fused out-of-fold
scores and maps then calibrate the threshold, the pixel threshold and the operating point as any
bundle's do. Scoring and combining live in :mod:`runtime.fused`, which the runtime shares.

Why these normalisers: BENCHMARKS.md, section "fused", and docs/fused.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.calibration import DEFAULT_PIXEL_QUANTILE, PIXEL_SAMPLE
from runtime.fused import FusedPart, FusedScorer, combine_images, combine_maps, split_columns
from runtime.fused_parts import read_parts as read_feature_parts
from runtime.postprocess import MAD_TO_SIGMA
from runtime.search.build import build_index
from runtime.search.scorer import PatchScorer

from .features import FUSED_PARTS
from .out_of_fold import MIN_IMAGES, OutOfFold, image_batches, out_of_fold
from .streaming import EmbeddingStore

# How a part's scores are put on its good parts' scale (benchmarks/fused.py measures each):
# "quantile": divided by a high quantile of its out-of-fold good scores (image: IMAGE_QUANTILE of the
# image scores; pixel: the pixel threshold's quantile of the maps' values); "z": minus the median,
# divided by the robust standard deviation (1.4826 MAD) of the same values.
NORMALISERS = ("quantile", "z")
DEFAULT_NORMALISER = "quantile"
IMAGE_QUANTILE = 0.99


@dataclass
class PartFit:
    """One part's bank (its ShardSelection over all training images) and its out-of-fold scores."""

    aggregation: str
    dim: int
    shard: object  # patchcore.model.ShardSelection
    oof: OutOfFold
    oof_seconds: float


def _sample(values: np.ndarray, seed: int = 0) -> np.ndarray:
    v = np.asarray(values, np.float32).ravel()
    if len(v) > PIXEL_SAMPLE:  # an even subsample, as runtime.calibration.pixel_threshold takes
        v = v[np.random.default_rng(seed).choice(len(v), PIXEL_SAMPLE, replace=False)]
    return v.astype(np.float64)


def _robust(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - med)))
    return med, max(sigma, 1e-6 * max(abs(med), 1e-12), 1e-12)


def normaliser(aggregation: str, dim: int, oof: OutOfFold, how: str = DEFAULT_NORMALISER,
               pixel_quantile: float = DEFAULT_PIXEL_QUANTILE) -> FusedPart:
    """A part's normaliser from its out-of-fold good image scores and maps."""
    if how not in NORMALISERS:
        raise ValueError(f"fused normaliser must be one of {', '.join(NORMALISERS)}, got {how!r}")
    images, pixels = np.asarray(oof.image_scores, np.float64), _sample(oof.maps)
    if how == "quantile":
        image = (0.0, max(float(np.quantile(images, IMAGE_QUANTILE)), 1e-12))
        pixel = (0.0, max(float(np.quantile(pixels, pixel_quantile)), 1e-12))
    else:
        image, pixel = _robust(images), _robust(pixels)
    return FusedPart(aggregation, int(dim), image[0], image[1], pixel[0], pixel[1])


def fit_parts(model, stores: Sequence[EmbeddingStore], n_images: int) -> list[PartFit]:
    """Each part's bank and out-of-fold scores, from its own store of rows (image after image)."""
    cfg = model.config
    dims = model.feature_model.aggregator.part_dims
    fits = []
    for aggregation, dim, store in zip(FUSED_PARTS, dims, stores):
        rpi = store.rows // n_images
        shard = model.select_shard(image_batches(store, rpi, range(n_images)), n_images, n_images)
        t0 = time.perf_counter()
        oof = out_of_fold(model, store, n_images, cfg.folds, cfg.seed, cfg.n_reweight, cfg.blur_sigma,
                          cfg.search_backend, cfg.device, keep_banks=True)
        fits.append(PartFit(aggregation, int(dim), shard, oof, time.perf_counter() - t0))
    return fits


def fused_oof(parts: Sequence[FusedPart], fits: Sequence[PartFit]) -> OutOfFold:
    """The parts' out-of-fold scores combined: what the fused bundle's thresholds are calibrated on
    (each fold's bank: the parts' fold banks side by side, as the bundle's bank is)."""
    oofs = [f.oof for f in fits]
    inner = None
    if all(o.inner_scores is not None for o in oofs):
        inner = combine_images(parts, [o.inner_scores for o in oofs])
    banks = [np.concatenate(b, axis=1) for b in zip(*(o.banks for o in oofs))]
    return OutOfFold(combine_images(parts, [o.image_scores for o in oofs]), combine_maps(parts, [o.maps for o in oofs]),
                     oofs[0].folds, oofs[0].bank_rows, banks, inner)


def fit_fused(model, paths: Sequence[Path]) -> None:
    """Fit ``model`` (a PatchCore whose aggregation is fused) on ``paths``: both parts' banks, their
    normalisers, and the thresholds on the fused out-of-fold scores."""
    from . import fit_calibration

    cfg = model.config
    n = len(paths)
    if n < MIN_IMAGES:
        raise ValueError(f"--aggregation fused needs at least {MIN_IMAGES} good training images for its "
                         f"out-of-fold normalisers, got {n}")
    dims = model.feature_model.aggregator.part_dims
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(EmbeddingStore(cfg.work_dir)) for _ in dims]
        t0 = time.perf_counter()
        for rows in model.embedded_batches(paths):
            for store, part in zip(stores, split_columns(rows, dims)):
                store.append(part)
        embed_s = time.perf_counter() - t0
        fits = fit_parts(model, stores, n)
        spilled = sum(s.nbytes for s in stores)
    parts = [normaliser(f.aggregation, f.dim, f.oof, pixel_quantile=cfg.pixel_quantile) for f in fits]
    rows = [f.shard.rows for f in fits]
    if len({len(r) for r in rows}) != 1:
        raise RuntimeError(f"fused parts selected different bank sizes {[len(r) for r in rows]}")
    model.fused_parts = parts
    combined = dataclasses.replace(  # one ShardSelection of both parts' rows, side by side
        fits[0].shard, rows=np.concatenate(rows, axis=1), spilled_bytes=spilled, feature_seconds=embed_s,
        projected=np.concatenate([f.shard.projected for f in fits], axis=1), radius=None,
        coreset_seconds=sum(f.shard.coreset_seconds for f in fits))
    model._fit_bank(list(paths), [combined])
    model.fit_info["fused"] = {
        "parts": [{"aggregation": f.aggregation, "dim": f.dim, "coreset_seconds": round(f.shard.coreset_seconds, 3),
                   "oof_seconds": round(f.oof_seconds, 3)} for f in fits],
        "embed_seconds": round(embed_s, 3),
    }
    t0 = time.perf_counter()
    fit_calibration.calibrate_from_oof(model, fused_oof(parts, fits), paths, t0)


def plain_scorer(model, bank: np.ndarray) -> PatchScorer:
    """One bank's exact scorer with ``model``'s search settings."""
    cfg = model.config
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    return PatchScorer(bank, build_index(bank, cfg.search_backend, device=cfg.device, exact=True)[0],
                       n_reweight=cfg.n_reweight)


def scorer_for(model, bank: np.ndarray) -> PatchScorer | FusedScorer:
    """``model``'s exact scorer of ``bank``: a fused model's bank is its parts' banks side by side,
    each searched on its own and the scores combined (:class:`runtime.fused.FusedScorer`)."""
    if model.config.aggregation != "fused":
        return plain_scorer(model, bank)
    if model.fused_parts is None:
        raise RuntimeError("a fused model scores only once its parts' normalisers are fitted")
    banks = split_columns(bank, [p.dim for p in model.fused_parts])
    return FusedScorer(model.fused_parts, [plain_scorer(model, b) for b in banks])


def manifest_parts(model) -> dict:
    """The manifest's ``features.parts`` of a fused model ({} for any other): each part's aggregation,
    dims (its columns of the embeddings and of the bank, in order) and normalisers."""
    if model.config.aggregation != "fused" or model.fused_parts is None:
        return {}
    return {"parts": [p.to_dict() for p in model.fused_parts], "search": "exact"}


def read_parts(manifest: dict) -> list[FusedPart] | None:
    """A fused bundle's parts from its manifest (None for a bundle of one aggregation)."""
    return read_feature_parts(manifest["features"])
