"""``--target-dim auto``: the bank's dimension chosen per product at export, by out-of-fold evidence on
its good images.

No smaller dimension kept every shared class and synthetic layout within the issue's 0.005 image and
pixel AUROC of the full 1024 (BENCHMARKS.md "bank-dims"): some products lose nothing at 128-512 dims
while the search gets cheaper, one lost a lot at every size. So the choice is made per product, the
way recipe selection judges recipes (:mod:`patchcore.recipe`): folds of the good training images,
synthetic defects with exact masks on the held-out ones (:mod:`patchcore.synthetic_defects`), a 1%
bank per fold from the other folds' patches at each size, image AUROC (held-out good images against
the synthetic defects) and pixel AUROC (on the defects' masks). The smallest size whose figures are
within :data:`TOLERANCE` of 1024's on both is taken; none is: 1024 stays. Every size is the paper
aggregation's own ``--target-dim`` (adaptive pooling of the 1024-dim features, derived from one
embedding: see :mod:`patchcore.reduction`), so the exported graph and the runtime need nothing new.
The record (every size's figures, the rule, what was chosen) goes into the manifest as
``target_dim_choice``.

Opt-in, not the default: measured against the real test sets (``benchmarks/bank_dims.py choice``,
BENCHMARKS.md "bank-dims"), synthetic defects on a product's good images did not always show the
losses its real defects do, and their figures move between sizes by more than the tolerance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from runtime.preprocess import prepare, stack_inputs

from .config import PatchCoreConfig
from .coreset import coreset_size, greedy_select, random_projection
from .folds import fold_split, too_few
from .input_geometry import image_sizes
from .metrics import auroc, pixel_auroc
from .model import PatchCore
from .recipe.validate import MIN_PER_FOLD, Settings, eval_map, eval_mask, make_defects, pool, read_images
from .reduction import pool_matrix, reduce_rows

FULL = 1024
CANDIDATES = (512, 256, 128)  # the sizes the study measured where the search gets cheaper
TOLERANCE = 0.005  # the issue's rule: at most this much image or pixel AUROC below 1024's
AUTO = "auto"  # --target-dim auto (patchcore.fit_options parses it)


@dataclass
class DimsChoice:
    dim: int
    record: dict  # the manifest's ``target_dim_choice``


def choose_target_dim(config: PatchCoreConfig, train: Sequence[Path], log: Callable[[str], None] = lambda s: None,
                      settings: Settings | None = None) -> DimsChoice:
    """The dimension to fit ``config`` with on the good images ``train``, and the record of why."""
    settings = settings or Settings()
    t0 = time.perf_counter()
    seed = config.seed
    paths = pool(train, settings.max_images, seed)
    why = too_few(len(paths), settings.folds, MIN_PER_FOLD)
    if why:
        reason = f"--target-dim {AUTO} needs {why}: {FULL} dims kept"
        log(reason)
        return DimsChoice(FULL, {"chosen": FULL, "reason": reason})
    model = PatchCore(replace(config, target_dim=FULL, select=False, holdout=0.0))
    if model.preprocess is None:
        model.set_preprocess(model.resolve_geometry(image_sizes(sorted(train))))
    images = read_images(paths)
    folds = fold_split(len(images), settings.folds, seed + 1, dealt=True)  # as recipe selection splits them
    synth = make_defects(images, folds, settings, seed)
    good = np.concatenate([model.embed_images(images[s : s + 8]) for s in range(0, len(images), 8)])
    prepared = [prepare(s.image, model.preprocess) for s in synth]
    defects = np.concatenate([model.embed_tensor(stack_inputs(prepared[s : s + 8])) for s in range(0, len(synth), 8)])
    defects = defects.reshape(len(synth), *good.shape[1:])
    side = settings.eval_side
    masks = [eval_mask(s.mask, side) for s in synth]
    figures = {}
    for dim in (FULL, *CANDIDATES):
        figures[dim] = _figures(model, good, defects, [p.plan for p in prepared], masks, synth, folds, dim, side)
        log(f"--target-dim {AUTO}: {dim} dims: image AUROC {figures[dim]['image_auroc']:.4f}, "
            f"pixel AUROC {figures[dim]['pixel_auroc']:.4f} on synthetic defects")
    full = figures[FULL]
    passing = [d for d in CANDIDATES if figures[d]["image_auroc"] >= full["image_auroc"] - TOLERANCE
               and figures[d]["pixel_auroc"] >= full["pixel_auroc"] - TOLERANCE]
    chosen = min(passing) if passing else FULL
    reason = (f"{chosen} dims: the smallest size within {TOLERANCE} image and pixel AUROC of {FULL} dims"
              if passing else f"no smaller size stays within {TOLERANCE} image and pixel AUROC of {FULL} dims")
    seconds = time.perf_counter() - t0
    log(f"--target-dim {AUTO}: {reason} ({seconds:.0f} s)")
    return DimsChoice(chosen, {
        "chosen": chosen, "reason": reason, "tolerance": TOLERANCE, "images": len(paths), "folds": len(folds),
        "synthetic_defects": len(synth), "seconds": round(seconds, 1),
        "figures": {str(d): {k: round(v, 4) for k, v in f.items()} for d, f in figures.items()}})


def _figures(model: PatchCore, good: np.ndarray, defects: np.ndarray, plans, masks, synth, folds, dim: int,
             side: int) -> dict:
    """Image and pixel AUROC at ``dim`` over all folds: each fold's bank from the other folds' images."""
    cfg = model.config
    if dim != FULL:
        m = pool_matrix(FULL, dim)
        good = reduce_rows(good.reshape(-1, FULL), m).reshape(*good.shape[:2], dim)
        defects = reduce_rows(defects.reshape(-1, FULL), m).reshape(*defects.shape[:2], dim)
    good_scores, defect_scores, maps, order = [], [], [], []
    for f, held in enumerate(folds):
        rows = good[np.setdiff1d(np.arange(len(good)), held)].reshape(-1, dim)
        idx = greedy_select(random_projection(torch.from_numpy(rows), cfg.projection_dim, cfg.seed),
                            coreset_size(len(rows), cfg.coreset_ratio), cfg.n_starts, cfg.seed, cfg.device)
        model.set_bank(rows[idx])
        good_scores.append(model.predict_embeddings(good[held]).image_scores)
        pick = [i for i, s in enumerate(synth) if s.fold == f]
        pred = model.predict_embeddings(defects[pick], [plans[i] for i in pick])
        defect_scores.append(pred.image_scores)
        maps += [eval_map(pred.map_on_original(j), side) for j in range(len(pick))]
        order += pick
    g, d = np.concatenate(good_scores), np.concatenate(defect_scores)
    return {"image_auroc": auroc(np.r_[np.zeros(len(g)), np.ones(len(d))], np.r_[g, d]),
            "pixel_auroc": pixel_auroc([masks[i] for i in order], maps)}
