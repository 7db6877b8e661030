"""The one fold splitter: good images into folds, for out-of-fold calibration
(:mod:`patchcore.out_of_fold`) and for recipe selection (:mod:`patchcore.recipe`).

Both draw a seeded permutation of the images and sort each fold; they differ in how the
permutation is cut (``dealt``) and in how few images a fold may hold (``per_fold``). Each
caller keeps its own way, so that its folds, and so its results, stay as they were.
"""

from __future__ import annotations

import numpy as np


def fold_split(n: int, k: int, seed: int, *, dealt: bool = False) -> list[np.ndarray]:
    """``n`` image indices in folds, each sorted, every index in exactly one fold.

    ``dealt=False`` (calibration): ``min(k, n)`` folds of consecutive runs of the permutation,
    near-equal in size; at least 2 images and 2 folds, else a ValueError. ``dealt=True`` (recipe
    selection): ``k`` folds, the permutation dealt out one image to each fold in turn; the caller
    checks :func:`too_few` first."""
    if not dealt and (n < 2 or k < 2):
        raise ValueError(f"out-of-fold scoring needs at least 2 images and 2 folds, got {n} images, {k} folds")
    perm = np.random.default_rng(seed).permutation(n)
    if dealt:
        return [np.sort(perm[i::k]) for i in range(k)]
    return [np.sort(part) for part in np.array_split(perm, min(k, n))]


def too_few(n: int, k: int, per_fold: int) -> str | None:
    """Why ``n`` images cannot make ``k`` folds of at least ``per_fold`` images each, or None when they can."""
    need = k * per_fold
    if n < need:
        return f"at least {need} good training images ({k} folds x {per_fold} held out), got {n}"
    return None
