"""``patchcore-rt update`` on the demo: a good variant (a colour or lighting shift of the class's
good images) that the fitted bundle flags, taught with N images; the held-out variant images
(from test/good) and the class's test set scored before and after, and the update's time. Writes
the section "update" of BENCHMARKS.md.

    .venv/bin/python benchmarks/update.py                      # the demo: synth brick, default preset (1% bank)
    .venv/bin/python benchmarks/update.py --data DIR --variant dark --images 8 --draws 3 --no-write

Both stop rules run side by side on the same bundle and the same images: the fit's greedy radius
(today's default) and the row budget (the coreset ratio of the new patches: what bundles without
``memory_bank.fit_radius`` get, and the default before it), the latter on a copy of the bundle
without that field. Each draw teaches a different random choice of N training images. The fitted
bundle is cached in WORK/bundle. One JSON line per (variant, draw, rule) on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import replace_section  # noqa: E402
from patchcore.metrics import image_auroc  # noqa: E402
from runtime import bundle as bundle_io  # noqa: E402
from runtime.images import read_image  # noqa: E402
from runtime.predictor import Predictor  # noqa: E402

SECTION = "update"
VARIANTS = {  # RGB float32 -> RGB float32
    "green": lambda x: x[..., [1, 0, 2]],  # another material colour (red and green swapped)
    "dark": lambda x: x * 0.7,  # a dimmer light
}
RULES = ("row-budget", "fit-radius")


def scores(predictor: Predictor, images: list[np.ndarray], batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    parts = [predictor.predict(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate([p.image_scores for p in parts]), np.concatenate([p.verdicts for p in parts])


def variant(path: Path, kind: str) -> np.ndarray:
    return np.clip(VARIANTS[kind](read_image(path).astype(np.float32)), 0, 255).astype(np.uint8)


def fitted_bundle(data: Path, work: Path, preset: str, coreset: float | None) -> Path:
    bundle = work / "bundle"
    if not (bundle / "manifest.json").is_file():
        from export.onnx_export import export_bundle
        from patchcore.data import load_class
        from patchcore.config import preset_config
        from patchcore.model import PatchCore

        cfg = preset_config(preset, backbone="effnet-lite0", device="cpu", coreset_ratio=coreset)
        export_bundle(PatchCore(cfg).fit(load_class(data).train), bundle, fp16=False)
    return bundle


def without_fit_radius(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` as an earlier export wrote it: no ``memory_bank.fit_radius``."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    m["memory_bank"].pop("fit_radius", None)
    m.pop(bundle_io.DIGEST_FIELD)
    bundle_io.finalize_manifest(out, m, list(m["files"]))
    return out


def measure(args) -> tuple[dict, list[dict]]:
    data = args.data
    if data is None:
        from patchcore.synthetic import make_synthetic_class

        data = make_synthetic_class(args.work / "data")
    bundle = fitted_bundle(data, args.work, args.preset, args.coreset)
    bundles = {"fit-radius": bundle, "row-budget": without_fit_radius(bundle, args.work / "bundle-no-fit-radius")}
    tests = sorted((data / "test").rglob("*.png"))
    labels = np.array([f.parent.name != "good" for f in tests], int)
    test_images = [read_image(f) for f in tests]
    p0 = Predictor(bundle, device="cpu")
    s0, _ = scores(p0, test_images)
    mb = p0.bundle.manifest["memory_bank"]
    train = sorted((data / "train" / "good").glob("*.png"))
    context = {"data": str(data), "bank_rows": mb["rows"], "coreset_ratio": mb["coreset_ratio"],
               "fit_radius": mb["fit_radius"], "coverage_radius": mb["coverage_radius"], "threshold": p0.threshold,
               "auroc": image_auroc(labels, s0), "n_test": len(tests), "n_train": len(train)}
    rows = []
    for kind in args.variant or ["green"]:
        held = [variant(f, kind) for f in sorted((data / "test" / "good").glob("*.png"))]
        _, ng0 = scores(p0, held)
        for draw in range(args.draws):
            order = np.random.default_rng(draw).permutation(len(train))
            teach = args.work / f"teach-{kind}-{draw}"
            shutil.rmtree(teach, ignore_errors=True)
            teach.mkdir(parents=True)
            for i in order[: args.images]:
                cv2.imwrite(str(teach / train[i].name), cv2.cvtColor(variant(train[i], kind), cv2.COLOR_RGB2BGR))
            for rule in RULES:
                out = args.work / f"{kind}-{draw}-{rule}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "runtime", "update", str(bundles[rule]), "--good", str(teach),
                                "--out", str(out), "--device", "cpu"], cwd=ROOT, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
                p1 = Predictor(out, device="cpu")
                e = p1.bundle.lineage[-1]
                _, ng1 = scores(p1, held)
                s1, v1 = scores(p1, test_images)
                row = {"variant": kind, "draw": draw, "rule": rule, "images": args.images, "held_out": len(held),
                       "held_out_ng_before": int(ng0.sum()), "held_out_ng_after": int(ng1.sum()),
                       "threshold": [p0.threshold, p1.threshold], "rows_added": e["rows_added"],
                       "patches": e["patches"], "covered": e["covered"], "stopped": e["stopped"],
                       "auroc": [context["auroc"], image_auroc(labels, s1)],
                       "defects_missed_after": int((~v1[labels == 1]).sum()),
                       "good_ng_after": int(v1[labels == 0].sum()), "wall_s": round(wall, 2), "seconds": e["seconds"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return context, rows


def render(args, context: dict, rows: list[dict], started: str, load: tuple) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    cmd = " ".join(["python benchmarks/update.py", *sys.argv[1:]])
    lines = [
        "## Teaching a variant: `patchcore-rt update` at the default bank",
        "",
        "_Written by `benchmarks/update.py` from one run; every figure below comes from that run._",
        "",
        f"- Command: `{cmd}` ({started} UTC)",
        f"- Machine: {cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, onnxruntime CPU; "
        f"shared with other jobs (load average {load[0]:.1f} at start): compare within the table",
        f"- Bundle: effnet-lite0 (ImageNet weights), preset `{args.preset}` on `{Path(context['data']).name}` "
        f"({context['n_train']} good training images, the demo's `patchcore synth` class when no --data): "
        f"{context['bank_rows']} bank rows ({context['coreset_ratio']:.0%} coreset), fit radius "
        f"{context['fit_radius']:.2f} (covering radius {context['coverage_radius']:.2f}), threshold "
        f"{context['threshold']:.1f}, image AUROC {context['auroc']:.4f} on its {context['n_test']} test images",
        f"- Each draw: {args.images} variant images made from randomly drawn training images are taught; the "
        "held-out variant images are the test/good images with the same shift. `row-budget`: at most the coreset "
        "ratio of the new patches (bundles without `memory_bank.fit_radius`, and the default before it); "
        "`fit-radius`: rows until every new patch lies within the fit's greedy radius of the bank (the default).",
        "",
        "| variant | draw | stop rule | rows added | stopped | held-out variants flagged | threshold | "
        "image AUROC before -> after | defects missed | update s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['draw']} | {r['rule']} | +{r['rows_added']} of {r['patches']} patches "
                     f"| {r['stopped']} | {r['held_out_ng_after']} of {r['held_out']} (before: "
                     f"{r['held_out_ng_before']}) | {r['threshold'][0]:.1f} -> {r['threshold'][1]:.1f} | "
                     f"{r['auroc'][0]:.4f} -> {r['auroc'][1]:.4f} | {r['defects_missed_after']} | {r['wall_s']:.1f} |")
    lines.append("")
    for kind in dict.fromkeys(r["variant"] for r in rows):
        for rule in RULES:
            sel = [r for r in rows if r["variant"] == kind and r["rule"] == rule]
            ng = [r["held_out_ng_after"] for r in sel]
            lines.append(f"- {kind}, {rule}: held-out variants flagged {sum(ng) / len(ng):.1f} of 10 on average "
                         f"(at most {max(ng)}; draws with at most 1: {sum(n <= 1 for n in ng)} of {len(ng)}), "
                         f"median rows added {int(np.median([r['rows_added'] for r in sel]))}, median update "
                         f"{np.median([r['wall_s'] for r in sel]):.1f} s (whole command: embedding, selection, "
                         f"{min(args.images, 10)}-fold recalibration, writing), largest AUROC change "
                         f"{max(abs(r['auroc'][1] - r['auroc'][0]) for r in sel):.4f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="an MVTec-layout class (default: the demo's synthetic one)")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "update")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--coreset", type=float, default=None, help="coreset ratio (default: the preset's)")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print the JSON lines only")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()
    context, rows = measure(args)
    (args.work / "result.json").write_text(json.dumps({"context": context, "rows": rows}, indent=2))
    if not args.no_write:
        replace_section(args.out, SECTION, render(args, context, rows, started, load))


if __name__ == "__main__":
    main()
