#!/usr/bin/env python
"""Every GPU check of patchcore-rt in one run, with a report file.

    python scripts/gpu_checks.py [--bundle DIR --data DIR] [--report results/gpu_checks.json]

Without ``--bundle`` an effnet-lite0 bundle (all graphs, in-graph search included) is fitted on
the embedded synthetic class (or ``--data``) in a temporary folder. Checks, each ``ok``, ``fail``
or ``skip`` with the reason:

1. environment: GPU, driver, CUDA, torch, onnxruntime providers, faiss GPUs, TensorRT versions;
2. torch-cuda: PyTorch features on CUDA (TF32 off) against the CPU, max relative error <= 1e-4;
3. faiss-gpu: image/patch scores with faiss on the GPU against numpy search (exact rescoring);
4. ort-cuda: the parity suite (``export.parity``) on onnxruntime's CUDA provider, every graph;
5. tensorrt: an engine built into the bundle (``export.tensorrt_build``), the runtime picking it
   up, and the parity suite on TensorRT for every graph (built on this GPU, cached).

Exit status 0 when nothing failed (skips are fine: a machine without TensorRT skips it; with
``--strict`` a skip fails too), 1 else.
The report holds every figure; a Markdown summary is written beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


class Skip(Exception):
    pass


def environment() -> dict:
    import onnxruntime as ort
    import torch

    from runtime.engines import tensorrt_status

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "torch_sees_gpu": torch.cuda.is_available(), "onnxruntime": ort.__version__,
           "ort_providers": ort.get_available_providers()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    try:
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        env["faiss"] = None
    ok, reason = tensorrt_status()
    env["tensorrt_status"] = reason
    if ok:
        from runtime.engines import gpu_identity

        env.update({f"trt_{k}": v for k, v in gpu_identity().items()})
    return env


def check_torch_cuda(bundle: Path, data: Path) -> dict:
    import torch

    from patchcore.data import load_class
    from patchcore.model import PatchCore
    from runtime.images import read_image
    from runtime.preprocess import preprocess_batch

    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = PatchCore.load(bundle, device="cpu")
    gpu = PatchCore.load(bundle, device="cuda")
    images = [read_image(s.path) for s in load_class(data, image_level_only=True).test[:16]]
    x = preprocess_batch(images, cpu.preprocess)
    a, b = cpu.embed_tensor(x), gpu.embed_tensor(x)
    feat = float(np.abs(a - b).max() / np.abs(a).max())
    sa, sb = cpu.predict_embeddings(a).image_scores, gpu.predict_embeddings(b).image_scores
    img = float(np.max(np.abs(sa - sb) / np.abs(sa)))
    ok = feat <= 1e-4 and img <= 1e-4
    return {"status": "ok" if ok else "fail", "features_max_rel_err": feat, "image_max_rel_err": img,
            "tolerance": 1e-4}


def check_faiss_gpu(bundle: Path, data: Path) -> dict:
    from patchcore.data import load_class
    from patchcore.model import PatchCore
    from runtime.images import read_image
    from runtime.search import PatchScorer

    try:
        import faiss
    except ImportError:
        raise Skip("faiss is not installed") from None
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        raise Skip("this faiss build sees no GPU (install faiss-gpu)")
    model = PatchCore.load(bundle, device="cpu")
    images = [read_image(s.path) for s in load_class(data, image_level_only=True).test[:16]]
    emb = model.embed_images(images)
    ref = PatchScorer(model.bank, model.config.n_reweight, backend="numpy").score(emb)
    t0 = time.perf_counter()
    gpu_scorer = PatchScorer(model.bank, model.config.n_reweight, backend="faiss", device="cuda")
    got = gpu_scorer.score(emb)
    secs = time.perf_counter() - t0
    img = float(np.max(np.abs(ref.image_scores - got.image_scores) / np.abs(ref.image_scores)))
    patch = float(np.abs(ref.patch_scores - got.patch_scores).max() / np.abs(ref.patch_scores).max())
    ok = gpu_scorer.backend == "faiss-gpu" and img <= 1e-6 and patch <= 1e-6
    return {"status": "ok" if ok else "fail", "backend": gpu_scorer.backend, "image_max_rel_err": img,
            "patch_max_rel_err": patch, "seconds": round(secs, 3)}


def _parity(bundle: Path, data: Path, engine: str) -> dict:
    from export.parity import run_parity

    rep = run_parity(bundle, data, engines=(engine,), log=lambda s: print(s, file=sys.stderr))
    if not rep.results:
        raise Skip("; ".join(sorted({s["reason"] for s in rep.skipped})) or f"no {engine} target")
    print(rep.format(), file=sys.stderr)
    return {"status": "ok" if rep.ok else "fail", **rep.to_dict()}


def check_ort_cuda(bundle: Path, data: Path) -> dict:
    return _parity(bundle, data, "ort-cuda")


def check_tensorrt(bundle: Path, data: Path) -> dict:
    from export.tensorrt_build import build_bundle_engine
    from runtime.bundle import read_bundle
    from runtime.engines import TensorRTEngine, tensorrt_status

    ok, reason = tensorrt_status()
    if not ok:
        raise Skip(reason)
    out: dict = {}
    work = Path(tempfile.mkdtemp(prefix="trt-bundle-"))
    try:  # the export path: an engine built into a copy of the bundle, then found by the runtime
        copy = Path(shutil.copytree(bundle, work / "b"))
        t0 = time.perf_counter()
        b = build_bundle_engine(copy, fp16=True, log=lambda s: print(s, file=sys.stderr))
        out["build_seconds"] = round(time.perf_counter() - t0, 1)
        out["engines"] = b.manifest["engines"]
        read_bundle(copy)
        messages: list[str] = []
        TensorRTEngine.from_bundle(copy, "features_fp16", log=messages.append).close()
        out["shipped_engine_used"] = any("shipped in the bundle" in m for m in messages)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    par = _parity(bundle, data, "tensorrt")
    status = "ok" if par["status"] == "ok" and out["shipped_engine_used"] else "fail"
    return {**par, **out, "status": status}


def make_bundle(data: Path | None, work: Path) -> tuple[Path, Path]:
    from export.onnx_export import export_bundle
    from patchcore.data import load_class
    from patchcore.model import PatchCore, PatchCoreConfig
    from patchcore.synthetic import make_synthetic_class

    data = data or make_synthetic_class(work / "data", n_train=40, n_test_good=10, n_test_defect=6)
    model = PatchCore(PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, device="auto"))
    model.fit(load_class(data, image_level_only=True).train)
    root = work / "bundle"
    export_bundle(model, root, fp16=True, scoring=True)
    return root, data


CHECKS = [("torch-cuda", check_torch_cuda), ("faiss-gpu", check_faiss_gpu), ("ort-cuda", check_ort_cuda),
          ("tensorrt", check_tensorrt)]


def _markdown(report: dict) -> str:
    lines = ["# patchcore-rt GPU checks", "", f"- GPU: {report['environment'].get('gpu', 'none')}",
             f"- TensorRT: {report['environment'].get('tensorrt_status')}", "",
             "| check | status | figures |", "|---|---|---|"]
    for name, res in report["checks"].items():
        if "results" in res:
            figs = "; ".join(f"{r['name']}: image {r['errors']['image']:.1e}" for r in res["results"])
        else:
            figs = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()
                             if k not in ("status",) and not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {res['status']} | {figs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle to check (default: fit one)")
    ap.add_argument("--data", type=Path, help="class folder (MVTec layout; default: the synthetic class)")
    ap.add_argument("--report", type=Path, default=Path("results/gpu_checks.json"))
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(n for n, _ in CHECKS))
    ap.add_argument("--strict", action="store_true",
                    help="a skipped check fails too (on a GPU runner a skip means a broken install)")
    args = ap.parse_args(argv)
    if args.bundle and not args.data:
        ap.error("--bundle needs --data")
    work = Path(tempfile.mkdtemp(prefix="gpu-checks-"))
    report: dict = {"environment": environment(), "checks": {}}
    try:
        bundle, data = (args.bundle, args.data) if args.bundle else make_bundle(args.data, work)
        report["bundle"], report["data"] = str(bundle), str(data)
        wanted = set(args.only.split(",")) if args.only else None
        for name, fn in CHECKS:
            if wanted and name not in wanted:
                continue
            print(f"== {name}", file=sys.stderr)
            try:
                report["checks"][name] = fn(bundle, data)
            except Skip as e:
                report["checks"][name] = {"status": "skip", "reason": str(e)}
            except Exception as e:  # a check that crashes is a failure with its traceback
                report["checks"][name] = {"status": "fail", "error": f"{type(e).__name__}: {e}",
                                          "traceback": traceback.format_exc()}
            print(f"   {report['checks'][name]['status']}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.report.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"report: {args.report}", file=sys.stderr)
    bad = ("fail", "skip") if args.strict else ("fail",)
    return 1 if any(c["status"] in bad for c in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
