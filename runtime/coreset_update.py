"""Continue the approximate greedy (k-center) coreset with new points, in numpy.

The fit selects the memory bank with :func:`patchcore.coreset.greedy_coreset` (torch) in a random
projection space. To extend that bank with new good patches, each new patch starts with its
distance to the existing bank in the same space (the projection matrix the bundle stores), then
the farthest new patch is added repeatedly and the others' distances are lowered to it, as the
fit's loop does. It stops at the budget, or once every new patch lies within a radius: new
patches the bank already covers add nothing. :mod:`runtime.update` passes the fit's greedy
radius (the largest distance to the bank left among the training patches when the fit's own
selection stopped, recorded at export), so the new patches end up covered as well as the fit's.

A bank's covering radius (bundles that do not record the fit's radius stop there) is the
selection distance at which its own greedy run ended (the distance of the bank's last row to the
rows chosen before it; the bank is stored in selection order), and after an update the largest
distance of a new patch to the extended bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# elements of one block of the (points x centres) distance matrix: 64 MiB of float32
_BLOCK = 1 << 24


def project(x: np.ndarray, w: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N, D) -> (N, p) float32: ``x @ w.T`` for the bundle's (p, D) projection matrix."""
    x = np.asarray(x)
    w = np.asarray(w, dtype=np.float32)
    out = np.empty((len(x), w.shape[0]), np.float32)
    for s in range(0, len(x), chunk):
        np.matmul(x[s : s + chunk].astype(np.float32, copy=False), w.T, out=out[s : s + chunk])
    return out


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _distances(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """sqrt(clamp(|x|^2 - 2 x.c + |c|^2, 0)) for (N, p) points and (M, p) centres -> (N, M)."""
    d = x @ c.T
    d *= -2.0
    d += x_sq[:, None]
    d += c_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return np.sqrt(d, out=d)


def nearest_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N,) float32: each point's distance to its nearest centre (both already projected)."""
    if len(centres) == 0:
        return np.full(len(points), np.inf, np.float32)
    p_sq, c_sq = _sq_norms(points), _sq_norms(centres)
    out = np.empty(len(points), np.float32)
    step = max(1, _BLOCK // len(centres))
    for s in range(0, len(points), step):
        out[s : s + step] = _distances(points[s : s + step], p_sq[s : s + step], centres, c_sq).min(axis=1)
    return out


def _centre(projected_bank: np.ndarray, p: int) -> np.ndarray:
    """Subtracted from both sides: distances stay, norms shrink, and with them float32 cancellation."""
    return projected_bank.mean(axis=0) if len(projected_bank) else np.zeros(p, np.float32)


def selection_radius(projected_bank: np.ndarray) -> float:
    """The distance at which a greedy selection stored in order ended: its last row's distance
    to the nearest earlier row (0 for fewer than two rows)."""
    if len(projected_bank) < 2:
        return 0.0
    rows = projected_bank - _centre(projected_bank, projected_bank.shape[1])
    return float(nearest_distances(rows[-1:], rows[:-1])[0])


@dataclass
class Extension:
    """What :func:`extend_coreset` chose, and how far the new points lay from the bank."""

    selected: np.ndarray  # (K,) int64 indices into the new points, in selection order
    radius_before: float  # largest distance of a new point to the old bank
    radius_after: float  # largest distance of a new point to the extended bank
    covered: int  # new points already within the stop radius of the old bank
    stopped: str  # "covered" (every new point within the radius) or "budget"


def distances_to_bank(projected_bank: np.ndarray, projected_new: np.ndarray) -> np.ndarray:
    """(N,) float32: each new point's distance to the nearest bank row (both projected)."""
    mean = _centre(projected_bank, projected_new.shape[1])
    return nearest_distances(np.ascontiguousarray(projected_new - mean, dtype=np.float32),
                             np.ascontiguousarray(projected_bank - mean, dtype=np.float32))


def extend_coreset(projected_bank: np.ndarray, projected_new: np.ndarray, budget: int, radius: float,
                   start: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None) -> Extension:
    """Greedy k-center continued from ``projected_bank`` over ``projected_new`` (both (·, p)).

    Adds at most ``budget`` new points, farthest first, and stops early once no new point is
    farther than ``radius`` from the selection. ``start``: the new points' distances to the bank
    when already known (:func:`distances_to_bank`)."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    x = np.ascontiguousarray(projected_new - _centre(projected_bank, projected_new.shape[1]), dtype=np.float32)
    min_dist = (distances_to_bank(projected_bank, projected_new) if start is None
                else np.array(start, dtype=np.float32, copy=True))
    if len(x) == 0:
        return Extension(np.empty(0, np.int64), 0.0, 0.0, 0, "covered")
    before = float(min_dist.max())
    covered = int((min_dist <= radius).sum())
    x_sq = _sq_norms(x)
    selected: list[int] = []
    report = max(1, budget // 200)
    for i in range(min(budget, len(x))):
        idx = int(np.argmax(min_dist))
        if min_dist[idx] <= radius:
            break
        selected.append(idx)
        # one matrix-vector product per step: einsum, not BLAS, whose threads cost more than the
        # product itself at this size (and far more when other processes share the cores)
        d = np.einsum("ij,j->i", x, x[idx])
        d *= -2.0
        d += x_sq
        d += x_sq[idx]
        np.maximum(d, 0.0, out=d)
        np.minimum(min_dist, np.sqrt(d, out=d), out=min_dist)
        min_dist[idx] = 0.0  # exactly: float32 cancellation may leave a small positive self-distance
        if progress and (i % report == 0):
            progress(i + 1, budget)
    after = float(min_dist.max())
    if progress:
        progress(budget, budget)
    return Extension(np.asarray(selected, np.int64), before, after, covered,
                     "covered" if after <= radius else "budget")
