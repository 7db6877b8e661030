"""The peer of "Fast by default": patchcore-rt's paths and anomalib's default exports of the same weights,
timed round by round in one run (imported by ``fast_default.py``).

anomalib runs in its own venv (``run.ensure_anomalib_venv``), as ``anomalib_peer.py serve``: a worker process
that holds anomalib's ONNX (onnxruntime CPU, default session) and OpenVINO (float32) exports at its default
10% bank and at 1% (224 crop), fitted once and cached in ``.bench/peer/`` (``anomalib_peer.py prepare``;
the 10% coreset takes ~20 minutes on 2 cores). This process times our predictors; the worker times its own
loop over the same images when told to. Sides alternate within each round, in reverse order every other
round, with a pause between sides so that no side's idle spinning threads (onnxruntime's, OpenBLAS's)
weigh on the next; medians over rounds of each side's median ms per image.

Each side is timed at batch 1 from the decoded RGB uint8 image to its score and anomaly map: ours is
``Predictor.predict`` (preprocess, features, search, postprocess: the stages of ``patchcore-rt bench``
without decoding); anomalib's is the conversion to float [0, 1] and its graph's run (resize, crop, trunk,
search, map and blur inside the graph). AUROC: each side scores bottle's whole test set; anomalib's maps
(224 x 224, the crop) are scored by ``patchcore.metrics`` against masks resized and cropped the same way
(``run.ground_truth``), ours by ``precision.accuracy`` on its own geometry.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PEER = ROOT / ".bench" / "peer"
RATIOS = (10, 1)  # anomalib's default coreset (10%) and our default bank's (1%)
KINDS = ("onnx", "openvino")
PAUSE_S = 0.3  # between sides: longer than OpenBLAS's and onnxruntime's spin after a call


def log(msg: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timing_paths(data: Path, every: int = 4) -> list[Path]:
    """Every ``every``-th test image (good and defective alike), in the order both sides list them."""
    from run import test_samples

    return [s.path for s in test_samples(data, 0)][::every]


def ensure_models(data: Path, ratios: tuple[int, ...] = RATIOS) -> dict[int, Path]:
    """anomalib's exports per coreset ratio (percent), fitted and exported once (``anomalib_peer.py prepare``)."""
    from plan import anomalib_weights
    from run import VPY, ensure_anomalib_venv, ensure_probe

    ensure_anomalib_venv()
    folders = {}
    for pct in ratios:
        out = PEER / f"anomalib-{pct}"
        if not (out / "peer.json").is_file():
            cmd = [str(VPY), str(HERE / "anomalib_peer.py"), "prepare", "--data", str(data), "--coreset", str(pct / 100),
                   "--weights", str(anomalib_weights("effnet-lite0", ROOT / ".bench")),
                   "--probe", str(ensure_probe("effnet-lite0")), "--out", str(out)]
            log(f"anomalib fit and export at {pct}% (cached in {out}; ~20 min at 10% on 2 cores)")
            with open(PEER / f"prepare-{pct}.log", "w") as f:
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        folders[pct] = out
    return folders


class Peer:
    """The anomalib worker process: one JSON line per command, one per answer."""

    def __init__(self, data: Path, folders: dict[int, Path], every: int, kinds: tuple[str, ...] = KINDS):
        from run import VPY

        cmd = [str(VPY), str(HERE / "anomalib_peer.py"), "serve", "--data", str(data), "--every", str(every)]
        for pct, folder in folders.items():
            cmd += [a for kind in kinds for a in ("--model", f"{kind}-{pct}={folder}")]
        self.log = open(PEER / "serve.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True)
        self.ready = self._read()["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"anomalib worker stopped (log: {PEER / 'serve.log'})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def time_ours(predictor, images: list) -> dict:
    """Median ms per image per stage of ``predictor.predict([image])`` over ``images`` (after one warm-up)."""
    predictor.predict(images[:1])
    runs = {s: [] for s in ("preprocess", "features", "search", "postprocess", "total")}
    for im in images:
        t0 = time.perf_counter()
        r = predictor.predict([im])
        runs["total"].append((time.perf_counter() - t0) * 1000.0)
        for k, v in r.timings.items():
            runs[k].append(v * 1000.0)
    return {k: statistics.median(v) for k, v in runs.items()}


def interleaved(ours: dict, peer: Peer, images: list, rounds: int) -> dict:
    """{side: {stage: median over rounds}}; anomalib's sides have only ``total``."""
    names = [*ours, *peer.ready]
    per_round: dict = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            time.sleep(PAUSE_S)
            if name in ours:
                per_round[name].append(time_ours(ours[name], images))
            else:
                ans = peer.ask(op="time", model=name)
                per_round[name].append({"total": ans["median_ms"],
                                        **({"at_fixed": ans["median_ms_at_fixed_batch"]}
                                           if "median_ms_at_fixed_batch" in ans else {})})
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {per_round[n][-1]['total']:.1f}" for n in names))
    return {n: {k: statistics.median(x[k] for x in v) for k in v[0]} for n, v in per_round.items()}


def peer_accuracy(peer: Peer, data: Path) -> dict:
    from run import accuracy, ground_truth, test_samples

    labels, masks = ground_truth(test_samples(data, 0))
    out = {}
    for name in peer.ready:
        npz = PEER / f"preds-{name}.npz"
        peer.ask(op="score", model=name, out=str(npz))
        out[name] = accuracy(npz, labels, masks)
        log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[name].items()))
    return out


