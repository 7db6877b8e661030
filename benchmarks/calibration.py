"""The "Calibration" section of BENCHMARKS.md: how often a calibrated threshold calls good parts
NG, out-of-fold calibration against the held-out one.

    python benchmarks/calibration.py run      # fit, score, write .bench/calibration/result.json and the section
    python benchmarks/calibration.py report   # (re)write the section from result.json

For each class (bottle, screw from ../shared/datasets/mvtec_ad, and the synthetic textures of
``patchcore synth``) and seed, ``--n-fit`` good training images are drawn (a small line's set:
the held-out calibration then rests on 5 of them), and two bundles are fitted on them with the
default preset and effnet-lite0: ``holdout`` (the earlier default: 10% and at least 5 images held
out of the bank, their 0.99 quantile) and ``oof`` (every image scored against a bank of the
other folds, 5 folds, the bank on all of them). Every other good image of the class (the rest of
train/good and test/good) is then scored by both, and the false-call rate is the share of those
at or above the threshold: what the 0.99 quantile promises is 1%.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

from common import MVTEC, ROOT, cpu_name, replace_section, use_checkout

use_checkout()
SECTION = "calibration"
OUT = ROOT / ".bench" / "calibration"
SYNTH = ("brick", "grass", "gravel")


def class_images(name: str, n_synth_train: int) -> tuple[list[Path], list[Path]]:
    """A class's good images: (train/good, test/good)."""
    if name in SYNTH:
        from patchcore.synthetic import make_synthetic_class

        root = make_synthetic_class(OUT / "synthetic", name, n_train=n_synth_train, n_test_good=20, n_test_defect=1)
    else:
        root = MVTEC / name
    return sorted((root / "train" / "good").glob("*.png")), sorted((root / "test" / "good").glob("*.png"))


def one_run(name: str, seed: int, n_fit: int, n_synth_train: int) -> dict:
    import numpy as np

    from patchcore.config import preset_config
    from patchcore.model import PatchCore
    from runtime.images import read_image

    train, test_good = class_images(name, n_synth_train)
    perm = np.random.default_rng(1000 + seed).permutation(len(train))
    fit = [train[i] for i in sorted(perm[:n_fit])]
    evaluate = [train[i] for i in sorted(perm[n_fit:])] + test_good
    models, facts = {}, {}
    for method in ("holdout", "oof"):
        cfg = preset_config("default", backbone="effnet-lite0", device="cpu", seed=seed, calibration=method)
        t0 = time.perf_counter()
        models[method] = PatchCore(cfg).fit(fit)
        cal = models[method].fit_info["calibration"]
        facts[method] = {"fit_seconds": round(time.perf_counter() - t0, 2), "threshold": models[method].threshold,
                         "scale": models[method].scale, "n_images": cal["n_images"], "scores": []}
    assert models["holdout"].preprocess == models["oof"].preprocess
    for s in range(0, len(evaluate), 8):
        emb = models["oof"].embed_images([read_image(p) for p in evaluate[s:s + 8]])
        for method, m in models.items():
            facts[method]["scores"] += m.predict_embeddings(emb).image_scores.tolist()
    for method, f in facts.items():
        f["false_calls"] = int(sum(v >= f["threshold"] for v in f["scores"]))
        f["n_eval"] = len(f["scores"])
        f["rate"] = f["false_calls"] / f["n_eval"]
        del f["scores"]
    return {"class": name, "seed": seed, "n_fit": n_fit, **facts}


def render(res: dict) -> str:
    lines = [
        "## Calibration: out-of-fold thresholds against 5 held-out images",
        "",
        f"Written by `{res['command']}` on {res['date']} ({res['cpu']}, {res['threads']} torch threads). "
        f"effnet-lite0 (ImageNet), default preset, 0.99 quantile. Per class and seed, {res['n_fit']} good training "
        "images are drawn (a small line's set); `holdout` (the earlier default) holds 10% and at least 5 of them out "
        "of the bank and takes their 0.99 quantile; `oof` fits the bank on all of them and takes the 0.99 quantile "
        "of every image's out-of-fold score (5 folds). The false-call rate is the share of the class's other good "
        "images (the rest of train/good and test/good) scored at or above the threshold; the 0.99 quantile promises "
        "1%. Mean and standard deviation over the seeds (each seed draws other images and another coreset).",
        "",
        "| class | good images scored | seeds | holdout: images | holdout: false calls, mean (sd) | holdout: worst "
        "seed | oof: images | oof: false calls, mean (sd) | oof: worst seed | fit s, holdout / oof |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_class: dict[str, list[dict]] = {}
    for r in res["runs"]:
        by_class.setdefault(r["class"], []).append(r)
    for name, runs in by_class.items():
        cells = [name, str(runs[0]["holdout"]["n_eval"]), str(len(runs))]
        for method in ("holdout", "oof"):
            rates = [100 * r[method]["rate"] for r in runs]
            sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
            cells += [str(runs[0][method]["n_images"]), f"{statistics.mean(rates):.1f}% ({sd:.1f})",
                      f"{max(rates):.1f}%"]
        cells.append(f"{statistics.mean(r['holdout']['fit_seconds'] for r in runs):.1f} / "
                     f"{statistics.mean(r['oof']['fit_seconds'] for r in runs):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per run (threshold, false calls / images scored): "
              + "; ".join(f"{r['class']} seed {r['seed']}: holdout {r['holdout']['threshold']:.4g} "
                          f"{r['holdout']['false_calls']}/{r['holdout']['n_eval']}, oof {r['oof']['threshold']:.4g} "
                          f"{r['oof']['false_calls']}/{r['oof']['n_eval']}" for r in res["runs"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "report"])
    ap.add_argument("--classes", default="bottle,screw," + ",".join(SYNTH))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-fit", type=int, default=40)
    ap.add_argument("--n-synth-train", type=int, default=120)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    result = OUT / "result.json"
    if args.what == "run":
        import torch

        res = {"command": "python benchmarks/calibration.py run " + " ".join(sys.argv[2:]),
               "date": _dt.date.today().isoformat(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
               "n_fit": args.n_fit, "runs": []}
        for name in args.classes.split(","):
            for seed in range(args.seeds):
                res["runs"].append(one_run(name, seed, args.n_fit, args.n_synth_train))
                r = res["runs"][-1]
                print(f"{name} seed {seed}: holdout {r['holdout']['rate']:.3f}, oof {r['oof']['rate']:.3f}",
                      file=sys.stderr, flush=True)
                result.write_text(json.dumps(res, indent=1))
                replace_section(args.out, SECTION, render(res))  # a stopped run leaves a truthful, partial one
    replace_section(args.out, SECTION, render(json.loads(result.read_text())))


if __name__ == "__main__":
    main()
