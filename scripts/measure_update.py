"""Measure ``patchcore-rt update`` on a real class: a good variant (a lighting or colour shift of
the class's good images) that the fitted bundle flags, taught with N images; then the held-out
variant images (from test/good) and the class's test set scored before and after, and the
update's time per image and per added row (from the new bundle's lineage).

    .venv/bin/python scripts/measure_update.py --data ../shared/datasets/mvtec_ad/bottle \\
        --work results/update --variant dark --variant green --images 8 --images 16

The fitted bundle is cached in WORK/bundle (effnet-lite0, ImageNet weights, --coreset). One JSON
line per (variant, N) on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from patchcore.metrics import image_auroc  # noqa: E402
from runtime.images import read_image  # noqa: E402
from runtime.predictor import Predictor  # noqa: E402

VARIANTS = {  # RGB float32 -> RGB float32
    "dark": lambda x: x * 0.7,  # a dimmer light
    "green": lambda x: x[..., [1, 0, 2]],  # another material colour (red and green swapped)
}


def scores(predictor: Predictor, images: list[np.ndarray], batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    parts = [predictor.predict(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate([p.image_scores for p in parts]), np.concatenate([p.verdicts for p in parts])


def variant(path: Path, kind: str) -> np.ndarray:
    return np.clip(VARIANTS[kind](read_image(path).astype(np.float32)), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("results/update"))
    ap.add_argument("--coreset", type=float, default=0.1)
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    ap.add_argument("--images", type=int, action="append")
    args = ap.parse_args()
    bundle = args.work / "bundle"
    if not (bundle / "manifest.json").is_file():
        from export.onnx_export import export_bundle
        from patchcore.data import load_class
        from patchcore.model import PatchCore, PatchCoreConfig

        cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=args.coreset, device="cpu")
        export_bundle(PatchCore(cfg).fit(load_class(args.data).train), bundle, fp16=False)
    tests = sorted((args.data / "test").rglob("*.png"))
    labels = np.array([f.parent.name != "good" for f in tests], int)
    test_images = [read_image(f) for f in tests]
    p0 = Predictor(bundle, device="cpu")
    s0, _ = scores(p0, test_images)
    train = sorted((args.data / "train" / "good").glob("*.png"))
    order = np.random.default_rng(0).permutation(len(train))
    for kind in args.variant or ["dark"]:
        held = [variant(f, kind) for f in sorted((args.data / "test" / "good").glob("*.png"))]
        _, ng0 = scores(p0, held)
        for n in args.images or [8]:
            teach, out = args.work / f"teach-{kind}-{n}", args.work / f"{kind}-{n}"
            for d in (teach, out):
                shutil.rmtree(d, ignore_errors=True)
            teach.mkdir(parents=True)
            for i in order[:n]:
                cv2.imwrite(str(teach / train[i].name), cv2.cvtColor(variant(train[i], kind), cv2.COLOR_RGB2BGR))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "runtime", "update", str(bundle), "--good", str(teach), "--out",
                            str(out), "--device", "cpu"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            p1 = Predictor(out, device="cpu")
            e = p1.bundle.lineage[-1]
            hs, ng1 = scores(p1, held)
            s1, v1 = scores(p1, test_images)
            sec = e["seconds"]
            print(json.dumps({
                "variant": kind, "images": n, "held_out_ng_before": int(ng0.sum()), "held_out_ng_after": int(ng1.sum()),
                "held_out": len(held), "threshold": [p0.threshold, p1.threshold], "rows_added": e["rows_added"],
                "budget": e["budget"], "covered": e["covered"], "patches": e["patches"], "stopped": e["stopped"],
                "auroc": [image_auroc(labels, s0), image_auroc(labels, s1)],
                "defects_missed_after": int((~v1[labels == 1]).sum()), "good_ng_after": int(v1[labels == 0].sum()),
                "wall_s": round(wall, 2), "seconds": sec, "s_per_image": round(wall / n, 3),
                "embed_s_per_image": round(sec["embed"] / n, 4),
                "select_ms_per_row": round(1000 * sec["select"] / max(1, e["rows_added"]), 2),
            }), flush=True)


if __name__ == "__main__":
    main()
