"""The exact float32 searches on a CPU: numpy's BLAS (:class:`NumpyIndex`) and onnxruntime
(:class:`OnnxExactIndex`, the search beside a reduced candidate step and ``--search auto``'s exact
side). Both rank the centred bank by ``|m|^2 - 2 q.m`` and return the nearest rows first."""

from __future__ import annotations

import numpy as np

from .base import centre_bank
from .onnx_graphs import GRAPH_EXACT, session


class NumpyIndex:
    """Brute-force search with one BLAS matrix product per chunk of queries.

    The bank is centred (its mean subtracted from bank and queries alike: distances do not
    change, but the norms in ``|q|^2 - 2 q.m + |m|^2`` shrink, and with them float32
    cancellation). On CPUs it beats faiss's flat index for PatchCore's shapes (hundreds of
    queries x thousands of rows; BENCHMARKS.md has the figures), since faiss spends the
    difference in its top-k selection.
    """

    name = "numpy"
    approximate = False
    bounds = False

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


class OnnxExactIndex:
    """The exact float32 search beside a reduced candidate step (few queries: each image's worst
    patches, m*'s neighbours): one Gemm + TopK in onnxruntime over the centred bank, on all cores
    without spinning, where numpy's BLAS had to be held to one thread (its threads spin after a call
    and would take the cores from the next feature run). Ranks like :class:`NumpyIndex`."""

    name = "onnxruntime-fp32"
    approximate = False
    bounds = False

    def __init__(self, bank: np.ndarray, threads: int | None = None):
        self.mean, self.bank = centre_bank(bank)
        self._neg_half_sq = (-0.5 * np.einsum("ij,ij->i", self.bank, self.bank, dtype=np.float64)).astype(np.float32)
        self._session = session(GRAPH_EXACT, threads)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        k = min(k, len(self.bank))
        if len(q) == 0:
            return np.empty((0, k), np.int64)
        feed = {"queries": q, "bank": self.bank, "neg_half_sq": self._neg_half_sq, "k": np.array([k], np.int64)}
        return self._session.run(["candidates"], feed)[0]
