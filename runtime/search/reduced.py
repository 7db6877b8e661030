"""Reduced-precision candidate steps of the bank search (``--search bf16`` / ``--search int8``).

Each index here returns ``candidates`` bank rows per query, found with a cheaper bank product than
float32; :class:`runtime.search.scorer.PatchScorer` bounds their distances from ``q - m`` (float32 sums
with a proven slack: :func:`runtime.search.distances.candidate_bounds`) and settles exactly every
image's most anomalous patches and the patches its shown maps read, so image scores, the patch that
decides them, the eq. 7 reweighting and the maps at the map level are the exact search's whatever the
candidate step misses.
The candidate count only decides how often a pixel of the anomaly map keeps an over-estimate (the
recall BENCHMARKS.md measures; each export measures the count its bundle needs).

Both work on the centred bank (the mean subtracted from bank and queries, as the exact search does)
and rank rows by ``q . m - |m|^2 / 2`` (larger is nearer), which is the squared distance up to a
per-query constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engines.base import DeviceUnavailableError
from ..machine import cpu_flags, is_x86
from .base import DEFAULT_CANDIDATES, centre_bank
from .onnx_graphs import GRAPH_BOUND, GRAPH_INT8, GRAPH_INT8_PROJECTED, session


class Bf16Index:
    """Candidates from one OpenVINO MatMul + TopK run with bf16 inference precision (AVX512-BF16 /
    AMX). Needs the ``[openvino]`` extra and a CPU with bf16 arithmetic."""

    approximate = True
    bounds = False

    def __init__(self, bank: np.ndarray, candidates: int = DEFAULT_CANDIDATES, threads: int | None = None):
        from ..engines.openvino_engine import openvino_status

        ok, reason = openvino_status()
        if not ok:
            raise DeviceUnavailableError(f"--search bf16: {reason}")
        import openvino as ov
        import openvino.opset13 as ops

        core = ov.Core()
        if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise DeviceUnavailableError("--search bf16: this CPU has no bf16 arithmetic")
        self.mean, centred = centre_bank(bank)
        self.rows = len(centred)
        self.candidates = max(1, min(int(candidates), self.rows))
        self.name = f"bf16-openvino+exact(c={self.candidates})"
        self._compiled: dict[int, Any] = {}
        self._core, self._ops, self._ov = core, ops, ov
        self._bank_t = np.ascontiguousarray(centred.T)
        self._half_sq = 0.5 * np.einsum("ij,ij->i", centred, centred)
        self._threads = threads

    def _request(self, k: int):
        if k not in self._compiled:
            ops, ov = self._ops, self._ov
            q = ops.parameter([-1, self._bank_t.shape[0]], ov.Type.f32, name="queries")
            dot = ops.matmul(q, ops.constant(self._bank_t), False, False)
            closeness = ops.subtract(dot, ops.constant(self._half_sq[None, :]))
            top = ops.topk(closeness, ops.constant(np.int64(k)), axis=1, mode="max", sort="value",
                           index_element_type=ov.Type.i64)
            model = ov.Model([top.output(1)], [q], "bank_candidates")
            config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
            if self._threads:
                config["INFERENCE_NUM_THREADS"] = int(self._threads)
            self._compiled[k] = self._core.compile_model(model, "CPU", config).create_infer_request()
        return self._compiled[k]

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        k = min(max(k, self.candidates), self.rows)
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        if len(q) == 0:
            return np.empty((0, k), np.int64)
        return np.asarray(self._request(k).infer({0: q})[0], dtype=np.int64)


def u8s8_saturates() -> bool:
    """Whether this CPU's u8 x s8 integer products may saturate: x86 CPUs without VNNI add pairs of
    them in int16 (onnxruntime's documented u8s8 caveat), so the bank then keeps 7 bits."""
    if not is_x86():
        return False
    flags = cpu_flags()
    if flags is None:  # not Linux: assume the oldest x86 to be safe
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


_BLOCK = 32  # bank rows per block of the int8 graph's two-stage top k
_CHUNK_VALUES = 1 << 24  # queries per int8 graph run: (queries x bank rows) closeness values <= 64 MB
_PAD = np.float32(-3e38)  # closeness of padding rows: never among the candidates
# Float32 slack of the lower bound, relative to |q|^2 + the largest |m|^2: its terms are formed from
# float32 norms and products (the Gemm expansion, |q|^2 - |P q|^2), each within a few 1e-7 of those
_BOUND_SLACK = 1e-3
_BOUND_FACTOR = 2


def principal_axes(centred: np.ndarray) -> np.ndarray:
    """(D, D) float64 eigenvectors of a centred bank's D x D scatter matrix, leading first (one
    ``eigh``: the slow part of loading an int8 search, shared by its product and its bound)."""
    _, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))  # ascending eigenvalues
    return vectors[:, ::-1]


