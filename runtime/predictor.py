"""Bundle -> scores: preprocess, feature engine, nearest-neighbour scoring, anomaly maps."""

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
from .search import PatchScorer


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
        if engine is None:
            path = self.bundle.graph(graph)
            if path is None:
                have = ", ".join(sorted(m.get("graphs", {}))) or "none"
                raise BundleError(f"{self.bundle.root}: bundle has no graph {graph!r} (graphs: {have}); run export first")
            engine = OnnxEngine(path, device=device, threads=threads)
        self.engine = engine
        bank = self.bundle.memory_bank().astype(np.float32)
        self.scorer = PatchScorer(bank, n_reweight=m["scoring"]["n_reweight"], backend=search,
                                  device="cuda" if device in ("cuda", "tensorrt") else "auto")

    def info(self) -> dict:
        return {"bundle": self.bundle.bundle_id, "engine": self.engine.name, "search": self.scorer.backend}

    def predict(self, images: Sequence[np.ndarray]) -> PredictResult:
        """RGB uint8 images -> scores, maps and verdicts."""
        t0 = time.perf_counter()
        x = preprocess_batch(images, self.spec)
        t1 = time.perf_counter()
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
