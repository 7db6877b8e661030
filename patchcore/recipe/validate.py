"""Validation from good images only: folds of the good training images, synthetic defects on the
held-out ones, every candidate scored on them.

The trunk runs once per network input size; both aggregations read the same layer maps, each
fold's bank is selected once per (aggregation, input) and serves every eq. 7 count (which only
reweights image scores). Maps are compared at one evaluation size per image (its original size,
the longer side at most ``eval_side``), so that candidates of different inputs are judged on the
same pixels and a defect a few pixels wide stays in the mask.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from runtime.images import read_image
from runtime.postprocess import finish
from runtime.preprocess import prepare, stack_inputs
from runtime.search.build import build_index
from runtime.search.scorer import PatchScorer

from ..coreset import coreset_size, greedy_select, projection_matrix
from ..data import ClassDataset, load_mask
from ..metrics import image_auroc, pixel_auroc, pro_score
from .. import synthetic_defects as D
from ..config import PatchCoreConfig
from ..model import PatchCore
from ..progress import progress_bar
from .recipe_candidates import AGGREGATIONS, Candidate


MIN_PER_FOLD = 4  # held-out good images per fold, fewest


@dataclass(frozen=True)
class Settings:
    folds: int = 3
    max_images: int = 60  # good training images selection uses, at most (drawn with the seed)
    per_cell: int = 3  # synthetic images per family x size per fold
    fp_rate: float = 0.05  # image threshold: this quantile of the held-out good images' scores from the top
    eval_side: int = 448  # longer side of the evaluation maps
    families: tuple[str, ...] = D.FAMILIES
    sizes: tuple[float, ...] = D.SIZE_BUCKETS
    latency_budget_ms: float | None = None
    # fold draws (seeds of the dealt folds) averaged over: None = DRAWS_SMALL below SMALL_CLASS good
    # training images, else 1 (docs/selection.md, "Variance")
    draws: int | None = None


SMALL_CLASS = 100  # fewer good training images than this: the choice is averaged over DRAWS_SMALL fold draws
DRAWS_SMALL = 3


def n_draws(settings: Settings, n_train: int) -> int:
    if settings.draws is not None:
        return settings.draws
    return DRAWS_SMALL if n_train < SMALL_CLASS else 1


@dataclass
class Synthetic:
    fold: int
    family: str
    size: float
    image: np.ndarray
    mask: np.ndarray
    facts: dict


@dataclass
class GroupResult:
    """One (aggregation, input) group: what each fold gave, per eq. 7 count."""

    good_scores: list[dict[int, np.ndarray]] = field(default_factory=list)  # per fold: k -> (n_held,)
    synth_scores: list[dict[int, np.ndarray]] = field(default_factory=list)  # per fold: k -> (n_synth,)
    aupro: list[dict[tuple[str, float], float]] = field(default_factory=list)  # per fold: cell -> AU-PRO
    examples: dict[str, np.ndarray] = field(default_factory=dict)  # family -> eval map of fold 0's last defect
    real: dict[int, dict] = field(default_factory=dict)  # k -> real figures (the shown check)
    ng_scores: list[np.ndarray] = field(default_factory=list)  # per fold: the --ng images' image scores
    ng_aupro: list[float | None] = field(default_factory=list)  # per fold: their AU-PRO (None: no masks)
    check_seconds: float = 0.0
    latency_ms: float | None = None
    latency_on: str = "torch"  # what ran the features when timed: torch, or onnxruntime:<provider>


def eval_hw(hw: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = hw
    s = min(1.0, side / max(h, w))
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def eval_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """A mask at the evaluation size; a defect smaller than a pixel there keeps one pixel."""
    h, w = eval_hw(mask.shape, side)
    if (h, w) == mask.shape:
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0


def eval_map(amap: np.ndarray, side: int) -> np.ndarray:
    h, w = eval_hw(amap.shape, side)
    if (h, w) == amap.shape:
        return amap.astype(np.float32)
    return cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


def make_defects(images: Sequence[np.ndarray], folds: Sequence[np.ndarray], settings: Settings,
                 seed: int) -> list[Synthetic]:
    """``per_cell`` defects of each family x size on each fold's held-out images (hosts taken in
    turn), a donor from the fold's bank images; each drawn from its own seeded generator. ``folds``
    may hold several draws' folds one after the other: the fold's index seeds its defects."""
    fgs = [D.foreground(im) for im in images]
    out = []
    n = len(images)
    for f, held in enumerate(folds):
        others = np.setdiff1d(np.arange(n), held)
        j = 0
        for fi, fam in enumerate(settings.families):
            for si, size in enumerate(settings.sizes):
                for c in range(settings.per_cell):
                    rng = np.random.default_rng([seed, f, fi, si, c])
                    host = int(held[j % len(held)])
                    donor = int(others[rng.integers(len(others))])
                    j += 1
                    area = size * D.part_area(fgs[host])
                    img, mask, facts = D.draw(images[host], fam, area, rng, fgs[host], images[donor])
                    out.append(Synthetic(f, fam, size, img, mask, {**facts, "host": host}))
    return out


class GroupModels:
    """The candidates' feature models for one input size: one trunk pass, each aggregation after."""

    def __init__(self, base: PatchCoreConfig, aggregations: Sequence[str], budget: int,
                 sizes: Sequence[tuple[int, int]]):
        self.models: dict[str, PatchCore] = {}
        for agg in aggregations:
            cfg = replace(base, aggregation=agg, **AGGREGATIONS.get(agg, {"target_dim": None}), geometry="auto",
                          max_pixels_in=budget, n_reweight=0, select=False, holdout=0.0)
            m = PatchCore(cfg)
            m.set_preprocess(m.resolve_geometry(sizes))
            self.models[agg] = m
        first = next(iter(self.models.values()))
        self.trunk = first.feature_model.trunk
        self.device = first.device
        self.preprocess = first.preprocess
        self.batch = base.batch_size

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], list]:
        """RGB images -> {aggregation: (B, P, D)} and their geometry plans."""
        prepared = [prepare(im, self.preprocess) for im in images]
        x = stack_inputs(prepared)
        parts: dict[str, list[np.ndarray]] = {a: [] for a in self.models}
        for s in range(0, len(x), self.batch):
            maps = self.trunk(torch.from_numpy(np.ascontiguousarray(x[s:s + self.batch])).to(self.device))
            for a, m in self.models.items():
                parts[a].append(m.feature_model.aggregator(maps).float().cpu().numpy())
        return {a: np.concatenate(v) for a, v in parts.items()}, [p.plan for p in prepared]


