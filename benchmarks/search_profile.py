"""Where the default search's time goes, step by step, before and after the settling changes, beside the
exact numpy search; writes the section "The default search, step by step" of BENCHMARKS.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/search_profile.py   # ~15 min on 2 cores

The bundle is ``benchmarks/fast_default.py``'s (``patchcore export --backbone effnet-lite0 --data bottle
--int8``, defaults), in ``.bench/fast/bundle`` (git-ignored; exported when absent). Three sides score the
same images in one run, interleaved round by round:

- ``before``: the default path as it was (every candidate rescored with float64 sums where a float32
  bound now serves; the settling's pairs from a 2-D ``np.nonzero``, every pair measured, the candidate
  row too; the cells to settle from a 7 x 7 dilation around each hot pixel's cell), at the bundle's
  candidate count, kept here as overrides of one predictor's methods;
- ``after``: the default path (no options);
- ``numpy``: ``--search numpy``, the exact search.

Step by step (each step of :meth:`PatchScorer.score`, timed on the images' embeddings, per image, good
and defective test images apart), then end to end (``Predictor.predict`` over the whole test set in
batches of 1, 4 and 8, and over the good test images at batch 1: every image, not the first few
repeated as ``bench`` does), then the floor (onnxruntime's own profile of the candidate and bound
graphs: the time of their products and the multiply-accumulates per second they reach).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import replace_section  # noqa: E402
from fast_default import BUNDLE, DATA, cpu_name, export  # noqa: E402

STEPS = ("candidates", "rescoring", "cells to settle", "bound", "pairs", "worst patch", "eq. 7", "search")
STAGES = ("features", "search", "postprocess", "total")


def log(msg: str) -> None:
    print(f"[search {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ the old path
def _old_within(index, queries, upper):
    """Int8Index.within as it was: the mask's pairs from a 2-D np.nonzero."""
    qi, mi = [], []
    for s, inside in index.inside(queries, upper):
        a, b = np.nonzero(inside)
        qi.append(a + s)
        mi.append(b)
    return np.concatenate(qi).astype(np.int64), np.concatenate(mi).astype(np.int64)


def _old_nearest_of_pairs(queries, bank, qi, mi, chunk=4096):
    """nearest_of_pairs as it was: every pair measured, the candidate row's too."""
    from runtime.search.distances import _PAIR_MARGIN

    q = np.asarray(queries, dtype=np.float32)
    sq = np.empty(len(qi), np.float32)
    for s in range(0, len(qi), chunk):
        diff = bank[mi[s : s + chunk]] - q[qi[s : s + chunk]]
        sq[s : s + chunk] = np.einsum("ij,ij->i", diff, diff)
    starts = np.r_[0, np.flatnonzero(np.diff(qi)) + 1]
    least = np.minimum.reduceat(sq, starts)
    keep = np.flatnonzero(sq <= np.repeat(least, np.diff(np.r_[starts, len(qi)])) * (1 + _PAIR_MARGIN))
    qi, mi = qi[keep], mi[keep]
    diff = bank[mi] - q[qi]
    np.square(diff, out=diff)
    dist = np.sqrt(diff.sum(axis=1, dtype=np.float64))
    order = np.lexsort((mi, dist, qi))
    first = order[np.r_[0, np.flatnonzero(np.diff(qi[order])) + 1]]
    return dist[first], mi[first]


