"""The line's rate: where the time goes per stage on bottle, the default path against the exact path and
anomalib's default ONNX export of the same weights, in one run; writes the section "line-rate" ("The
line's rate") of BENCHMARKS.md, with verdict lines against issue 42's done-means.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice -n 5 python benchmarks/line_rate.py   # ~30 min on 2 cores

The bundle: ``patchcore export --data bottle`` with ``--export-args`` (default ``--backbone effnet-lite0
--int8``: the defaults otherwise), in ``.bench/line_rate/bundle`` (git-ignored; ``--reuse`` keeps it, a
changed ``--export-args`` exports again). Sides: the default path (no options: ``--graph auto``, ``--search
auto``, records only) and the exact path (``--search numpy --graph features_fp32``), timed per stage by
``runtime.line.bench`` at batch 1 and 4 on the good test images and on the whole test set, interleaved round by
round (``fast_default.interleaved``). The exact path's scores and maps on the whole test set are checked bit
for bit against the runtime of ``--reference`` (a git revision: its ``runtime/`` is extracted into
``.bench/line_rate/`` and run in a subprocess on the same bundle and images). The peer (``fast_peer.measure``):
anomalib's default ONNX export (10% bank), timed interleaved with both our sides at batch 1, and per image at
its graph's fixed batch; image and pixel AUROC of every side on bottle's test set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import io
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fast_peer  # noqa: E402
from common import replace_section  # noqa: E402
from fast_default import STAGES, cpu_name, interleaved  # noqa: E402
from precision import accuracy  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "mvtec_ad" / "bottle"
WORK = ROOT / ".bench" / "line_rate"
BUNDLE = WORK / "bundle"
EXPORT_ARGS = "--backbone effnet-lite0 --int8"
# the runtime before issue 42 changed the search's settling and the maps drawn (the exact path it must keep)
REFERENCE = "4b8e5b2"
EXACT = {"search": "numpy", "graph": "features_fp32"}
DONE = {"good": 2.0, "test": 3.0, "onnx_batch1": 3.0, "onnx_own_batch": 2.0}  # issue 42's done-means

# run with the reference revision's runtime first on sys.path: the exact path's scores and maps of the
# test images, in the order and batches of precision.accuracy
_EXACT_RUN = """
def exact_run(predictor, paths):
    \"\"\"Image scores and a SHA-256 of the float32 maps of ``paths``, in batches of 8.\"\"\"
    import hashlib
    import numpy as np
    from runtime.images import read_image

    scores, digest = [], hashlib.sha256()
    for s in range(0, len(paths), 8):
        pred = predictor.predict([read_image(x) for x in paths[s : s + 8]])
        scores += [float(v) for v in pred.image_scores]
        for m in pred.maps:
            digest.update(np.ascontiguousarray(m, np.float32).tobytes())
    return {"scores": scores, "maps_sha256": digest.hexdigest()}