def _scores(model: PatchCore, bank: np.ndarray, emb: np.ndarray, plans, ks: Sequence[int], side: int,
            maps: bool = True):
    """Image scores per eq. 7 count and evaluation maps of ``emb`` against ``bank``: one search."""
    cfg = model.config
    plain = PatchScorer(bank, build_index(bank, cfg.search_backend, device=cfg.device, exact=True)[0], n_reweight=0)
    s = plain.score(emb)
    rows = np.arange(len(emb))
    worst = np.argmax(s.patch_scores, axis=1)
    s_star = s.patch_scores[rows, worst].astype(np.float64)
    out = {}
    for k in ks:
        if k == 0:
            out[k] = s_star
            continue
        rw = PatchScorer(bank, build_index(bank, "numpy")[0], n_reweight=k)
        out[k] = s_star * (rw.reweight(emb[rows, worst], s.nearest[rows, worst]) if rw.n_reweight else 1.0)
    if not maps:
        return out, None
    pred = finish(s, model.layout, cfg.blur_sigma, None, None, plans)
    return out, [eval_map(pred.map_on_original(i), side) for i in range(len(emb))]


def _bank(model: PatchCore, emb: np.ndarray, projected: torch.Tensor, members: np.ndarray,
          n_train: int) -> np.ndarray:
    """The coreset of the images ``members`` of ``emb`` (N, P, D) at the fit's ratio (or its bank
    size scaled to these images)."""
    cfg = model.config
    p = emb.shape[1]
    rows = (members[:, None] * p + np.arange(p)[None]).ravel()
    bank_size = None if cfg.bank_size is None else max(1, round(cfg.bank_size * len(members) / n_train))
    n_select = coreset_size(len(rows), cfg.coreset_ratio, bank_size)
    idx = greedy_select(projected[torch.from_numpy(rows)], n_select, cfg.n_starts, cfg.seed, cfg.device)
    chosen = rows[idx]
    return np.ascontiguousarray(emb[chosen // p, chosen % p])


def _onnx_features(model: PatchCore, folder: Path):
    """The candidate's feature graph as ``export`` writes it (float32), run by the runtime's
    onnxruntime engine on the fit's device: ``(run, engine name)``."""
    from runtime.engines.onnxruntime_engine import OnnxEngine

    from ..onnx_graph import trace_feature_graph

    path = folder / "features_fp32.onnx"
    path.write_bytes(trace_feature_graph(model).SerializeToString())
    engine = OnnxEngine(path, device="cpu" if model.config.device == "cpu" else "auto")
    return engine.run, engine.name


def _latency(group: GroupModels, agg: str, bank: np.ndarray, image: np.ndarray, k: int,
             graph: bool = False) -> tuple[float, str]:
    """ms for one image, batch 1: features + search + eq. 7 + map, and what ran the features:
    the torch module the graph is exported from, or (``graph``) the exported graph itself in the
    runtime's onnxruntime engine."""
    m = group.models[agg]
    index, _ = build_index(bank, m.config.search_backend, device=m.config.device, exact=True)
    scorer = PatchScorer(bank, index, n_reweight=k)
    with tempfile.TemporaryDirectory() as tmp:
        if graph:
            features, where = _onnx_features(m, Path(tmp))
        else:
            def features(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return m.feature_model(torch.from_numpy(x).to(group.device)).float().cpu().numpy()
            where = "torch"
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            pre = prepare(image, group.preprocess)
            s = scorer.score(features(stack_inputs([pre])))
            finish(s, m.layout, m.config.blur_sigma, None, None, [pre.plan])
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[1:])), where


def evaluate_group(base: PatchCoreConfig, cands: Sequence[Candidate], images: Sequence[np.ndarray],
                   folds: Sequence[np.ndarray], synth: Sequence[Synthetic], test: ClassDataset | None,
                   settings: Settings, n_train: int, ng: Sequence | None = None) -> dict[str, GroupResult]:
    """Every aggregation of ``cands`` (all of one input size) on every fold (the ``--ng`` images
    ``ng`` scored by each fold's bank too), and on ``test`` (the shown check, never used to
    choose) when given: {aggregation: GroupResult}."""
    aggs = sorted({c.aggregation for c in cands})
    ks = sorted({c.n_reweight for c in cands})
    hw = cands[0].input_hw
    tag = f"select {hw[0]}x{hw[1]}"
    group = GroupModels(base, aggs, cands[0].budget, [im.shape[:2] for im in images])
    with progress_bar(f"{tag} features", total=len(images)) as advance:
        embs, n = {a: [] for a in aggs}, len(images)
        for s in range(0, n, base.batch_size):
            e, _ = group.embed(images[s:s + base.batch_size])
            for a in aggs:
                embs[a].append(e[a])
            advance(min(base.batch_size, n - s))
    emb = {a: np.concatenate(v) for a, v in embs.items()}
    projected = {}
    for a in aggs:
        w = projection_matrix(emb[a].shape[2], base.projection_dim, base.seed)
        projected[a] = torch.from_numpy(emb[a].reshape(-1, emb[a].shape[2])) @ w.T
    out = {a: GroupResult() for a in aggs}
    side = settings.eval_side
    ng_emb = ng_plans = ng_masks = None
    if ng:
        ng_emb, ng_plans = group.embed([r.image for r in ng])
        if all(r.mask is not None for r in ng):
            ng_masks = [eval_mask(r.mask, side) for r in ng]
    fold0_bank = {}
    with progress_bar(f"{tag} folds", total=len(folds)) as advance:
        for f, held in enumerate(folds):
            members = np.setdiff1d(np.arange(n), held)
            mine = [s for s in synth if s.fold == f]
            s_emb, s_plans = group.embed([s.image for s in mine])
            masks = [eval_mask(s.mask, side) for s in mine]
            for a in aggs:
                model = group.models[a]
                bank = _bank(model, emb[a], projected[a], members, n_train)
                good, _ = _scores(model, bank, emb[a][held], None, ks, side, maps=False)
                scores, maps = _scores(model, bank, s_emb[a], s_plans, ks, side)
                r = out[a]
                r.good_scores.append(good)
                r.synth_scores.append(scores)
                cells = {}
                for fam in settings.families:
                    for size in settings.sizes:
                        pick = [i for i, s in enumerate(mine) if s.family == fam and s.size == size]
                        cells[(fam, size)] = pro_score([masks[i] for i in pick], [maps[i] for i in pick])
                        if f == 0 and size == settings.sizes[-1]:  # the largest: the picture shows it
                            r.examples[fam] = maps[pick[-1]]
                r.aupro.append(cells)
                if ng_emb is not None:
                    sc, mp = _scores(model, bank, ng_emb[a], ng_plans, ks, side, maps=ng_masks is not None)
                    r.ng_scores.append(sc[max(ks)])
                    r.ng_aupro.append(None if mp is None else pro_score(ng_masks, mp))
                fold0_bank.setdefault(a, bank)
            advance(1)
    # a bank of all the pool's images only where something needs it (the check, a latency budget):
    # without them the latency shown is timed against fold 0's bank (2/3 of the images)
    timed = settings.latency_budget_ms is not None
    t0 = time.perf_counter()
    if test is not None or timed:
        banks = {a: _bank(group.models[a], emb[a], projected[a], np.arange(n), n_train) for a in aggs}
    else:
        banks = fold0_bank
    pool_s = time.perf_counter() - t0 if not timed else 0.0  # only the check needed them: its time
    del emb, projected
    for a in aggs:
        out[a].latency_ms, out[a].latency_on = _latency(group, a, banks[a] if timed else fold0_bank[a], images[0],
                                                        max(ks), graph=timed)
    if test is not None:
        t0 = time.perf_counter()
        _real_check(group, banks, test, ks, side, out, tag)
        for a in aggs:
            out[a].check_seconds = pool_s + time.perf_counter() - t0
    return out


def _real_check(group: GroupModels, banks: dict[str, np.ndarray], test: ClassDataset, ks, side: int,
                out: dict[str, GroupResult], tag: str) -> None:
    """Each aggregation's figures on the layout's real test images (banks from all the selection's
    good images): shown beside the choice, never used to make it."""
    labels = np.array([s.label for s in test.test])
    if labels.min() == labels.max():
        return
    scores = {a: {k: [] for k in ks} for a in banks}
    maps: dict[str, list] = {a: [] for a in banks}
    masks = []
    bs = group.batch
    with progress_bar(f"{tag} real check", total=len(test.test)) as advance:
        for s in range(0, len(test.test), bs):
            chunk = test.test[s:s + bs]
            imgs = [read_image(x.path) for x in chunk]
            e, plans = group.embed(imgs)
            if test.has_masks:
                masks += [eval_mask(load_mask(x, im.shape), side) for x, im in zip(chunk, imgs)]
            for a in banks:
                sc, mp = _scores(group.models[a], banks[a], e[a], plans, ks, side, maps=test.has_masks)
                for k in ks:
                    scores[a][k].append(sc[k])
                if mp is not None:
                    maps[a] += mp
            advance(len(chunk))
    for a in banks:
        pix = pro = None
        if test.has_masks:
            pix, pro = pixel_auroc(masks, maps[a]), pro_score(masks, maps[a])
        for k in ks:
            out[a].real[k] = {"image_auroc": image_auroc(labels, np.concatenate(scores[a][k])),
                              "pixel_auroc": pix, "pro": pro}


def pool(paths: Sequence[Path], max_images: int, seed: int) -> list[Path]:
    """The good images selection uses: at most ``max_images`` of ``paths``, drawn with ``seed``, in name order."""
    paths = sorted(Path(p) for p in paths)
    if len(paths) <= max_images:
        return paths
    pick = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
    return [paths[i] for i in sorted(pick)]


def read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    return [read_image(p) for p in paths]
