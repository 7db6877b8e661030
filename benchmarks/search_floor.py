"""The end-to-end budget of issue 32 ("end to end within 2.5x the trunk's own time") against the floor of
the default search, in one run; writes the section "The search's floor against the end-to-end budget"
of BENCHMARKS.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/search_floor.py   # ~5 min on 2 cores

The bundle is ``benchmarks/fast_default.py``'s (``patchcore export --backbone effnet-lite0 --data bottle
--int8``, defaults), in ``.bench/fast/bundle`` (git-ignored; exported when absent), run with no options
(what a user gets). Four parts, all on bottle's test images:

1. **The budget.** Each image's stages at batch 1 (decode, preprocess, features, search, postprocess;
   median of rounds per image, mean over good and over defective images): 2.5x the features stage,
   less the stages other than the search, is what the search may take.
2. **The floor.** The two products no exact settling can skip, timed alone on the same images: the int8
   candidate graph on every patch, and the float32 bound graph on the patches the map level makes the
   scorer settle (its count is set by the level and the blur's reach, not by the search).
3. **The rates.** The bound's Gemm in onnxruntime against numpy's BLAS at the same shape, and the int8
   product's multiply-accumulates per second: whether another product library could move the floor.
4. **What else was measured.** The int8 step on fewer principal components (the candidate product is
   cheaper, the settling dearer), the pairs a bf16 bound would leave (its rounding must widen the
   bound's slack), and how far apart neighbouring patches' embeddings lie against their scores (a
   bound reused from a neighbour needs that gap small).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import replace_section  # noqa: E402
from fast_default import DATA, cpu_name, ensure_bundle  # noqa: E402

STAGES = ("decode", "preprocess", "features", "search", "postprocess", "total")
RATIO = 2.5  # the target: end to end within this many times the features stage
# a bf16 bound: each input rounded to 8 significant bits (u = 2^-8) moves q . m by up to (2u + u^2)
# sum |q_i m_i| <= 2^-8 (|q|^2 + |m|^2), and the bound holds -2 q . m: 2^-7 of (|q|^2 + |m|^2), on top of
# the float32 slack the bound graph takes now (runtime.search.reduced._BOUND_SLACK)
BF16_EXTRA_SLACK = 2.0**-7


def log(msg: str) -> None:
    print(f"[floor {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _graph_session(nodes: list, inputs: dict, outputs: dict):
    """An onnxruntime CPU session (threads that sleep after a run, as the runtime's) of one small graph;
    ``inputs``/``outputs``: name -> (ONNX element type, shape)."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info(k, *v) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(k, *v) for k, v in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def budget(predictor, files: list[Path], rounds: int) -> dict:
    """Per image, median over rounds of each stage at batch 1 (ms); the images in turn each round."""
    from runtime.images import read_image

    per: dict[Path, dict[str, list[float]]] = {f: {s: [] for s in STAGES} for f in files}
    for _ in range(rounds):
        for f in files:
            t0 = time.perf_counter()
            image = read_image(f)
            decode = time.perf_counter() - t0
            pred = predictor.predict([image])
            row = {"decode": decode, **{k: pred.timings[k] for k in STAGES[1:-1]}}
            row["total"] = sum(row.values())
            for k, v in row.items():
                per[f][k].append(1000 * v)
    return {f: {k: statistics.median(v) for k, v in d.items()} for f, d in per.items()}


def settled_patches(predictor, emb: np.ndarray) -> np.ndarray:
    """The patches the default path settles on one image: (P,) bool."""
    scores = predictor.scorer.score(emb[None], settle=predictor.map_patches)
    return scores.exact[0]


def floor(predictor, embs: dict, settled: dict, runs: int) -> dict:
    """Per image, the candidate graph on all patches and the bound graph on its settled patches alone (ms)."""
    idx = predictor.scorer.index
    out = {}
    for f, e in embs.items():
        cand = median_ms(lambda: idx.search(e, idx.candidates), runs)
        qs = e[settled[f]]
        upper = np.full(len(qs), 1e4)
        bound = median_ms(lambda: list(idx.inside(qs, upper)), runs) if len(qs) else 0.0
        out[f] = {"candidates": cand, "bound": bound, "settled": int(settled[f].sum())}
    return out


def rates(predictor, emb: np.ndarray, mask: np.ndarray, runs: int) -> dict:
    """The bound's Gemm in onnxruntime and in numpy at the same shape, and the int8 product's rate."""
    from onnx import TensorProto, helper

    idx = predictor.scorer.index
    q_aug = np.random.default_rng(0).standard_normal((int(mask.sum()), idx._bound_feed["bank_aug"].shape[1])
                                                     ).astype(np.float32)
    bank_aug = idx._bound_feed["bank_aug"]
    bank_sq = idx._bound_feed["bank_sq"]
    sess = _graph_session([helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=-2.0, transB=1)],
                          {"a": (TensorProto.FLOAT, ["q", "k"]), "b": (TensorProto.FLOAT, ["m", "k"]),
                           "c": (TensorProto.FLOAT, ["m"])}, {"y": (TensorProto.FLOAT, ["q", "m"])})
    bank_t = np.ascontiguousarray(bank_aug.T)
    feed = {"a": q_aug, "b": bank_aug, "c": bank_sq}
    macs = q_aug.shape[0] * q_aug.shape[1] * bank_aug.shape[0]
    sides = {"ort": lambda: sess.run(["y"], feed), "numpy": lambda: q_aug @ bank_t}  # numpy: no bias in the call
    times: dict[str, list[float]] = {k: [] for k in sides}
    # interleaved, the order turned each run, the first run of each a warm-up; a pause before each product,
    # because numpy's BLAS threads spin for a while after a call and would slow onnxruntime's next one
    for r in range(runs + 1):
        for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            time.sleep(0.3)
            t0 = time.perf_counter()
            sides[k]()
            if r:
                times[k].append(time.perf_counter() - t0)
    ms_ort, ms_np = (1000 * statistics.median(times[k]) for k in ("ort", "numpy"))
    int8_macs = len(emb) * (idx.rows + idx.dim) * idx.components  # the product and the projection
    ms_int8 = median_ms(lambda: idx.search(emb, idx.candidates), runs)
    return {"shape": (q_aug.shape[0], q_aug.shape[1], bank_aug.shape[0]), "ort_ms": ms_ort, "numpy_ms": ms_np,
            "ort_g": macs / ms_ort / 1e6, "numpy_g": macs / ms_np / 1e6, "int8_ms": ms_int8,
            "int8_g": int8_macs / ms_int8 / 1e6, "int8_macs": int8_macs}