"""
_REFERENCE_RUN = _EXACT_RUN + """
import json, sys
from runtime.predictor import Predictor
bundle, paths, out = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
p = Predictor(bundle, device="cpu", search="numpy", graph="features_fp32")
open(out, "w").write(json.dumps(exact_run(p, paths)))
"""
exec(_EXACT_RUN)  # exact_run: the same code with this checkout's runtime


def log(msg: str) -> None:
    print(f"[line-rate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def export(export_args: str) -> None:
    cmd = [sys.executable, "-m", "patchcore", "export", *shlex.split(export_args), "--data", str(DATA),
           "--out", str(BUNDLE)]
    log("export: " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    (WORK / "export_args.txt").write_text(export_args)


def ensure_bundle(export_args: str, reuse: bool) -> None:
    same = (WORK / "export_args.txt").is_file() and (WORK / "export_args.txt").read_text() == export_args
    if not (reuse and same and (BUNDLE / "manifest.json").is_file()):
        export(export_args)


def test_paths() -> list[str]:
    """Bottle's test images in ``precision.accuracy``'s order."""
    from patchcore.data import load_test_set

    return [str(s.path) for s in load_test_set(DATA).test]


def reference_run(rev: str, paths: list[str]) -> dict:
    """The exact path of revision ``rev``'s runtime on the same bundle and images (or why it could not run)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
    if sha.returncode != 0:
        return {"error": f"unknown revision {rev!r}"}
    folder = WORK / f"reference-{sha.stdout.strip()}"
    if not (folder / "runtime" / "predictor.py").is_file():
        tar = subprocess.run(["git", "archive", rev, "runtime"], cwd=ROOT, capture_output=True, check=True).stdout
        folder.mkdir(parents=True, exist_ok=True)
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(folder)
    (WORK / "paths.json").write_text(json.dumps(paths))
    out = WORK / "reference.json"
    r = subprocess.run([sys.executable, "-c", _REFERENCE_RUN, str(BUNDLE), str(WORK / "paths.json"), str(out)],
                       cwd=folder, env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300], "rev": sha.stdout.strip()}
    return {**json.loads(out.read_text()), "rev": sha.stdout.strip()}


