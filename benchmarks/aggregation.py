"""The feature graph's aggregation: the folded 3x3 convolution against the taps form
(``patchcore.features``: a one-hot depthwise unfold, then each output's few weighted taps), in one run;
writes the section "The feature graph's aggregation" of BENCHMARKS.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/aggregation.py   # ~2 min on 2 cores

Both graphs are traced from the same effnet-lite0 feature model (its ImageNet weights, the preprocessing of
``benchmarks/fast_default.py``'s bundle: 320 x 320; the paper's aggregation at 1024 dims), the convolution form forced for the "before" side. Each is timed at batch 1 in
onnxruntime float32 and, where OpenVINO is installed, OpenVINO with bf16 inference precision (what
``--graph auto`` chose on the machines of "Fast by default"), interleaved round by round; the two graphs'
embeddings are compared on real bottle images.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import replace_section  # noqa: E402
from fast_default import DATA, cpu_name, ensure_bundle  # noqa: E402


def log(msg: str) -> None:
    print(f"[aggregation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(taps: bool, spec):
    """The effnet-lite0 PatchCore model with the taps form (``taps``) or the convolution forced, on the
    preprocessing ``spec`` (the default bundle's: 320 x 320)."""
    from patchcore import features
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore

    saved = features._taps_cheaper
    if not taps:
        features._taps_cheaper = lambda w, groups: False
    try:
        return PatchCore(PatchCoreConfig(backbone="effnet-lite0"), preprocess=spec)
    finally:
        features._taps_cheaper = saved


def aggregation_macs(model) -> tuple[int, int]:
    """Multiply-accumulates of the aggregation per image: the convolution's, and the taps form's (its
    taps times their weights; the unfold only copies)."""
    agg = model.feature_model.aggregator
    h, w = model.grid
    conv = taps = 0
    for i, (lo, hi) in enumerate(agg.row_ranges):
        c = agg.channels[i]
        cells = (h // 2**i) * (w // 2**i)  # each deeper layer on a grid half the size (stride 8, 16)
        conv += (hi - lo) * c * agg.patch**2 * cells
        taps += (hi - lo) * max(agg.taps[i], 1) * cells
    return conv, taps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()
    import onnxruntime as ort

    from patchcore.onnx_graph import trace_feature_graph
    from runtime.images import read_image
    from runtime.preprocess import prepare

    from runtime.bundle import read_bundle

    spec = read_bundle(ensure_bundle()).preprocess
    models = {"convolution": build(False, spec), "taps": build(True, spec)}
    assert models["taps"].feature_model.aggregator.taps and not any(models["convolution"].feature_model.aggregator.taps)
    tmp = Path(tempfile.mkdtemp())
    paths = {}
    for name, m in models.items():
        paths[name] = tmp / f"{name}.onnx"
        paths[name].write_bytes(trace_feature_graph(m).SerializeToString())
    files = sorted((DATA / "test").rglob("*.png"))[::8]
    x = np.concatenate([prepare(read_image(f), spec).inputs for f in files]).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sides = {}
    outs = {}
    for name, p in paths.items():
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        outs[name] = np.concatenate([sess.run(None, {"images": x[i : i + 1]})[0] for i in range(len(x))])
        sides[("onnxruntime fp32", name)] = (lambda s=sess: s.run(None, {"images": x[:1]}))
    try:
        import openvino as ov

        core = ov.Core()
        precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
        for name, p in paths.items():
            req = core.compile_model(str(p), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            sides[(f"OpenVINO {precision}", name)] = (lambda r=req: r.infer({0: x[:1]}))
    except ImportError:
        log("OpenVINO is not installed: onnxruntime only")
    times: dict = {k: [] for k in sides}
    keys = list(sides)
    for _ in range(2):  # warm-up
        for k in keys:
            sides[k]()
    for r in range(args.rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                sides[k]()
            times[k].append(1000 * (time.perf_counter() - t0) / args.repeat)
    diff = float(np.max(np.abs(outs["taps"] - outs["convolution"])))
    scale = float(np.max(np.abs(outs["convolution"])))
    conv_macs, tap_macs = aggregation_macs(models["taps"])
    finished = dt.datetime.now(dt.timezone.utc)
    lines = ["## The feature graph's aggregation", "",
             "_Written by `benchmarks/aggregation.py` from one run; every figure below comes from that run._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/aggregation.py --rounds "
             f"{args.rounds}` (the OpenBLAS overrides of these machines unset); {started:%Y-%m-%d %H:%M} to "
             f"{finished:%H:%M} UTC",
             f"- Machine: {cpu_name()}, Python {platform.python_version()}, onnxruntime {ort.__version__}; load "
             f"average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at the end",
             "- Graph: effnet-lite0's feature graph (ImageNet weights, 320 x 320 input, layers of 40 and 112 channels, "
             "the paper's aggregation to 1,024 dims), traced twice from the same model: the folded 3x3 convolution "
             "(before) and the taps form (after: a one-hot depthwise unfold, then each output's "
             f"{' and '.join(str(t) for t in models['taps'].feature_model.aggregator.taps)} weighted taps); batch 1, "
             f"{args.rounds} interleaved rounds of {args.repeat} runs, median ms per run", "",
             "| engine | convolution | taps | convolution / taps |", "|---|---|---|---|"]
    for engine in dict.fromkeys(k[0] for k in keys):
        a = statistics.median(times[(engine, "convolution")])
        b = statistics.median(times[(engine, "taps")])
        ratio = statistics.median([p / q for p, q in zip(times[(engine, "convolution")], times[(engine, "taps")])])
        lines.append(f"| {engine} | {a:.2f} | {b:.2f} | **{ratio:.2f}x** |")
    lines += ["",
              f"- The aggregation's multiply-accumulates per image: {conv_macs / 1e6:.0f} M as a convolution, "
              f"{tap_macs / 1e6:.1f} M as taps (each output reads a few taps; the unfold copies).",
              f"- Embeddings of {len(x)} bottle test images (every 8th), taps against convolution in onnxruntime "
              f"float32: largest difference {diff:.1e} on values up to {scale:.1f} ({diff / scale:.1e} of the "
              "largest): the same sums in another order.",
              "- wide_resnet50_2, resnet50 and resnet101 keep the grouped convolution (block-diagonal weights: one or "
              "two channels per output), which computes the same taps without copying them."]
    replace_section(ROOT / "BENCHMARKS.md", "aggregation", "\n".join(lines))
    log("wrote BENCHMARKS.md section aggregation")


if __name__ == "__main__":
    main()
