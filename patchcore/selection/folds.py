"""The good images selection uses, and their folds."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

MIN_PER_FOLD = 4  # held-out good images per fold, fewest


def pool(paths: Sequence[Path], max_images: int, seed: int) -> list[Path]:
    """At most ``max_images`` of ``paths``, drawn with ``seed``, in name order."""
    paths = sorted(Path(p) for p in paths)
    if len(paths) <= max_images:
        return paths
    pick = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
    return [paths[i] for i in sorted(pick)]


def split(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint folds of ``range(n)`` (sizes differ by one at most), each sorted."""
    perm = np.random.default_rng(seed + 1).permutation(n)
    return [np.sort(perm[i::k]) for i in range(k)]


def too_few(n: int, k: int) -> str | None:
    """Why ``n`` good images cannot make ``k`` folds, or None when they can."""
    need = k * MIN_PER_FOLD
    if n < need:
        return (f"selection needs at least {need} good training images ({k} folds x {MIN_PER_FOLD} held out), "
                f"got {n}: fitting the fixed default recipe")
    return None