def region_cost(predictor, encoded: list[bytes]) -> dict:
    """Cutting the records' regions from the default path's maps (batch 1), outside the bench's stages:
    median ms per image as the records cut them now (a map that cannot reach the pixel threshold is
    skipped) and by the full cut every time (the map taken onto the original and labelled: before),
    alternating image by image; the same regions either way (checked), and the share skipped."""
    from runtime.geometry import map_to_original
    from runtime.images import decode_image
    from runtime.regions import Judge, below_level, find_regions

    judge = Judge.for_manifest(predictor.bundle.manifest)
    level = judge.level
    now, full, skipped = [], [], 0
    for i, data in enumerate(encoded):
        pred = predictor.predict([decode_image(data, f"image {i}")])
        amap, plan = pred.maps[0], pred.plans[0]
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if which == 0:
                got = judge.regions(amap, plan)[:2]
                now.append(time.perf_counter() - t0)
            else:
                want = find_regions(map_to_original(amap, plan, fill=-np.inf), level.value, judge.mm_per_px, level.base)
                full.append(time.perf_counter() - t0)
        if got != want:
            raise RuntimeError(f"image {i}: the regions cut now differ from the full cut")
        skipped += below_level(amap, level.value)
    return {"now": 1000 * float(np.median(now)), "full": 1000 * float(np.median(full)), "skipped": skipped,
            "n": len(encoded)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export-args", default=EXPORT_ARGS, help="patchcore export's options beside --data bottle")
    ap.add_argument("--reuse", action="store_true", help="keep the exported bundle (exported with the same args)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--peer-rounds", type=int, default=7)
    ap.add_argument("--no-peer", action="store_true", help="leave anomalib's export out")
    ap.add_argument("--peer-wait", type=float, default=3600,
                    help="seconds to wait for anomalib's export that another process is fitting")
    ap.add_argument("--reference", default=REFERENCE, help="git revision whose exact path the scores must equal")
    args = ap.parse_args()
    started, load = dt.datetime.now(dt.timezone.utc), os.getloadavg()
    ensure_bundle(args.export_args, args.reuse)
    from runtime.line.bench import load_images
    from runtime.predictor import Predictor

    sides = {"default": Predictor(BUNDLE, graph="auto"), "exact": Predictor(BUNDLE, device="cpu", **EXACT)}
    info = sides["default"].info()
    log(f"default: {info['precision']} {info['graph']}, {info['search']}")
    sets = {"good": load_images(DATA / "test" / "good", limit=1000), "test": load_images(DATA / "test", limit=1000)}
    res = {}
    for kind in ("good", "test"):
        for batch in (1, 4):
            log(f"{kind} images, batch {batch}")
            res[(kind, batch)] = interleaved(sides, sets[kind], batch, args.rounds, args.repeat)
    cuts = {}
    for kind in ("good", "test"):
        log(f"regions, {kind} images")
        cuts[kind] = region_cost(sides["default"], sets[kind])
    acc = {}
    for name, p in sides.items():
        log(f"accuracy {name}")
        acc[name] = accuracy(p, DATA, None)
        acc[name]["bank"] = "{:g}%: {:,} x {}".format(100 * p.bundle.manifest["memory_bank"]["coreset_ratio"],
                                                      *p.scorer.bank.shape)
    paths = test_paths()
    log(f"exact path against {args.reference}")
    exact = {"now": exact_run(sides["exact"], paths), "ref": reference_run(args.reference, paths)}
    counts = len(sets["good"]), len(sets["test"])
    if args.no_peer:
        write(args, started, load, info, res, acc, None, exact, cuts, *counts)
        return
    write(args, started, load, info, res, acc, None, exact, cuts, *counts, peer_note="not measured yet: waiting for "
          "anomalib's fit (this section is rewritten when it is)")
    if not peer_ready(args.peer_wait):
        write(args, started, load, info, res, acc, None, exact, cuts, *counts, peer_note=f"not measured: anomalib's "
              f"export was not fitted within --peer-wait {args.peer_wait} s (another process was fitting it)")
        return
    peer = fast_peer.measure({"after": sides["default"], "before": sides["exact"]}, DATA, args.peer_rounds,
                             ratios=(10,), kinds=("onnx",))
    write(args, started, load, info, res, acc, peer, exact, cuts, *counts)


def peer_ready(wait_s: float) -> bool:
    """anomalib's 10% export is fitted, or being fitted by another process (its log is there): wait for it
    at most ``wait_s`` seconds rather than fit it a second time beside it."""
    folder = fast_peer.PEER / "anomalib-10"
    deadline = time.monotonic() + wait_s
    while (fast_peer.PEER / "prepare-10.log").is_file() and not (folder / "peer.json").is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(20)
    return True


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def write(args, started, load, info, res, acc, peer, exact, cuts, n_good, n_test, peer_note: str | None = None) -> None:
    import onnxruntime

    finished, load_end = dt.datetime.now(dt.timezone.utc), os.getloadavg()
    lines = ["## The line's rate", "",
             "_Written by `benchmarks/line_rate.py` from one run; every figure below comes from that run._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice -n 5 python benchmarks/line_rate.py"
             f" --export-args '{args.export_args}'{' --reuse' if args.reuse else ''}{' --no-peer' if args.no_peer else ''}`;"
             f" {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC",
             f"- Machine: {cpu_name()}, Python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
             f"{onnxruntime.__version__}; load average {load[0]:.1f} at start, {load_end[0]:.1f} at the end"
             + (" (shared with other jobs: read the ratios, measured interleaved)" if max(load[0], load_end[0]) > 0.5 else ""),
             f"- Bundle: `patchcore export --data bottle {args.export_args}` (the defaults otherwise): "
             f"{acc['default']['bank']} bank",
             f"- default: no options (records only: maps exact at and above the pixel threshold); it ran "
             f"`{info['precision']}` `{info['graph']}` and `{info['search']}`"
             + (f" (`--graph auto`: {info['graph_choice']['chose']}, ms {info['graph_choice']['ms']})"
                if info.get("graph_choice") else "")
             + "; exact: `--search numpy --graph features_fp32`",
             f"- `runtime.line.bench` stages (decode from the PNG bytes to the verdict), {args.rounds} rounds of "
             f"{args.repeat} timed runs per side, sides interleaved, the images taken in turn; median ms per image; "
             f"good: bottle's {n_good} good test images; test: its whole test set ({n_test} images)", "",
             "| images | batch | side | decode | preprocess | features | search | post | total | total / features |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (kind, batch), r in res.items():
        for side, x in r.items():
            lines.append(f"| {kind} | {batch} | {side} | " + " | ".join(f"{x[s]:.2f}" for s in STAGES)
                         + f" | {x['total'] / x['features']:.2f}x |")
    lines += ["", "Cutting the records' regions (`runtime.regions`, in every record of `predict`, `watch`, `camera` and "
              "`serve`, outside the stages above), default path, batch 1, median ms per image, the two ways alternated "
              "image by image, the same regions on every image:", "",
              "| images | full cut (before) | maps below the pixel threshold skipped (now) | maps skipped |",
              "|---|---|---|---|"]
    for kind, c in cuts.items():
        lines.append(f"| {kind} | {c['full']:.2f} | {c['now']:.2f} | {c['skipped']} of {c['n']} |")
    lines += ["", "| side | image AUROC | pixel AUROC | PRO |", "|---|---|---|---|"]
    for side, m in acc.items():
        lines.append(f"| {side} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} | {m['pro']:.4f} |")
    lines.append("")
    now, ref = exact["now"], exact["ref"]
    if "error" in ref:
        lines.append(f"- Exact path against `{args.reference}`: the reference could not run ({ref['error']})")
    else:
        same_scores = now["scores"] == ref["scores"]
        same_maps = now["maps_sha256"] == ref["maps_sha256"]
        lines.append(f"- Exact path (`--search numpy --graph features_fp32`) against the runtime of `{ref['rev']}` on the "
                     f"same bundle, whole test set: image scores {'identical bit for bit' if same_scores else 'DIFFER'}, "
                     f"maps {'identical bit for bit' if same_maps else 'DIFFER'} (float32 SHA-256)")
    if peer:
        lines += ["", *fast_peer.render(peer, {"after": acc["default"], "before": acc["exact"]}, labels={
            "after": "ours, default (no options)", "before": "ours, exact path (`--search numpy --graph features_fp32`)"})]
    elif peer_note:
        lines.append(f"- anomalib's default ONNX export: {peer_note}")
    lines += ["", "### Against the done-means (issue 42)", ""]
    for kind, label in (("good", "good test images"), ("test", "whole test set")):
        x = res[(kind, 1)]["default"]
        r = x["total"] / x["features"]
        lines.append(f"- Default, batch 1, {label}: end to end {r:.2f}x the features stage (at most {DONE[kind]}x): "
                     + _verdict(r <= DONE[kind]))
    if peer:
        t = peer["times"]
        one = t["onnx-10"]["total"] / t["after"]["total"]
        lines.append(f"- Default against anomalib's default ONNX export at batch 1: {one:.2f}x (at least "
                     f"{DONE['onnx_batch1']}x): " + _verdict(one >= DONE["onnx_batch1"]))
        if "at_fixed" in t["onnx-10"]:
            own = t["onnx-10"]["at_fixed"] / t["after"]["total"]
            lines.append(f"- Default (batch 1) against anomalib's per-image time at its own batch: {own:.2f}x (at least "
                         f"{DONE['onnx_own_batch']}x): " + _verdict(own >= DONE["onnx_own_batch"]))
        theirs, ours = peer["accuracy"]["onnx-10"], acc["default"]
        better = ours["image_auroc"] >= theirs["image_auroc"] and ours["pixel_auroc"] >= theirs["pixel_auroc"]
        lines.append(f"- Accuracy: default {ours['image_auroc']:.4f} / {ours['pixel_auroc']:.4f} against anomalib's "
                     f"{theirs['image_auroc']:.4f} / {theirs['pixel_auroc']:.4f} (image / pixel AUROC, equal or better): "
                     + _verdict(better))
    if "error" not in ref:
        lines.append("- The exact path bit for bit: " + _verdict(now == {k: ref[k] for k in now}))
    replace_section(ROOT / "BENCHMARKS.md", "line-rate", "\n".join(lines))
    log("wrote BENCHMARKS.md section line-rate")


if __name__ == "__main__":
    main()
