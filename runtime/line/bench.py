"""Per-stage latency and throughput of a bundle on this machine.

For each batch size, ``warmup`` untimed runs are followed by ``repeat`` timed runs of the whole
pipeline on a batch of encoded images: decode (PNG/JPEG bytes -> RGB), preprocess, features
(the feature graph), search (nearest neighbours + reweighting) and post-process (anomaly maps,
verdicts). Reported per stage: the median over the timed runs, per batch and per image;
throughput = batch size / median total time.

Without ``--images`` the batch is made of synthetic PNGs at the bundle's canvas size (smooth
random noise), so decode time reflects that size; pass real images to include their size.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import onnxruntime
from rich.table import Table

from ..errors import UsageError
from ..images import decode_image
from .image_files import folder_images

STAGES = ("decode", "preprocess", "features", "search", "postprocess")
_SHORT = {"preprocess": "preproc", "postprocess": "postproc"}


def synthetic_images(size: tuple[int, int], n: int = 8, seed: int = 0) -> list[bytes]:
    """``n`` PNG-encoded smooth noise images of ``size`` (H, W)."""
    rng = np.random.default_rng(seed)
    out = []
    h, w = size
    for _ in range(n):
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", img)
        out.append(buf.tobytes())
    return out


def load_images(folder: Path, limit: int = 64) -> list[bytes]:
    if not folder.is_dir():
        raise UsageError(f"--images folder not found: {folder}")
    files = folder_images(folder, recursive=True)[:limit]
    if not files:
        raise UsageError(f"no image files in {folder}")
    return [f.read_bytes() for f in files]


def _median_ms(values: Sequence[float]) -> float:
    return round(1000.0 * statistics.median(values), 4)


def bench_batch(predictor, encoded: Sequence[bytes], batch: int, repeat: int, warmup: int) -> dict[str, Any]:
    """Median ms per batch and per image of ``repeat`` timed runs (after ``warmup``); the runs take the
    images in turn (run r the next ``batch`` of them, round the list), so a folder of images is timed
    as a whole, not its first few again and again (scoring time depends on the image: a defect's
    exact settling costs more than a good part's)."""
    runs: list[dict[str, float]] = []
    for r in range(warmup + repeat):
        start = max(r - warmup, 0) * batch
        data = [encoded[(start + i) % len(encoded)] for i in range(batch)]
        t0 = time.perf_counter()
        images = [decode_image(b, f"bench image {i}") for i, b in enumerate(data)]
        t1 = time.perf_counter()
        res = predictor.predict(images)
        t2 = time.perf_counter()
        if r >= warmup:
            stages = {"decode": t1 - t0, **{k: res.timings.get(k, 0.0) for k in STAGES[1:]}}
            stages["total"] = (t1 - t0) + (t2 - t1)
            runs.append(stages)
    per_batch = {k: _median_ms([run[k] for run in runs]) for k in (*STAGES, "total")}
    return {
        "batch": batch,
        "runs": repeat,
        "median_ms_per_batch": per_batch,
        "median_ms_per_image": {k: round(v / batch, 4) for k, v in per_batch.items()},
        "images_per_s": round(batch / (per_batch["total"] / 1000.0), 2) if per_batch["total"] > 0 else None,
    }


def run_bench(predictor, encoded: Sequence[bytes], batch_sizes: Sequence[int], repeat: int = 10,
              warmup: int = 2, progress=None) -> dict[str, Any]:
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UsageError("--batch-sizes must be positive integers, e.g. 1,8,32")
    if repeat < 1:
        raise UsageError("--repeat must be >= 1")
    results = []
    for b in batch_sizes:
        if progress:
            progress(b)
        results.append(bench_batch(predictor, encoded, b, repeat, warmup))
    env = environment(predictor)
    return {"bundle": env.pop("bundle"), "environment": env,
            "warmup": warmup, "results": results}


def environment(predictor) -> dict[str, Any]:
    env = {
        **predictor.info(),
        "bank": list(predictor.scorer.bank.shape),
        "input_size": list(predictor.input_size),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
    }
    try:
        import faiss  # optional: reported when installed

        env["faiss"] = faiss.__version__
    except ImportError:
        pass
    return env


def table(report: dict[str, Any]):
    """A rich table: per-image median ms per stage, batch total and throughput."""
    env = report["environment"]
    chosen = env.get("graph_choice")
    graph = f"graph {env.get('graph')} ({env.get('precision')})"
    if chosen:  # --graph auto timed the candidates at load
        graph += " by auto: " + ", ".join(f"{k} {v} ms" for k, v in chosen["ms"].items())
    t = Table(title=f"{report['bundle']}  ({env['engine']}, {graph}, search {env['search']}, {env['cpu_count']} CPUs)",
              caption="median ms per image over the timed runs; total is per batch")
    t.add_column("batch", justify="right")
    for s in STAGES:
        t.add_column(_SHORT.get(s, s), justify="right")
    t.add_column("ms/batch", justify="right")
    t.add_column("img/s", justify="right", style="bold")
    for r in report["results"]:
        per = r["median_ms_per_image"]
        t.add_row(str(r["batch"]), *(f"{per[s]:.2f}" for s in STAGES),
                  f"{r['median_ms_per_batch']['total']:.1f}", f"{r['images_per_s']:.1f}")
    return t
