"""Nearest-neighbour scoring against the memory bank: the same code for fit, eval and runtime.

faiss (or numpy) finds candidate neighbours; the distances of the candidates are then recomputed
exactly from ``q - m`` in float64. faiss's flat L2 search computes ``|q|^2 - 2 q.m + |m|^2`` in
float32, which loses digits when features have large norms: two runs whose features agree to
6e-7 relative gave scores 1.2e-3 apart. The recomputation keeps scores stable to the features'
own precision, which the export parity tolerances rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Candidates fetched per query before exact re-ranking: a margin for near-ties that float32
# search may order wrongly (the exact distances then pick the true nearest of them).
_SEARCH_MARGIN = 2
# Patches searched exactly at a time while settling an image's worst patch (see PatchScorer._settle_worst).
_SETTLE_BLOCK = 4
# Relative margin of float32 squared distances (sums of 1,024 float32 squares agree with the float64 sum
# to ~1e-5) within which a pair may still be the nearest and is recomputed exactly
_PAIR_MARGIN = 1e-3


class NeighbourIndex(Protocol):
    """A memory bank that answers k-nearest-neighbour queries (squared L2, approximate order)."""

    name: str

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(Q, D) float32 -> (Q, k) int64 indices into the bank, nearest first."""


def centre_bank(bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bank's mean (float32) and the bank minus it: distances do not change, but the norms in
    ``|q|^2 - 2 q.m + |m|^2`` shrink, and with them float32 cancellation. Every index searches this."""
    bank = np.asarray(bank, dtype=np.float32)
    mean = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
    return mean, np.ascontiguousarray(bank - mean)


class NumpyIndex:
    """Brute-force search with one BLAS matrix product per chunk of queries.

    The bank is centred (its mean subtracted from bank and queries alike: distances do not
    change, but the norms in ``|q|^2 - 2 q.m + |m|^2`` shrink, and with them float32
    cancellation). On CPUs it beats faiss's flat index for PatchCore's shapes (hundreds of
    queries x thousands of rows; BENCHMARKS.md has the figures), since faiss spends the
    difference in its top-k selection.
    """

    name = "numpy"

    def __init__(self, bank: np.ndarray, chunk: int = 2048):
        self.mean, self.bank = centre_bank(bank)
        self.bank_sq = np.einsum("ij,ij->i", self.bank, self.bank)
        self.chunk = chunk

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32) - self.mean
        k = min(k, len(self.bank))
        out = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), self.chunk):
            d = q[s : s + self.chunk] @ self.bank.T
            d *= -2.0
            d += self.bank_sq  # |q|^2 is constant per row: not needed for the ranking
            if k <= 4:  # a few argmin passes beat argpartition + sort for small k
                rows = np.arange(len(d))
                for j in range(k):
                    best = d.argmin(axis=1)
                    out[s : s + len(d), j] = best
                    d[rows, best] = np.inf
                continue
            part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.broadcast_to(
                np.arange(d.shape[1]), d.shape).copy()
            order = np.take_along_axis(d, part, 1).argsort(axis=1, kind="stable")
            out[s : s + len(d)] = np.take_along_axis(part, order, 1)
        return out


class FaissIndex:
    """faiss IndexFlatL2, moved to all GPUs when this faiss build has GPU support."""

    def __init__(self, bank: np.ndarray, device: str = "auto", threads: int | None = None):
        import faiss  # imported here so numpy-only installs still import this module

        if threads:
            faiss.omp_set_num_threads(threads)
        # centred: faiss's float32 |q|^2 - 2 q.m + |m|^2 loses the ranking otherwise
        self.mean, bank = centre_bank(bank)
        index = faiss.IndexFlatL2(bank.shape[1])
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if device == "cuda" and ngpu == 0:
            raise RuntimeError("faiss GPU search requested but this faiss build sees no GPU (install faiss-gpu)")
        if device in ("auto", "cuda") and ngpu > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            self.name = "faiss-gpu"
        else:
            self.name = "faiss-cpu"
        index.add(bank)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        _, idx = self.index.search(q, k)
        return idx.astype(np.int64)


def _faiss_gpus() -> int:
    try:
        import faiss  # optional: faiss-cpu or faiss-gpu, or neither
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def make_index(bank: np.ndarray, backend: str = "auto", device: str = "auto",
               candidates: int | None = None, components: int | None = None, choice: dict | None = None,
               exact: bool = False) -> NeighbourIndex:
    """``backend``: ``faiss``, ``numpy``, ``bf16`` or ``int8`` (a reduced-precision candidate step of
    :mod:`runtime.candidates`, ``candidates`` per query; int8 on ``components`` principal components
    when given) or ``auto``: faiss on a GPU when this faiss build sees one (and ``device`` allows it),
    else on a CPU the int8 step where this CPU runs it fast, measured at load, or the exact search in
    onnxruntime (:func:`runtime.candidates.choose_cpu_index`; its measurement goes into ``choice``).
    ``exact``: ``auto`` never picks a reduced candidate step (faiss on a GPU, else numpy): fitting,
    evaluation and calibration read whole maps, pixel metrics included, and must be the exact search's."""
    from .candidates import DEFAULT_CANDIDATES, INDEXES, choose_cpu_index

    if backend not in ("auto", "faiss", "numpy", *INDEXES):
        raise ValueError(f"unknown search backend {backend!r}; choose auto, faiss, numpy, {', '.join(INDEXES)}")
    if backend == "int8":
        return INDEXES[backend](bank, candidates or DEFAULT_CANDIDATES, components=components)
    if backend in INDEXES:
        return INDEXES[backend](bank, candidates or DEFAULT_CANDIDATES)
    if backend == "faiss" or (backend == "auto" and device != "cpu" and _faiss_gpus() > 0):
        try:
            return FaissIndex(bank, device=device)
        except ImportError:
            raise RuntimeError("faiss is not installed: pip install faiss-cpu (or faiss-gpu)") from None
    if backend == "auto" and not exact:
        index, facts = choose_cpu_index(bank, candidates or DEFAULT_CANDIDATES, components)
        if choice is not None:
            choice.update(facts)
        return index
    return NumpyIndex(bank)


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
    squared differences are summed in float64 (1.8x faster than :func:`exact_distances` over all
    candidates, measured on 784 queries x 8 candidates x 1024 dims)."""
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
    patch's exact score. 1.7x faster than :func:`nearest_candidate`'s float64 sums (bottle, 1,600
    queries x 2 candidates x 1,024 dims); the patches whose values are shown are measured again
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
    """

    def __init__(self, bank: np.ndarray, n_reweight: int = 3, backend: str = "auto", device: str = "auto",
                 candidates: int | None = None, components: int | None = None, exact: bool = False):
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"memory bank must be a non-empty (M, D) array, got {bank.shape}")
        if n_reweight < 0 or n_reweight == 1:
            raise ValueError("n_reweight must be 0 (off) or >= 2")
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        b = min(n_reweight, len(self.bank))
        self.n_reweight = b if b >= 2 else 0  # a one-row bank cannot reweight (the weight would be 0)
        self.choice: dict = {}  # --search auto: what it measured on this CPU and chose
        # bank row -> its exact-search neighbours (eq. 7's N_b(m*)): a fact of the bank alone, which a
        # scorer never changes, so each m* is searched once (~1 ms of the bank product per image)
        self._neighbours: dict[int, np.ndarray] = {}
        self.index = make_index(self.bank, backend=backend, device=device, candidates=candidates,
                                components=components, choice=self.choice, exact=exact)
        # a reduced-precision candidate step: the worst patches and the reweighting then use an exact
        # float32 search beside it, so image scores stay the exact search's
        self.approximate = hasattr(self.index, "candidates")
        if self.approximate:
            from .candidates import OnnxExactIndex

            self.exact = OnnxExactIndex(self.bank)
        else:
            self.exact = self.index
        # rows fetched per query and rescored: a margin for float32 near-ties, or the reduced-precision
        # search's candidate count (its bounds need no margin: the settling makes shown values exact)
        self.margin = self.index.candidates if self.approximate else _SEARCH_MARGIN

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
        the only ones searched (:meth:`Int8Index.within`);
        else one float32 product over the whole bank ranks them."""
        if getattr(self.index, "bounds", False):
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
                if getattr(self.index, "bounds", False):  # a pruned search: m*'s neighbours come apart
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
