"""The "bank-dims" section of BENCHMARKS.md (issue 42, item 1): how many dimensions the memory bank
needs, by evidence. The default recipe's patch features (the paper's aggregation at 1024 dims,
effnet-lite0, 1% bank, ``--geometry auto`` at the default pixel budget, eq. 7 with 9 neighbours)
reduced to fewer dimensions by the paper's adaptive pooling (``--target-dim``), a PCA fitted on the
good training patches, or a random projection (patchcore.reduction), on every shared class and
synthetic layout; image AUROC, pixel AUROC and PRO against the full 1024 dims, and the search's
milliseconds per image at each size.

    python benchmarks/bank_dims.py run [--classes hazelnut_reduced,...] [--seeds 0,1,2]
    python benchmarks/bank_dims.py report    # (re)write the section from .bench/bank_dims/results.jsonl

Cheap on 2 cores: each class's training and test images are embedded once at 1024 dims (cached
under .bench/bank_dims/features/) and every reduction is derived from those rows; pooling the
1024-dim rows to d equals fitting at ``--target-dim d`` for a d dividing 1024 (checked once, on
hazelnut_reduced, and written in the section). Each (reduction, size, coreset seed) selects its own
1% coreset from its reduced rows, as a fit at that size would; the bank is fitted on every good
training image (the default calibration, out of fold, keeps none back). Search timing: batch 1,
20 test images spread over the test set, median, for the exact numpy search and the int8 candidate
search (default candidate count, no principal components) with the eq. 7 reweighting, seed 0 only.
Each cell is appended to .bench/bank_dims/results.jsonl as it ends; a rerun skips cells already
there; the section is rewritten after every reduction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, cpu_name, replace_section, use_checkout

use_checkout()
from study import TRAIN_STEP, class_folder  # noqa: E402  (the study's classes and layouts, the same folders)

SECTION = "bank-dims"
WORK = ROOT / ".bench" / "bank_dims"
RESULTS = WORK / "results.jsonl"
CLASSES = ("hazelnut_reduced", "transistor_reduced", "synthetic_tall", "synthetic_large", "screw", "bottle")
FULL = 1024
DIMS = (512, 256, 128, 64)
METHODS = ("pool", "pca", "random")
TIMED_IMAGES = 20
RULE = 0.005  # the rule: a new default may cost at most this much image or pixel AUROC anywhere


def log(s: str) -> None:
    print(time.strftime("%H:%M:%S"), s, flush=True)


def records() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()]


def append(rec: dict) -> None:
    with open(RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")


def default_model():
    from patchcore.config import preset_config
    from patchcore.model import PatchCore

    return PatchCore(preset_config("default", backbone="effnet-lite0", weights="default", device="cpu", seed=0,
                                   batch_size=8))


def class_data(cls: str):
    """The default model with the class's geometry, its 1024-dim training rows and test embeddings
    (cached), test labels, masks and plans."""
    import numpy as np

    from patchcore.data import load_class, load_mask
    from patchcore.input_geometry import describe, image_sizes
    from runtime.images import read_image
    from runtime.preprocess import prepare, preprocess_mask, stack_inputs

    model = default_model()
    ds = load_class(class_folder(cls))
    paths = sorted(ds.train)[:: TRAIN_STEP.get(cls, 1)]
    model.set_preprocess(model.resolve_geometry(image_sizes(paths)))
    cache = WORK / "features" / cls
    cache.mkdir(parents=True, exist_ok=True)
    prepared = [prepare(read_image(x.path), model.preprocess) for x in ds.test]
    if not (cache / "test.npy").is_file():
        t0 = time.perf_counter()
        train = np.concatenate(list(model.embedded_batches(paths, desc=f"{cls} train")))
        test = model.embed_tensor(stack_inputs(prepared))
        np.save(cache / "train.npy", train)
        np.save(cache / "test.npy", test)
        log(f"{cls}: embedded {len(paths)} train + {len(ds.test)} test images in {time.perf_counter() - t0:.0f}s")
    train = np.load(cache / "train.npy", mmap_mode="r")
    test = np.load(cache / "test.npy")
    test = test.reshape(len(ds.test), -1, test.shape[-1])
    labels = np.array([x.label for x in ds.test])
    masks = np.stack([preprocess_mask(load_mask(x, p.plan.image_hw), model.preprocess) for x, p in zip(ds.test, prepared)])
    facts = {"geometry": describe(model.preprocess), "n_train": len(paths), "n_test": len(ds.test),
             "patches": int(len(train))}
    return model, np.asarray(train), test, labels, masks, [p.plan for p in prepared], facts


def pooling_check(model, cls: str, train_full) -> dict:
    """Pooling 1024-dim rows to d vs a model fitted at ``--target-dim d``, on the class's first images."""
    import numpy as np

    from patchcore.config import preset_config
    from patchcore.data import load_class
    from patchcore.model import PatchCore
    from patchcore.reduction import pool_matrix

    paths = sorted(load_class(class_folder(cls)).train)[:4]
    out = {}
    for d in DIMS:
        m = PatchCore(preset_config("default", backbone="effnet-lite0", weights="default", device="cpu", seed=0,
                                    target_dim=d), preprocess=model.preprocess)
        direct = np.concatenate(list(m.embedded_batches(paths, desc=f"check {d}")))
        pooled = train_full[: len(direct)] @ pool_matrix(FULL, d)
        out[str(d)] = float(np.abs(direct - pooled).max() / np.abs(direct).max())
    return out


