"""BENCHMARKS.md from the context run.py collects (results, accuracy, paired timings).

Everything printed is read from the workers' JSON and the accuracy computed by run.py; a figure
that was not measured prints "n/a", and a run that failed or did not finish is named as such.
"""

from __future__ import annotations

import os
import time

from plan import BACKBONES, paper_run_key

TOL = 0.002  # "equal accuracy": within 0.2 AUROC/PRO points
METRICS = ("image_auroc", "pixel_auroc", "pro")


def f(v, fmt="{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def ratio(a, b, fmt="{:.2f}") -> str:
    return "n/a" if a is None or b is None or b == 0 else fmt.format(a / b)


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


class View:
    """Look-ups over one context: runs by key, their results, accuracy and latencies."""

    def __init__(self, ctx: dict):
        self.ctx = ctx
        self.runs = {r["key"]: r for r in ctx.get("runs", [])}
        self.results = ctx.get("results", {})
        self.accuracy = ctx.get("accuracy", {})
        self.paired = ctx.get("paired", {})

    def res(self, key: str) -> dict | None:
        r = self.results.get(key)
        return None if not r or r.get("failed") else r

    def acc(self, key: str, kind: str) -> dict | None:
        return self.accuracy.get(f"{key}_{kind}")

    def deploy_acc(self, key: str) -> dict | None:
        """The accuracy of what a user deploys: our runtime, anomalib's model."""
        return self.acc(key, "runtime" if self.runs[key]["tool"] == "ours" else "torch")

    def latency(self, key: str, path: str) -> float | None:
        return get(self.res(key), "inference", path, "batch1", "median_ms")

    def status(self, key: str) -> str:
        r = self.results.get(key)
        if r is None:
            return "not run yet" if not self.ctx.get("complete") else "not run"
        if r.get("failed"):
            return f"failed (rc {r.get('rc')})"
        return "ok"


def _acc_ok(ours: dict | None, theirs: dict | None) -> bool | None:
    if not ours or not theirs:
        return None
    if any(ours.get(k) is None or theirs.get(k) is None for k in METRICS):
        return None
    return all(ours[k] >= theirs[k] - TOL for k in METRICS)


def _acc_text(a: dict | None) -> str:
    return "n/a" if not a else " / ".join(f(a.get(k), "{:.4f}") for k in METRICS)


def _verdict(ok: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[ok]


def _header(ctx: dict) -> list[str]:
    L = ["# Benchmarks: patchcore-rt vs anomalib PatchCore\n",
         "_Written by `benchmarks/run.py` from the run below; do not edit by hand._\n",
         f"- Command: `{ctx['command'].strip()}` (`make bench`)",
         f"- Started {ctx['started']}, this file written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
         + ("" if ctx.get("complete") else "; **the run had not completed when this file was written**")]
    m = ctx["machine"]
    L.append(f"- Machine: {m['cpu']}, {m['cores']} logical cores, {m['memory']} RAM, {m['os']}, Python {m['python']}; "
             f"load average at start {ctx['load_start']}, at writing {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for k, v in ctx["versions"].items():
        L.append(f"- {k}: " + ", ".join(f"{a} {b}" for a, b in v.items()))
    for n in ctx.get("notes", []):
        L.append(f"- Note: {n}")
    L.append(f"- Data: `{ctx['data']}`: {ctx['n_train']} train/good images, {ctx['n_test']} test images"
             f"{' (QUICK: subset, figures not meaningful)' if ctx['quick'] else ''}")
    return L


def _targets(v: View, bb: str) -> list[str]:
    """The issue's targets for one backbone: our deployment setting against anomalib at each ratio."""
    fast = f"{bb}_ours-fast"
    L = []
    rows = []
    for theirs in (f"{bb}_anomalib-10", f"{bb}_anomalib-1"):
        if theirs not in v.runs:
            continue
        label = v.runs[theirs]["label"]
        ao, aa = v.deploy_acc(fast), v.deploy_acc(theirs)
        acc_ok = _acc_ok(ao, aa)
        rows.append([f"accuracy equal or better (tolerance {TOL})", label, _verdict(acc_ok),
                     f"ours {_acc_text(ao)} vs {_acc_text(aa)}"])
        mine = v.latency(fast, "runtime")
        ti = v.latency(theirs, "torch_inferencer")
        ok = None if mine is None or ti is None else ti / mine >= 5.0
        rows.append(["latency >= 5x lower than its TorchInferencer (separate processes)", label, _verdict(ok),
                     f"{f(ti, '{:.1f}')} ms / {f(mine, '{:.1f}')} ms = {ratio(ti, mine, '{:.1f}x')}"])
        # judged on both measurements: separate processes (each tool with its own thread defaults)
        # and the paired run (same load; anomalib's session without spinning, see paired.py)
        sep_theirs = v.latency(theirs, "onnx")
        figures = [("separate processes", sep_theirs, mine)]
        pr = v.paired.get(f"{fast}|{theirs}")
        if pr:
            figures.append(("paired run", pr["anomalib_onnx_ms_per_image"], pr["ours_runtime_ms"]))
        have = [(t, m) for _, t, m in figures if t is not None and m is not None]
        ok = None if not have else all(t / m >= 5.0 for t, m in have)
        rows.append(["latency >= 5x lower than its ONNX in onnxruntime (separate processes and paired run)", label,
                     _verdict(ok), "; ".join(f"{how}: {f(t, '{:.1f}')} ms / {f(m, '{:.1f}')} ms = {ratio(t, m, '{:.1f}x')}"
                                             for how, t, m in figures)])
        fo, fa = get(v.res(fast), "fit", "total_s"), get(v.res(theirs), "fit", "total_s")
        ok = None if fo is None or fa is None else fa / fo >= 10.0
        rows.append(["fit >= 10x faster", label, _verdict(ok), f"{f(fa)} s / {f(fo)} s = {ratio(fa, fo, '{:.1f}x')}"])
    L.append(table(["target (patchcore-rt deployment setting vs)", "anomalib run", "status", "figures"], rows))
    # like for like: the same ratio and the paper's dims on our side
    rows = []
    for ours, theirs in ((paper_run_key(bb, 0.1), f"{bb}_anomalib-10"), (paper_run_key(bb, 0.01), f"{bb}_anomalib-1")):
        if ours not in v.runs or theirs not in v.runs:
            continue
        fo, fa = get(v.res(ours), "fit", "total_s"), get(v.res(theirs), "fit", "total_s")
        lo = v.latency(ours, "runtime")
        lt, lo_ = v.latency(theirs, "torch_inferencer"), v.latency(theirs, "onnx")
        rows.append([f"{v.runs[ours]['label']} vs {v.runs[theirs]['label']}", ratio(fa, fo, "{:.1f}x"),
                     ratio(lt, lo, "{:.1f}x"), ratio(lo_, lo, "{:.1f}x"),
                     f"{_acc_text(v.deploy_acc(ours))} vs {_acc_text(v.deploy_acc(theirs))}"])
    if rows:
        L.append("\nLike for like (same coreset ratio, the paper's 1024 dims on our side; speed-ups = anomalib / ours, "
                 "latencies from separate processes):\n")
        L.append(table(["runs", "fit speed-up", "latency speed-up vs TorchInferencer", "vs ONNX", "accuracy ours vs anomalib"], rows))
    return L


def _fit_table(v: View, keys: list[str]) -> str:
    rows = []
    for label, key, fmt in [("feature extraction (s)", "features_s", "{:.1f}"), ("coreset selection (s)", "coreset_s", "{:.1f}"),
                            ("total fit (s)", "total_s", "{:.1f}"), ("peak RSS (MiB)", "peak_rss_mb", "{:.0f}"),
                            ("patches before coreset", "n_patches", "{:d}"), ("bank rows", "bank_rows", "{:d}"),
                            ("bank dim", "bank_dim", "{:d}"), ("bank size (MiB)", "bank_mb", "{:.1f}")]:
        rows.append([label, *[f(get(v.res(k), "fit", key), fmt) for k in keys]])
    return table(["", *[v.runs[k]["label"] for k in keys]], rows)


def _accuracy_table(v: View, keys: list[str]) -> str:
    rows = []
    for k in keys:
        kinds = [("torch", "PyTorch"), ("runtime", "runtime (ORT CPU)")] if v.runs[k]["tool"] == "ours" else [("torch", "")]
        for kind, what in kinds:
            a = v.acc(k, kind)
            label = v.runs[k]["label"] + (f", {what}" if what else "")
            rows.append([label, *([f(a.get(m), "{:.4f}") for m in METRICS] if a else [v.status(k)] * 3)])
    return table(["", "image AUROC", "pixel AUROC", "PRO"], rows)


def _inference_table(v: View, keys: list[str]) -> list[str]:
    paths = []
    for k in keys:
        lab = v.runs[k]["label"]
        if v.runs[k]["tool"] == "ours":
            paths += [(f"{lab}: runtime (`Predictor`, ORT CPU + numpy search)", k, "runtime"),
                      (f"{lab}: runtime, faiss search (`--search faiss`)", k, "runtime_faiss"),
                      (f"{lab}: runtime, single graph (features + search in `scores_fp32`)", k, "runtime_single_graph"),
                      (f"{lab}: PyTorch (`PatchCore.predict`)", k, "torch")]
        else:
            paths += [(f"{lab}: torch model (pre-processor + `PatchcoreModel`)", k, "model"),
                      (f"{lab}: Lightning module forward (pre + model + post)", k, "module"),
                      (f"{lab}: `TorchInferencer` (its `to_torch` export)", k, "torch_inferencer"),
                      (f"{lab}: `to_onnx` export in onnxruntime CPU", k, "onnx")]
    rows, fixed = [], None
    for label, k, p in paths:
        d = get(v.res(k), "inference", p)
        if not d:
            continue
        note, p90 = "", get(d, "batch1", "p90_ms")
        if get(d, "batch1", "note"):  # per image; runs before p90_per_image divided only the median
            note, fixed = " *", get(d, "fixed_batch")
            if p90 is not None and not get(d, "batch1", "p90_per_image"):
                p90 = p90 / fixed
        rows.append([label, f(get(d, "batch1", "median_ms"), "{:.1f}") + note, f(p90, "{:.1f}") + note,
                     *[f(get(d, f"batch{b}", "images_per_s"), "{:.1f}") for b in (2, 8, 32)]])
    L = [table(["path", "batch-1 latency, median ms", "p90 ms", "images/s in batches of 2", "of 8", "of 32"], rows)]
    if fixed:
        L.append(f"\n\\* anomalib's ONNX export comes out with the batch axis fixed at {fixed}: it cannot run batch 1, so "
                 "its per-image figures are the times of a batch of that size divided by the batch size (this favours anomalib).")
    for k in keys:
        for what, err in (get(v.res(k), "errors") or {}).items():
            L.append(f"\n{v.runs[k]['label']}: {what} failed: `{err[:400]}`")
    return L


def _stages(v: View, keys: list[str]) -> list[str]:
    rows = []
    for k in keys:
        st = get(v.res(k), "inference", "runtime", "stages_ms")
        if st:
            tot = sum(st.values())
            rows.append([v.runs[k]["label"], *[f"{st.get(s, 0):.1f} ({100 * st.get(s, 0) / tot:.0f}%)"
                                              for s in ("preprocess", "features", "search", "postprocess")],
                         f(v.latency(k, "runtime"), "{:.1f}")])
    if not rows:
        return []
    L = ["\nWhere patchcore-rt's runtime time goes at batch 1 (median ms per stage from `PredictResult.timings`, share):\n",
         table(["run", "preprocess", "features (ONNX graph)", "search (numpy BLAS)", "postprocess", "total median"], rows)]
    ab_rows = []
    for k in keys:
        ab = get(v.res(k), "inference", "spin_ab")
        if ab and get(ab, "spin", "blocks"):  # earlier interleaved timings let one session slow the other
            for setting, label in (("no_spin", "no spinning (the runtime's setting)"), ("spin", "onnxruntime default (spinning)")):
                d = ab[setting]
                ab_rows.append([v.runs[k]["label"], label, f"{d['median_ms']:.1f}", f"{d['p90_ms']:.1f}",
                                f"{d['stages_ms'].get('features', 0):.1f}", f"{d['stages_ms'].get('search', 0):.1f}"])
    if ab_rows:
        L.append("\nonnxruntime's intra-op threads spin after each run by default, while the search that follows needs the "
                 "same cores for BLAS. The runtime turns spinning off (`session.intra_op.allow_spinning=0`) for a steadier "
                 "per-image time (a line has a deadline per part); both settings in one process, timed in blocks A B B A "
                 "over the latency images:\n")
        L.append(table(["run", "threads", "batch-1 median ms", "p90 ms", "features ms", "search ms"], ab_rows))
        for k in keys:
            ab = get(v.res(k), "inference", "spin_ab")
            if ab and get(ab, "spin", "blocks"):
                q, s_ = ab["no_spin"], ab["spin"]
                L.append(f"\n{v.runs[k]['label']}: no spinning changes the median by {q['median_ms'] - s_['median_ms']:+.1f} ms "
                         f"and the p90 by {q['p90_ms'] - s_['p90_ms']:+.1f} ms.")
    return L


def _paired(v: View, bb: str) -> list[str]:
    rows = []
    for name, pr in v.paired.items():
        ours, theirs = name.split("|")
        if v.runs.get(ours, {}).get("backbone") != bb:
            continue
        fixed = pr["anomalib_onnx_fixed_batch"]
        rows.append([f"{v.runs[ours]['label']} vs {v.runs[theirs]['label']} ONNX", f"{pr['ours_runtime_ms']:.1f}",
                     f"{pr['anomalib_onnx_ms_per_image']:.1f}", ratio(pr["anomalib_onnx_ms_per_image"], pr["ours_runtime_ms"], "{:.1f}x"),
                     f"{pr['ours_runtime_ms_per_image_at_fixed_batch']:.1f} (batch {fixed})",
                     ratio(pr["anomalib_onnx_ms_per_image"], pr["ours_runtime_ms_per_image_at_fixed_batch"], "{:.1f}x")])
    if not rows:
        return []
    return ["\nPaired latency: our runtime and anomalib's ONNX in one process, alternating image by image, so both see the "
            "same machine load. Both sessions run without onnxruntime's thread spinning here (a spinning session would "
            "slow the other one), which costs anomalib's graph time against its own process (the table above): the ONNX "
            "target is judged on both figures. Ours at batch 1, and at anomalib's fixed batch for a like-for-like per-image "
            "cost:\n",
            table(["pair", "ours batch 1, ms", "anomalib ONNX ms/image", "speed-up", "ours at anomalib's batch, ms/image",
                   "speed-up at equal batch"], rows)]


def _sizes(v: View, keys: list[str]) -> str:
    rows = []
    for k in keys:
        r = v.res(k)
        if not r:
            continue
        if v.runs[k]["tool"] == "ours":
            files = get(r, "size", "files") or {}
            for prec in ("fp32", "fp16"):
                graph = f"features_{prec}.onnx"
                if graph in files:
                    keep = {n: s for n, s in files.items() if not n.startswith("features_") or n == graph}
                    rows.append([f"{v.runs[k]['label']}: bundle with the {prec} graph", f(sum(keep.values())),
                                 ", ".join(f"{n} {s:.1f}" for n, s in keep.items())])
        else:
            rows.append([f"{v.runs[k]['label']}: `to_onnx` export", f(get(r, "size", "onnx_mb")),
                         ", ".join(get(r, "size", "onnx_files") or [])])
            rows.append([f"{v.runs[k]['label']}: `to_torch` export", f(get(r, "size", "torch_pt_mb")), "model.pt (pickled)"])
    return table(["artefact", "MiB", "files (MiB)"], rows)


def _where_time_goes(v: View, bb: str) -> list[str]:
    L = []
    for k in (f"{bb}_ours-fast", f"{bb}_ours-1", f"{bb}_ours-10", f"{bb}_anomalib-1", f"{bb}_anomalib-10"):
        fi = get(v.res(k), "fit")
        if fi:
            L.append(f"- {v.runs[k]['label']}: fit {fi['total_s']:.1f} s = feature extraction {fi['features_s']:.1f} s "
                     f"({100 * fi['features_s'] / fi['total_s']:.0f}%) + coreset {fi['coreset_s']:.1f} s "
                     f"({100 * fi['coreset_s'] / fi['total_s']:.0f}%), {fi['n_patches']} patches x {fi['bank_dim']} dims "
                     f"-> {fi['bank_rows']} rows.")
    return L


def _dims_study(v: View) -> list[str]:
    """patchcore-rt at 1% for each target_dim measured (plus the paper's 10%), one backbone."""
    keys = [k for k, r in v.runs.items() if r["tool"] == "ours" and (r["key"].split("_", 1)[1].startswith("dim-"))]
    if not keys:
        return []
    bb = v.runs[keys[0]]["backbone"]
    keys = [k for k, r in v.runs.items() if r["tool"] == "ours" and r["backbone"] == bb]
    keys.sort(key=lambda k: (v.runs[k]["ratio"], -v.runs[k]["target_dim"]))
    rows = []
    for k in keys:
        a = v.acc(k, "runtime")
        st = get(v.res(k), "inference", "runtime", "stages_ms") or {}
        rows.append([f"{v.runs[k]['ratio'] * 100:g}%", str(v.runs[k]["target_dim"]),
                     *([f(a.get(m), "{:.4f}") for m in METRICS] if a else [v.status(k)] * 3),
                     f(st.get("features"), "{:.1f}"), f(st.get("search"), "{:.1f}"), f(v.latency(k, "runtime"), "{:.1f}"),
                     f(get(v.res(k), "fit", "bank_mb"))])
    L = [f"## patchcore-rt: the target_dim study ({bb}, runtime)\n",
         "The paper pools each patch's 3x3 neighbourhood to 1024 dims and keeps 10% of the patches. Search cost grows "
         "with the bank's rows x dims; this table is what the deployment setting was chosen from (one process per row, "
         "so the latencies carry this machine's noise).\n",
         table(["coreset", "target_dim", "image AUROC", "pixel AUROC", "PRO", "features ms", "search ms",
                "batch-1 total ms", "bank MiB"], rows)]
    deploy, paper = f"{bb}_ours-fast", f"{bb}_ours-10"
    a, b = v.acc(deploy, "runtime"), v.acc(paper, "runtime")
    if a and b:
        diffs = [a[m] - b[m] for m in METRICS]
        L.append(f"\nDeployment setting ({v.runs[deploy]['label'].split(' (')[0]}) minus the paper's setting at 10%: "
                 + " / ".join(f"{d:+.4f}" for d in diffs)
                 + f" (image / pixel / PRO; {'within' if min(diffs) >= -TOL else 'outside'} the issue's {TOL} tolerance), "
                 f"batch-1 latency {f(v.latency(deploy, 'runtime'))} ms against {f(v.latency(paper, 'runtime'))} ms.")
    return L + [""]


SETUP = [
    "- Both tools: resize 256 + center crop 224 (anomalib: `Patchcore.configure_pre_processor((256, 256), (224, 224))`; "
    "ours: `resize=256, crop=224`), fit on all train/good images (our calibration holdout set to 0 so both banks come "
    "from the same patches), k=1 nearest neighbour, Gaussian blur sigma 4. What differs is each tool's design: anomalib "
    "keeps the concatenated layer maps after 3x3 average pooling (1536 dims for wrn50, 152 for effnet-lite0); ours is "
    "the paper's aggregation (3x3 neighbourhoods, adaptive pooling) to `target_dim` dims, folded into fixed-weight 3x3 "
    "convolutions; anomalib's image score reweights with 9 neighbours, ours with the paper's eq. 7 and 3.",
    "- patchcore-rt's deployment setting is a 1% bank; with effnet-lite0 of 128-dim embeddings (`--coreset 0.01 "
    "--target-dim 128`), which on bottle scores as well as the paper's 1024 dims at 10% (see the study below) and "
    "searches a bank 80x smaller; with wrn50's random weights of the paper's 1024 dims (random features lost 0.016 pixel "
    "AUROC at 128). The paper's settings (1024 dims, 1% and 10%) run too, like for like with anomalib.",
    "- anomalib's fit is driven through the Lightning module's own pieces (`model(x)` in train mode stores embeddings, "
    "`model.subsample_embedding(ratio)` runs its k-center-greedy coreset), what `Engine.fit` calls, without the Trainer's "
    "overhead, so its fit times flatter anomalib. Images are decoded inside the timed loop in both tools.",
    "- Accuracy: both tools' raw image scores and 224x224 anomaly maps scored with `patchcore.metrics` (image AUROC, "
    "pixel AUROC, PRO up to FPR 0.3) against masks put through the same resize-256 + crop-224 geometry (nearest neighbour). "
    "For patchcore-rt the deployed path (the runtime) is what the targets use; its PyTorch path is listed too.",
]


def render(ctx: dict) -> str:
    v = View(ctx)
    L = _header(ctx)
    L.append("")
    L.append("## Setup\n")
    for bb in ctx["backbones"]:
        L.append(f"- {BACKBONES[bb].title}: {BACKBONES[bb].weights_note}.")
    L += SETUP
    L.append(f"- Latency: batch 1, from a decoded RGB uint8 900x900 image to scores and maps (preprocessing included in "
             f"every path), median over {ctx['n_latency']} test images after 2 warm-up calls; throughput: median of "
             f"{ctx['repeats']} timed calls after one warm-up. Each run is its own process, one after the other, default "
             "threads (torch 2, onnxruntime all cores). The machine is shared and noisy: ratios measured in the same run "
             "(and the paired timings) are what counts.\n")

    L.append("## Targets of issue 6\n")
    L.append("The targets compare patchcore-rt's deployment setting against anomalib, at equal or better accuracy on "
             "bottle and the same backbone weights, first at anomalib's default coreset ratio (10%), then at 1%.\n")
    for bb in ctx["backbones"]:
        L.append(f"### {BACKBONES[bb].title}\n")
        L += _targets(v, bb)
        L.append("")

    for bb in ctx["backbones"]:
        keys = [k for k, r in v.runs.items() if r["backbone"] == bb]
        L.append(f"## {BACKBONES[bb].title}\n")
        L.append("### Fit\n")
        L.append(_fit_table(v, keys))
        L.append("\n### Accuracy on bottle\n")
        L.append(_accuracy_table(v, keys))
        L.append("\n### Inference (CPU)\n")
        L += _inference_table(v, keys)
        L += _paired(v, bb)
        L += _stages(v, keys)
        L.append("\n### Size on disk\n")
        L.append(_sizes(v, keys))
        L.append("\n### Where the fit time goes\n")
        L += _where_time_goes(v, bb)
        L.append("")
    L += _dims_study(v)
    L.append("## Raw results\n")
    L.append("Worker JSON and logs: `.bench/run/<run>/result.json`, `.bench/run/<run>.log` (git-ignored); "
             "`python benchmarks/run.py --report-only` re-renders this file from `.bench/run/context.json`.")
    return "\n".join(L) + "\n"
