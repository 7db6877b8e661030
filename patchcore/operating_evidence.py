"""The operating point's evidence at fit time: good parts and defects scored by banks that never saw them.

Good evidence: every training image's out-of-fold score (:mod:`patchcore.out_of_fold`). A fold bank holds
``(k-1)/k`` of the images, so a good part scores a little higher against it than a new good part
against the full bank: the fit measures this fold bias (every fold's held-out images are also scored
against a bank of one fold fewer; the score's drop from ``k-2`` to ``k-1`` folds, extrapolated as a
power law in the bank's images to ``k`` folds) and records it (``facts.fold_bias``). The good scores (and maps, for
their regions) are divided by it (:data:`FOLD_BIAS_APPLIED`): the study (BENCHMARKS.md, "Operating point")
found the estimate close to the measured bias, and the corrected threshold nearer the oracle's F1 while
the false-call promise held.

Defect evidence: synthetic defects (:mod:`patchcore.synthetic_defects`: every family and size bucket,
exact masks) drawn on each fold's held-out images, with donors from the other folds, scored against
that fold's bank; with ``--ng DIR``, half of the user's real NG images (a seeded split), scored by the
full bank, join them, and the other half checks the chosen point (``check``). Nothing reads the
dataset's ``test/``.

Each image's evidence is its image score and its largest region in original pixels, measured exactly
as the runtime measures it (:meth:`runtime.regions.Judge.regions`), so that a rule means the same at
fit and on the line. The policy (``--operating-point``) and the rule (``--rule``) then pick the
threshold with :mod:`runtime.operating_point`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime import operating_point as op
from runtime.errors import UsageError
from runtime.geometry import map_to_original
from runtime.images import is_image_file, read_image
from runtime.postprocess import finish
from runtime.preprocess import prepare, stack_inputs
from runtime.regions import find_regions
from runtime.search.scorer import PatchScorer

from . import synthetic_defects as D
from .input_geometry import image_sizes
from .out_of_fold import OutOfFold
from .presets import DEFAULT_POLICY, DEFAULT_RULE, RULE_CHOICES
from .progress import progress_bar

RULE_MARGIN = 0.02  # auto picks "either" only when it beats image-score's objective by this much
# Defects' scores are not divided by the fold bias: a defect's patch is far from every bank, so a fold
# bank scores it about as the full bank does, while a good part scores higher against a fold bank than
# against the full one (BENCHMARKS.md, "Operating point").
DEFECT_CORRECTION = 1.0
# Whether the good evidence is divided by the measured fold bias (True) or kept as scored (False): chosen by
# the study (BENCHMARKS.md, "Operating point": which one keeps the false-call promise on unseen good images).
FOLD_BIAS_APPLIED = True
MAX_DEFECTS = 120  # at most this many synthetic defects in all (the fit's added time stays modest)


@dataclass(frozen=True)
class EvidenceOptions:
    """What the fit's operating point rests on and how it is chosen."""

    policy: str | None = None  # None: DEFAULT_POLICY
    rule: str = DEFAULT_RULE
    ng: str | None = None  # folder of real NG images the user named (half set the point, half check it)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy is None:
            object.__setattr__(self, "policy", DEFAULT_POLICY)
        op.parse_policy(self.policy)  # UsageError (exit 2) for a bad policy, before any image is read
        if self.rule not in RULE_CHOICES:
            raise UsageError(f"--rule must be one of {', '.join(RULE_CHOICES)}, got {self.rule!r}")
        if self.ng is not None:
            ng_images(self.ng)


def ng_split(n: int, seed: int) -> np.ndarray:
    """The seeded order of ``n`` ``--ng`` images: the first half sets the operating point and takes
    part in the recipe choice (:mod:`patchcore.recipe.real_ng`), the rest checks them. One function,
    so the two choices cannot drift apart."""
    return np.random.default_rng([seed, 7]).permutation(n)


def ng_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted); a UsageError (exit 2) when it is
    missing or holds fewer than two (one to set the point, one to check it)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--ng {folder}: folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and "mask" not in p.stem)
    if len(files) < 2:
        raise UsageError(f"--ng {folder}: needs at least 2 NG images (half set the point, half check it), "
                         f"found {len(files)}")
    return files


def largest_region(amap: np.ndarray, plan, pixel_value: float, pixel_base: float | None, scale: float = 1.0) -> int:
    """The largest region's ``area_px`` of a canvas map, as the runtime's Judge measures it (the map
    divided by ``scale`` first: the fold-bias correction); 0 when no pixel reaches the level."""
    amap = np.asarray(amap, np.float32) / np.float32(scale) if scale != 1.0 else amap
    found, _ = find_regions(map_to_original(amap, plan, fill=-np.inf), pixel_value, None, pixel_base, top=1)
    return int(found[0]["area_px"]) if found else 0


