"""How many candidates the int8 search should keep: one against two on the default bundle, interleaved;
writes the section "Candidate count" of BENCHMARKS.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/candidate_count.py   # ~3 min on 2 cores

The bundle is ``benchmarks/fast_default.py``'s (``patchcore export --backbone effnet-lite0 --data bottle
--int8``, in ``.bench/fast/bundle``; exported when absent). Two scorers share its bank and its int8 step on
the same principal components and differ only in the candidate count; each scores bottle's test images'
embeddings with the default settling (maps exact at and above the pixel threshold), round by round in
alternating order. Reported per side: the search's median ms per image over rounds (test set, good images),
the patches settled per image, the share of patches whose candidates hold the true nearest row, and the
largest relative difference of the image scores from the exact numpy search's (both must be 0).
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
from fast_default import BUNDLE, DATA, cpu_name, export  # noqa: E402

COUNTS = (1, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    from runtime.images import read_image
    from runtime.predictor import Predictor
    from runtime.search.build import build_index
    from runtime.search.exact import NumpyIndex
    from runtime.search.scorer import PatchScorer

    if not (BUNDLE / "manifest.json").exists():
        export()
    started, load = dt.datetime.now(dt.timezone.utc), os.getloadavg()
    p = Predictor(BUNDLE, graph="features_fp32", search="auto")
    facts = p.bundle.manifest["reduced_precision"]["int8_search"]
    files = sorted((DATA / "test").glob("*/*.png"))
    embs = [p.embed([read_image(f)]) for f in files]
    good = [e for e, f in zip(embs, files) if f.parent.name == "good"]
    bank, n_reweight = p.scorer.bank, p.scorer.n_reweight
    sides = {c: PatchScorer(bank, build_index(bank, "int8", candidates=c, components=facts["components"])[0],
                            n_reweight) for c in COUNTS}
    exact = PatchScorer(bank, build_index(bank, "numpy")[0], n_reweight)
    truth = [NumpyIndex(bank).search(e[0], 1)[:, 0] for e in embs]
    times = {(c, g): [] for c in COUNTS for g in ("test", "good")}
    settled, worst = {c: [] for c in COUNTS}, {c: 0.0 for c in COUNTS}
    ref = [exact.score(e).image_scores[0] for e in embs]
    for r in range(args.rounds):
        for c in (COUNTS if r % 2 == 0 else COUNTS[::-1]):
            sc = sides[c]
            sc._neighbours.clear()  # every round searches each m* again, as a first pass over the images would
            for group, items in (("test", embs), ("good", good)):
                t0 = time.perf_counter()
                out = [sc.score(e, settle=p.map_patches) for e in items]
                times[(c, group)].append(1000 * (time.perf_counter() - t0) / len(items))
                if r == 0 and group == "test":
                    settled[c] = [int(s.exact.sum()) for s in out]
                    worst[c] = max(abs(s.image_scores[0] - x) / abs(x) for s, x in zip(out, ref))
    recall = {c: float(np.mean(np.concatenate([(sides[c].index.search(e[0], c) == t[:, None]).any(axis=1)
                                               for e, t in zip(embs, truth)]))) for c in COUNTS}
    finished, load_end = dt.datetime.now(dt.timezone.utc), os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {g: statistics.median(a / b for a, b in zip(times[(2, g)], times[(1, g)])) for g in ("test", "good")}
    import onnxruntime

    lines = ["## Candidate count of the int8 search", "",
             "_Written by `benchmarks/candidate_count.py` from one run; every figure below comes from that run._", "",
             f"- Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/candidate_count.py "
             f"--rounds {args.rounds}` (the OpenBLAS overrides of these machines unset); {started:%Y-%m-%d %H:%M} to "
             f"{finished:%H:%M} UTC",
             f"- Machine: {cpu_name()}, Python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
             f"{onnxruntime.__version__}; load average {load[0]:.1f} at start, {load_end[0]:.1f} at the end",
             f"- Bundle: `patchcore export --backbone effnet-lite0 --data bottle --int8` (a bank of {len(bank):,} x "
             f"{bank.shape[1]}; the int8 step on {facts['components']} components; the export chose "
             f"{facts['candidates']} candidate(s) at recall target {facts['recall_target']}); map level "
             f"{p.map_level:.1f} (the pixel threshold); {len(embs)} test images, {len(good)} good; {args.rounds} "
             "rounds, the two sides in alternating order", "",
             "| candidates | search ms, test set | search ms, good images | patches settled per test image | "
             "recall (test patches) | image scores vs exact |",
             "|---|---|---|---|---|---|"]
    for c in COUNTS:
        lines.append(f"| {c} | {med[(c, 'test')]:.2f} | {med[(c, 'good')]:.2f} | {np.mean(settled[c]):.0f} | "
                     f"{recall[c]:.3f} | {worst[c]:.1e} |")
    lines += ["", f"- Two candidates / one, median of the rounds' ratios: {ratio['test']:.3f}x on the test set, "
              f"{ratio['good']:.3f}x on good images. The settling keeps image scores and the maps at and above the "
              "level exact with either count; a miss costs a higher bound below the level, or a patch settled "
              "near it, and each candidate costs a bank row read per patch."]
    replace_section(ROOT / "BENCHMARKS.md", "candidate-count", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