def search_ms(bank, test, kind: str, n_reweight: int) -> float:
    import numpy as np

    from runtime.search.build import build_index
    from runtime.search.scorer import PatchScorer

    scorer = PatchScorer(bank, build_index(bank, kind)[0], n_reweight=n_reweight)
    pick = np.linspace(0, len(test) - 1, min(TIMED_IMAGES, len(test))).round().astype(int)
    for i in pick[:2]:
        scorer.score(test[i : i + 1])
    times = []
    for i in pick:
        t0 = time.perf_counter()
        scorer.score(test[i : i + 1])
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 2)


def run_class(cls: str, seeds: list[int], methods: tuple[str, ...] = METHODS) -> None:
    import numpy as np
    import torch

    from patchcore.coreset import coreset_size, greedy_select, random_projection
    from patchcore.metrics import evaluate
    from patchcore.reduction import reduce_rows, reduction_matrix

    done = {tuple(r["key"]) for r in records() if "key" in r}
    # the paper's pooling first (what --target-dim d fits), then PCA and the random projection: on a
    # large class, the cells a short run reaches are the ones the choice of a dimension needs
    cells = [("full", FULL)] + [(m, d) for m in methods for d in DIMS]
    if all((cls, m, d, s) in done for m, d in cells for s in seeds):
        return
    model, train, test, labels, masks, plans, facts = class_data(cls)
    cfg = model.config
    if cls == CLASSES[0] and not any(r.get("check") == "pooling" for r in records()):
        diffs = pooling_check(model, cls, train)
        append({"check": "pooling", "class": cls, "max_rel_diff": diffs})
        log(f"pooling check: {diffs}")
    n_select = coreset_size(len(train), cfg.coreset_ratio)
    pca = {}  # the class's principal axes, fitted once: a smaller size keeps the leading columns
    for method, d in cells:
        todo = [s for s in seeds if (cls, method, d, s) not in done]
        if not todo:
            continue
        t0 = time.perf_counter()
        if method == "pca":
            pca.setdefault("axes", reduction_matrix("pca", train, max(DIMS)))
            matrix = np.ascontiguousarray(pca["axes"][:, :d])
        else:
            matrix = None if method == "full" else reduction_matrix(method, train, d)
        rows = train if matrix is None else reduce_rows(train, matrix)
        queries = test if matrix is None else reduce_rows(test.reshape(-1, FULL), matrix).reshape(*test.shape[:2], d)
        fit_s = time.perf_counter() - t0
        for seed in todo:
            t1 = time.perf_counter()
            idx = greedy_select(random_projection(torch.from_numpy(rows), cfg.projection_dim, seed), n_select,
                                cfg.n_starts, seed, "cpu")
            coreset_s = time.perf_counter() - t1
            bank = rows[idx]
            model.set_bank(bank)
            pred = model.predict_embeddings(queries, plans)
            m = evaluate(labels, pred.image_scores, masks, pred.maps)
            rec = {"key": [cls, method, d, seed], "class": cls, "method": method, "dim": d, "seed": seed,
                   "image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc, "pro": m.pro,
                   "bank_rows": int(len(bank)), "reduction_seconds": round(fit_s, 2),
                   "coreset_seconds": round(coreset_s, 2), **facts}
            if seed == todo[0]:
                rec["numpy_ms"] = search_ms(bank, queries, "numpy", cfg.n_reweight)
                rec["int8_ms"] = search_ms(bank, queries, "int8", cfg.n_reweight)
            append(rec)
            log(f"{cls} {method} {d} seed {seed}: image {m.image_auroc:.4f} pixel {m.pixel_auroc:.4f} "
                f"pro {m.pro:.4f} coreset {coreset_s:.0f}s" + (f" numpy {rec['numpy_ms']} ms int8 {rec['int8_ms']} ms"
                                                               if "numpy_ms" in rec else ""))
        write_report()
        del rows, queries