def fold_bias(oof: OutOfFold) -> dict:
    """The factor by which out-of-fold scores sit above new good parts' scores against the full
    bank, from each fold's held-out scores against ``k-1`` and ``k-2`` folds (:func:`out_of_fold`'s
    ``inner_scores``): ``r = median(s[k-2] / s[k-1])``, per fold; ``factor = r ** a`` with
    ``a = log(k / (k-1)) / log((k-1) / (k-2))`` (one more step of the same power law)."""
    k = len(oof.folds)
    if oof.inner_scores is None or k < 3:
        return {"factor": 1.0, "method": "none (fewer than 3 folds)"}
    ratio = np.median(oof.inner_scores / np.maximum(oof.image_scores, 1e-12))
    ratio = max(1.0, float(ratio))  # a bank with more images never scores a good part higher
    a = math.log(k / (k - 1)) / math.log((k - 1) / (k - 2))
    return {"factor": round(ratio ** a, 6), "step_ratio": round(ratio, 6), "exponent": round(a, 4),
            "method": f"held-out scores against {k - 2} and {k - 1} of {k} folds, extrapolated to the full bank"}


class Scorer:
    """Scores decoded images like the runtime: embeddings -> a bank's search -> :func:`finish`;
    gives image scores and each image's largest region (original pixels)."""

    def __init__(self, model, pixel_value: float, pixel_base: float | None):
        self.model, self.pixel_value, self.pixel_base = model, pixel_value, pixel_base

    def score(self, scorer: PatchScorer, images: Sequence[np.ndarray], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        m, cfg = self.model, self.model.config
        prepared = [prepare(im, m.preprocess) for im in images]
        emb = m.embed_tensor(stack_inputs(prepared))
        emb = emb.reshape(len(images), m.layout.n_tiles * m.layout.patches_per_tile, emb.shape[-1])
        pred = finish(scorer.score(emb), m.layout, cfg.blur_sigma, None, None)
        regions = [largest_region(pred.maps[i], p.plan, self.pixel_value, self.pixel_base, scale)
                   for i, p in enumerate(prepared)]
        return np.asarray(pred.image_scores, np.float64) / scale, np.asarray(regions, np.float64)


def _fold_scorer(model, bank: np.ndarray) -> PatchScorer:
    return model.exact_scorer(bank)  # a fused model's scores its parts' banks side by side


def synthetic_defects(model, paths: Sequence[Path], oof: OutOfFold, scorer: Scorer, seed: int,
                      defect_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Each family x size once per fold (at most :data:`MAX_DEFECTS` in all), drawn on the fold's
    held-out images (hosts in turn; donors from the other folds) and scored by the fold's bank."""
    per_fold = min(len(D.FAMILIES) * len(D.SIZE_BUCKETS), max(1, MAX_DEFECTS // len(oof.folds)))
    cells = [(fi, fam, si, size) for fi, fam in enumerate(D.FAMILIES) for si, size in enumerate(D.SIZE_BUCKETS)]
    scores, regions, families, sizes = [], [], [], []
    n = len(paths)
    with progress_bar("defect evidence", total=per_fold * len(oof.folds)) as advance:
        for f, held in enumerate(oof.folds):
            others = np.setdiff1d(np.arange(n), held)
            order = np.random.default_rng([seed, f]).permutation(len(cells))[:per_fold]
            drawn = []
            for j, c in enumerate(order):
                fi, fam, si, size = cells[c]
                rng = np.random.default_rng([seed, f, fi, si])
                host = read_image(paths[int(held[j % len(held)])])
                donor = read_image(paths[int(others[rng.integers(len(others))])]) if len(others) else None
                fg = D.foreground(host)
                img, _, _ = D.draw(host, fam, size * D.part_area(fg), rng, fg, donor)
                drawn.append(img)
                families.append(fam)
                sizes.append(size)
            bank_scorer = _fold_scorer(model, oof.banks[f])
            for s in range(0, len(drawn), 8):
                sc, rg = scorer.score(bank_scorer, drawn[s:s + 8], defect_scale)
                scores.append(sc)
                regions.append(rg)
                advance(len(drawn[s:s + 8]))
    fams = {fam: families.count(fam) for fam in D.FAMILIES if fam in families}
    facts = {"families": fams, "size_buckets": list(D.SIZE_BUCKETS), "per_fold": per_fold, "seed": seed}
    return np.concatenate(scores), np.concatenate(regions), facts


def real_defects(model, folder: str | Path, scorer: Scorer, seed: int):
    """The user's NG images scored by the full bank, split (seeded) into a half that sets the point
    and a half that checks it: ``(set scores, set regions, check scores, check regions, names)``."""
    files = ng_images(folder)
    perm = ng_split(len(files), seed)
    n_set = len(files) // 2
    full = _fold_scorer(model, model.bank)
    out = []
    for part in (perm[:n_set], perm[n_set:]):
        sc, rg = [], []
        for s in range(0, len(part), 8):
            a, b = scorer.score(full, [read_image(files[i]) for i in part[s:s + 8]])
            sc.append(a)
            rg.append(b)
        out += [np.concatenate(sc), np.concatenate(rg)]
    return (*out, len(files), n_set)


def rule_for(choice: str, evidence: op.Evidence, policy: op.Policy) -> tuple[op.Rule, dict]:
    """The rule ``choice`` names, or (``auto``) the better of image-score and either on the evidence
    under ``policy``: either (the smallest region no good image reaches) wins only by
    :data:`RULE_MARGIN` of the policy's objective. Returns the rule and the comparison."""
    area = float(evidence.good_region_px.max()) + 1.0 if len(evidence.good_region_px) else 1.0
    either = op.Rule("either", max(1.0, area))
    if choice == "image-score":
        return op.Rule(), {"chosen_by": "--rule image-score"}
    if choice == "either":
        return either, {"chosen_by": "--rule either"}
    if not len(evidence.defect_scores) or policy.kind == "value":
        return op.Rule(), {"chosen_by": "image-score: no evidence to compare rules on"}
    compared = {}
    for rule in (op.Rule(), either):
        try:
            r = op.rates(evidence, rule, op.choose(evidence, rule, policy))
        except UsageError:
            continue
        compared[str(rule)] = _objective(r, policy)
    base = compared.get(str(op.Rule()), -math.inf)
    pick = either if compared.get(str(either), -math.inf) >= base + RULE_MARGIN else op.Rule()
    return pick, {"chosen_by": f"auto: the policy's objective on the evidence ({_objective_name(policy)}), either "
                                f"needs +{RULE_MARGIN:g}", "objective": {k: round(v, 4) for k, v in compared.items()}}


def _objective(r: op.Rates, policy: op.Policy) -> float:
    if policy.kind == "f1":
        return r.f1(policy.value)
    if policy.kind == "recall":
        return -r.false_calls
    return r.catch_rate


def _objective_name(policy: op.Policy) -> str:
    return {"f1": "expected F1", "recall": "fewer false calls", "false-calls": "catch rate"}.get(policy.kind, "")


def operating_point(model, paths: Sequence[Path], oof: OutOfFold, pixel: dict, options: EvidenceOptions) -> dict:
    """The manifest's ``threshold.operating_point`` (and the chosen threshold as its ``value``)."""
    t0 = time.perf_counter()
    bias = {**fold_bias(oof), "applied": FOLD_BIAS_APPLIED}
    c = bias["factor"] if FOLD_BIAS_APPLIED else 1.0
    scorer = Scorer(model, pixel["pixel_value"], pixel.get("pixel_base"))
    plans = [model.preprocess.plan(h, w) for h, w in image_sizes(paths)]
    good_regions = np.array([largest_region(oof.maps[i], plans[i], scorer.pixel_value, scorer.pixel_base, c)
                             for i in range(len(paths))], np.float64)
    d_scores, d_regions, d_facts = synthetic_defects(model, paths, oof, scorer, options.seed, DEFECT_CORRECTION)
    t1 = time.perf_counter()
    source = (f"synthetic defects on out-of-fold good images ({len(d_facts['families'])} families x "
              f"{len(d_facts['size_buckets'])} sizes)")
    extra: dict = {}
    check = None
    if options.ng is not None:
        s_set, r_set, s_chk, r_chk, n_all, n_set = real_defects(model, options.ng, scorer, options.seed)
        d_scores, d_regions = np.concatenate([d_scores, s_set]), np.concatenate([d_regions, r_set])
        source += f", {n_set} of them of {n_all} real NG images (--ng {options.ng}; the other {n_all - n_set} check it)"
        check = (s_chk, r_chk, n_all - n_set)
    evidence = op.Evidence(oof.image_scores / c, d_scores, good_regions, d_regions,
                           good_source=f"{len(paths)} out-of-fold good training images ({len(oof.folds)} folds)"
                                       + (f", scores divided by the fold bias {c:.4g}" if FOLD_BIAS_APPLIED else ""),
                           defect_source=source,
                           facts={"fold_bias": bias, "defect_correction": DEFECT_CORRECTION, "synthetic": d_facts})
    policy = op.parse_policy(options.policy)
    rule, why = rule_for(options.rule, evidence, policy)
    if check is not None:
        extra["check"] = _check(evidence, rule, policy, *check, options.ng)
    section = op.section(evidence, rule, policy, chosen_by=f"patchcore fit: {why['chosen_by']}",
                         extra={"rule_choice": why, **extra})
    section["seconds"] = round(time.perf_counter() - t0, 3)
    section["defect_seconds"] = round(t1 - t0, 3)
    return section


def _check(evidence: op.Evidence, rule: op.Rule, policy: op.Policy, scores, regions, n: int, folder) -> dict:
    t = op.choose(evidence, rule, policy)
    caught = int(rule.called_ng(scores, regions, t).sum())
    lo, hi = op.wilson(caught, n)
    return {"source": f"{n} real NG images of --ng {folder} that took no part in choosing the point",
            "n": n, "caught": caught, "catch_rate": caught / n, "catch_rate_interval": [lo, hi]}
