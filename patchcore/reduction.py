"""Linear reductions of patch features to fewer dimensions, fitted on good training patches.

Each reduction is a (D, d) float32 matrix ``M``; the reduced features are ``rows @ M``. The L2
distances the search measures are invariant to a shift of all rows, so a PCA needs no mean
subtraction to be applied (its mean only matters for fitting the axes): one MatMul, which is what an
export would append to the feature graph.

- ``pool``: the paper's adaptive average pooling over channels (:func:`patchcore.features.adaptive_pool_matrix`);
  for a d that divides the paper's 1024, pooling 1024-dim features equals fitting at ``--target-dim d``
  (both average the same consecutive channels; ``benchmarks/bank_dims.py`` checks it numerically).
- ``pca``: the d leading principal axes of the training patches (at most ``max_rows`` of them, taken
  evenly, so the fit stays cheap on a large class and is the same on every run).
- ``random``: a Gaussian random projection scaled by 1/sqrt(d) (Johnson-Lindenstrauss), under ``seed``.
"""

from __future__ import annotations

import numpy as np

from .features import adaptive_pool_matrix

REDUCTIONS = ("pool", "pca", "random")
PCA_MAX_ROWS = 131072


def check_dim(dim: int, full: int) -> int:
    """``dim`` as an int in [1, full], else a ValueError that names the option."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not 1 <= int(dim) <= full:
        raise ValueError(f"--target-dim must be an integer from 1 to {full}, got {dim!r}")
    return int(dim)


def pool_matrix(full: int, dim: int) -> np.ndarray:
    return np.ascontiguousarray(adaptive_pool_matrix(full, check_dim(dim, full)).T, dtype=np.float32)


def pca_matrix(rows: np.ndarray, dim: int, max_rows: int = PCA_MAX_ROWS) -> np.ndarray:
    """The (D, dim) leading principal axes of ``rows`` (N, D), each signed so that its largest entry is
    positive (eigenvectors have no sign of their own; this makes the fit reproducible)."""
    dim = check_dim(dim, rows.shape[1])
    step = max(1, -(-len(rows) // max_rows))
    sample = np.asarray(rows[::step], np.float64)
    sample = sample - sample.mean(axis=0)
    _, vectors = np.linalg.eigh(sample.T @ sample)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :dim]
    sign = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(dim)])
    return np.ascontiguousarray(axes * sign, dtype=np.float32)


def random_matrix(full: int, dim: int, seed: int = 0) -> np.ndarray:
    dim = check_dim(dim, full)
    g = np.random.default_rng(seed).standard_normal((full, dim)) / np.sqrt(dim)
    return g.astype(np.float32)


def reduction_matrix(kind: str, rows: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """The (D, dim) matrix of reduction ``kind`` for training patches ``rows`` (N, D)."""
    if kind == "pool":
        return pool_matrix(rows.shape[1], dim)
    if kind == "pca":
        return pca_matrix(rows, dim)
    if kind == "random":
        return random_matrix(rows.shape[1], dim, seed)
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {kind!r}")


def reduce_rows(rows: np.ndarray, matrix: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``rows @ matrix`` in chunks (a large class's patches need no second full-size copy in float64)."""
    out = np.empty((len(rows), matrix.shape[1]), np.float32)
    for s in range(0, len(rows), chunk):
        out[s : s + chunk] = rows[s : s + chunk] @ matrix
    return out