def _old_patches_to_settle(bounds, layout, blur_sigma, level):
    """exact_maps.patches_to_settle as it was: a (2 reach + 1)-cell square around each hot pixel's cell."""
    import math

    import cv2

    from runtime.exact_maps import _LEVEL_SLACK, _tiles
    from runtime.postprocess import anomaly_maps

    (ch, cw), (gh, gw) = layout.canvas_hw, layout.map_grid
    radius = int(4.0 * blur_sigma + 0.5) if blur_sigma > 0 else 0
    reach = math.ceil(radius / min(ch / gh, cw / gw)) + 1 + (1 if ch % gh or cw % gw else 0)
    b = len(bounds)
    floor = level - _LEVEL_SLACK * abs(level)
    out = np.asarray(bounds) >= floor
    stitched = layout.stitch(np.asarray(bounds, np.float32).reshape(b, -1))
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    for i in range(b):
        if stitched[i].max() < floor:
            continue
        ys, xs = np.nonzero(anomaly_maps(stitched[i : i + 1], (ch, cw), blur_sigma)[0] >= floor)
        if len(ys) == 0:
            continue
        cells = np.zeros((gh, gw), np.uint8)
        cells[ys * gh // ch, xs * gw // cw] = 1
        out[i] |= _tiles(cv2.dilate(cells, kernel).astype(bool), layout)
    return out


def old_path(predictor):
    """Turns one predictor's default path back into the old one (its instance only)."""
    from runtime.search.distances import nearest_candidate

    def exact_nearest(self, queries, upper, row):
        qi, mi = _old_within(self.index, queries, upper)
        return _old_nearest_of_pairs(queries, self.bank, qi, mi)

    def nearest(self, queries):  # every candidate rescored with float64 sums
        return nearest_candidate(queries, self.bank, self.index.search(queries, self.margin))

    predictor.scorer._exact_nearest = types.MethodType(exact_nearest, predictor.scorer)
    predictor.scorer.nearest = types.MethodType(nearest, predictor.scorer)
    predictor.map_patches = lambda bounds: _old_patches_to_settle(bounds, predictor.layout, predictor.blur_sigma,
                                                                  predictor.map_level)
    predictor.old = True
    return predictor


# -------------------------------------------------------------------------------------- step by step
def steps(predictor, emb: np.ndarray) -> dict:
    """PatchScorer.score's steps on (B, P, D) embeddings, each timed (ms for the batch), with counts."""
    from runtime.search.distances import candidate_bounds, exact_distances, nearest_candidate, nearest_of_pairs

    sc = predictor.scorer
    b, p, d = emb.shape
    old = getattr(predictor, "old", False)
    t = [time.perf_counter()]
    cand = sc.index.search(emb.reshape(-1, d), sc.margin)
    t.append(time.perf_counter())
    dist, nn = (nearest_candidate if old else candidate_bounds)(emb.reshape(-1, d), sc.bank, cand)
    patch, nn = dist.reshape(b, p), nn.reshape(b, p)
    t.append(time.perf_counter())
    todo = predictor.map_patches(patch)
    t.append(time.perf_counter())
    exact = np.zeros((b, p), bool)
    pairs = 0
    if todo.any():
        within = _old_within if old else type(sc.index).within
        if not old:  # the settled patches' candidate bounds measured exactly first (PatchScorer._exact_nearest)
            patch[todo] = exact_distances(emb[todo], sc.bank, nn[todo][:, None])[:, 0]
        qi, mi = within(sc.index, emb[todo], patch[todo])
        pairs = len(qi)
        t.append(time.perf_counter())
        if old:
            patch[todo], nn[todo] = _old_nearest_of_pairs(emb[todo], sc.bank, qi, mi)
        else:
            patch[todo], nn[todo] = nearest_of_pairs(emb[todo], sc.bank, qi, mi, known=(patch[todo], nn[todo]))
        exact |= todo
    else:
        t.append(t[-1])
    t.append(time.perf_counter())
    settled = int(exact.sum())
    known = sc._settle_worst(emb, patch, nn, exact)
    t.append(time.perf_counter())
    worst = np.argmax(patch, axis=1)
    sc._image_scores(emb, patch, nn, worst, patch[np.arange(b), worst], known)
    t.append(time.perf_counter())
    ms = [1000 * (t[i + 1] - t[i]) for i in range(len(t) - 1)]
    out = dict(zip(STEPS, ms + [sum(ms)]))
    out.update(settled=settled, pair_count=pairs, worst_extra=int(exact.sum()) - settled)
    return out


def step_table(sides: dict, embs: dict, groups: dict, rounds: int) -> dict:
    """Median over rounds of the mean per image of each step, per side and group; counts per image."""
    res = {}
    for _ in range(rounds):
        for gname, files in groups.items():
            for sname, p in sides.items():
                if sname == "numpy":
                    continue
                acc = {}
                for f in files:
                    r = steps(p, embs[f][None])
                    for k, v in r.items():
                        acc.setdefault(k, []).append(v)
                res.setdefault((gname, sname), []).append({k: float(np.mean(v)) for k, v in acc.items()})
    return {key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in res.items()}


# -------------------------------------------------------------------------------------- end to end
def end_to_end(sides: dict, images: dict, plan: list, rounds: int) -> dict:
    """Per (group, batch) and side: median over rounds of the mean ms per image of each stage over all
    the group's images, scored in consecutive batches."""
    res = {}
    for _ in range(rounds):
        for gname, batch in plan:
            ims = images[gname]
            for sname, p in sides.items():
                tot = {s: 0.0 for s in STAGES}
                for s in range(0, len(ims), batch):
                    t0 = time.perf_counter()
                    pred = p.predict(ims[s : s + batch])
                    wall = time.perf_counter() - t0
                    for k in STAGES[:-1]:
                        tot[k] += pred.timings[k]
                    tot["total"] += wall
                res.setdefault((gname, batch, sname), []).append({k: 1000 * v / len(ims) for k, v in tot.items()})
    return {key: {k: statistics.median(r[k] for r in runs) for k in STAGES} for key, runs in res.items()}


# -------------------------------------------------------------------------------------- the floor
def node_profile(session_graph, feed: dict, outputs: list[str], runs: int = 5) -> dict:
    """onnxruntime's own profile of one graph on ``feed``: median µs per node over ``runs`` runs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_profiling = True
    so.profile_file_prefix = str(ROOT / ".bench" / "search_profile")
    sess = ort.InferenceSession(str(session_graph), so, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        sess.run(outputs, feed)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    per: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per.setdefault(e["args"]["op_name"] + ":" + e["name"][: -len("_kernel_time")], []).append(e["dur"])
    return {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in per.items()}


def floor(predictor, emb: np.ndarray, settle_mask: np.ndarray) -> dict:
    """The candidate and bound graphs' node times on one image (all its patches; its settled ones)."""
    from runtime.search.onnx_graphs import GRAPH_BOUND, GRAPH_INT8_PROJECTED

    idx = predictor.scorer.index
    q = np.ascontiguousarray(emb - idx.mean)
    feed = {**idx._feed, "queries": q, "k": np.array([idx.candidates], np.int64), "block": np.array([32], np.int64)}
    cand = node_profile(GRAPH_INT8_PROJECTED, feed, ["candidates"])
    qs = q[settle_mask]
    bound = node_profile(GRAPH_BOUND, {**idx._bound_feed, "queries": qs,
                                       "upper": np.full((len(qs), 1), 1e4, np.float32)}, ["inside"])
    r = idx._bound_feed["components"].shape[1]
    m, d, c = idx.rows, idx.dim, idx.components
    return {"cand": cand, "bound": bound, "queries": len(q), "settled": len(qs), "rows": m, "dim": d,
            "components": c, "bound_components": r,
            "macs": {"projection (int8)": len(q) * d * c, "product (int8)": len(q) * m * c,
                     "bound projection (fp32)": len(qs) * d * r, "bound Gemm (fp32)": len(qs) * m * (r + 1)}}


def floor_notes(fl: dict, step_res: dict) -> list[str]:
    """What bounds the search, in this run's figures."""
    cand_ms = sum(fl["cand"].values()) / 1000
    bound_ms = sum(fl["bound"].values()) / 1000
    products = {k: v for k, v in fl["cand"].items() if k.startswith("DynamicQuantizeMatMul")}
    prod_ms = max(products.values()) / 1000 if products else 0.0
    gemm_ms = sum(v for k, v in fl["bound"].items() if k.startswith(("Gemm", "MatMul"))) / 1000
    topk_ms = sum(v for k, v in fl["cand"].items() if k.startswith(("ReduceMax", "TopK", "GatherElements"))) / 1000
    d, g = step_res[("defective", "after")], step_res[("good", "after")]
    outputs_mb = fl["queries"] * fl["rows"] * 4 / 1e6
    return ["", f"- The two graphs on this image: candidates {cand_ms:.1f} ms (the int8 product {prod_ms:.1f} of it), "
            f"bound {bound_ms:.1f} ms on its {fl['settled']} settled patches (projection and Gemm {gemm_ms:.1f} of it). "
            f"The int8 product (K = {fl['components']}) writes {fl['queries']} x {fl['rows']:,} float32 closeness values "
            f"({outputs_mb:.0f} MB), which the top k reads back (ReduceMax, TopK, GatherElements: {topk_ms:.1f} ms); "
            "the bound's products are float32, at the rates in the table. On this shared machine the rates move "
            "from run to run by up to 2x (the load of other jobs), the ratios between the steps much less.",
            f"- What sets the floor is how many patches must be settled: {d['settled']:.0f} of 1600 on a defective image, "
            f"{g['settled']:.0f} on a good one: every patch that a pixel at or above the map level (for records the "
            "pixel threshold, where regions are cut), or a neighbour of one, reads, so a defect's region and the "
            "blur's reach around it (2-3 cells of 8 pixels). Patches the cells-to-settle step marks, per image, by level: "
            + "; ".join(f"{name} {lv:.1f}: {fl['at_levels'][('defective', name)]:.0f} defective, "
                        f"{fl['at_levels'][('good', name)]:.0f} good" for name, lv in fl["levels"].items())
            + ". Each settled patch costs one row of "
            f"the bound's Gemm, {fl['rows']:,} x {fl['bound_components'] + 1} plus a {fl['dim']} x "
            f"{fl['bound_components']} projection, ~1 M float32 multiply-accumulates, against ~0.5 M int8 for the "
            "candidate step. With the settled count fixed by the level, the search's floor is those two products at "
            f"the rates above, {cand_ms + bound_ms:.1f} ms on this image. The steps' table puts the whole search "
            f"(after) at {d['search']:.1f} ms per defective image: candidates and bound {d['candidates'] + d['bound']:.1f} "
            f"of it (the graphs' runs with onnxruntime's and Python's own costs, at another moment of the run: on a "
            f"shared machine the load moves), rescoring {d['rescoring']:.1f}, pairs {d['pairs']:.1f}, cells to settle "
            f"{d['cells to settle']:.1f}, eq. 7 {d['eq. 7']:.1f} (m*'s neighbours are kept per scorer, and the rounds score the "
            "same images again: a first pass searches each m* once, ~1 ms).",
            "- Measured and not kept: the bound on 160 or 192 components instead of 256 (a cheaper Gemm, 2-3x the "
            "pairs; within the noise of this machine), on 255 (a Gemm K of 256: 2% faster, within the noise), a "
            "tighter float32 slack (3% fewer pairs at most), the banks as graph constants (5-15% faster graphs, which "
            "needs the onnx package at runtime or graphs per bundle), a bound in two stages (128 components over the "
            "bank, then 256 on the survivors in numpy: slower, the survivors' rows gathered), the rescoring from a "
            "float16 copy of the bank (numpy's float16 cast cost more than the reads it saved), a triangle-inequality "
            "prune around each candidate (the balls of radius 2 x the candidate distance hold most of the bank: "
            "neighbour distances are large against the bank's spread in 1,024 dimensions)."]


# -------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", type=int, default=1, help="every n-th test image only (a quick check of the script)")
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()
    if not (BUNDLE / "manifest.json").exists():
        export()
    from runtime.images import read_image
    from runtime.predictor import Predictor

    sides = {"before": old_path(Predictor(BUNDLE)), "after": Predictor(BUNDLE),
             "numpy": Predictor(BUNDLE, search="numpy")}
    after = sides["after"]
    log(f"after: {after.info()['search']}; map level {after.map_level:.2f}")
    files = sorted((DATA / "test").rglob("*.png"))[:: args.every]
    images = {f: read_image(f) for f in files}
    embs = {f: after.embed([images[f]])[0] for f in files}
    groups = {"good": [f for f in files if f.parent.name == "good"],
              "defective": [f for f in files if f.parent.name != "good"]}
    log("step by step")
    step_res = step_table(sides, embs, groups, args.rounds)
    log("end to end")
    e2e = end_to_end(sides, {"test": [images[f] for f in files], "good": [images[f] for f in groups["good"]]},
                     [("test", 1), ("test", 4), ("test", 8), ("good", 1)], max(1, args.rounds - 1))
    log("bench's images")
    bench_imgs = files[:8]  # what `bench --batch-sizes 1,4,8` scored before it took the images in turn
    bench = [steps(after, embs[f][None]) for f in bench_imgs]
    log("patches settled at other levels")
    from runtime import exact_maps
    from runtime.search.distances import nearest_candidate

    pixel = after.bundle.manifest["threshold"].get("pixel_value")
    after.overlays = True
    overlay_floor = after.map_level
    after.overlays = False
    levels = {"the map level": after.map_level, "the image threshold's floor": after.threshold - after.scale,
              "the overlay floor (where overlays are drawn)": overlay_floor}
    if pixel is not None:
        levels["the pixel threshold (regions)"] = float(pixel)
    at_levels = {}
    for gname, fs in groups.items():
        ups = [nearest_candidate(embs[f], after.scorer.bank, after.scorer.index.search(embs[f], after.scorer.margin))[0]
               for f in fs]
        for name, lv in levels.items():
            at_levels[(gname, name)] = float(np.mean([exact_maps.patches_to_settle(u[None], after.layout,
                                                                                   after.blur_sigma, lv).sum()
                                                      for u in ups]))
    log("floor")
    probe = groups["defective"][len(groups["defective"]) // 2]
    e = embs[probe]
    up, _ = nearest_candidate(e, after.scorer.bank, after.scorer.index.search(e, after.scorer.margin))
    fl = floor(after, e, after.map_patches(up[None])[0])
    fl["levels"], fl["at_levels"] = levels, at_levels
    # exactness on every test image, this run: after against numpy
    a = np.array([sides["numpy"].predict([images[f]]).image_scores[0] for f in files])
    b = np.array([after.predict([images[f]]).image_scores[0] for f in files])
    err = float(np.max(np.abs(b - a) / np.abs(a)))
    finished = dt.datetime.now(dt.timezone.utc)
    write(args, started, finished, load, os.getloadavg(), after, step_res, e2e, bench, bench_imgs, fl, err,
          bool(np.array_equal(a >= after.threshold, b >= after.threshold)))


def write(args, started, finished, load, load_end, after, step_res, e2e, bench, bench_imgs, fl, err, same) -> None:
    import onnxruntime

    info = after.info()
    lines = ["## The default search, step by step", "",
             "_Written by `benchmarks/search_profile.py` from one run; every figure below comes from that run._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/search_profile.py "
             f"--rounds {args.rounds}{f' --every {args.every}' if args.every > 1 else ''}` (the OpenBLAS overrides of these machines unset); {started:%Y-%m-%d %H:%M} to "
             f"{finished:%H:%M} UTC",
             f"- Machine: {cpu_name()}, Python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
             f"{onnxruntime.__version__}; load average {load[0]:.1f} at start, {load_end[0]:.1f} at the end"
             + (" (shared with other jobs: absolute times are inflated; read the ratios, measured interleaved)"
                if max(load[0], load_end[0]) > 1.5 else ""),
             f"- Bundle: `patchcore export --backbone effnet-lite0 --data bottle --int8` (320 x 320, 40 x 40 patches, a "
             f"bank of {fl['rows']:,} x {fl['dim']}); search `{info['search']}`; map level (exact at and above) "
             f"{after.map_level:.1f} (records without overlays: the pixel threshold; where overlays are drawn, the overlay "
             "floor below, docs/precision.md)",
             "- Sides: **before** = the default path as it was (every candidate rescored with float64 sums, pairs "
             "from a 2-D `np.nonzero` of the bound's mask, every pair measured, the settled cells from a 7 x 7 "
             "dilation), at the bundle's candidate count; **after** = the default path now; "
             "**numpy** = `--search numpy` (exact)", ""]
    lines += ["### Step by step (ms per image, mean over the group, median of rounds)", "",
              "| images | side | " + " | ".join(STEPS) + " | patches settled | pairs |",
              "|---|---|" + "---|" * (len(STEPS) + 2)]
    for g in ("good", "defective"):
        for s in ("before", "after"):
            r = step_res[(g, s)]
            lines.append(f"| {g} | {s} | " + " | ".join(f"{r[k]:.2f}" for k in STEPS)
                         + f" | {r['settled']:.0f} of 1600 | {r['pair_count']:.0f} |")
        ratio = step_res[(g, "before")]["search"] / step_res[(g, "after")]["search"]
        lines.append(f"| {g} | before / after | " + " | ".join(
            f"{step_res[(g, 'before')][k] / max(step_res[(g, 'after')][k], 1e-9):.2f}x" for k in STEPS) + " | | |")
        log(f"{g}: search before/after {ratio:.2f}x")
    lines += ["", "### End to end, every test image (ms per image, median of rounds)", "",
              "| images, batch | side | " + " | ".join(STAGES) + " | numpy / side (total) | numpy / side (search) |",
              "|---|---|" + "---|" * (len(STAGES) + 2)]
    for key in sorted({(g, b) for g, b, _ in e2e}, key=lambda k: (k[0] != "test", k[1])):
        for s in ("numpy", "before", "after"):
            r, n = e2e[(*key, s)], e2e[(*key, "numpy")]
            ratios = "| |" if s == "numpy" else f"| **{n['total'] / r['total']:.2f}x** | {n['search'] / r['search']:.2f}x |"
            lines.append(f"| {key[0]}, {key[1]} | {s} | " + " | ".join(f"{r[k]:.2f}" for k in STAGES) + f" {ratios}")
    lines += ["", f"- Image scores, after against numpy, every test image: largest relative difference {err:.1e}; "
              f"verdicts {'identical' if same else 'DIFFER'}"]
    lines += ["", "### Why `bench`'s per-image search grew with the batch", "",
              "`bench` scored the first *b* images of the folder, repeated (it now takes them in turn): batch 1 was "
              f"`{bench_imgs[0].parent.name}/{bench_imgs[0].name}` alone, batch 8 the first eight. Their searches, "
              "one at a time (after):", "",
              "| image | search ms | patches settled |", "|---|---|---|"]
    for f, r in zip(bench_imgs, bench):
        lines.append(f"| {f.parent.name}/{f.name} | {r['search']:.2f} | {r['settled']} |")
    lines += ["", "So batches 4 and 8 averaged other images than batch 1, not a cost that grows with the batch: "
              "the end-to-end table above scores every test image at each batch size."]
    lines += ["", "### The floor", "", f"onnxruntime's profile of the two products on one defective image "
              f"({fl['queries']} patches, {fl['settled']} of them settled), median µs per node (those taking 2% of their graph's time or more):", "",
              "| graph | node | µs | multiply-accumulates | G per second |", "|---|---|---|---|---|"]
    macs = fl["macs"]
    dq = sorted(k for k in fl["cand"] if k.startswith("DynamicQuantizeMatMul"))  # the graph's order: projection, product
    named = dict(zip(dq, ("projection (int8)", "product (int8)")))
    for graph in ("cand", "bound"):
        total = sum(fl[graph].values())
        for node, us in sorted(fl[graph].items(), key=lambda kv: -kv[1]):
            if us < 0.02 * total:  # the nodes that take 2% of the graph's time or more
                continue
            work = named.get(node) or ({"MatMul": "bound projection (fp32)", "Gemm": "bound Gemm (fp32)"}
                                       .get(node.split(":")[0]) if graph == "bound" else None)
            mac = macs.get(work) if work else None
            rate = f"{mac / us / 1e3:.1f}" if mac and us > 0 else ""
            lines.append(f"| {'candidates' if graph == 'cand' else 'bound'} | {node} | {us:.0f} | "
                         f"{f'{mac / 1e6:.0f} M' if mac else ''} | {rate} |")
    lines += floor_notes(fl, step_res)
    replace_section(ROOT / "BENCHMARKS.md", "search-profile", "\n".join(lines))
    log("wrote BENCHMARKS.md section search-profile")


if __name__ == "__main__":
    main()
