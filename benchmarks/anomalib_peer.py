"""anomalib's default export as a timed peer, in the anomalib venv (``.bench/anomalib-venv``): fit once,
then answer timing rounds from an orchestrator that times patchcore-rt in between.

    .bench/anomalib-venv/bin/python benchmarks/anomalib_peer.py prepare --data ../shared/datasets/mvtec_ad/bottle \\
        --weights <effnet-lite0 weights file> --coreset 0.1 --out .bench/peer/anomalib-10
    .bench/anomalib-venv/bin/python benchmarks/anomalib_peer.py serve --model onnx-10=<dir> --model openvino-10=<dir> ...

``prepare`` builds anomalib's PatchCore as ``anomalib_worker.py`` does (timm ``tf_efficientnet_lite0`` with the
same ImageNet weights, resize 256 + center crop 224, its default pre-processor), fits it by the Lightning
module's own pieces (the memory bank is cached: anomalib's greedy coreset at its default 10% takes ~20 minutes
on 2 cores), and writes anomalib's own exports of it: ``to_onnx`` (``weights/onnx/model.onnx``) and
``to_openvino`` float32 (``weights/openvino/model.xml``). Both graphs take the decoded RGB image as float
[0, 1] at its own size and do the resize, crop, trunk, search and map inside.

``serve`` loads those exports (onnxruntime CPU with its default session options; OpenVINO CPU with the
LATENCY hint) and reads one JSON command per line on stdin, answering one JSON line on stdout:
``{"op": "time", "model": NAME}`` times one pass over the timing images at batch 1 and returns the median
ms per image (and, for a graph traced at a fixed batch, the median per image of calls at that batch); ``{"op": "score", "model": NAME}`` returns every test image's score and 224 x 224
map (as an ``.npz`` path). The timed call starts from the decoded uint8 image: conversion to float, the
graph's run, and reading its outputs.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomalib_worker import BACKBONES, check_probe, read_rgb  # noqa: E402


def test_set(data: Path) -> list[tuple[Path, int]]:
    """(path, label) in the order ``patchcore.data.load_class`` lists them: good first, then the defect types."""
    out = []
    for d in sorted((d for d in (data / "test").iterdir() if d.is_dir()), key=lambda d: (d.name != "good", d.name)):
        out += [(p, int(d.name != "good")) for p in sorted(d.glob("*.png"), key=lambda p: p.name)]
    return out


def fitted_patchcore(data: Path, weights: str, backbone: str, coreset: float, out: Path):
    """anomalib's Lightning PatchCore with its default pre-processor (256, crop 224) and the shared weights,
    fitted by its own pieces: ``model(x)`` in train mode stores the embedding, ``subsample_embedding`` selects
    the bank (with :class:`anomalib_coreset.PrunedKCenterGreedy`, anomalib's picks in minutes). The
    training embedding (shared by every ratio, ``out.parent``) and the bank (``out``) are cached."""
    import torch
    from anomalib.models import Patchcore

    import anomalib_coreset
    from anomalib_worker import to_tensor

    timm_name, layers, loader = BACKBONES[backbone]
    pre = Patchcore.configure_pre_processor(image_size=(256, 256), center_crop_size=(224, 224))
    lit = Patchcore(backbone=timm_name, layers=layers, pre_trained=False, coreset_sampling_ratio=coreset,
                    pre_processor=pre)
    loader(lit.model.feature_extractor.feature_extractor, weights)
    bank, embedding_file, check = out / "memory_bank.pt", out.parent / f"embedding-{backbone}.pt", {}
    if bank.is_file():
        lit.model.memory_bank = torch.load(bank, weights_only=True)
    else:
        if embedding_file.is_file():
            lit.model.embedding_store.append(torch.load(embedding_file, weights_only=True))
        else:
            train = sorted((data / "train" / "good").glob("*.png"))
            lit.model.train()
            with torch.no_grad():
                for s in range(0, len(train), 8):
                    lit.model(pre(to_tensor([read_rgb(p) for p in train[s : s + 8]])))
            torch.save(torch.vstack(lit.model.embedding_store), embedding_file)
        check_file = out.parent / f"coreset_check-{backbone}.json"  # the same rows every ratio: checked once
        if check_file.is_file():
            check = json.loads(check_file.read_text())
        else:
            full = torch.vstack(lit.model.embedding_store)
            check = anomalib_coreset.same_picks(full[::8].contiguous(), 0.05)  # ~1,000 picks, anomalib's loop too
            check_file.write_text(json.dumps(check))
        print(f"pruned k-center greedy against anomalib's own: {check}", flush=True)
        if not check["identical"]:
            raise RuntimeError(f"the pruned coreset selection differs from anomalib's: {check}")
        anomalib_coreset.use_in_patchcore()
        torch.manual_seed(0)  # the start pick (torch) and the projection's columns (numpy): one bank per ratio
        np.random.seed(0)
        lit.model.subsample_embedding(coreset)
        torch.save(lit.model.memory_bank, bank)
        (out / "coreset_check.json").write_text(json.dumps(check))
    lit.model.eval()
    lit.eval()
    return lit


def prepare(a) -> int:
    import anomalib

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data)
    t0 = time.perf_counter()
    lit = fitted_patchcore(data, a.weights, a.backbone, a.coreset, out)
    fit_s = time.perf_counter() - t0
    probe = check_probe(lit, a.probe) if a.probe else None
    if probe is not None and probe > 1e-4:
        raise RuntimeError(f"anomalib's trunk differs from patchcore-rt's on the probe input by {probe:g}")
    h, w = read_rgb(sorted((data / "test" / "good").glob("*.png"))[0]).shape[:2]
    onnx = Path(lit.to_onnx(out / "export"))
    xml = Path(lit.to_openvino(out / "export", input_size=(h, w)))
    meta = {"anomalib": anomalib.__version__, "coreset_ratio": a.coreset, "backbone": a.backbone,
            "bank": list(lit.model.memory_bank.shape), "fit_or_load_s": fit_s, "probe_max_rel_diff": probe,
            "coreset_check": json.loads((out / "coreset_check.json").read_text()) if (out / "coreset_check.json").is_file() else None, "input_size": [h, w],
            "onnx": str(onnx.relative_to(out)), "openvino": str(xml.relative_to(out))}
    (out / "peer.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta), flush=True)
    return 0


class Runner:
    """One exported graph behind ``run(batch of uint8 HxWx3 images) -> (scores, maps)``."""

    def __init__(self, kind: str, folder: Path):
        meta = json.loads((folder / "peer.json").read_text())
        self.meta = meta
        if kind == "onnx":
            import onnxruntime as ort

            self.sess = ort.InferenceSession(str(folder / meta["onnx"]), providers=["CPUExecutionProvider"])
            inp = self.sess.get_inputs()[0]
            self.input = inp.name
            self.fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
            self.names = [o.name for o in self.sess.get_outputs()]
            self._run = lambda x: dict(zip(self.names, self.sess.run(None, {self.input: x})))
        else:
            import openvino as ov

            core = ov.Core()
            model = core.read_model(folder / meta["openvino"])
            shape = model.inputs[0].get_partial_shape()
            self.fixed = shape[0].get_length() if shape[0].is_static else None
            self.compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            self.names = [o.get_any_name() for o in self.compiled.outputs]
            self._run = lambda x: {n: np.asarray(v) for n, v in zip(self.names, self.compiled(x).values())}

    def run(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n,) and maps (n, h, w) of ``images``; a graph traced at a fixed batch gets the last
        image repeated up to it (what a caller with one image has to do)."""
        n = len(images)
        if self.fixed and n < self.fixed:
            images = images + [images[-1]] * (self.fixed - n)
        x = np.stack(images).astype(np.float32)
        x *= 1.0 / 255.0
        out = self._run(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        score = next(v for k, v in out.items() if "score" in k)
        amap = next(v for k, v in out.items() if "map" in k)
        return score.reshape(-1)[:n], amap.reshape(amap.shape[0], *amap.shape[-2:])[:n]


def timed(runner: Runner, groups: list[list[np.ndarray]]) -> float:
    """Median ms of ``runner.run(group)`` over ``groups``."""
    times = []
    for g in groups:
        t0 = time.perf_counter()
        runner.run(g)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def serve(a) -> int:
    data = Path(a.data)
    test = test_set(data)
    timing = [read_rgb(p) for p, _ in test[:: a.every]]
    runners = {}
    for spec in a.model:
        name, folder = spec.split("=", 1)
        runners[name] = Runner(name.split("-")[0], Path(folder))
        runners[name].run(timing[:1])  # warm-up: first-run allocations and compilation
    print(json.dumps({"ready": {k: {"fixed_batch": r.fixed, **r.meta} for k, r in runners.items()}}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        r = runners[cmd["model"]]
        if cmd["op"] == "time":
            r.run(timing[:1])
            ans = {"median_ms": timed(r, [[im] for im in timing])}
            if r.fixed and r.fixed > 1:  # its own batch, distinct images: the per-image cost most in its favour
                groups = [[timing[(i + j) % len(timing)] for j in range(r.fixed)] for i in range(0, len(timing), r.fixed)]
                ans["median_ms_at_fixed_batch"] = timed(r, groups) / r.fixed
        elif cmd["op"] == "score":
            scores, maps = [], []
            step = r.fixed or 1
            for s in range(0, len(test), step):
                sc, m = r.run([read_rgb(p) for p, _ in test[s : s + step]])
                scores.append(sc)
                maps.append(m)
            path = Path(cmd["out"])
            np.savez(path, image_scores=np.concatenate(scores).astype(np.float32),
                     maps=np.concatenate(maps).astype(np.float32))
            ans = {"npz": str(path)}
        else:
            ans = {"error": f"unknown op {cmd['op']}"}
        print(json.dumps(ans), flush=True)
    return 0


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--backbone", default="effnet-lite0", choices=sorted(BACKBONES))
    p.add_argument("--coreset", type=float, default=0.1)
    p.add_argument("--probe", help="npz with x and our trunk's outputs (run.ensure_probe): refuse other weights")
    p.add_argument("--out", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--data", required=True)
    s.add_argument("--model", action="append", required=True, help="NAME=FOLDER, NAME onnx-* or openvino-*")
    s.add_argument("--every", type=int, default=4, help="time every N-th test image")
    a = ap.parse_args()
    return prepare(a) if a.cmd == "prepare" else serve(a)


if __name__ == "__main__":
    raise SystemExit(main())
