"""Bundle -> scores: preprocess, feature engine, nearest-neighbour scoring, anomaly maps.

With a ``features_*`` graph the engine returns patch embeddings and :class:`PatchScorer` searches
the memory bank. With a ``scores_*`` graph the engine also returns each patch's nearest bank
index (found in-graph, in float32 with the |q|^2 - 2 q.m + |m|^2 expansion); the distance to that
candidate is then recomputed exactly from ``q - m``, and the most anomalous patch of each image
is searched again exactly, so its nearest patch m* (which the reweighting depends on) and the
image score are those of the CPU path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .bundle import Bundle, BundleError, read_bundle
from .engines import FeatureEngine, OnnxEngine
from .postprocess import anomaly_maps, normalise_scores
from .preprocess import preprocess_batch
from .search import PatchScorer, Scores, exact_distances


@dataclass
class PredictResult:
    image_scores: np.ndarray  # (B,)
    patch_scores: np.ndarray  # (B, h, w)
    maps: np.ndarray  # (B, H, W)
    normalised: np.ndarray | None  # (B,) in [0, 1], 0.5 at the threshold
    verdicts: np.ndarray | None  # (B,) bool, True = anomalous
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage for this batch


class Predictor:
    """Scores images with a bundle. ``graph`` picks the bundle's feature graph (``features_fp32``
    by default, ``features_fp16``); ``search`` is ``auto``, ``faiss`` or ``numpy``."""

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", graph: str = "features_fp32",
                 search: str = "auto", engine: FeatureEngine | None = None, threads: int | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        m = self.bundle.manifest
        self.spec = self.bundle.preprocess
        self.grid = tuple(m["features"]["grid"])
        self.input_size = tuple(m["features"]["input_size"])
        self.blur_sigma = float(m["scoring"]["blur_sigma"])
        self.threshold = m["threshold"]["value"]
        self.scale = m["threshold"]["scale"]
        info = self.bundle.graph_info(graph)  # BundleError naming the graphs present when absent
        self.graph = graph
        self.in_graph_search = info.get("kind") == "scores"
        if engine is None:
            engine = OnnxEngine(self.bundle.path(info["file"]), device=device, threads=threads)
        if self.in_graph_search and not hasattr(engine, "run_outputs"):
            raise BundleError(f"graph {graph!r} outputs nearest-neighbour indices, but engine {engine.name} "
                              "cannot return them")
        self.engine = engine
        bank = self.bundle.memory_bank().astype(np.float32)
        self.scorer = PatchScorer(bank, n_reweight=m["scoring"]["n_reweight"], backend=search,
                                  device="cuda" if device in ("cuda", "tensorrt") else "auto")

    def info(self) -> dict:
        search = "in-graph + exact rescoring" if self.in_graph_search else self.scorer.backend
        return {"bundle": self.bundle.bundle_id, "engine": self.engine.name, "graph": self.graph, "search": search}

    def _score_candidates(self, emb: np.ndarray, nn_index: np.ndarray) -> Scores:
        """Scores from the graph's nearest-bank candidates, distances recomputed exactly."""
        sc = self.scorer
        b, p, d = emb.shape
        flat = emb.reshape(b * p, d)
        cand = nn_index.reshape(b * p, 1).astype(np.int64)
        if cand.min() < 0 or cand.max() >= len(sc.bank):
            raise BundleError(f"graph {self.graph!r} returned bank indices outside 0..{len(sc.bank) - 1}")
        patch = exact_distances(flat, sc.bank, cand)[:, 0].reshape(b, p)
        nn = cand.reshape(b, p)
        rows = np.arange(b)
        worst = np.argmax(patch, axis=1)
        s_star, m_star = sc.nearest(emb[rows, worst])  # exact search for the patch that decides
        patch[rows, worst] = s_star
        nn[rows, worst] = m_star
        if sc.n_reweight:
            s_star = s_star * sc.reweight(emb[rows, worst], m_star)
        return Scores(patch.astype(np.float32), s_star, nn)

    def predict(self, images: Sequence[np.ndarray]) -> PredictResult:
        """RGB uint8 images -> scores, maps and verdicts."""
        t0 = time.perf_counter()
        x = preprocess_batch(images, self.spec)
        t1 = time.perf_counter()
        if self.in_graph_search:
            outs = self.engine.run_outputs(x)
            emb = outs["embeddings"]
            t2 = time.perf_counter()
            s = self._score_candidates(emb, outs["nn_index"])
        else:
            emb = self.engine.run(x)
            t2 = time.perf_counter()
            s = self.scorer.score(emb)
        t3 = time.perf_counter()
        patch = s.patch_scores.reshape(len(emb), *self.grid)
        maps = anomaly_maps(patch, self.input_size, self.blur_sigma)
        normalised = verdicts = None
        if self.threshold is not None:
            verdicts = s.image_scores >= self.threshold
            normalised = normalise_scores(s.image_scores, self.threshold, self.scale)
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "features": t2 - t1, "search": t3 - t2, "postprocess": t4 - t3}
        return PredictResult(s.image_scores, patch, maps, normalised, verdicts, timings)