def components_study(predictor, embs: dict, groups: dict, rounds: int) -> dict:
    """The default search with the int8 step on other principal-component counts (the bound on 256 of them,
    as now), interleaved round by round: ms per image and patches settled, per group."""
    from runtime.search import reduced as candidates

    sc = predictor.scorer
    saved = (sc.index, sc.margin, candidates._BOUND_FACTOR)
    now = (sc.index.components, sc.index.candidates)  # the bundle's: first, the ratios' reference
    configs = [now, (now[0] // 2, 1), (now[0] // 2, 2)]
    bound_basis = candidates._BOUND_FACTOR * now[0]
    indexes = {}
    try:
        for comps, cands in configs:
            candidates._BOUND_FACTOR = bound_basis // comps
            indexes[(comps, cands)] = candidates.Int8Index(sc.bank, cands, components=comps)
    finally:
        candidates._BOUND_FACTOR = saved[2]
    res = {(c, g): [] for c in configs for g in groups}
    settled = {}
    try:
        for r in range(rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for c in order:
                sc.index, sc.margin = indexes[c], c[1]
                for g, fs in groups.items():
                    t0 = time.perf_counter()
                    n = 0
                    for f in fs:
                        n += int(sc.score(embs[f][None], settle=predictor.map_patches).exact.sum())
                    res[(c, g)].append(1000 * (time.perf_counter() - t0) / len(fs))
                    settled[(c, g)] = n / len(fs)
    finally:
        sc.index, sc.margin = saved[0], saved[1]
    out = {}
    for k, v in res.items():
        ratios = [a / b for a, b in zip(v, res[(configs[0], k[1])])]
        out[k] = {"ms": statistics.median(v), "settled": settled[k], "ratio": statistics.median(ratios),
                  "low": min(ratios), "high": max(ratios)}
    return out


def slack_study(predictor, embs: dict, files: list[Path]) -> dict:
    """Pairs per settled patch with the bound's float32 slack, and with a bf16 bound's."""
    from runtime.search import reduced as candidates
    from runtime.search.distances import candidate_bounds, exact_distances

    sc = predictor.scorer
    idx = sc.index
    base = candidates._BOUND_SLACK
    out = {base: [0, 0], base + BF16_EXTRA_SLACK: [0, 0]}
    try:
        for f in files:
            e = embs[f]
            dist, nn = candidate_bounds(e, sc.bank, idx.search(e, idx.candidates))
            todo = predictor.map_patches(dist[None])[0]
            if not todo.any():
                continue
            upper = exact_distances(e[todo], sc.bank, nn[todo][:, None])[:, 0]
            for slack in out:
                candidates._BOUND_SLACK = slack
                qi, _ = idx.within(e[todo], upper)
                out[slack][0] += len(qi)
                out[slack][1] += int(todo.sum())
    finally:
        candidates._BOUND_SLACK = base
    return {k: v[0] / max(v[1], 1) for k, v in out.items()}


def rescoring_study(predictor, emb: np.ndarray, runs: int) -> dict:
    """The candidates' float32 bounds in numpy (the default) against the same sums in an onnxruntime graph
    (Gather, Sub, ReduceSumSquare on both cores), on one image's patches: ms each."""
    from onnx import TensorProto, helper

    from runtime.search.distances import candidate_bounds

    sc = predictor.scorer
    cand = sc.index.search(emb, sc.index.candidates)
    make = helper.make_node
    nodes = [make("Gather", ["queries", "qi"], ["qg"], axis=0), make("Gather", ["bank", "mi"], ["mg"], axis=0),
             make("Sub", ["qg", "mg"], ["diff"]), make("ReduceSumSquare", ["diff"], ["sq"], axes=[1], keepdims=0)]
    sess = _graph_session(nodes, {"queries": (TensorProto.FLOAT, ["q", "d"]), "bank": (TensorProto.FLOAT, ["m", "d"]),
                                  "qi": (TensorProto.INT64, ["n"]), "mi": (TensorProto.INT64, ["n"])},
                          {"sq": (TensorProto.FLOAT, ["n"])})
    feed = {"queries": np.ascontiguousarray(emb, np.float32), "bank": sc.bank,
            "qi": np.arange(len(emb), dtype=np.int64), "mi": np.ascontiguousarray(cand[:, 0], np.int64)}
    return {"numpy_ms": median_ms(lambda: candidate_bounds(emb, sc.bank, cand), runs),
            "graph_ms": median_ms(lambda: sess.run(["sq"], feed), runs), "patches": len(emb)}


def neighbour_gap(predictor, embs: dict, files: list[Path], settled: dict) -> float:
    """Median over settled patches of |q - q'| / score(q'), q' the next patch to the right."""
    gh, gw = predictor.grid
    ratios = []
    for f in files:
        e = embs[f].reshape(gh, gw, -1)
        s = predictor.scorer.score(embs[f][None], settle=predictor.map_patches)
        score = s.patch_scores[0].reshape(gh, gw)
        both = settled[f].reshape(gh, gw)
        both = both[:, 1:] & both[:, :-1]
        gap = np.linalg.norm(e[:, 1:] - e[:, :-1], axis=2)
        ratios.append((gap / np.maximum(score[:, 1:], 1e-12))[both])
    return float(np.median(np.concatenate(ratios)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every image per measurement")
    ap.add_argument("--every", type=int, default=1, help="every n-th test image only (a quick check of the script)")
    args = ap.parse_args()
    started, load = dt.datetime.now(dt.timezone.utc), os.getloadavg()
    from runtime.images import read_image
    from runtime.predictor import Predictor

    predictor = Predictor(ensure_bundle(), graph="auto")
    info = predictor.info()
    log(f"default path: {predictor.precision}, {info['search']}; map level {predictor.map_level:.2f}")
    if not predictor.scorer.approximate or not getattr(predictor.scorer.index, "bounds", False):
        raise SystemExit("the default search here is not the int8 step on principal components: nothing to measure")
    files = sorted((DATA / "test").rglob("*.png"))[:: args.every]
    groups = {"good": [f for f in files if f.parent.name == "good"],
              "defective": [f for f in files if f.parent.name != "good"]}
    log("the budget")
    stages = budget(predictor, files, args.rounds)
    embs = {f: predictor.embed([read_image(f)])[0] for f in files}
    settled = {f: settled_patches(predictor, embs[f]) for f in files}
    log("the floor")
    fl = floor(predictor, embs, settled, args.rounds)
    log("the rates")
    probe = max(groups["defective"], key=lambda f: settled[f].sum())
    rt = rates(predictor, embs[probe], settled[probe], 3 * args.rounds)
    log("components")
    comp = components_study(predictor, embs, groups, args.rounds + 2)
    log("slack")
    slack = slack_study(predictor, embs, groups["defective"])
    gap = neighbour_gap(predictor, embs, groups["defective"], settled)
    resc = rescoring_study(predictor, embs[probe], 3 * args.rounds)
    finished = dt.datetime.now(dt.timezone.utc)
    write(args, started, finished, load, os.getloadavg(), predictor, groups, stages, fl, rt, comp, slack, gap, probe, resc)


def _components_verdict(comp: dict) -> str:
    """What the components study says, in words, from its ratios and their spread over the rounds."""
    faster = [f"{c[0]} components and {c[1]} candidate(s) on {g} images ({r['ratio']:.2f}x)"
              for (c, g), r in comp.items() if r["high"] < 1.0]
    slower = [f"{c[0]} components and {c[1]} candidate(s) on {g} images ({r['ratio']:.2f}x)"
              for (c, g), r in comp.items() if r["low"] > 1.0]
    if not faster and not slower:
        return "No other setting was faster or slower in every round: the choice moves the search by less than this machine's noise."
    out = []
    if faster:
        out.append("Faster in every round: " + "; ".join(faster) + ".")
    if slower:
        out.append("Slower in every round: " + "; ".join(slower) + ".")
    return " ".join(out)


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def write(args, started, finished, load, load_end, predictor, groups, stages, fl, rt, comp, slack, gap, probe,
          resc) -> None:
    import onnxruntime

    from runtime.search import reduced as candidates

    info = predictor.info()
    idx = predictor.scorer.index
    lines = ["## The search's floor against the end-to-end budget", "",
             "_Written by `benchmarks/search_floor.py` from one run; every figure below comes from that run._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/search_floor.py "
             f"--rounds {args.rounds}{f' --every {args.every}' if args.every > 1 else ''}` (the OpenBLAS overrides "
             f"of these machines unset); {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC",
             f"- Machine: {cpu_name()}, Python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
             f"{onnxruntime.__version__}; load average {load[0]:.1f} at start, {load_end[0]:.1f} at the end",
             f"- Bundle: `patchcore export --backbone effnet-lite0 --data bottle --int8` (320 x 320, 40 x 40 patches, a "
             f"bank of {idx.rows:,} x {idx.dim}), no options: `{predictor.precision}` features, search `{info['search']}`; "
             f"map level (exact at and above) {predictor.map_level:.1f}, the pixel threshold", ""]
    lines += ["### The budget and the floor (ms per image, batch 1; median of rounds per image, mean over the group)", "",
              "| images | " + " | ".join(STAGES) + f" | total / features | search budget ({RATIO}x features "
              "less the other stages) | floor: candidate graph | floor: bound graph | floor | patches settled |",
              "|---|" + "---|" * (len(STAGES) + 6)]
    verdicts = {}
    for g, fs in groups.items():
        rows = [stages[f] for f in fs]
        s = {k: _mean(rows, k) for k in STAGES}
        room = RATIO * s["features"] - (s["total"] - s["search"])
        cand = _mean([fl[f] for f in fs], "candidates")
        bound = _mean([fl[f] for f in fs], "bound")
        settled = _mean([fl[f] for f in fs], "settled")
        verdicts[g] = (room, cand + bound, s)
        lines.append(f"| {g} ({len(fs)}) | " + " | ".join(f"{s[k]:.2f}" for k in STAGES)
                     + f" | {s['total'] / s['features']:.2f} | {room:.2f} | {cand:.2f} | {bound:.2f} | "
                     f"**{cand + bound:.2f}** | {settled:.0f} of {predictor.grid[0] * predictor.grid[1]} |")
    lines += ["", "- The floor is the two graph runs alone, on the patches this path settles: the candidate product "
              "over every patch, and the bound over the patches read by a pixel at or above the map level or a "
              "neighbour of one (the level the records need exact: regions' outline, box, area, peak and mean). "
              "Rescoring, the cells to settle, the pairs and eq. 7 come on top."]
    for g, (room, fl_ms, s) in verdicts.items():
        lines.append(f"- {g}: the search may take {room:.2f} ms for {RATIO}x; its two products alone take {fl_ms:.2f} "
                     f"ms ({fl_ms / max(room, 1e-9):.2f}x the budget), the whole search {s['search']:.2f}.")
    bound_def = _mean([fl[f] for f in groups["defective"]], "bound")
    cand_def = _mean([fl[f] for f in groups["defective"]], "candidates")
    blas_floor = cand_def + bound_def * rt["ort_g"] / rt["numpy_g"]
    lines += ["", "### The rates: could another product library move it?", "",
              f"On the defective image with the most settled patches (`{probe.parent.name}/{probe.name}`), the bound's "
              f"Gemm ({rt['shape'][0]} x {rt['shape'][1]} by {rt['shape'][2]:,} rows):", "",
              "| product | ms | G multiply-accumulates per second |", "|---|---|---|",
              f"| onnxruntime Gemm (the bound graph's, with its bias) | {rt['ort_ms']:.2f} | {rt['ort_g']:.1f} |",
              f"| numpy `@` (OpenBLAS, no bias) | {rt['numpy_ms']:.2f} | {rt['numpy_g']:.1f} |",
              f"| the int8 candidate graph on all {predictor.grid[0] * predictor.grid[1]} patches (projection and "
              f"product, {rt['int8_macs'] / 1e6:.0f} M int8 MACs, with its top k) | {rt['int8_ms']:.2f} | "
              f"{rt['int8_g']:.1f} |", "",
              f"- onnxruntime's float32 Gemm runs at {rt['ort_g'] / rt['numpy_g']:.2f}x numpy's BLAS at this shape "
              "(interleaved runs, a pause before each): "
              + ("the bound is computed at this CPU's float32 rate, not held back by the library."
                 if rt["ort_g"] >= 0.9 * rt["numpy_g"] else
                 f"BLAS would run the bound's Gemm {rt['numpy_g'] / rt['ort_g']:.2f}x faster at most, which would put "
                 f"the defective images' floor at {blas_floor:.2f} ms against their budget of {verdicts['defective'][0]:.2f} "
                 "(and numpy's BLAS threads spin after a call and slow the next feature run: docs/precision.md)."),
              "- The rates move with the machine's other jobs (up to 2x between runs on this shared machine); the "
              "budget and the floor above come from the same run, a minute apart."]
    lines += ["", "### What else was measured (interleaved rounds, ms of the whole search per image)", "",
              "| int8 step on | candidates | search, good | search, defective | / now, good | / now, defective | "
              "settled, good | settled, defective |", "|---|---|---|---|---|---|---|---|"]
    for comps, cands in sorted({(c, n) for (c, n), _ in comp}, key=lambda x: (-x[0], x[1])):
        gd, df = comp[((comps, cands), "good")], comp[((comps, cands), "defective")]
        lines.append(f"| {comps} components | {cands} | {gd['ms']:.2f} | {df['ms']:.2f} | {gd['ratio']:.2f}x "
                     f"({gd['low']:.2f}-{gd['high']:.2f}) | {df['ratio']:.2f}x ({df['low']:.2f}-{df['high']:.2f}) | "
                     f"{gd['settled']:.0f} | {df['settled']:.0f} |")
    base = candidates._BOUND_SLACK
    lines += ["", f"- \"/ now\": the median of the rounds' ratios to the bundle's own ({idx.components} components, "
              f"{idx.candidates} candidate(s)), the "
              "rounds' lowest and highest in brackets. Fewer components make the candidate product cheaper and its "
              "bounds looser: more patches cross the level, each a row of the bound. "
              + _components_verdict(comp),
              f"- A bf16 bound (a faster product where the CPU has AVX512-BF16 or AMX) must widen its "
              f"slack by 2^-7 of |q|^2 + |m|^2 to stay a bound: pairs per settled defective patch "
              f"{slack[base]:.1f} with the float32 slack, {slack[base + BF16_EXTRA_SLACK]:.1f} with the bf16 one "
              f"({slack[base + BF16_EXTRA_SLACK] / max(slack[base], 1e-9):.2f}x), each pair a bank row read and "
              "measured.",
              f"- Neighbouring settled patches lie a median {gap:.2f}x their score apart (|q - q'| / s(q')): a bound "
              "carried over from a neighbour by the triangle inequality would widen each ball by about the radius "
              "itself, so each patch needs its own bound.",
              f"- The candidates' rescoring ({resc['patches']} patches, one bank row each) in numpy, in cache-sized "
              f"blocks: {resc['numpy_ms']:.2f} ms; the same sums as an onnxruntime graph on both cores: "
              f"{resc['graph_ms']:.2f} ms (it writes each gathered row out before subtracting)."]
    replace_section(ROOT / "BENCHMARKS.md", "search-floor", "\n".join(lines))
    log("wrote BENCHMARKS.md section search-floor")


if __name__ == "__main__":
    main()
