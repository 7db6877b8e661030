"""Out-of-fold scoring: every good training image scored against a memory bank that did not see it.

The training images' patch embeddings are extracted once (:class:`~patchcore.streaming.EmbeddingStore`,
on disk) and reused: for each of ``k`` folds (a fixed-seed split), a coreset is selected from the
other folds' rows at the bundle's coreset ratio, and the fold's own images are scored against it
(image scores and anomaly maps, through the same :func:`runtime.postprocess.finish` as every other
score). What it gives is what good parts the bank has never seen score: the threshold's and the
pixel threshold's calibration set, and a held-out score for every image a recipe is chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

from runtime.geometry import TileLayout
from runtime.postprocess import Prediction, finish
from runtime.search import PatchScorer

from .streaming import EmbeddingStore

DEFAULT_FOLDS = 5
MIN_IMAGES = 3  # fewer good images cannot be split into folds that each leave a bank behind


def fold_split(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``n`` image indices in ``min(k, n)`` folds of near-equal size (a permutation with ``seed``,
    each fold sorted): every index in exactly one fold."""
    if n < 2 or k < 2:
        raise ValueError(f"out-of-fold scoring needs at least 2 images and 2 folds, got {n} images, {k} folds")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, min(k, n))]


class FoldFitter(Protocol):
    """What out-of-fold scoring needs of a model (:class:`patchcore.model.PatchCore`)."""

    layout: TileLayout

    def select_shard(self, batches, shard_images: int, total_images: int): ...


@dataclass
class OutOfFold:
    """Each training image's out-of-fold image score and anomaly map (on the canvas), in the
    order of the images given, and the folds (image indices) and their banks' sizes."""

    image_scores: np.ndarray  # (N,) float64
    maps: np.ndarray  # (N, H, W) float32
    folds: list[np.ndarray]
    bank_rows: list[int]

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
                blur_sigma: float, search_backend: str = "auto", device: str = "auto") -> OutOfFold:
    """Score every image of ``store`` (``n_images`` images, rows in image order) against a coreset
    of the other folds' rows (selected by ``model.select_shard`` with the model's settings)."""
    if n_images < 1 or store.rows % n_images:
        raise ValueError(f"{store.rows} stored rows are not {n_images} images' worth")
    rpi = store.rows // n_images
    layout = model.layout
    folds = fold_split(n_images, k, seed)
    scores = np.empty(n_images, np.float64)
    maps: np.ndarray | None = None
    bank_rows = []
    for f, held in enumerate(folds):
        rest = np.setdiff1d(np.arange(n_images), held)
        bank = model.select_shard(image_batches(store, rpi, rest), len(rest), len(rest)).rows
        bank_rows.append(int(len(bank)))
        scorer = PatchScorer(bank, n_reweight=n_reweight, backend=search_backend, device=device)
        for s in range(0, len(held), 8):
            idx = held[s:s + 8]
            emb = next(image_batches(store, rpi, idx, batch=len(idx))).reshape(len(idx), rpi, -1)
            pred: Prediction = finish(scorer.score(emb), layout, blur_sigma, None, None)
            scores[idx] = pred.image_scores
            if maps is None:
                maps = np.empty((n_images, *pred.maps.shape[1:]), np.float32)
            maps[idx] = pred.maps
    return OutOfFold(scores, maps, folds, bank_rows)
