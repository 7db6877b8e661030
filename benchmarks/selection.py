"""The "Recipe selection" section of BENCHMARKS.md: does `--preset auto` choose well?

    python benchmarks/selection.py run [--classes hazelnut_reduced,...] [--seeds 0,1,2] [--ng] [--fit-time bottle]
    python benchmarks/selection.py report      # (re)write the section from .bench/selection/results.jsonl

Per class (the shared MVTec AD classes with real defects and the synthetic layouts of
``patchcore synth``) and seed: the selection exactly as `--preset auto` runs it (effnet-lite0,
ImageNet weights, 1% bank), its time, and each candidate's real figures from a check run beside it
(banks from the selection's good images; the check's images never enter the choice, and its time
is kept apart from the selection's). With ``--ng`` the class's defective test images are split
(seeded) in two halves: one is given as ``--ng`` (of which, as with the command line, the choosing
half enters the ranking), the figures come from the other half and the good test images only. The
synthetic ranking is set beside the real one (Kendall tau), and the chosen recipe's real figures
beside the best candidate's and the fixed default's (the regret). For the classes in
``--fit-time``, one default fit (``patchcore fit``'s path, all training images) is timed in the
same process, for the cost ratio, and scored on the test set. Each row is appended to
.bench/selection/results.jsonl as it ends, and the section is rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import ROOT, cpu_name, replace_section, use_checkout

use_checkout()

SECTION, WORK = "selection", ROOT / ".bench" / "selection"
RESULTS = WORK / "results.jsonl"
CLASSES = ("hazelnut_reduced", "synthetic_tall", "transistor_reduced", "bottle", "synthetic_large", "screw")
REAL = ("image_auroc", "pixel_auroc", "pro")


def class_folder(name: str) -> Path:
    from study import class_folder as study_folder  # the same synthetic layouts as the study

    return study_folder(name)


def real_mean(r: dict | None) -> float | None:
    if not r:
        return None
    vals = [r[k] for k in REAL if r.get(k) is not None]
    return sum(vals) / len(vals) if vals else None


def split_defects(ds, seed: int):
    """(the ``--ng`` half of the defective test images, the check set: the other half + the good ones)."""
    import numpy as np

    bad = [s for s in ds.test if s.label]
    perm = np.random.default_rng([seed, 41]).permutation(len(bad))
    given = {bad[i].path for i in perm[:len(bad) // 2]}
    ng = [s for s in bad if s.path in given]
    return ng, replace(ds, test=[s for s in ds.test if s.path not in given])


def default_fit(ds, base, log, name: str) -> dict:
    from patchcore.evaluation import score_dataset
    from patchcore.metrics import evaluate
    from patchcore.model import PatchCore
    from patchcore.recipe import fixed_default

    t0 = time.perf_counter()
    model = PatchCore(fixed_default(base)).fit(ds.train)
    fit_s = time.perf_counter() - t0
    log(f"{name}: one default fit {fit_s:.1f} s")
    pred, labels, masks = score_dataset(model, ds)
    m = evaluate(labels, pred.image_scores, masks, pred.maps).to_dict()
    return {"seconds": round(fit_s, 1), "image_auroc": m.get("image_auroc"), "pixel_auroc": m.get("pixel_auroc")}


def run_class(name: str, seed: int, ng: bool, fit_time: bool, log) -> dict:
    from scipy.stats import kendalltau

    from patchcore.config import preset_config
    from patchcore.data import load_mask, load_test_set
    from patchcore.recipe import select_recipe
    from patchcore.recipe.real_ng import RealNG, choosing_half
    from runtime.images import read_image

    ds = load_test_set(class_folder(name))
    base = preset_config("auto", backbone="effnet-lite0", weights="default", seed=seed, device="cpu")
    fit = default_fit(ds, base, log, name) if fit_time else None
    ng_imgs, check, n_ng = None, ds, 0
    if ng:
        given, check = split_defects(ds, seed)
        n_ng = len(given)
        by = {s.path: s for s in given}
        ng_imgs = []
        for p in choosing_half([s.path for s in given], seed):
            img = read_image(p)
            ng_imgs.append(RealNG(p, img, load_mask(by[p], img.shape) if by[p].mask_path else None))
    t0 = time.perf_counter()
    sel = select_recipe(base, ds, log=lambda s: log(f"{name}: {s}"), ng=ng_imgs, check=check)
    total = time.perf_counter() - t0
    rec = sel.record
    rows = [c for c in rec.get("candidates", []) if "place" in c]
    real = [real_mean(c.get("real")) for c in rows]
    tau = None
    if len(rows) > 2 and all(v is not None for v in real):
        tau = float(kendalltau([c["place"] for c in rows], [-v for v in real]).statistic)
    by_label = {c["label"]: c for c in rows}
    best = max(rows, key=lambda c: real_mean(c.get("real")) or -1) if rows else None
    check_s = rec.get("check_seconds") or 0.0
    groups = rec.get("groups", {})
    # the challenger's lead; with the default kept for want of any lead, the best group's (negative) lead
    lead = next((g for g in groups.values() if g["challenger"] == rec.get("challenger")), None) or \
        max(groups.values(), key=lambda g: g["lead"], default=None)
    return {"class": name, "seed": seed, "ng": n_ng if ng else None, "ng_used": len(ng_imgs or []),
            "n_train": len(ds.train), "n_test": len(check.test), "verdict": rec["verdict"],
            "reason": rec["reason"], "decided_by": rec.get("decided_by"), "chosen": rec.get("chosen"),
            "default": rec.get("default"), "challenger": rec.get("challenger"), "lead": lead, "groups": groups,
            "draws": rec.get("validation", {}).get("draws"), "best_real": best["label"] if best else None,
            "real": {c["label"]: c.get("real") for c in rows}, "place": {c["label"]: c["place"] for c in rows},
            "figure": {c["label"]: c["figure"] for c in rows}, "latency_ms": {c["label"]: c["latency_ms"] for c in rows},
            "kendall_tau": tau, "selection_seconds": round(total - check_s, 1), "check_seconds": round(check_s, 1),
            "default_fit": fit, "chosen_real": (by_label.get(rec.get("chosen")) or {}).get("real"),
            "default_real": (by_label.get(rec.get("default")) or {}).get("real")}


def _f(v, d=3):
    return "–" if v is None else f"{v:.{d}f}"


def _triple(r):
    return "–" if not r else " / ".join(_f(r.get(k)) for k in REAL)


def _row_name(r: dict) -> str:
    return f"{r['class']} (seed {r['seed']}{', --ng' if r.get('ng') is not None else ''})"


def render(records: list[dict], meta: dict) -> str:
    runs = {}
    for r in records:
        runs.setdefault((r.get("command"), r.get("started")), []).append(_row_name(r))
    L = ["## Recipe selection: `--preset auto` on held-out good images with synthetic defects (and `--ng`)", "",
         "_Written by `benchmarks/selection.py` from `.bench/selection/results.jsonl`; every row below is from the "
         "runs listed here (the rule of issue 41: each aggregation's best against the default)._", "",
         *[f"- Command: `{c}`, started {t} ({', '.join(cs)})" for (c, t), cs in runs.items()],
         f"- CPU: {meta.get('cpu', '?')}, 2 cores shared with other engineers' jobs: compare times within a row only.",
         "- effnet-lite0 (ImageNet weights), 1% bank; selection as `--preset auto` runs it: at most 60 good training "
         "images in 3 folds (3 fold draws below 100 good training images), 3 synthetic defects per family x size per "
         "fold (6 families x 3 sizes), candidates aggregation x distinct input size at the default's k=9 "
         "(docs/selection.md).",
         "- Real figures (image AUROC / pixel AUROC / PRO, maps at the original image, longer side at most 448) come "
         "from a check beside the selection: each candidate's bank from the selection's good images, scored on "
         "test/ (with --ng: the good test images and the defective half not given as --ng). They never enter the "
         "choice. Kendall tau: the candidates' place against their order by the mean of the three real figures.",
         "- Lead: the challenger's weighted figure minus the default's, mean over folds [95% interval]; spread: its "
         "range over the fold draws. Regret = the best candidate's real mean minus the chosen one's; vs default = "
         "the chosen one's minus the fixed default's.",
         "- selection s: the selection itself (what `--preset auto` adds to a fit); check s: the real check "
         "(benchmark only). Default fit: `patchcore fit`'s path on all training images, timed in the same process "
         "just before, and its test figures (image / pixel AUROC).",
         *[f"- {n}" for n in meta.get("notes", [])], ""]
    L += ["| class | --ng (used) | verdict | decided by | chosen | lead [interval] (spread) | real (chosen) | "
          "real (fixed default) | best candidate on real | regret | vs default | tau | selection s | check s | "
          "default fit s (image / pixel AUROC) | selection / fit |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        best = r["real"].get(r["best_real"]) if r.get("best_real") else None
        ch, de = real_mean(r.get("chosen_real")), real_mean(r.get("default_real"))
        regret = None if best is None or ch is None else real_mean(best) - ch
        gain = None if ch is None or de is None else ch - de
        ld = r.get("lead")
        lead = "–" if not ld else (f"{ld['lead']:+.3f} [{ld['interval'][0]:+.3f}, {ld['interval'][1]:+.3f}]" +
                                  (f" ({ld['lead_spread']:.3f})" if ld.get("lead_spread") is not None else ""))
        fit = r.get("default_fit")
        fit_s = "–" if not fit else f"{fit['seconds']:.0f} ({_f(fit['image_auroc'])} / {_f(fit['pixel_auroc'])})"
        ratio = "–" if not fit else f"{r['selection_seconds'] / fit['seconds']:.2f}x"
        ngs = "–" if r.get("ng") is None else f"{r['ng']} ({r['ng_used']})"
        L.append(f"| {r['class']} s{r['seed']} | {ngs} | {r['verdict']} | {r.get('decided_by') or '–'} | "
                 f"{r.get('chosen') or '–'} | {lead} | {_triple(r.get('chosen_real'))} | "
                 f"{_triple(r.get('default_real'))} | {r.get('best_real') or '–'} ({_triple(best)}) | {_f(regret)} | "
                 f"{'–' if gain is None else f'{gain:+.3f}'} | {_f(r.get('kendall_tau'), 2)} | "
                 f"{r['selection_seconds']:.0f} | {r.get('check_seconds', 0):.0f} | {fit_s} | {ratio} |")
    L += [""]
    for r in records:
        L += [f"### {_row_name(r)}: {r['n_train']} good training images, {r['n_test']} check images", "",
              f"{r['verdict']}: {r['reason']}.", "",
              "| candidate | place | figure | real image / pixel / PRO | ms / image |", "|---|---|---|---|---|"]
        for lab in sorted(r["place"], key=lambda x: r["place"][x]):
            L.append(f"| {lab} | {r['place'][lab]} | {_f(r['figure'][lab])} | {_triple(r['real'].get(lab))} | "
                     f"{_f(r['latency_ms'].get(lab), 0)} |")
        L.append("")
    return "\n".join(L)


def write_report() -> None:
    records = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()] if RESULTS.is_file() else []
    meta_p = WORK / "meta.json"
    meta = json.loads(meta_p.read_text()) if meta_p.is_file() else {}
    replace_section(ROOT / "BENCHMARKS.md", SECTION, render(records, meta))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("run", "report"))
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ng", action="store_true", help="half the test defects as --ng, figures on the other half")
    ap.add_argument("--fit-time", default="", help="classes whose default fit is timed (and scored) too")
    a = ap.parse_args(argv)
    if a.mode == "report":
        write_report()
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    meta_p = WORK / "meta.json"
    meta = json.loads(meta_p.read_text()) if meta_p.is_file() else {}
    meta.update(cpu=cpu_name())
    meta_p.write_text(json.dumps(meta))
    command = "nice -n 5 python benchmarks/selection.py run " + " ".join(argv or sys.argv[2:])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    done = set()
    if RESULTS.is_file():
        done = {(r["class"], r["seed"], r.get("ng") is not None)
                for r in map(json.loads, filter(str.strip, RESULTS.read_text().splitlines()))}

    def log(s: str) -> None:
        print(time.strftime("%H:%M:%S"), s, flush=True)

    fit_time = set(a.fit_time.split(",")) if a.fit_time else set()
    for name in a.classes.split(","):
        for seed in map(int, a.seeds.split(",")):
            if (name, seed, a.ng) in done:
                continue
            rec = {**run_class(name, seed, a.ng, name in fit_time and seed == 0, log), "command": command,
                   "started": started}
            with open(RESULTS, "a") as f:
                f.write(json.dumps(rec) + "\n")
            write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