def measure(ours: dict, data: Path, rounds: int, every: int = 4, ratios: tuple[int, ...] = RATIOS,
            kinds: tuple[str, ...] = KINDS) -> dict:
    """The whole peer comparison: models (cached), interleaved timing, anomalib's accuracy; anomalib's
    exports at coreset ``ratios`` (percent), each of ``kinds`` (onnx, openvino)."""
    from runtime.images import read_image

    folders = ensure_models(data, ratios)
    paths = timing_paths(data, every)
    images = [read_image(p) for p in paths]
    peer = Peer(data, folders, every, kinds)
    try:
        log(f"timing {len(images)} test images, {rounds} rounds: {', '.join(ours)} and {', '.join(peer.ready)}")
        times = interleaved(ours, peer, images, rounds)
        acc = peer_accuracy(peer, data)
    finally:
        peer.close()
    return {"times": times, "accuracy": acc, "models": peer.ready, "n_images": len(images), "rounds": rounds}


def render(res: dict, ours_acc: dict, labels: dict[str, str] | None = None) -> list[str]:
    """Markdown lines: the table of every side with ratios against anomalib's default ONNX export
    (``labels``: our sides' names in the table, where they are not fast_default's before and after)."""
    t, models = res["times"], res["models"]
    ref = t["onnx-10"]["total"]
    fixed = {n: m["fixed_batch"] for n, m in models.items() if m.get("fixed_batch") not in (None, 1)}
    lines = ["### Beside the peer: anomalib's default export of the same weights", "",
             f"Same run, sides interleaved ({res['rounds']} rounds, order reversed every other round, "
             f"{PAUSE_S} s pause between sides), batch 1, {res['n_images']} bottle test images (every 4th, good and "
             "defective), median ms per image from the decoded RGB image to score and map. Ours: `Predictor.predict` "
             "(the bench stages without decoding). anomalib "
             f"{next(iter(models.values()))['anomalib']}: PatchCore with timm `tf_efficientnet_lite0` carrying the "
             "same ImageNet weights (checked against our trunk on a probe input), its default pre-processor "
             "(resize 256, crop 224), fitted and exported by its own `to_onnx` (onnxruntime CPU, default session "
             "options) and `to_openvino` (float32, CPU, LATENCY hint); timed from the float conversion through its "
             "graph's run (resize, crop, trunk, search, map, blur in the graph), in its own process.", "",
             "| side | bank | preprocess | features | search | postprocess | total | anomalib ONNX 10% / side | "
             "per image at the graph's fixed batch | image AUROC | pixel AUROC |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in t.items():
        if name in ours_acc:
            label = {"before": "ours before (`--search numpy --graph features_fp32`)",
                     "after": "ours after (no options)",
                     "after-fp32": "ours after, `--graph features_fp32`", **(labels or {})}.get(name, f"ours {name}")
            bank, acc = ours_acc[name].get("bank", ""), ours_acc[name]
            stages = " | ".join(f"{x[s]:.2f}" for s in ("preprocess", "features", "search", "postprocess"))
        else:
            kind, pct = name.split("-")
            label = f"anomalib {'ONNX (onnxruntime)' if kind == 'onnx' else 'OpenVINO fp32'} {pct}%" + (
                " (its default bank)" if pct == "10" else "")
            bank = f"{pct}%: {models[name]['bank'][0]:,} x {models[name]['bank'][1]}"
            stages, acc = "- | - | - | -", res["accuracy"][name]
        ratio = f"{ref / x['total']:.2f}x"
        at_fixed = f"{x['at_fixed']:.2f}" if "at_fixed" in x else "-"
        lines.append(f"| {label} | {bank} | {stages} | {x['total']:.2f} | {'**' + ratio + '**' if name == 'after' else ratio} "
                     f"| {at_fixed} | {acc['image_auroc']:.4f} | {acc['pixel_auroc']:.4f} |")
    lines.append("")
    if fixed:
        lines.append("anomalib's exported graphs are traced at a fixed batch (" + ", ".join(
            f"{n}: {b}" for n, b in fixed.items()) + "): a caller with one image repeats it to that batch, and "
            "that call's time is its batch-1 latency (total). The column beside gives its most favourable figure: "
            "calls of distinct images at that batch, divided by the batch.")
        if "at_fixed" in t["onnx-10"]:
            lines.append(f"- Ours after (batch 1) against anomalib's default ONNX export: **{ref / t['after']['total']:.2f}x** "
                         f"at batch 1, **{t['onnx-10']['at_fixed'] / t['after']['total']:.2f}x** against its per-image "
                         "time at its own batch")
    lines.append("- Pixel AUROC: ours on its own preprocessed canvas against the masks resized the same way; anomalib's "
                 "224 x 224 maps against the masks resized to 256 and cropped to 224 (`patchcore.metrics` for both)")
    return lines
