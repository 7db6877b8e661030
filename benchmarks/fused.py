"""The "fused" section of BENCHMARKS.md (issue 41, item 2): ``--aggregation fused`` beside its two parts,
``paper`` (1024 dims) and ``local-mean`` (native dims), on every shared class and synthetic layout.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice -n 5 python benchmarks/fused.py run
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice -n 5 python benchmarks/fused.py timing --rounds 3
    python benchmarks/fused.py report     # (re)write the section from .bench/fused/*.jsonl

The defaults otherwise (effnet-lite0 with its ImageNet weights, ``--geometry auto`` at 320 x 320, a 1%
bank, 9 eq. 7 neighbours, 5 out-of-fold folds). What is shared, to keep it cheap: the trunk runs once per
image (the fused feature model gives both parts' columns; each recipe is its own part); per coreset seed,
each part's bank and out-of-fold scores come from :func:`patchcore.fused.fit_parts` (what the fused fit
runs), so "paper" and "local-mean" are those recipes' default fits (bank on every training image) and
"fused" is their combination by each normaliser of :data:`patchcore.fused.NORMALISERS` (and, measured
here only, the larger of the quantile-normalised maps and scores instead of their mean). Fit seconds: a
recipe alone = embedding + its coreset + its out-of-fold scoring; fused = embedding + both (the
operating point's synthetic defects, the same work for every recipe, are left out). ``run`` also keeps
a torch batch-1 figure per class in results.jsonl (not shown: too noisy on the shared machine); the
section's cost per image is ``timing``'s: the runtime's way (onnxruntime graph + exact searches),
recipes interleaved. The small classes run 3 coreset seeds; bottle and screw one (screw on every
second training image, as the study: the 2-core budget).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, cpu_name, replace_section, use_checkout

use_checkout()
from study import class_folder  # noqa: E402

SECTION = "fused"
WORK = ROOT / ".bench" / "fused"
RESULTS = WORK / "results.jsonl"
TIMING = WORK / "timing.jsonl"
CLASSES = ("synthetic_tall", "hazelnut_reduced", "transistor_reduced", "synthetic_large", "bottle", "screw")
SEEDS = {"bottle": (0,), "screw": (0,)}  # the rest: 0, 1, 2
TRAIN_STEP = {"screw": 2}
RECIPES = ("paper", "local-mean")
GAP = 0.015  # the bar: fused never worse than the better part by more than this


def log(msg: str) -> None:
    print(f"[fused {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def done_keys() -> set:
    if not RESULTS.is_file():
        return set()
    return {tuple(json.loads(x)["key"]) for x in RESULTS.read_text().splitlines() if x.strip()}


def _score(scorer, store, rpi: int, n: int, model):
    """A part's test image scores and maps, from its stored test embeddings, 8 images at a time."""
    import numpy as np

    from patchcore.out_of_fold import image_batches
    from runtime.postprocess import finish

    scores, maps = [], []
    for s in range(0, n, 8):
        idx = list(range(s, min(n, s + 8)))
        emb = next(image_batches(store, rpi, idx, batch=len(idx))).reshape(len(idx), rpi, -1)
        pred = finish(scorer.score(emb), model.layout, model.config.blur_sigma, None, None)
        scores.append(pred.image_scores)
        maps.append(pred.maps)
    return np.concatenate(scores), np.concatenate(maps)


def runtime_ms(model, banks: list, parts: list, images: list) -> dict:
    """Median ms per image at batch 1: each recipe's feature graph (torch) + searches + maps."""
    import numpy as np
    import torch

    from patchcore.config import preset_config
    from patchcore.fused import plain_scorer
    from patchcore.model import PatchCore
    from runtime.fused import FusedScorer
    from runtime.postprocess import finish
    from runtime.preprocess import prepare, stack_inputs

    torch.set_num_threads(2)
    x = [stack_inputs([prepare(im, model.preprocess)]) for im in images]
    out = {}
    for name in (*RECIPES, "fused"):
        if name == "fused":
            fm, scorer = model, FusedScorer(parts, [plain_scorer(model, b) for b in banks])
        else:
            fm = PatchCore(preset_config("default", backbone="effnet-lite0", aggregation=name, device="cpu"),
                           preprocess=model.preprocess)
            scorer = plain_scorer(model, banks[RECIPES.index(name)])
        times = []
        for i, xi in enumerate([x[0], *x]):  # the first is a warm-up
            t0 = time.perf_counter()
            emb = fm.embed_tensor(xi).reshape(1, -1, fm.embed_dim)
            finish(scorer.score(emb), model.layout, model.config.blur_sigma, None, None)
            if i:
                times.append(1000 * (time.perf_counter() - t0))
        out[name] = round(statistics.median(times), 1)
    return out


