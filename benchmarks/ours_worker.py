"""patchcore-rt side of the benchmark, run in its own process (so its peak RSS is its own).

Fits on the class's train/good images, scores the whole test set with the PyTorch path and with
the runtime (exported bundle, onnxruntime CPU), times batch-1 latency and batched throughput,
and writes ``result.json`` plus ``preds_<path>.npz`` (image scores, 224x224 maps) to ``--out``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import dir_size_mb, latency_ms, peak_rss_mb, throughput, worker_parser, write_json  # noqa: E402


def other_runtime_paths(model, predictor, out: Path, images: list, batches: list[int], repeats: int) -> dict:
    """The runtime's other two ways to search: faiss instead of numpy, and the single graph
    (features and nearest-neighbour search in one ONNX graph, ``scores_fp32``, exported to its own
    bundle so the size table stays the feature-graph bundle's)."""
    from export.onnx_export import export_bundle
    from runtime.predictor import Predictor

    single = out / "bundle_single"
    export_bundle(model, single, name="bench-single-graph", fp16=False, scoring=True)
    paths = {"runtime_faiss": Predictor(out / "bundle", device="cpu", search="faiss"),
             "runtime_single_graph": Predictor(single, device="cpu", graph="scores_fp32")}
    ref = predictor.predict(images).image_scores
    res = {}
    for key, p in paths.items():
        diff = float(np.abs(p.predict(images).image_scores - ref).max() / np.abs(ref).max())
        res[key] = {"batch1": latency_ms(lambda im: p.predict([im]), images), "info": p.info(),
                    "max_rel_diff_vs_numpy_search": diff,
                    **{f"batch{b}": throughput(lambda xs: p.predict(xs), images, b, repeats) for b in batches}}
    return res


def spin_ab(predictor, bundle: Path, images: list) -> dict:
    """The runtime with onnxruntime's default thread spinning against ours (no spinning).

    Timed in blocks, A B B A (each block: 2 warm-up calls, then every image), never interleaved:
    a spinning session's threads would otherwise slow whichever session runs next."""
    from runtime.engines import OnnxEngine
    from runtime.predictor import Predictor

    info = predictor.bundle.graph_info(predictor.graph)
    runs = {"no_spin": predictor,
            "spin": Predictor(bundle, device="cpu", engine=OnnxEngine(bundle / info["file"], device="cpu", spin=True))}
    totals: dict[str, list[float]] = {k: [] for k in runs}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in runs}
    for k in ("no_spin", "spin", "spin", "no_spin"):
        for im in images[:2]:
            runs[k].predict([im])
        for im in images:
            t0 = time.perf_counter()
            r = runs[k].predict([im])
            totals[k].append((time.perf_counter() - t0) * 1000.0)
            for s, v in r.timings.items():
                stages[k].setdefault(s, []).append(v * 1000.0)
    return {k: {"median_ms": float(np.median(totals[k])), "p90_ms": float(np.percentile(totals[k], 90)),
                "stages_ms": {s: float(np.median(v)) for s, v in stages[k].items()}, "blocks": "ABBA"} for k in runs}


