"""The "Recipe selection" section of BENCHMARKS.md: does `--preset auto` choose well?

    python benchmarks/selection.py run [--classes hazelnut_reduced,...] [--fit-time bottle]
    python benchmarks/selection.py report      # (re)write the section from .bench/selection/results.jsonl

Per class (the shared MVTec AD classes with real defects and the synthetic layouts of
``patchcore synth``): the selection exactly as `--preset auto` runs it (effnet-lite0, ImageNet
weights, 1% bank, seed 0), its time, and each candidate's real figures from the selection's own
check (banks from the selection's good images; the real defects are never used to choose). The
synthetic ranking is set beside the real one (Kendall tau over the candidates), and the chosen
recipe's real figures beside the best candidate's and the fixed default's (the regret). For the
classes in ``--fit-time``, one default fit (``patchcore fit``'s path, all training images) is
timed in the same process, for the cost ratio. Each class is appended to
.bench/selection/results.jsonl as it ends, and the section is rewritten after every class. A
class already in the section but not in results.jsonl (an earlier run whose .bench is gone) is
read back from the section and kept, so runs of different classes add up.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from common import ROOT, _markers, cpu_name, replace_section, use_checkout

use_checkout()

SECTION, WORK = "selection", ROOT / ".bench" / "selection"
RESULTS = WORK / "results.jsonl"
CLASSES = ("hazelnut_reduced", "transistor_reduced", "synthetic_tall", "bottle", "synthetic_large", "screw")
REAL = ("image_auroc", "pixel_auroc", "pro")


def class_folder(name: str) -> Path:
    from study import class_folder as study_folder  # the same synthetic layouts as the study

    return study_folder(name)


def real_mean(r: dict | None) -> float | None:
    if not r:
        return None
    vals = [r[k] for k in REAL if r.get(k) is not None]
    return sum(vals) / len(vals) if vals else None


def run_class(name: str, fit_time: bool, log) -> dict:
    from scipy.stats import kendalltau

    from patchcore.data import load_test_set
    from patchcore.config import preset_config
    from patchcore.model import PatchCore
    from patchcore.recipe import fixed_default, select_recipe

    ds = load_test_set(class_folder(name))
    base = preset_config("auto", backbone="effnet-lite0", weights="default", seed=0, device="cpu")
    fit_s = None
    if fit_time:
        t0 = time.perf_counter()
        PatchCore(fixed_default(base)).fit(ds.train)
        fit_s = time.perf_counter() - t0
        log(f"{name}: one default fit {fit_s:.1f} s")
    t0 = time.perf_counter()
    sel = select_recipe(base, ds, log=lambda s: log(f"{name}: {s}"))
    sel_s = time.perf_counter() - t0
    rec = sel.record
    rows = [c for c in rec.get("candidates", []) if "place" in c]
    synth_rank = [c["place"] for c in rows]
    real = [real_mean(c.get("real")) for c in rows]
    tau = None
    if len(rows) > 2 and all(v is not None for v in real):
        tau = float(kendalltau(synth_rank, [-v for v in real]).statistic)
    by = {c["label"]: c for c in rows}
    best = max(rows, key=lambda c: real_mean(c.get("real")) or -1) if rows else None
    return {"class": name, "n_train": len(ds.train), "n_test": len(ds.test), "verdict": rec["verdict"],
            "reason": rec["reason"], "chosen": rec.get("chosen"), "default": rec.get("default"),
            "challenger": rec.get("challenger"), "best_real": best["label"] if best else None,
            "real": {c["label"]: c.get("real") for c in rows}, "place": {c["label"]: c["place"] for c in rows},
            "figure": {c["label"]: c["figure"] for c in rows}, "latency_ms": {c["label"]: c["latency_ms"] for c in rows},
            "kendall_tau": tau, "selection_seconds": round(sel_s, 1), "default_fit_seconds":
            None if fit_s is None else round(fit_s, 1), "tests": rec.get("tests"),
            "chosen_real": (by.get(rec.get("chosen")) or {}).get("real"),
            "default_real": (by.get(rec.get("default")) or {}).get("real")}


def _triple_back(text: str) -> dict | None:
    vals = [None if v.strip() == "–" else float(v) for v in text.split(" / ")]
    return None if text.strip() == "–" else dict(zip(REAL, vals))


def _num(text: str) -> float | None:
    return None if text.strip() == "–" else float(text)


def records_from_section(text: str) -> list[dict]:
    """The records a rendered section shows (what :func:`render` needs to write it again)."""
    lines = text.splitlines()
    runs = {}
    for ln in lines:
        if m := re.match(r"- Command: `(.*)`, started (.*) \((.*)\)$", ln):
            for c in m.group(3).split(", "):
                runs[c] = (m.group(1), m.group(2))
    notes = {}
    for ln in lines:
        if m := re.match(r"- ([a-z_]+): (one default fit .*)$", ln):
            notes[m.group(1)] = m.group(2)
    out, by = [], {}
    rows = [ln for ln in lines if ln.startswith("| ") and ln.count(" | ") == 10 and not ln.startswith("| class ")]
    for ln in rows:
        c = [x.strip() for x in ln.strip("| ").split(" | ")]
        best, best_t = re.match(r"(.*) \((.*)\)$", c[5]).groups()
        rec = {"class": c[0], "verdict": c[1], "chosen": c[2], "chosen_real": _triple_back(c[3]),
               "default_real": _triple_back(c[4]), "best_real": best, "regret": _num(c[6]),
               "gain": _num(c[7]), "kendall_tau": _num(c[8]), "selection_seconds": float(c[9]),
               "default_fit_seconds": _num(c[10]), "real": {}, "place": {}, "figure": {}, "latency_ms": {}}
        rec["command"], rec["started"] = runs.get(c[0], (None, None))
        if c[0] in notes:
            rec["note"] = notes[c[0]]
        by[c[0]] = rec
        out.append(rec)
    cur = None
    for i, ln in enumerate(lines):
        if m := re.match(r"### (\S+) \((\d+) good training images, (\d+) test images\)$", ln):
            cur = by.get(m.group(1))
            if cur is not None:
                cur["n_train"], cur["n_test"] = int(m.group(2)), int(m.group(3))
                reason = lines[i + 2]
                cur["reason"] = reason[len(cur["verdict"]) + 2:].rstrip(".")
        elif cur is not None and ln.startswith("| ") and ln.count(" | ") == 4 and not ln.startswith("| candidate "):
            lab, place, fig, real, ms = (x.strip() for x in ln.strip("| ").split(" | "))
            cur["place"][lab], cur["figure"][lab] = int(place), _num(fig)
            cur["real"][lab], cur["latency_ms"][lab] = _triple_back(real), _num(ms)
    return out


def _section(path: Path) -> str:
    text = path.read_text() if path.is_file() else ""
    begin, end = _markers(SECTION)
    return text.split(begin, 1)[1].split(end, 1)[0] if begin in text and end in text else ""


def _f(v, d=3):
    return "–" if v is None else f"{v:.{d}f}"


def _triple(r):
    return "–" if not r else " / ".join(_f(r.get(k)) for k in REAL)


def render(records: list[dict], meta: dict) -> str:
    runs = {}
    for r in records:
        runs.setdefault((r.get("command", meta.get("command")), r.get("started", meta.get("started"))), []).append(
            r["class"])
    L = ["## Recipe selection: `--preset auto` on held-out good images with synthetic defects", "",
         "_Written by `benchmarks/selection.py` from `.bench/selection/results.jsonl`._", "",
         *[f"- Command: `{c}`, started {t} ({', '.join(cs)})" for (c, t), cs in runs.items()],
         f"- CPU: {meta.get('cpu', '?')}, 2 cores shared with other jobs (load average 10 to 18 during these runs): "
         "compare times within a row only.",
         "- effnet-lite0 (ImageNet weights), 1% bank, seed 0; selection as `--preset auto` runs it: at most 60 good "
         "training images in 3 folds, 3 synthetic defects per family x size per fold (6 families x 3 sizes), "
         "image recall at the held-out good images' 95% quantile and AU-PRO (0.3) per cell, median rank over the "
         "18 cells, the fixed default (paper 1024 / 320² budget / k=9) winning ties (docs/selection.md).",
         "- Real figures (image AUROC / pixel AUROC / PRO, maps at the evaluation size: the original image, longer "
         "side at most 448) come from the selection's own check: each candidate's bank from the selection's good "
         "images (not all training images), scored on test/. They never enter the choice. Kendall tau: the "
         "candidates' synthetic order against their order by the mean of the three real figures (1 = same order).",
         "- Regret = the best candidate's real mean minus the chosen one's; vs default = the chosen one's minus the "
         "fixed default's (positive: selection helped).",
         "- ms / image: measured during selection, batch 1, in the same process while the machine was loaded by "
         "other jobs: only the order within one class means anything.",
         *([f"- Not finished in the time the run had (cut): {', '.join(c for c in CLASSES if c not in seen)}."]
           if (seen := {r['class'] for r in records}) and set(CLASSES) - seen else []),
         *[f"- {n}" for n in meta.get("notes", [])],
         *[f"- {r['class']}: {r['note']}" for r in records if r.get("note")], ""]
    L += ["| class | verdict | chosen | real (chosen) | real (fixed default) | best candidate on real | regret | vs "
          "default | Kendall tau | selection s | default fit s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        best = r["real"].get(r["best_real"]) if r.get("best_real") else None
        ch, de = real_mean(r.get("chosen_real")), real_mean(r.get("default_real"))
        regret = r["regret"] if "regret" in r else None if best is None or ch is None else real_mean(best) - ch
        gain = r["gain"] if "gain" in r else None if ch is None or de is None else ch - de
        L.append(f"| {r['class']} | {r['verdict']} | {r.get('chosen') or '–'} | {_triple(r.get('chosen_real'))} | "
                 f"{_triple(r.get('default_real'))} | {r.get('best_real') or '–'} ({_triple(best)}) | {_f(regret)} | "
                 f"{_f(gain, 3) if gain is None else f'{gain:+.3f}'} | {_f(r.get('kendall_tau'), 2)} | "
                 f"{r['selection_seconds']:.0f} | {_f(r.get('default_fit_seconds'), 0)} |")
    L += [""]
    for r in records:
        L += [f"### {r['class']} ({r['n_train']} good training images, {r['n_test']} test images)", "",
              f"{r['verdict']}: {r['reason']}.", "",
              "| candidate | synthetic place | synthetic figure | real image / pixel / PRO | ms / image |",
              "|---|---|---|---|---|"]
        for lab in sorted(r["place"], key=lambda x: r["place"][x]):
            L.append(f"| {lab} | {r['place'][lab]} | {_f(r['figure'][lab])} | {_triple(r['real'].get(lab))} | "
                     f"{_f(r['latency_ms'].get(lab), 0)} |")
        L.append("")
    return "\n".join(L)


def write_report() -> None:
    records = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()] if RESULTS.is_file() else []
    have = {r["class"] for r in records}
    records = [r for r in records_from_section(_section(ROOT / "BENCHMARKS.md")) if r["class"] not in have] + records
    meta_p = WORK / "meta.json"
    meta = json.loads(meta_p.read_text()) if meta_p.is_file() else {}
    replace_section(ROOT / "BENCHMARKS.md", SECTION, render(records, meta))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("run", "report"))
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--fit-time", default="bottle", help="classes whose default fit is timed too")
    a = ap.parse_args(argv)
    if a.mode == "report":
        write_report()
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
            "command": "nice -n 5 python benchmarks/selection.py run " + " ".join(argv or sys.argv[2:])}
    (WORK / "meta.json").write_text(json.dumps(meta))
    done = {json.loads(x)["class"] for x in RESULTS.read_text().splitlines() if x.strip()} if RESULTS.is_file() else set()
    def log(s: str) -> None:
        print(time.strftime("%H:%M:%S"), s, flush=True)
        if ": one default fit " in s:  # kept even if the class's selection does not finish
            meta.setdefault("notes", []).append(f"{s} (the default fit timed before its selection)")
            (WORK / "meta.json").write_text(json.dumps(meta))
    fit_time = set(a.fit_time.split(",")) if a.fit_time else set()
    for name in a.classes.split(","):
        if name in done:
            continue
        rec = {**run_class(name, name in fit_time, log), "command": meta["command"], "started": meta["started"]}
        with open(RESULTS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