def run_class(cls: str, done: set) -> None:
    import contextlib

    import numpy as np

    from patchcore.config import preset_config
    from patchcore.data import load_class, load_mask
    from patchcore.fused import NORMALISERS, fit_parts, normaliser, plain_scorer
    from patchcore.input_geometry import describe, image_sizes
    from patchcore.metrics import evaluate
    from patchcore.model import PatchCore
    from patchcore.streaming import EmbeddingStore
    from runtime.fused import combine_images, combine_maps, split_columns
    from runtime.images import read_image
    from runtime.preprocess import prepare, preprocess_mask, stack_inputs

    seeds = SEEDS.get(cls, (0, 1, 2))
    if all((cls, s) in done for s in seeds):
        return
    model = PatchCore(preset_config("default", backbone="effnet-lite0", aggregation="fused", device="cpu",
                                    work_dir=str(WORK / "spill")))
    ds = load_class(class_folder(cls))
    paths = sorted(ds.train)[:: TRAIN_STEP.get(cls, 1)]
    model.set_preprocess(model.resolve_geometry(image_sizes(paths)))
    dims = model.feature_model.aggregator.part_dims
    labels = np.array([x.label for x in ds.test])
    (WORK / "spill").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        train = [stack.enter_context(EmbeddingStore(model.config.work_dir)) for _ in dims]
        test = [stack.enter_context(EmbeddingStore(model.config.work_dir)) for _ in dims]
        t0 = time.perf_counter()
        for rows in model.embedded_batches(paths, f"{cls} train"):
            for store, part in zip(train, split_columns(rows, dims)):
                store.append(part)
        embed_s = time.perf_counter() - t0
        masks = []
        for s in range(0, len(ds.test), 8):
            prepared = [prepare(read_image(x.path), model.preprocess) for x in ds.test[s : s + 8]]
            emb = model.embed_tensor(stack_inputs(prepared))
            for store, part in zip(test, split_columns(emb.reshape(-1, emb.shape[-1]), dims)):
                store.append(part)
            masks += [preprocess_mask(load_mask(x, p.plan.image_hw), model.preprocess) for x, p in
                      zip(ds.test[s : s + 8], prepared)]
        masks = np.stack(masks)
        log(f"{cls}: {len(paths)} train / {len(ds.test)} test embedded in {embed_s:.0f} s "
            f"({describe(model.preprocess)})")
        for seed in seeds:
            if (cls, seed) in done:
                continue
            model.config.seed = seed
            fits = fit_parts(model, train, len(paths))
            rec = {"key": [cls, seed], "class": cls, "seed": seed, "n_train": len(paths), "n_test": len(ds.test),
                   "geometry": describe(model.preprocess), "bank_rows": int(len(fits[0].shard.rows)),
                   "embed_seconds": round(embed_s, 2), "metrics": {}, "fit_seconds": {}}
            scored = []
            for f, store in zip(fits, test):
                scorer = plain_scorer(model, f.shard.rows)
                t0 = time.perf_counter()
                scored.append(_score(scorer, store, store.rows // len(ds.test), len(ds.test), model))
                m = evaluate(labels, scored[-1][0], masks, scored[-1][1])
                rec["metrics"][f.aggregation] = [m.image_auroc, m.pixel_auroc, m.pro]
                rec["fit_seconds"][f.aggregation] = round(embed_s + f.shard.coreset_seconds + f.oof_seconds, 2)
            rec["fit_seconds"]["fused"] = round(embed_s + sum(f.shard.coreset_seconds + f.oof_seconds for f in fits), 2)
            for how in NORMALISERS:
                parts = [normaliser(f.aggregation, f.dim, f.oof, how) for f in fits]
                m = evaluate(labels, combine_images(parts, [s[0] for s in scored]), masks,
                             combine_maps(parts, [s[1] for s in scored]))
                rec["metrics"][f"fused-{how}"] = [m.image_auroc, m.pixel_auroc, m.pro]
                if how == "quantile":  # the larger of the normalised parts instead of their mean
                    m = evaluate(labels, np.maximum(*[(s[0] - p.image_center) / p.image_scale for p, s in zip(parts, scored)]),
                                 masks, np.maximum(*[(s[1] - p.pixel_center) / p.pixel_scale for p, s in zip(parts, scored)]))
                    rec["metrics"]["fused-quantile-max"] = [m.image_auroc, m.pixel_auroc, m.pro]
            if seed == seeds[0]:
                images = [read_image(x.path) for x in ds.test[:8]]
                parts = [normaliser(f.aggregation, f.dim, f.oof) for f in fits]
                rec["ms_per_image"] = runtime_ms(model, [f.shard.rows for f in fits], parts, images)
            with open(RESULTS, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done.add((cls, seed))
            log(f"{cls} seed {seed}: " + ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}/{v[2]:.3f}"
                                                   for k, v in rec["metrics"].items()))
            write_report()


def run_timing(cls: str, rounds: int) -> None:
    """The runtime's cost per image, as the runtime runs it: each recipe's feature graph in onnxruntime
    (fp32, batch 1; fused: one trunk, both aggregations) + its exact searches (fused: both) + maps, on
    real test images, interleaved round by round (the machine is shared). The banks have the sizes the
    class's fit gave (results.jsonl), filled with its training patches."""
    import numpy as np
    import onnxruntime as ort

    from patchcore.config import preset_config
    from patchcore.data import load_class
    from patchcore.fused import plain_scorer
    from patchcore.input_geometry import image_sizes
    from patchcore.model import PatchCore
    from patchcore.onnx_graph import INPUT_NAME, trace_feature_graph
    from runtime.fused import FusedPart, FusedScorer, split_columns
    from runtime.images import read_image
    from runtime.postprocess import finish
    from runtime.preprocess import prepare, stack_inputs

    rec = next(r for r in _records() if r["class"] == cls)
    ds = load_class(class_folder(cls))
    paths = sorted(ds.train)[:: TRAIN_STEP.get(cls, 1)]
    fused = PatchCore(preset_config("default", backbone="effnet-lite0", aggregation="fused", device="cpu"))
    fused.set_preprocess(fused.resolve_geometry(image_sizes(paths)))
    rows = fused.embed_images([read_image(p) for p in paths[:: max(1, len(paths) // 8)]])
    rows = rows.reshape(-1, rows.shape[-1])
    bank = rows[np.random.default_rng(0).choice(len(rows), rec["bank_rows"], replace=len(rows) < rec["bank_rows"])]
    banks = split_columns(bank, fused.feature_model.aggregator.part_dims)
    parts = [FusedPart(a, b.shape[1], 0.0, 1.0, 0.0, 1.0) for a, b in zip(RECIPES, banks)]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sides = {}
    for name in (*RECIPES, "fused"):
        model = fused if name == "fused" else PatchCore(
            preset_config("default", backbone="effnet-lite0", aggregation=name, device="cpu"), preprocess=fused.preprocess)
        sess = ort.InferenceSession(trace_feature_graph(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
        scorer = (FusedScorer(parts, [plain_scorer(fused, b) for b in banks]) if name == "fused"
                  else plain_scorer(fused, banks[RECIPES.index(name)]))
        sides[name] = (sess, scorer)
    x = [stack_inputs([prepare(read_image(t.path), fused.preprocess)]) for t in ds.test[:4]]
    times = {k: {"graph": [], "search": []} for k in sides}

    def once(name: str, xi) -> None:
        sess, scorer = sides[name]
        t0 = time.perf_counter()
        emb = sess.run(None, {INPUT_NAME: xi})[0]
        t1 = time.perf_counter()
        finish(scorer.score(emb.reshape(1, -1, emb.shape[-1])), fused.layout, fused.config.blur_sigma, None, None)
        times[name]["graph"].append(1000 * (t1 - t0))
        times[name]["search"].append(1000 * (time.perf_counter() - t1))

    for name in sides:  # warm-up
        once(name, x[0])
        times[name] = {"graph": [], "search": []}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            for xi in x:
                once(name, xi)
    out = {"key": ["timing", cls], "class": cls, "rounds": rounds, "images": len(x), "load_start": os.getloadavg()[0],
           "ms": {k: {part: round(statistics.median(v), 1) for part, v in t.items()} for k, t in times.items()}}
    with open(TIMING, "a") as fh:
        fh.write(json.dumps(out) + "\n")
    log(f"{cls} timing: {out['ms']}")


def _records() -> list[dict]:
    return [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()] if RESULTS.is_file() else []


def _timings() -> dict:
    if not TIMING.is_file():
        return {}
    return {json.loads(x)["class"]: json.loads(x) for x in TIMING.read_text().splitlines() if x.strip()}


# ------------------------------------------------------------------------------------- report
def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def render(records: list[dict], started: str | None = None) -> str:
    from patchcore.fused import DEFAULT_NORMALISER

    fused = f"fused-{DEFAULT_NORMALISER}"
    classes = [c for c in CLASSES if any(r["class"] == c for r in records)]
    lines = ["## The fused aggregation", "",
             "_Written by `benchmarks/fused.py` from `.bench/fused/results.jsonl`; every figure below comes from "
             "its runs._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice -n 5 python benchmarks/fused.py run`"
             + (f" (started {started})" if started else ""),
             f"- Machine: {cpu_name()}, 2 cores shared with three other engineers' jobs (times are upper bounds; "
             "compare within the table)",
             "- effnet-lite0 (ImageNet), `--geometry auto` at 320 x 320, 1% bank, 9 eq. 7 neighbours, 5 folds; "
             "paper at 1024 dims, local-mean at its native 152; fused = both, each normalised by its out-of-fold "
             f"good scores (`{DEFAULT_NORMALISER}`, the shipped normaliser) and averaged. Mean over coreset seeds, "
             "(range); screw on every second training image.", "",
             "Image AUROC / pixel AUROC / PRO:", "",
             "| class | seeds | paper | local-mean | fused | fused - better part (image / pixel / PRO) | "
             "fused - paper, the default's features | fit s (paper / local-mean / fused) |",
             "|---|---|---|---|---|---|---|---|"]
    worst = {0: [], 1: [], 2: []}
    for c in classes:
        rs = [r for r in records if r["class"] == c]
        col = {k: [[r["metrics"][k][i] for r in rs] for i in range(3)] for k in (*RECIPES, fused)}
        gaps, over_paper = [], []
        for i in range(3):
            best = max(statistics.mean(col[k][i]) for k in RECIPES)
            gaps.append(statistics.mean(col[fused][i]) - best)
            worst[i].append(gaps[-1])
            over_paper.append(statistics.mean(col[fused][i]) - statistics.mean(col["paper"][i]))
        fit = {k: statistics.mean(r["fit_seconds"][k] for r in rs) for k in (*RECIPES, "fused")}
        cells = [" / ".join(_cell(col[k][i]) for i in range(3)) for k in (*RECIPES, fused)]
        lines.append(f"| {c} | {len(rs)} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{' / '.join(f'{g:+.3f}' for g in gaps)} | {' / '.join(f'{g:+.3f}' for g in over_paper)} | "
                     f"{fit['paper']:.0f} / {fit['local-mean']:.0f} / {fit['fused']:.0f} |")
    if classes:
        names = ("image", "pixel", "PRO")
        within = [all(g >= -GAP for g in worst[i]) for i in range(3)]
        lines += ["", f"- Worst fused - better part over the classes: "
                  + ", ".join(f"{names[i]} {min(worst[i]):+.3f}" for i in range(3))
                  + f"; within {GAP} of the better part everywhere: "
                  + ", ".join(f"{names[i]} {'yes' if within[i] else 'no'}" for i in range(3)) + "."]
    timing = _timings()
    if timing:
        lines += ["", "The runtime's cost per image (`benchmarks/fused.py timing`): each recipe's feature graph in "
                  "onnxruntime fp32 at batch 1 (2 threads) + its exact searches and maps (fused: both), median ms over "
                  "4 test images x the rounds, recipes interleaved round by round:", "",
                  "| class | rounds | paper: graph + search | local-mean: graph + search | fused: graph + search | "
                  "fused / paper | fused / local-mean | load at start |", "|---|---|---|---|---|---|---|---|"]
        for c in classes:
            t = timing.get(c)
            if not t:
                continue
            ms = t["ms"]
            total = {k: ms[k]["graph"] + ms[k]["search"] for k in ms}
            lines.append(f"| {c} | {t['rounds']} | " + " | ".join(
                f"{ms[k]['graph']:.0f} + {ms[k]['search']:.0f} = {total[k]:.0f}" for k in (*RECIPES, "fused"))
                + f" | {total['fused'] / total['paper']:.2f}x | {total['fused'] / total['local-mean']:.2f}x | "
                f"{t['load_start']:.1f} |")
    lines += ["", "The normalisers (fused image / pixel / PRO, mean over seeds and classes; and the worst class's "
              "fused - better part):", "", "| normaliser | mean image | mean pixel | mean PRO | worst gap image | "
              "worst gap pixel | worst gap PRO |", "|---|---|---|---|---|---|---|"]
    for key in sorted({k for r in records for k in r["metrics"] if k.startswith("fused-")}):
        means, gaps = [], []
        for i in range(3):
            per_class = []
            for c in classes:
                rs = [r for r in records if r["class"] == c]
                f = statistics.mean(r["metrics"][key][i] for r in rs)
                best = max(statistics.mean(r["metrics"][k][i] for r in rs) for k in RECIPES)
                per_class.append((f, f - best))
            means.append(statistics.mean(p[0] for p in per_class))
            gaps.append(min(p[1] for p in per_class))
        lines.append(f"| `{key[6:]}` | " + " | ".join(f"{v:.3f}" for v in means) + " | "
                     + " | ".join(f"{g:+.3f}" for g in gaps) + " |")
    return "\n".join(lines)


def write_report(started: str | None = None) -> None:
    records = _records()
    replace_section(ROOT / "BENCHMARKS.md", SECTION, render(records, started))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("run", "timing", "report"))
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.what == "report":
        write_report()
        return 0
    if args.what == "timing":
        for cls in args.classes.split(","):
            run_timing(cls, args.rounds)
            write_report()
        return 0
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    done = done_keys()
    for cls in args.classes.split(","):
        run_class(cls, done)
    write_report(started)
    log(f"done; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