def principal_components(centred: np.ndarray, count: int, axes: np.ndarray | None = None) -> np.ndarray:
    """(D, count) float32 orthonormal columns spanning the ``count`` leading principal directions of a
    centred bank (eigenvectors of its D x D scatter matrix), turned by a fixed random rotation.

    The rotation spreads each row's energy over the kept coordinates: in the principal axes
    themselves the first component dwarfs the rest, and a per-row int8 scale set by it quantizes
    the others to a few levels, and the recall drops (BENCHMARKS.md measures both).
    ``axes``: :func:`principal_axes` of the bank, when already computed."""
    leading = (principal_axes(centred) if axes is None else axes)[:, :count]
    turn, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((count, count)))
    return np.ascontiguousarray(leading @ turn, dtype=np.float32)


class Int8Index:
    """Candidates from an integer bank product in onnxruntime (the base install: no extra): the
    queries quantized to u8 per call and multiplied with the bank in s8, symmetric per row
    (``DynamicQuantizeMatMul``: VNNI where the CPU has it, scales and ``-|m|^2/2`` applied in the same
    kernel), then a two-stage top k over blocks of bank rows. The graph is a file of the package
    (``scripts/make_candidate_graph.py``) that takes the bank as an input, so the runtime needs no
    ``onnx`` package. Queries go in chunks of at most ``chunk`` rows, fewer for a bank so large that
    the (chunk x bank rows) intermediates would pass 64 MB.

    ``components`` r < D: the product runs on the bank's r leading principal components (queries
    projected in the graph), ranking by ``q_r . m_r - |m|^2 / 2`` with the full norms: it drops only
    ``q . m`` along the directions the bank barely varies in, and costs r/D of the full product.
    The export measures the r and candidate count a bundle needs (``reduced_precision.int8_search``)."""

    approximate = True
    bounds = False  # on principal components: True, :meth:`within` can prune the exact search

    def __init__(self, bank: np.ndarray, candidates: int = DEFAULT_CANDIDATES, threads: int | None = None,
                 chunk: int = 1024, components: int | None = None):
        self.mean, centred = centre_bank(bank)
        self.rows, self.dim = centred.shape
        self.candidates = max(1, min(int(candidates), self.rows))
        self.components = int(components) if components and 0 < int(components) < self.dim else None
        self.levels = 63 if u8s8_saturates() else 127
        feed: dict[str, np.ndarray] = {}
        stored = centred
        axes = principal_axes(centred) if self.components else None
        if self.components:
            turn = principal_components(centred, self.components, axes)
            stored = centred @ turn
            step = np.abs(turn).max(axis=0) / 127.0
            feed["components8"] = np.clip(np.rint(turn / step), -127, 127).astype(np.int8)
            feed["components_scale"] = step.astype(np.float32)
            stored = centred @ (feed["components8"] * feed["components_scale"])  # what the graph projects on
        peak = np.abs(stored).max(axis=1)
        scale = np.where(peak > 0, peak / self.levels, 1.0).astype(np.float32)
        padded = -(-self.rows // _BLOCK) * _BLOCK  # padding rows: zero bank, closeness -3e38
        bank8 = np.zeros((stored.shape[1], padded), np.int8)
        bank8[:, : self.rows] = np.clip(np.rint(stored / scale[:, None]), -self.levels, self.levels).T
        self._feed = {
            **feed,
            "bank8": bank8,
            "bank_scale": np.concatenate([scale, np.ones(padded - self.rows, np.float32)]),
            "neg_half_sq": np.concatenate([-0.5 * np.einsum("ij,ij->i", centred, centred, dtype=np.float64),
                                           np.full(padded - self.rows, _PAD)]).astype(np.float32),
        }
        kept = f", {self.components} of {self.dim} components" if self.components else ""
        self.name = f"int8-onnxruntime+exact(c={self.candidates}{kept})"
        self.chunk = max(16, min(chunk, _CHUNK_VALUES // padded))  # a large bank: fewer queries per run
        self._session = session(GRAPH_INT8_PROJECTED if self.components else GRAPH_INT8, threads)
        self._bound = None
        if self.components:
            # the bound on twice the components (at most all): it prunes far more rows than on the
            # product's own components, which the search then skips, for twice a small product
            basis = principal_components(centred, min(self.dim, _BOUND_FACTOR * self.components), axes)
            kept = (centred @ basis).astype(np.float32)
            sq = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
            perp = np.sqrt(np.maximum(sq - np.einsum("ij,ij->i", kept, kept, dtype=np.float64), 0.0))
            self._bound_feed = {"components": basis, "bank_sq": sq.astype(np.float32),
                                "bank_aug": np.ascontiguousarray(np.hstack([kept, perp[:, None].astype(np.float32)]))}
            self._max_sq = float(sq.max())
            self._bound = session(GRAPH_BOUND, threads)
            self._bound_chunk = max(16, _CHUNK_VALUES // self.rows)
            self.bounds = True

    def within(self, queries: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bank rows that may lie within ``upper`` (Q,) of each query: pairs (query, row), sorted by
        query then row. Every row nearer than ``upper`` is among them: its lower bound
        ``|P q - P m|^2 + (|q - P q| - |m - P m|)^2`` (P: the projection on the components) is at
        most its squared distance, and the bound is compared with a float32 slack. With ``upper`` a
        distance to a real bank row, each query keeps at least that row, and the nearest of the pairs
        (by exact distance) is the nearest of the whole bank."""
        qi, mi = [], []
        for s, inside in self.inside(queries, upper):
            a, b = np.divmod(np.flatnonzero(inside), inside.shape[1])  # a 2-D np.nonzero builds both index arrays row by row
            qi.append(a + s)
            mi.append(b)
        return np.concatenate(qi).astype(np.int64), np.concatenate(mi).astype(np.int64)

    def inside(self, queries: np.ndarray, upper: np.ndarray):
        """The bound graph's masks for :meth:`within`: ``(first query, (queries, rows) bool)`` per chunk."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        upper = np.asarray(upper, np.float64)
        q_sq = np.einsum("ij,ij->i", q, q, dtype=np.float64)
        limit = (upper * upper + _BOUND_SLACK * (q_sq + self._max_sq)).astype(np.float32)[:, None]
        for s in range(0, len(q), self._bound_chunk):
            yield s, self._bound.run(["inside"], {**self._bound_feed, "queries": q[s : s + self._bound_chunk],
                                                  "upper": limit[s : s + self._bound_chunk]})[0]

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        k = min(max(k, self.candidates), self.rows)
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        out = np.empty((len(q), k), np.int64)
        # the two-stage top k needs k blocks; a bank of fewer than k blocks takes one row per block
        block = _BLOCK if self._feed["bank8"].shape[1] // _BLOCK >= k else 1
        feed = {**self._feed, "k": np.array([k], np.int64), "block": np.array([block], np.int64)}
        for s in range(0, len(q), self.chunk):
            feed["queries"] = q[s : s + self.chunk]
            out[s : s + self.chunk] = self._session.run(["candidates"], feed)[0]
        return out