def run_choice(cls: str) -> None:
    """What ``export --target-dim auto`` chooses for the class (its good training images only), beside
    what that size really cost on the test set (the table above)."""
    from patchcore.data import load_class
    from patchcore.dims_choice import choose_target_dim
    from patchcore.fit_options import FitOptions

    if any(r.get("check") == "choice" and r["class"] == cls for r in records()):
        return
    cfg = FitOptions(target_dim="auto").config("effnet-lite0")
    cfg.device = "cpu"
    train = sorted(load_class(class_folder(cls)).train)[:: TRAIN_STEP.get(cls, 1)]
    choice = choose_target_dim(cfg, train, log=log)
    append({"check": "choice", "class": cls, **choice.record})


# ------------------------------------------------------------------------------------- report
def _mean(rs: list[dict], k: str) -> float | None:
    vals = [r[k] for r in rs if r.get(k) is not None]
    return statistics.mean(vals) if vals else None


def _cell(rs: list[dict], k: str) -> str:
    vals = [r[k] for r in rs if r.get(k) is not None]
    if not vals:
        return "–"
    return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.pstdev(vals):.3f}" if len(vals) > 1 else "")


def losses(recs: list[dict]) -> dict:
    """(method, dim) -> {class: (d image, d pixel, d PRO)}: the reduced size's mean over seeds minus the
    1024 dims' mean over the same seeds."""
    by = {}
    for r in recs:
        by.setdefault((r["method"], r["dim"]), {}).setdefault(r["class"], {})[r["seed"]] = r
    out = {}
    for (method, d), per_class in by.items():
        if method == "full":
            continue
        for cls, seeds in per_class.items():
            full = by.get(("full", FULL), {}).get(cls, {})
            common = sorted(set(seeds) & set(full))
            if not common:
                continue
            out.setdefault((method, d), {})[cls] = tuple(
                statistics.mean(seeds[s][k] - full[s][k] for s in common) for k in ("image_auroc", "pixel_auroc", "pro"))
    return out


