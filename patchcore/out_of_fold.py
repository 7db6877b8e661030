"""Out-of-fold scoring: every good training image scored against a memory bank that did not see it.

The training images' patch embeddings are extracted once (:class:`~patchcore.streaming.EmbeddingStore`,
on disk) and reused. The ``k`` folds (:func:`patchcore.folds.fold_split`, a fixed-seed split) are the
shards of the composable coreset (:mod:`patchcore.coreset`, what ``--shards`` uses): each fold selects
its share once, and the bank that scores fold ``f`` is the final greedy round over the other folds'
selections, at the bundle's coreset ratio (or bank size) of their patches. So the folds cost about
``2 / k`` of one exact selection instead of ``k`` selections over most of the rows. The fold's own images
are then scored against it (image scores and anomaly maps, through the same
:func:`runtime.postprocess.finish` as every other score). What it gives is what good parts the bank has
never seen score: the threshold's and the pixel threshold's calibration set, and a held-out score for
every image a recipe is chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from runtime.geometry import TileLayout
from runtime.postprocess import Prediction, finish
from runtime.search.build import build_index
from runtime.search.scorer import PatchScorer

from .coreset import coreset_size, merge_shards
from .folds import fold_split
from .streaming import EmbeddingStore

DEFAULT_FOLDS = 5
MIN_IMAGES = 3  # fewer good images cannot be split into folds that each leave a bank behind


class FoldFitter(Protocol):
    """What out-of-fold scoring needs of a model (:class:`patchcore.model.PatchCore`)."""

    layout: TileLayout

    config: object  # PatchCoreConfig: coreset_ratio, bank_size, n_starts, seed, device

    def select_shard(self, batches, shard_images: int, total_images: int, shards: int | None = None): ...


@dataclass
class OutOfFold:
    """Each training image's out-of-fold image score and anomaly map (on the canvas), in the
    order of the images given, and the folds (image indices) and their banks' sizes."""

    image_scores: np.ndarray  # (N,) float64
    maps: np.ndarray  # (N, H, W) float32
    folds: list[np.ndarray]
    bank_rows: list[int]
    banks: list[np.ndarray] | None = None  # each fold's bank (kept when asked: defects are scored on them too)
    inner_scores: np.ndarray | None = None  # (N,) each image against a bank of one fold fewer (the fold bias)

    @property
    def n_images(self) -> int:
        return len(self.image_scores)


def image_batches(store: EmbeddingStore, rows_per_image: int, images: Sequence[int],
                  batch: int = 8) -> Iterator[np.ndarray]:
    """The stored embedding rows of ``images`` (indices into the store, ``rows_per_image`` each),
    ``batch`` images at a time, read back from disk (never all at once)."""
    for s in range(0, len(images), batch):
        yield np.concatenate([store.read(i * rows_per_image, (i + 1) * rows_per_image) for i in images[s:s + batch]])


def out_of_fold(model: FoldFitter, store: EmbeddingStore, n_images: int, k: int, seed: int, n_reweight: int,
                blur_sigma: float, search_backend: str = "auto", device: str = "auto",
                keep_banks: bool = False) -> OutOfFold:
    """Score every image of ``store`` (``n_images`` images, rows in image order) against a coreset
    of the other folds' rows (each fold a shard of ``model.select_shard``, merged per fold).
    ``keep_banks``: also return each fold's bank (:mod:`patchcore.operating_evidence` scores
    synthetic defects drawn on a fold's held-out images against that fold's bank), and score every
    image against a bank of one fold fewer too (``inner_scores``: how scores fall as a bank grows,
    what the fold-bias correction extrapolates; needs 3 folds or more)."""
    if n_images < 1 or store.rows % n_images:
        raise ValueError(f"{store.rows} stored rows are not {n_images} images' worth")
    rpi = store.rows // n_images
    layout, cfg = model.layout, model.config
    folds = fold_split(n_images, k, seed)
    shards = [model.select_shard(image_batches(store, rpi, held), len(held), n_images, shards=len(folds))
              for held in folds]
    scores = np.empty(n_images, np.float64)
    maps: np.ndarray | None = None
    bank_rows = []
    banks: list[np.ndarray] = []
    inner = np.empty(n_images, np.float64) if keep_banks and len(folds) >= 3 else None

    def bank_without(out: set[int]) -> np.ndarray:
        rest = [shards[j] for j in range(len(folds)) if j not in out]
        n_rest = sum(len(folds[j]) for j in range(len(folds)) if j not in out)
        n_select = coreset_size(sum(r.n_patches for r in rest), cfg.coreset_ratio,
                                None if cfg.bank_size is None else round(cfg.bank_size * n_rest / n_images))
        idx = merge_shards([torch.from_numpy(r.projected) for r in rest], n_select, cfg.n_starts, cfg.seed, cfg.device)
        return np.concatenate([r.rows for r in rest])[idx]

    for f, held in enumerate(folds):
        bank = bank_without({f})
        bank_rows.append(int(len(bank)))
        if keep_banks:
            banks.append(bank)
        scorer = PatchScorer(bank, build_index(bank, search_backend, device=device, exact=True)[0],
                             n_reweight=n_reweight)
        inner_scorer = None
        if inner is not None:
            inner_bank = bank_without({f, (f + 1) % len(folds)})
            inner_scorer = PatchScorer(inner_bank, build_index(inner_bank, search_backend, device=device, exact=True)[0],
                                       n_reweight=n_reweight)
        for s in range(0, len(held), 8):
            idx = held[s:s + 8]
            emb = next(image_batches(store, rpi, idx, batch=len(idx))).reshape(len(idx), rpi, -1)
            pred: Prediction = finish(scorer.score(emb), layout, blur_sigma, None, None)
            scores[idx] = pred.image_scores
            if maps is None:
                maps = np.empty((n_images, *pred.maps.shape[1:]), np.float32)
            maps[idx] = pred.maps
            if inner_scorer is not None:
                inner[idx] = finish(inner_scorer.score(emb), layout, blur_sigma, None, None).image_scores
    return OutOfFold(scores, maps, folds, bank_rows, banks if keep_banks else None, inner)
