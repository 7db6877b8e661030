"""Distances from queries to bank rows, in float64 where a score is read: the exact distances of
candidates, the nearest of many candidates, a proven upper bound of it (a reduced candidate step),
and the nearest of (query, row) pairs (the pruned exact search).

faiss (or numpy) finds candidate neighbours; the distances of the candidates are then recomputed
exactly from ``q - m`` in float64. faiss's flat L2 search computes ``|q|^2 - 2 q.m + |m|^2`` in
float32, which loses digits when features have large norms: two runs whose features agree to
float32 precision may give scores far further apart. The recomputation keeps scores stable to the
features' own precision, which the export parity tolerances rely on.
"""

from __future__ import annotations

import numpy as np

# Relative margin of float32 squared distances (sums of a thousand float32 squares agree with the
# float64 sum to about 1e-5) within which a pair may still be the nearest and is recomputed exactly
_PAIR_MARGIN = 1e-3


def exact_distances(queries: np.ndarray, bank: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query to each of its candidate bank rows, in float64.

    queries (Q, D), idx (Q, c) -> (Q, c)."""
    q = np.asarray(queries, dtype=np.float32)
    out = np.empty(idx.shape, np.float64)
    for j in range(idx.shape[1]):
        diff = bank[idx[:, j]] - q  # float32 difference: exact up to one rounding per element
        np.square(diff, out=diff)
        out[:, j] = np.sqrt(diff.sum(axis=1, dtype=np.float64))
    return out


def nearest_candidate(queries: np.ndarray, bank: np.ndarray, idx: np.ndarray,
                      chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of each query's candidates: its distance (Q,) float64, as :func:`exact_distances`
    gives it, and its bank index (Q,).

    For the many candidates of a reduced-precision step: the differences ``m - q`` are formed in
    blocks of ``chunk`` queries that stay in cache, compared in float32, and only the nearest's
    squared differences are summed in float64: the float64 sums, the costly part, are paid once per
    query instead of once per candidate."""
    q = np.asarray(queries, dtype=np.float32)
    dist, nn = np.empty(len(q), np.float64), np.empty(len(q), np.int64)
    for s in range(0, len(q), chunk):
        rows = bank[idx[s : s + chunk]]  # (chunk, c, D)
        rows -= q[s : s + chunk, None, :]
        pick = np.argmin(np.einsum("ijk,ijk->ij", rows, rows), axis=1)  # first of equal: nearest-first order
        diff = rows[np.arange(len(rows)), pick]
        np.square(diff, out=diff)
        dist[s : s + chunk] = np.sqrt(diff.sum(axis=1, dtype=np.float64))
        nn[s : s + chunk] = idx[s : s + chunk][np.arange(len(rows)), pick]
    return dist, nn


def bound_slack(dim: int) -> float:
    """Relative slack that makes a float32 sum of ``dim`` squares an upper bound of their exact sum:
    a sum of n non-negative float32 terms, in any order, is within (n - 1) u / (1 - (n - 1) u) of
    the exact sum (u = 2**-24), and a fused multiply-add's unrounded square only moves each term by
    u more; twice n u covers both."""
    return max(1e-6, 2.0 * dim * 2.0**-24)


def candidate_bounds(queries: np.ndarray, bank: np.ndarray, idx: np.ndarray,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of each query's candidates: an upper bound (Q,) float64 of its exact distance, as
    :func:`exact_distances` would give it, and its bank row (Q,).

    What a reduced candidate step needs of every patch: a bound, not the value. The squared
    differences are summed in float32 one candidate column at a time, in blocks of ``chunk`` queries
    gathered into a buffer that stays in cache, and raised by :func:`bound_slack` (5e-5 relative on
    1,024 dims), so the bound is never below the exact distance of its row, and so never below the
    patch's exact score. Faster than :func:`nearest_candidate`'s float64 sums (no float64 pass at
    all; BENCHMARKS.md times both); the patches whose values are shown are measured again
    exactly when they are settled."""
    q = np.asarray(queries, dtype=np.float32)
    idx = np.asarray(idx, np.int64)
    best = np.full(len(q), np.inf, np.float32)
    row = idx[:, 0].copy() if idx.shape[1] else np.zeros(len(q), np.int64)
    buf = np.empty((min(chunk, max(len(q), 1)), q.shape[1]), np.float32)
    for j in range(idx.shape[1]):
        for s in range(0, len(q), chunk):
            n = min(chunk, len(q) - s)
            rows = np.take(bank, idx[s : s + n, j], axis=0, out=buf[:n])
            rows -= q[s : s + n]
            sq = np.einsum("ij,ij->i", rows, rows)
            nearer = sq < best[s : s + n]  # strictly: the first of equal ones stays (nearest-first order)
            best[s : s + n][nearer] = sq[nearer]
            row[s : s + n][nearer] = idx[s : s + n, j][nearer]
    return np.sqrt(best.astype(np.float64) * (1.0 + bound_slack(q.shape[1]))), row


def nearest_of_pairs(queries: np.ndarray, bank: np.ndarray, qi: np.ndarray, mi: np.ndarray,
                     known: tuple[np.ndarray, np.ndarray], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The nearest bank row of each query among pairs (query ``qi``, bank row ``mi``) and one row already
    measured per query, ``known`` = (distance (Q,) float64 as :func:`exact_distances` gives it, row (Q,)):
    its distance (Q,) float64, as :func:`exact_distances` gives it, and its row (Q,); of equal distances
    the lowest row. The pairs are compared in float32 first; those within :data:`_PAIR_MARGIN` of their
    query's smallest are recomputed as :func:`exact_distances` does. A pair of a query's known row is
    not measured again: a query whose pairs hold only that row costs nothing (most of them, when the
    known row is a candidate and the pairs come from a tight lower bound)."""
    q = np.asarray(queries, dtype=np.float32)
    known_dist, known_row = np.asarray(known[0], np.float64), np.asarray(known[1], np.int64)
    other = mi != known_row[qi]
    qi, mi = qi[other], mi[other]
    sq = np.empty(len(qi), np.float32)
    buf = np.empty((min(chunk, max(len(qi), 1)), q.shape[1]), np.float32)  # rows gathered in place, in cache
    for s in range(0, len(qi), chunk):
        n = min(chunk, len(qi) - s)
        diff = np.take(bank, mi[s : s + n], axis=0, out=buf[:n])
        diff -= q[qi[s : s + n]]
        sq[s : s + n] = np.einsum("ij,ij->i", diff, diff)
    least = np.square(known_dist)  # each query's smallest squared distance so far
    np.minimum.at(least, qi, sq)
    keep = np.flatnonzero(sq <= least[qi] * (1 + _PAIR_MARGIN))
    qi, mi = qi[keep], mi[keep]
    diff = bank[mi] - q[qi]  # float32 difference, as exact_distances
    np.square(diff, out=diff)
    dist = np.r_[known_dist, np.sqrt(diff.sum(axis=1, dtype=np.float64))]
    qi, mi = np.r_[np.arange(len(q)), qi], np.r_[known_row, mi]
    order = np.lexsort((mi, dist, qi))
    first = order[np.r_[0, np.flatnonzero(np.diff(qi[order])) + 1]] if len(q) else order
    return dist[first], mi[first]

