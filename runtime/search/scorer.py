"""Patch and image anomaly scores from patch embeddings and a ready bank index (the index is built
first, by :func:`runtime.search.build.build_index`, and handed in: patchcore-inspection injects its
nearest-neighbour method the same way).

With an exact index, each patch's candidates are rescored exactly (:mod:`.distances`). With a
reduced candidate step (an index whose ``approximate`` is true) the candidates give upper bounds,
and each image's most anomalous patches, and the patches the caller's maps show, are settled by
the exact float32 search beside it, so image scores are the exact search's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import NeighbourIndex, check_bank
from .distances import candidate_bounds, exact_distances, nearest_of_pairs
from .exact import OnnxExactIndex

# Candidates fetched per query before exact re-ranking: a margin for near-ties that float32
# search may order wrongly (the exact distances then pick the true nearest of them).
_SEARCH_MARGIN = 2
# Patches searched exactly at a time while settling an image's worst patch (see PatchScorer._settle_worst).
_SETTLE_BLOCK = 4


@dataclass
class Scores:
    patch_scores: np.ndarray  # (B, P) float32: distance of each patch to its nearest bank patch
    image_scores: np.ndarray  # (B,) float64: max patch score, reweighted when n_reweight > 0
    nearest: np.ndarray  # (B, P) int64: index of each patch's nearest bank patch
    # (B, P) bool: patches whose score is known to be the exact search's (a reduced candidate step);
    # None when every patch was searched exactly
    exact: np.ndarray | None = None


class PatchScorer:
    """Patch and image anomaly scores from patch embeddings (paper, section 3.3 and eq. 7).

    Patch score = Euclidean distance to the nearest memory-bank patch (k=1, as in the published
    runs). Image score = the largest patch score s*, reweighted with the paper's eq. 7 when
    ``n_reweight`` = b > 0:  s = (1 - softmax(-)[0]) * s*, the softmax taken over the distances
    from the most anomalous test patch to the b nearest bank neighbours of its nearest bank patch
    m* (m* first). ``n_reweight`` 1 would always give 0 and is refused.

    ``index``: a ready index on ``bank`` (:func:`runtime.search.build.build_index`); the scorer reads
    the capabilities it declares (``approximate``, ``bounds``, ``candidates``).
    """

    def __init__(self, bank: np.ndarray, index: NeighbourIndex, n_reweight: int = 3):
        check_bank(bank)
        if n_reweight < 0 or n_reweight == 1:
            raise ValueError("n_reweight must be 0 (off) or >= 2")
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        b = min(n_reweight, len(self.bank))
        self.n_reweight = b if b >= 2 else 0  # a one-row bank cannot reweight (the weight would be 0)
        # bank row -> its exact-search neighbours (eq. 7's N_b(m*)): a fact of the bank alone, which a
        # scorer never changes, so each m* is searched once (one bank product per new m*)
        self._neighbours: dict[int, np.ndarray] = {}
        self.index = index
        # a reduced-precision candidate step: the worst patches and the reweighting then use an exact
        # float32 search beside it, so image scores stay the exact search's
        self.approximate = bool(index.approximate)
        self.exact = OnnxExactIndex(self.bank) if self.approximate else index
        # rows fetched per query and rescored: a margin for float32 near-ties, or the reduced-precision
        # search's candidate count (its bounds need no margin: the settling makes shown values exact)
        self.margin = index.candidates if self.approximate else _SEARCH_MARGIN

    @property
    def backend(self) -> str:
        return self.index.name

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) -> nearest distance (Q,) float64 and its bank index (Q,): exact, or with a reduced
        candidate step the nearest of the candidates, an upper bound of the exact."""
        cand = self.index.search(queries, min(self.margin, len(self.bank)))
        if self.approximate:
            return candidate_bounds(queries, self.bank, cand)
        dist = exact_distances(queries, self.bank, cand)
        best = np.argmin(dist, axis=1)  # first of equal distances: candidates are nearest-first
        rows = np.arange(len(queries))
        return dist[rows, best], cand[rows, best]

    def _check(self, embeddings: np.ndarray) -> None:
        if embeddings.ndim != 3 or embeddings.shape[2] != self.bank.shape[1]:
            raise ValueError(f"embeddings must be (B, P, {self.bank.shape[1]}), got {embeddings.shape}")

    def score(self, embeddings: np.ndarray, settle=None) -> Scores:
        """(B, P, D) patch embeddings -> Scores. With a reduced candidate step, ``settle`` (a function
        of the (B, P) float64 upper bounds -> (B, P) bool) names patches to search exactly first, in one
        batch; each image's worst patches are then settled (see :meth:`_settle_worst`)."""
        self._check(embeddings)
        b, p, d = embeddings.shape
        dist, nn = self.nearest(embeddings.reshape(b * p, d))
        patch, nn = dist.reshape(b, p), nn.reshape(b, p)
        if not self.approximate:
            worst = np.argmax(patch, axis=1)
            return self._image_scores(embeddings, patch, nn, worst, patch[np.arange(b), worst])
        exact = np.zeros((b, p), bool)
        if settle is not None:
            self._settle_rows(embeddings, patch, nn, exact, np.asarray(settle(patch), bool))
        known = self._settle_worst(embeddings, patch, nn, exact)
        worst = np.argmax(patch, axis=1)
        scores = self._image_scores(embeddings, patch, nn, worst, patch[np.arange(b), worst], known)
        scores.exact = exact
        return scores

    def _exact_nearest(self, queries: np.ndarray, upper: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact search's nearest distance (float64) and bank row of each query, ``upper`` (Q,) a
        bound of the distance to the bank row ``row`` (Q,) of each (its candidate). On principal
        components, that distance is measured exactly, and the rows whose lower bound is below it are
        the only ones searched (:meth:`runtime.search.reduced.Int8Index.within`);
        else one float32 product over the whole bank ranks them."""
        if self.index.bounds:
            upper = exact_distances(queries, self.bank, np.asarray(row, np.int64)[:, None])[:, 0]  # the bound, made exact
            qi, mi = self.index.within(queries, upper)
            return nearest_of_pairs(queries, self.bank, qi, mi, known=(upper, row))
        cand = self.exact.search(queries, min(_SEARCH_MARGIN, len(self.bank)))
        dist = exact_distances(queries, self.bank, cand)
        pick = np.argmin(dist, axis=1)  # first of equal distances: candidates are nearest-first
        rows = np.arange(len(queries))
        return dist[rows, pick], cand[rows, pick]

    def _settle_rows(self, embeddings: np.ndarray, patch: np.ndarray, nn: np.ndarray, exact: np.ndarray,
                     which: np.ndarray) -> int:
        """Search the patches ``which`` (B, P) bool exactly in one batch, in place (those already
        ``exact`` are skipped, the others marked); returns how many were searched."""
        todo = which & ~exact
        if not todo.any():
            return 0
        patch[todo], nn[todo] = self._exact_nearest(embeddings[todo], patch[todo], nn[todo])
        exact |= todo
        return int(todo.sum())

    def _settle_worst(self, embeddings: np.ndarray, patch: np.ndarray, nn: np.ndarray,
                      exact: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """Make each image's most anomalous patch, its score and its m* those of the exact search (in place).

        A candidate distance is the exact distance to a real bank row, so it bounds the patch's true
        score from above. Patches not yet ``exact`` are searched exactly, most anomalous first and
        :data:`_SETTLE_BLOCK` at a time, until the next bound is below the largest exact score found:
        no patch left can score higher, whatever the candidate step missed.

        The first block's search also carries the bank row its leading patch points to (the likely
        m*), whose neighbours eq. 7 needs: one pass over the bank instead of two. Returns them,
        ``{bank row: its exact-search neighbours}``, for :meth:`reweight`. ``exact``: (B, P) bool,
        the settled patches are marked in it."""
        k = self._reweight_k()
        known: dict[int, np.ndarray] = {}
        for i in range(len(patch)):
            order = np.argsort(-patch[i], kind="stable")
            best, j = -np.inf, 0
            if exact is not None and exact[i].any():  # settled already: the best known, and not searched again
                best = float(patch[i, exact[i]].max())
                order = order[~exact[i, order]]
            while j < len(order) and patch[i, order[j]] >= best:
                block = order[j : j + _SETTLE_BLOCK]
                queries = embeddings[i, block]
                guess = int(nn[i, block[0]])
                if self.index.bounds:  # a pruned search: m*'s neighbours come apart
                    patch[i, block], nn[i, block] = self._exact_nearest(queries, patch[i, block], nn[i, block])
                    j += len(block)
                    best = max(best, float(patch[i, block].max()))
                    if exact is not None:
                        exact[i, block] = True
                    continue
                if j == 0 and self.n_reweight and guess not in known and guess not in self._neighbours:
                    found = self.exact.search(np.concatenate([queries, self.bank[guess][None]]), k)
                    known[guess], cand = found[-1], found[:-1, :_SEARCH_MARGIN]
                else:
                    cand = self.exact.search(queries, min(_SEARCH_MARGIN, len(self.bank)))
                dist = exact_distances(queries, self.bank, cand)
                pick = np.argmin(dist, axis=1)  # first of equal distances: candidates are nearest-first
                rows = np.arange(len(block))
                patch[i, block], nn[i, block] = dist[rows, pick], cand[rows, pick]
                if exact is not None:
                    exact[i, block] = True
                best = max(best, float(patch[i, block].max()))
                j += len(block)
        return known

    def score_candidates(self, embeddings: np.ndarray, candidates: np.ndarray) -> Scores:
        """Scores from one nearest-bank candidate per patch (found by an in-graph search).

        Each candidate's distance is recomputed exactly from ``q - m``; the most anomalous patch
        of each image is then searched again exactly, so its nearest patch m* (which the
        reweighting depends on) and the image score are those of :meth:`score`."""
        self._check(embeddings)
        b, p, d = embeddings.shape
        cand = np.asarray(candidates).reshape(b * p, 1).astype(np.int64)
        if cand.min() < 0 or cand.max() >= len(self.bank):
            raise ValueError(f"candidate bank indices outside 0..{len(self.bank) - 1}")
        patch = exact_distances(embeddings.reshape(b * p, d), self.bank, cand)[:, 0].reshape(b, p)
        nn = cand.reshape(b, p).copy()
        known = self._settle_worst(embeddings, patch, nn)  # the patches that decide are searched exactly
        worst = np.argmax(patch, axis=1)
        return self._image_scores(embeddings, patch, nn, worst, patch[np.arange(b), worst], known)

    def _image_scores(self, embeddings: np.ndarray, patch: np.ndarray, nn: np.ndarray, worst: np.ndarray,
                      s_star: np.ndarray, known: dict[int, np.ndarray] | None = None) -> Scores:
        """Image score: the worst patch's score s*, reweighted with eq. 7 when enabled."""
        if self.n_reweight:
            rows = np.arange(len(worst))
            s_star = s_star * self.reweight(embeddings[rows, worst], nn[rows, worst], known)
        return Scores(patch.astype(np.float32), s_star, nn)

    def _reweight_k(self) -> int:
        """Neighbours searched for each m*: itself (or an exact duplicate) and the n_reweight - 1 others."""
        return min(max(self.n_reweight + 1, _SEARCH_MARGIN), len(self.bank))

    def reweight(self, worst_patches: np.ndarray, m_star: np.ndarray,
                 known: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """1 - softmax weight of m* among N_b(m*), computed stably (max subtracted). ``known``: bank
        rows whose exact-search neighbours were already found (by :meth:`_settle_worst`); they and every
        m* searched here are kept for the scorer's later calls."""
        self._neighbours.update(known or {})
        m_star = np.asarray(m_star, np.int64)
        found = np.empty((len(m_star), self._reweight_k()), np.int64)
        todo = np.array([int(m) not in self._neighbours for m in m_star], bool)
        if todo.any():
            found[todo] = self.exact.search(self.bank[m_star[todo]], found.shape[1])
            self._neighbours.update(zip(m_star[todo].tolist(), found[todo]))
        for i in np.flatnonzero(~todo):
            found[i] = self._neighbours[int(m_star[i])]
        # N_b(m*) = m* itself first, then its nearest other bank patches (float32 search may have
        # placed an exact duplicate of m* first, so m* is put in front explicitly)
        support = np.empty((len(m_star), self.n_reweight), np.int64)
        for i, (m, row) in enumerate(zip(m_star, found)):
            others = row[row != m][: self.n_reweight - 1]
            support[i] = np.concatenate([[m], others])
        d = exact_distances(worst_patches, self.bank, support)
        z = d - d.max(axis=1, keepdims=True)
        e = np.exp(z)
        return 1.0 - e[:, 0] / e.sum(axis=1)
