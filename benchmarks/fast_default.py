"""Fast by default: the default bundle's default path against today's exact path, side by side in one
run; writes the section "Fast by default" of BENCHMARKS.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fast_default.py   # ~10 min on 2 cores

The bundle: ``patchcore export --backbone effnet-lite0 --data bottle --int8`` with the defaults
(320 x 320, 1% bank), in ``.bench/fast/bundle`` (git-ignored). Before: ``--search numpy --graph
features_fp32`` (the exact numpy search, what the default was). After: no options (``--search auto``).
Both are timed by ``runtime.line.bench`` (what ``patchcore-rt bench`` runs) on bottle's test images,
interleaved round by round so that other jobs on the machine weigh on both alike; medians per
stage, ratios of medians. Each side then scores the whole test set for image and pixel AUROC.

The peer (``fast_peer.py``): anomalib's default exports of the same weights (ONNX in onnxruntime, OpenVINO
float32; its default 10% bank and 224 crop, and 1%) timed in the same run, interleaved round by round with
both of our paths, each side's image and pixel AUROC on bottle. anomalib is installed into
``.bench/anomalib-venv`` and fitted once into ``.bench/peer`` (~25 minutes on 2 cores the first time);
``--reuse`` keeps the bundle, and the anomalib models are always reused once fitted. ``--no-peer`` leaves it out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fast_peer  # noqa: E402
from common import replace_section  # noqa: E402
from precision import accuracy  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "mvtec_ad" / "bottle"
BUNDLE = ROOT / ".bench" / "fast" / "bundle"
STAGES = ("decode", "preprocess", "features", "search", "postprocess", "total")


def log(msg: str) -> None:
    print(f"[fast {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    has = [f for f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} logical cores ({', '.join(has) or 'no VNNI'})"


def export() -> None:
    cmd = [sys.executable, "-m", "patchcore", "export", "--backbone", "effnet-lite0", "--data", str(DATA), "--int8",
           "--out", str(BUNDLE)]
    log("export: " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def ensure_bundle() -> Path:
    """The default bundle the benchmarks share, exported first when absent."""
    if not (BUNDLE / "manifest.json").exists():
        export()
    return BUNDLE


def interleaved(sides: dict, encoded: list[bytes], batch: int, rounds: int, repeat: int) -> dict:
    from runtime.line.bench import bench_batch

    runs = {k: {s: [] for s in STAGES} for k in sides}
    for n in range(rounds):
        shift = (n * repeat * batch) % len(encoded)  # each round the next images: the whole set over the rounds
        images = encoded[shift:] + encoded[:shift]
        for name, p in sides.items():
            r = bench_batch(p, images, batch, repeat, warmup=1)
            for s in STAGES:
                runs[name][s].append(r["median_ms_per_image"][s])
    return {k: {s: statistics.median(v) for s, v in st.items()} for k, st in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--reuse", action="store_true", help="keep the exported bundle")
    ap.add_argument("--peer-rounds", type=int, default=9, help="interleaved rounds with anomalib's exports")
    ap.add_argument("--no-peer", action="store_true", help="leave anomalib's exports out")
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()
    if not (args.reuse and (BUNDLE / "manifest.json").exists()):
        export()
    from runtime.line.bench import load_images
    from runtime.predictor import Predictor

    # after: what the command line gives with no options (--graph auto, --search auto, no overlays); where
    # auto chose a reduced-precision graph, also the exact features (--graph features_fp32) with the default search
    sides = {"before": Predictor(BUNDLE, search="numpy", graph="features_fp32"), "after": Predictor(BUNDLE, graph="auto")}
    info = sides["after"].info()
    log(f"after: {info['precision']} {info['graph']}, {info['search']}; choice {info.get('search_choice')}, "
        f"graph {info.get('graph_choice')}")
    if (info["graph"], info["precision"]) != ("features_fp32", sides["before"].precision):
        sides["after-fp32"] = Predictor(BUNDLE, graph="features_fp32")
    encoded = load_images(DATA / "test", limit=83)
    good = load_images(DATA / "test" / "good", limit=20)
    res = {}
    for batch in (1, 4, 8):
        log(f"batch {batch}, test images")
        res[("test", batch)] = interleaved(sides, encoded, batch, args.rounds, args.repeat)
    log("batch 1, good images")
    res[("good", 1)] = interleaved(sides, good, 1, args.rounds, args.repeat)
    peer = None if args.no_peer else fast_peer.measure(sides, DATA, args.peer_rounds)
    acc = {}
    for name, p in sides.items():
        log(f"accuracy {name}")
        acc[name] = accuracy(p, DATA, None)
        acc[name]["bank"] = "{:g}%: {:,} x {}".format(100 * p.bundle.manifest["memory_bank"]["coreset_ratio"],
                                                      *p.scorer.bank.shape)
    a, t = np.array(acc["before"]["scores"]), sides["before"].threshold
    agree = {}  # each after side against before: largest relative image-score difference, verdicts identical
    for name in sides:
        if name != "before":
            b = np.array(acc[name]["scores"])
            agree[name] = (float(np.max(np.abs(b - a) / np.abs(a))), bool(np.array_equal(a >= t, b >= t)))
    finished = dt.datetime.now(dt.timezone.utc)
    write(args, started, finished, load, os.getloadavg(), info, res, acc, agree, peer)


def write(args, started, finished, load, load_end, info, res, acc, agree, peer) -> None:
    import onnxruntime

    lines = ["## Fast by default", "",
             "_Written by `benchmarks/fast_default.py` from one run; every figure below comes from that run._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fast_default.py"
             f"{' --reuse' if args.reuse else ''}{' --no-peer' if args.no_peer else ''}` (the OpenBLAS overrides of these machines unset, as on a user's "
             f"machine); {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC",
             f"- Machine: {cpu_name()}, Python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
             f"{onnxruntime.__version__}; load average {load[0]:.1f} at start, {load_end[0]:.1f} at the end"
             + (" (shared with other jobs: read the ratios, measured interleaved)" if max(load[0], load_end[0]) > 0.5 else ""),
             "- Bundle: `patchcore export --backbone effnet-lite0 --data bottle --int8` (defaults: 320 x 320, 1% bank, "
             "1024 dims)",
             "- Before: `--search numpy --graph features_fp32` (the exact numpy search, the default until now). After: "
             f"no options (records only, no overlays: maps exact at and above the pixel threshold); it ran "
             f"`{info['precision']}` `{info['graph']}` (`--graph auto`: {info.get('graph_choice')}) and "
             f"`{info['search']}` ({info.get('search_choice')})"
             + ("; after-fp32: the same with `--graph features_fp32` (the exact features)" if "after-fp32" in acc else ""),
             f"- `runtime.line.bench` on bottle's test images (20 good, 63 defective) and on its good test images, "
             f"interleaved: {args.rounds} rounds of {args.repeat} timed runs per side, the images taken in turn (each "
             "round the next ones), median ms per image per stage",
             ""]
    lines += ["| images, batch | side | decode | preprocess | features | search | postprocess | total | before / after (total) | total / features |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (kind, batch), r in res.items():
        for side in r:
            x = r[side]
            ratio = f"**{r['before']['total'] / x['total']:.2f}x**" if side != "before" else ""
            lines.append(f"| {kind}, {batch} | {side} | " + " | ".join(f"{x[s]:.2f}" for s in STAGES)
                         + f" | {ratio} | {x['total'] / x['features']:.2f} |")
    lines += ["", "| side | image AUROC | pixel AUROC | PRO |", "|---|---|---|---|"]
    for side in acc:
        m = acc[side]
        lines.append(f"| {side} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} | {m['pro']:.4f} |")
    lines.append("")
    for side, (err, same) in agree.items():
        lines.append(f"- Image scores, {side} against before, whole test set: largest relative difference {err:.1e}; "
                     f"verdicts {'identical' if same else 'DIFFER'}")
    if peer:
        lines += ["", *fast_peer.render(peer, acc)]
    else:
        lines.append("- The peer (anomalib's export of the same weights) is not in this run (`--no-peer`)")
    replace_section(ROOT / "BENCHMARKS.md", "fast-default", "\n".join(lines))
    log("wrote BENCHMARKS.md section fast-default")


if __name__ == "__main__":
    main()
