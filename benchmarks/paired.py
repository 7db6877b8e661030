"""Paired latency: patchcore-rt's runtime and anomalib's exported ONNX timed in one process,
alternating image by image, so both see the same machine load (on a shared 2-core machine the
load changes by minutes, which the per-tool worker timings cannot cancel).

Both are onnxruntime CPU sessions with default threads, fed the same decoded RGB uint8 images.
anomalib's graph takes float [0, 1] images at their original size and resizes inside; ours is
preprocessed by ``runtime.preprocess`` inside ``Predictor.predict`` (timed).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def paired_latency(bundle: Path, anomalib_onnx: Path, paths: list[Path], warmup: int = 2) -> dict:
    import onnxruntime as ort

    from runtime.images import read_image
    from runtime.predictor import Predictor

    pred = Predictor(bundle, device="cpu")
    opts = ort.SessionOptions()
    # the two sessions share the cores: spinning threads of one would slow the other
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(anomalib_onnx), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else 1

    def theirs(im: np.ndarray):
        x = (im.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        return sess.run(None, {inp.name: np.ascontiguousarray(np.repeat(x, fixed, axis=0))})

    images = [read_image(p) for p in paths]
    for im in images[:warmup]:
        pred.predict([im])
        theirs(im)
    ours_ms, ours_b_ms, theirs_ms, stages = [], [], [], {}
    for i, im in enumerate(images):
        order = (0, 1, 2) if i % 2 == 0 else (2, 1, 0)
        for who in order:
            if who == 2:  # ours at anomalib's fixed batch size, per image
                t0 = time.perf_counter()
                pred.predict([im] * fixed)
                ours_b_ms.append((time.perf_counter() - t0) * 1000.0 / fixed)
                continue
            t0 = time.perf_counter()
            if who == 0:
                r = pred.predict([im])
                ours_ms.append((time.perf_counter() - t0) * 1000.0)
                for k, v in r.timings.items():
                    stages.setdefault(k, []).append(v * 1000.0)
            else:
                theirs(im)
                theirs_ms.append((time.perf_counter() - t0) * 1000.0 / fixed)
    return {
        "n": len(images),
        "ours_runtime_ms": statistics.median(ours_ms),
        "ours_runtime_ms_per_image_at_fixed_batch": statistics.median(ours_b_ms),
        "ours_stages_ms": {k: statistics.median(v) for k, v in stages.items()},
        "anomalib_onnx_ms_per_image": statistics.median(theirs_ms),
        "anomalib_onnx_fixed_batch": fixed,
        "search": pred.info()["search"],
    }
