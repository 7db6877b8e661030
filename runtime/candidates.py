"""Reduced-precision candidate steps of the bank search (``--search bf16`` / ``--search int8``).

Each index here returns ``candidates`` bank rows per query, found with a cheaper bank product than
float32; :class:`runtime.search.PatchScorer` recomputes their distances exactly from ``q - m`` and
settles every image's most anomalous patches with an exact search, so image scores, the patch that
decides them and the eq. 7 reweighting are the exact search's whatever the candidate step misses.
The candidate count only decides how often a pixel of the anomaly map keeps an over-estimate (the
recall BENCHMARKS.md measures; each export measures the count its bundle needs).

Both work on the centred bank (the mean subtracted from bank and queries, as the exact search does)
and rank rows by ``q . m - |m|^2 / 2`` (larger is nearer), which is the squared distance up to a
per-query constant.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from .search import centre_bank

DEFAULT_CANDIDATES = 8


class Bf16Index:
    """Candidates from one OpenVINO MatMul + TopK run with bf16 inference precision (AVX512-BF16 /
    AMX). Needs the ``[openvino]`` extra and a CPU with bf16 arithmetic."""

    def __init__(self, bank: np.ndarray, candidates: int = DEFAULT_CANDIDATES, threads: int | None = None):
        from .engines import DeviceUnavailableError
        from .engines.openvino_engine import openvino_status

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
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume the oldest x86 to be safe
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


GRAPH_INT8 = Path(__file__).resolve().parent / "graphs" / "bank_candidates_int8.onnx"


class Int8Index:
    """Candidates from an integer bank product in onnxruntime (the base install: no extra): the
    queries quantized to u8 per call (``DynamicQuantizeLinear``), the bank to s8 symmetric per row,
    ``MatMulInteger`` (VNNI where the CPU has it) + ``TopK``. The graph is a file of the package
    (``scripts/make_candidate_graph.py``) that takes the bank as an input, so the runtime needs no
    ``onnx`` package. Queries go in chunks of ``chunk`` rows so the (chunk x bank rows)
    intermediates stay small."""

    def __init__(self, bank: np.ndarray, candidates: int = DEFAULT_CANDIDATES, threads: int | None = None,
                 chunk: int = 1024):
        import onnxruntime as ort

        self.mean, centred = centre_bank(bank)
        self.rows, self.dim = centred.shape
        self.candidates = max(1, min(int(candidates), self.rows))
        self.levels = 63 if u8s8_saturates() else 127
        peak = np.abs(centred).max(axis=1)
        scale = np.where(peak > 0, peak / self.levels, 1.0).astype(np.float32)
        self._feed = {
            "bank8": np.ascontiguousarray(
                np.clip(np.rint(centred / scale[:, None]), -self.levels, self.levels).astype(np.int8).T),
            "bank_scale": scale,
            "half_sq": (0.5 * np.einsum("ij,ij->i", centred, centred)).astype(np.float32),
        }
        self.name = f"int8-onnxruntime+exact(c={self.candidates})"
        self.chunk = chunk
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(str(GRAPH_INT8), so, providers=["CPUExecutionProvider"])

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        k = min(max(k, self.candidates), self.rows)
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32) - self.mean)
        out = np.empty((len(q), k), np.int64)
        feed = {**self._feed, "k": np.array([k], np.int64)}
        for s in range(0, len(q), self.chunk):
            feed["queries"] = q[s : s + self.chunk]
            out[s : s + self.chunk] = self._session.run(["candidates"], feed)[0]
        return out


INDEXES = {"bf16": Bf16Index, "int8": Int8Index}