def main(argv=None) -> int:
    ap = worker_parser()
    ap.add_argument("--backbone", default="wrn50")
    ap.add_argument("--target-dim", type=int, default=1024, help="patch embedding dimension (the paper's 1024)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from export.onnx_export import export_bundle
    from patchcore.data import load_class
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore
    from runtime.images import read_image
    from runtime.predictor import Predictor

    res: dict = {"tool": "patchcore-rt", "backbone": a.backbone, "coreset_ratio": a.coreset, "target_dim": a.target_dim,
                 "torch_threads": torch.get_num_threads()}
    ds = load_class(a.data)
    if a.max_train:
        ds.train = ds.train[: a.max_train]
    if a.max_test:
        ds.test = [s for s in ds.test if s.label == 0][: a.max_test] + [s for s in ds.test if s.label == 1][: a.max_test]
    # holdout=0: fit on all train/good images, as anomalib does, so both banks come from the
    # same patches and the same ratio gives the same bank size.
    cfg = PatchCoreConfig(backbone=a.backbone, weights=a.weights, coreset_ratio=a.coreset, holdout=0.0,
                          device="cpu", resize=256, crop=224, target_dim=a.target_dim)
    model = PatchCore(cfg)  # builds the trunk and loads the weights: untimed, as on anomalib's side
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    model.fit(ds.train)
    t1 = time.perf_counter()
    res["fit"] = {
        "total_s": t1 - t0,
        "features_s": model.fit_info["feature_seconds"],
        "coreset_s": model.fit_info["coreset_seconds"],
        "n_train": model.fit_info["n_train"],
        "n_patches": model.fit_info["n_patches"],
        "bank_rows": int(model.bank.shape[0]),
        "bank_dim": int(model.bank.shape[1]),
        "bank_mb": model.bank.nbytes / 2**20,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_fit_mb": rss0,
    }
    print(f"[ours {a.coreset}] fit {res['fit']['total_s']:.1f}s", flush=True)

    bundle = out / "bundle"
    export_bundle(model, bundle, name=f"bench-{a.backbone}-{a.coreset}")
    res["size"] = {"bundle_fp32_mb": dir_size_mb(bundle),
                   "files": {p.name: dir_size_mb(p) for p in sorted(bundle.iterdir()) if p.is_file()}}
    predictor = Predictor(bundle, device="cpu")
    res["runtime_info"] = predictor.info()

    # accuracy: the whole test set, PyTorch path and runtime
    paths = [s.path for s in ds.test]
    t0 = time.perf_counter()
    pred = model.predict_paths(paths)
    res["eval_torch_s"] = time.perf_counter() - t0
    np.savez_compressed(out / "preds_torch.npz", image_scores=pred.image_scores, maps=pred.maps.astype(np.float32))
    scores, maps = [], []
    t0 = time.perf_counter()
    for s in range(0, len(paths), 8):
        r = predictor.predict([read_image(p) for p in paths[s : s + 8]])
        scores.append(r.image_scores)
        maps.append(r.maps)
    res["eval_runtime_s"] = time.perf_counter() - t0
    np.savez_compressed(out / "preds_runtime.npz", image_scores=np.concatenate(scores),
                        maps=np.concatenate(maps).astype(np.float32))
    print(f"[ours {a.coreset}] scored test set", flush=True)

    if not a.no_inference:
        images = [read_image(s.path) for s in ds.test[: a.n_latency]]
        batches = [int(b) for b in a.batches.split(",") if b]
        torch_lat = latency_ms(lambda im: model.predict([im]), images)
        stages: dict[str, list[float]] = {}

        def run_predictor(im):
            r = predictor.predict([im])
            for k, v in r.timings.items():
                stages.setdefault(k, []).append(v * 1000.0)

        rt_lat = latency_ms(run_predictor, images)
        # drop the warm-up calls' stage timings
        stage_ms = {k: float(np.median(v[2:])) for k, v in stages.items()}
        res["inference"] = {
            "torch": {"batch1": torch_lat,
                      **{f"batch{b}": throughput(lambda xs: model.predict(xs), images, b, a.repeats) for b in batches}},
            "runtime": {"batch1": rt_lat, "stages_ms": stage_ms,
                        **{f"batch{b}": throughput(lambda xs: predictor.predict(xs), images, b, a.repeats) for b in batches}},
        }
        print(f"[ours {a.coreset}] torch {torch_lat['median_ms']:.0f} ms, runtime {rt_lat['median_ms']:.0f} ms", flush=True)
        if batches:
            res["inference"].update(other_runtime_paths(model, predictor, out, images, batches, a.repeats))
            res["inference"]["spin_ab"] = spin_ab(predictor, bundle, images)
    res["peak_rss_mb_end"] = peak_rss_mb()
    write_json(out / "result.json", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
