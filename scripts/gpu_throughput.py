"""Throughput of a bundle on one onnxruntime device, and where the time goes.

For each precision the runtime runs the in-graph search graph ``scores_<precision>`` (the GPU
search path: features and nearest bank patch in one graph, the distances then rescored exactly
on the CPU). Per batch size:

- end to end: ``Predictor.predict`` on decoded uint8 frames, so preprocessing (resize, crop,
  normalise on the CPU), the graph (with its host-device copies), the exact rescoring and the
  anomaly maps are all inside; the runtime's own stage timings say where the time goes;
- graph alone: the scores graph and the plain feature graph with their input already on the
  device and their outputs left there (onnxruntime I/O binding): GPU time only, and their
  difference is the in-graph search;
- copies: the input's host-to-device copy and the outputs' device-to-host copy, timed alone.

A last figure, preprocessing on 1 thread and on every core, tells whether the CPU could feed the
GPU at all.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

BATCHES = (1, 8, 32, 64)
PRECISIONS = ("fp32", "fp16")


class OutOfTime(Exception):
    """The deadline passed; what was measured so far stands."""


def timed_runs(fn: Callable[[], object], deadline: float, warmup: int = 2, min_runs: int = 5,
               min_seconds: float = 0.5, max_runs: int = 50) -> list[float]:
    """Seconds of each timed call of ``fn`` after ``warmup`` untimed ones: at least ``min_runs``
    and ``min_seconds`` in all, at most ``max_runs``. Raises OutOfTime past ``deadline``."""
    for _ in range(warmup):
        if time.perf_counter() > deadline:
            raise OutOfTime
        fn()
    times: list[float] = []
    while len(times) < max_runs and (len(times) < min_runs or sum(times) < min_seconds):
        if time.perf_counter() > deadline:
            if times:
                break
            raise OutOfTime
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 4)


def _batch(images: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
    return [images[i % len(images)] for i in range(n)]


class GraphTimer:
    """One session run through I/O binding: input copied to the session's device once, outputs
    left on it, so a run measures the graph only."""

    def __init__(self, session, x: np.ndarray, device: str):
        import onnxruntime as ort

        self.ort, self.session, self.device = ort, session, device
        inp = session.get_inputs()[0]
        self.x = x.astype(np.float16 if "float16" in inp.type else np.float32, copy=False)
        self.binding = session.io_binding()
        self.x_dev = ort.OrtValue.ortvalue_from_numpy(self.x, device, 0)
        self.binding.bind_ortvalue_input(inp.name, self.x_dev)
        for o in session.get_outputs():
            self.binding.bind_output(o.name, device)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def copy_in(self) -> None:
        self.ort.OrtValue.ortvalue_from_numpy(self.x, self.device, 0)

    def copy_out(self) -> None:
        self.binding.copy_outputs_to_cpu()


def measure_batch(predictor, features_session, images: Sequence[np.ndarray], batch: int, deadline: float) -> dict:
    from runtime.preprocess import preprocess_batch

    frames = _batch(images, batch)
    stages: list[dict[str, float]] = []

    def end_to_end() -> None:
        stages.append(predictor.predict(frames).timings)

    totals = timed_runs(end_to_end, deadline, warmup=2)
    stages = stages[-len(totals):]
    for total, st in zip(totals, stages):  # Python between the stages (and the call itself)
        st["other"] = total - sum(st.values())
    per_image = {k: _ms(statistics.median(s[k] for s in stages) / batch) for k in stages[0]}
    med = statistics.median(totals)
    out = {"batch": batch, "end_to_end": {
        "images_per_s": round(batch / med, 1), "latency_ms_median": _ms(med),
        "latency_ms_p90": _ms(float(np.percentile(totals, 90))), "runs": len(totals), "ms_per_image": per_image}}

    device = "cuda" if predictor.engine.provider == "CUDAExecutionProvider" else "cpu"
    x = preprocess_batch(frames, predictor.spec)
    scores = GraphTimer(predictor.engine.session, x, device)
    feats = GraphTimer(features_session, x, device)
    t_scores = statistics.median(timed_runs(scores.run, deadline, warmup=2, min_runs=10))
    t_feats = statistics.median(timed_runs(feats.run, deadline, warmup=2, min_runs=10))
    t_in = statistics.median(timed_runs(scores.copy_in, deadline, warmup=1))
    scores.run()
    t_out = statistics.median(timed_runs(scores.copy_out, deadline, warmup=1))
    out["graph_alone"] = {"scores_images_per_s": round(batch / t_scores, 1), "scores_ms_per_batch": _ms(t_scores),
                          "features_images_per_s": round(batch / t_feats, 1), "features_ms_per_batch": _ms(t_feats),
                          "search_in_graph_ms_per_image": round(_ms(max(t_scores - t_feats, 0.0)) / batch, 4)}
    out["copies_ms_per_image"] = {"host_to_device_input": round(_ms(t_in) / batch, 4),
                                  "device_to_host_outputs": round(_ms(t_out) / batch, 4)}
    return out


def preprocess_scaling(images: Sequence[np.ndarray], spec, workers: int, batch: int = 64, deadline: float = float("inf")) -> float:
    """Images per second of ``preprocess_batch`` on ``batch`` frames split over ``workers`` threads
    (OpenCV releases the GIL in its resizes)."""
    from runtime.preprocess import preprocess_batch

    frames = _batch(images, batch)
    chunks = [frames[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        t = statistics.median(timed_runs(lambda: list(pool.map(lambda c: preprocess_batch(c, spec), chunks)),
                                         deadline, warmup=1, min_runs=3))
    return round(batch / t, 1)


def bound(run: dict) -> str:
    """Which stage of an end-to-end run takes the most time per image, in words."""
    per = run["end_to_end"]["ms_per_image"]
    names = {"preprocess": "preprocessing on the CPU", "features": "the graph with its host-device copies",
             "search": "the exact rescoring on the CPU", "postprocess": "the anomaly maps on the CPU",
             "other": "Python overhead"}
    stage = max(names, key=lambda k: per.get(k, 0.0))
    total = sum(max(v, 0.0) for v in per.values())
    return f"{names[stage]}: {per[stage]:.3f} of {total:.3f} ms per image"


def measure(bundle: str | Path, images: Sequence[np.ndarray], device: str = "cuda", batches=BATCHES,
            precisions=PRECISIONS, deadline: float = float("inf"), log: Callable[[str], None] = print) -> dict:
    """Every precision x batch of ``bundle`` on onnxruntime ``device``; stops cleanly at ``deadline``
    (``complete`` says whether everything was measured)."""
    from runtime.engines import OnnxEngine
    from runtime.predictor import Predictor

    h, w = images[0].shape[:2]
    result: dict = {"input": f"{len(images)} decoded {h}x{w} RGB uint8 frames", "device": device,
                    "cpu_count": os.cpu_count(), "runs": [], "complete": False}
    try:
        for p in precisions:
            predictor = Predictor(bundle, device=device, graph=f"scores_{p}", search="numpy")
            features = OnnxEngine(predictor.bundle.path(predictor.bundle.graph_info(f"features_{p}")["file"]),
                                  device=device)
            result.setdefault("bank", list(predictor.scorer.bank.shape))
            result["engine"] = predictor.engine.name
            for b in batches:
                log(f"throughput {Path(bundle).name} {p} batch {b}")
                result["runs"].append({"precision": p, **measure_batch(predictor, features.session, images, b, deadline)})
        spec = predictor.spec
        result["preprocess_images_per_s"] = {"1 thread": preprocess_scaling(images, spec, 1, deadline=deadline),
                                             f"{os.cpu_count()} threads": preprocess_scaling(
                                                 images, spec, os.cpu_count() or 1, deadline=deadline)}
        result["complete"] = True
    except OutOfTime:
        result["stopped"] = "time budget"
    if result["runs"]:
        best = max(result["runs"], key=lambda r: r["end_to_end"]["images_per_s"])
        result["best_end_to_end"] = {"precision": best["precision"], "batch": best["batch"],
                                     "images_per_s": best["end_to_end"]["images_per_s"], "bound": bound(best)}
        g = max(result["runs"], key=lambda r: r["graph_alone"]["scores_images_per_s"])
        result["best_graph_alone"] = {"precision": g["precision"], "batch": g["batch"],
                                      "images_per_s": g["graph_alone"]["scores_images_per_s"]}
    return result