def render(recs: list[dict]) -> str:
    cells = [r for r in recs if "key" in r]
    check = next((r for r in recs if r.get("check") == "pooling"), None)
    classes = [c for c in CLASSES if any(r["class"] == c for r in cells)]
    loss = losses(cells)
    L = ["## The bank's dimension by evidence (issue 42)", "",
         "_Written by `benchmarks/bank_dims.py` from `.bench/bank_dims/results.jsonl`._", "",
         f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice -n 5 python benchmarks/bank_dims.py run`; "
         f"CPU: {cpu_name()}, 2 cores shared with other jobs (timings: compare within this table only).",
         "- The default recipe's patch features (paper aggregation, 1024 dims, effnet-lite0 with its ImageNet "
         "weights, `--geometry auto` at the default budget, 1% bank fitted on every good training image, eq. 7 "
         "with 9 neighbours), reduced to d dims by: **pool** = the paper's adaptive pooling (`--target-dim d`), "
         "**pca** = the d leading principal axes of the good training patches, **random** = a Gaussian random "
         "projection (`patchcore/reduction.py`). Each reduction selects its own 1% coreset from its reduced rows.",
         "- Embedded once per class at 1024 dims; every reduction derives from those rows. Pooling the 1024-dim "
         "rows equals fitting at `--target-dim d`: " + (
             "largest difference relative to the largest value, on 4 training images of "
             f"{check['class']}: " + ", ".join(f"d={d}: {v:.1e}" for d, v in check["max_rel_diff"].items())
             if check else "(not checked yet)") + ".",
         "- Image / pixel AUROC / PRO: mean (± spread, population standard deviation) over the coreset seeds "
         "listed; Δ = the reduced size minus 1024 dims over the same seeds. Search ms: batch 1, median over 20 "
         "test images of the scorer (nearest neighbours + eq. 7): exact numpy, and the int8 candidate search "
         "(default candidates, no principal components), seed 0's bank. The machine's load average was 15-20 "
         "during this run (other engineers' jobs on its 2 cores): the times are inflated and noisy, their ratios "
         "within one class say more than the milliseconds.",
         "- Classes: " + ", ".join(
             f"{c} ({next(r['n_train'] for r in cells if r['class'] == c)} fit / "
             f"{next(r['n_test'] for r in cells if r['class'] == c)} test, {next(r['geometry'] for r in cells if r['class'] == c)}, "
             f"seeds {','.join(str(s) for s in sorted({r['seed'] for r in cells if r['class'] == c}))})" for c in classes)
         + ". " + "".join(f"{c} is fitted on every {n}nd good training image (as in the study section). "
                          for c, n in TRAIN_STEP.items() if c in classes)
         + "screw and bottle ran seed 0 only (each coreset selection over their 256k-334k patches took minutes on "
           "the loaded machine); cells marked \"not run\" did not fit the run's time.", ""]
    L += [f"### The rule: a new default only if it never loses more than {RULE} image or pixel AUROC", "",
          "| reduction / dims | classes | worst Δ image AUROC | worst Δ pixel AUROC | worst Δ PRO | mean Δ pixel AUROC "
          "| passes on the classes run | search time / 1024's, numpy · int8 (median over classes) |",
          "|---|---|---|---|---|---|---|---|"]
    for (method, d) in sorted(loss, key=lambda t: (-t[1], METHODS.index(t[0]))):
        per = loss[(method, d)]
        worst = [min(v[i] for v in per.values()) for i in range(3)]
        ok = worst[0] >= -RULE and worst[1] >= -RULE
        where = ", ".join(c for c in CLASSES if c in per and min(per[c][0], per[c][1]) < -RULE)
        L.append(f"| {method} / {d} | {len(per)} of {len(CLASSES)} | {worst[0]:+.4f} | {worst[1]:+.4f} | "
                 f"{worst[2]:+.4f} | {statistics.mean(v[1] for v in per.values()):+.4f} | "
                 f"{'yes' if ok else f'no ({where})'} | {_search_ratio(cells, method, d)} |")
    L += _choice_table(recs, loss)
    L += ["", "### Per class: image AUROC / pixel AUROC / PRO (Δ image, Δ pixel against 1024), search ms numpy / int8", ""]
    L += ["| reduction / dims | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for method, d in [("full", FULL)] + [(m, d) for d in DIMS for m in METHODS]:
        row = []
        for c in classes:
            rs = [r for r in cells if r["class"] == c and r["method"] == method and r["dim"] == d]
            if not rs:
                row.append("not run")
                continue
            text = " / ".join(_cell(rs, k) for k in ("image_auroc", "pixel_auroc", "pro"))
            if (method, d) in loss and c in loss[(method, d)]:
                di, dp, _ = loss[(method, d)][c]
                text += f" ({di:+.3f}, {dp:+.3f})"
            t = next((r for r in rs if "numpy_ms" in r), None)
            row.append(text + (f"; {t['numpy_ms']:.1f} / {t['int8_ms']:.1f} ms" if t else ""))
        if any(x != "not run" for x in row):
            L.append(f"| {method} / {d} | " + " | ".join(row) + " |")
    return "\n".join(L) + "\n"


def _choice_table(recs: list[dict], loss: dict) -> list[str]:
    """What ``--target-dim auto`` chose per class from its good images, and what that size really cost."""
    choices = [r for r in recs if r.get("check") == "choice"]
    if not choices:
        return []
    L = ["", "### `export --target-dim auto` on each class: its choice from the good training images, and the "
         "real cost of that size", "",
         "`python benchmarks/bank_dims.py choice`: the default recipe with `--target-dim auto`, as `export` runs it. "
         "The choice sees only the good training images (at most 60, 3 folds, synthetic defects); the last "
         "column is the chosen size's Δ on the real test set from the table above (pool, mean over seeds). "
         "A chosen size that really loses more than the tolerance is a wrong choice.", "",
         "| class | chosen | evidence: image / pixel AUROC on synthetic defects, 1024 · 512 · 256 · 128 | "
         "choice s | real Δ image, Δ pixel of the chosen size |", "|---|---|---|---|---|"]
    for r in sorted(choices, key=lambda r: CLASSES.index(r["class"])):
        f = r.get("figures", {})
        ev = " · ".join(f"{f[d]['image_auroc']:.3f} / {f[d]['pixel_auroc']:.3f}" for d in ("1024", "512", "256", "128")
                        if d in f) or r["reason"]
        real = loss.get(("pool", r["chosen"]), {}).get(r["class"])
        real_text = "0 (1024 kept)" if r["chosen"] == FULL else (f"{real[0]:+.3f}, {real[1]:+.3f}" if real else "–")
        L.append(f"| {r['class']} | {r['chosen']} | {ev} | {r.get('seconds', 0):.0f} | {real_text} |")
    return L


def _search_ratio(cells: list[dict], method: str, d: int) -> str:
    """The search's time at ``d`` over its time at 1024 on the same class (seed 0's banks), median over classes."""
    full = {r["class"]: r for r in cells if r["method"] == "full" and "numpy_ms" in r}
    ts = [(r, full[r["class"]]) for r in cells if r["method"] == method and r["dim"] == d and "numpy_ms" in r
          and r["class"] in full]
    if not ts:
        return "–"
    return " · ".join(f"{statistics.median(r[k] / f[k] for r, f in ts):.2f}" for k in ("numpy_ms", "int8_ms"))


def write_report() -> None:
    replace_section(ROOT / "BENCHMARKS.md", SECTION, render(records()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("run", "choice", "report"))
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma-separated, in the order to run")
    ap.add_argument("--seeds", default="0,1,2", help="coreset seeds, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS), help="reductions to run, comma-separated")
    a = ap.parse_args(argv)
    if a.mode == "report":
        write_report()
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    unknown = [c for c in a.classes.split(",") if c not in CLASSES]
    if unknown:
        print(f"error: unknown class {unknown[0]!r}; choose from {', '.join(CLASSES)}", file=sys.stderr)
        return 2
    for cls in a.classes.split(","):
        if a.mode == "choice":
            run_choice(cls)
            write_report()
        else:
            run_class(cls, [int(s) for s in a.seeds.split(",")], tuple(a.methods.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
