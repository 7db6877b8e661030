"""Recipe selection (``--preset auto``): each product gets the candidate recipe that suits it,
judged on its own good images with synthetic defects (and the user's real NG images with ``--ng``),
the fixed default winning ties.

:func:`select_recipe` runs it; :func:`model_for` is what the fitting commands call. The pieces:
:mod:`.recipe_candidates` (the recipes tried), :mod:`patchcore.synthetic_defects` (synthetic defects
with exact masks), :mod:`.real_ng` (``--ng``'s images and masks), :mod:`patchcore.folds` (the folds
of the good images), :mod:`.validate` (the good images used, scoring every candidate),
:mod:`.ranking` (the choice), :mod:`.report` (table, pictures, the manifest's record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..config import PatchCoreConfig
from ..data import ClassDataset, DatasetError, load_test_set
from ..folds import fold_split, too_few
from ..input_geometry import image_sizes
from ..model import PatchCore
from ..presets import PRESETS
from . import real_ng
from .ranking import REAL, Ranking, rank, recall_at
from .real_ng import RealNG
from .recipe_candidates import Candidate, declare
from .validate import (MIN_PER_FOLD, GroupResult, Settings, evaluate_group, make_defects, n_draws, pool,
                       read_images)

__all__ = ["RecipeChoice", "Settings", "model_for", "select_recipe"]


@dataclass
class RecipeChoice:
    config: PatchCoreConfig  # what to fit: the chosen candidate's settings on the base config
    record: dict  # the manifest's ``selection``
    candidates: list[Candidate] | None = None
    ranking: Ranking | None = None
    results: dict | None = None
    synthetic: list | None = None


def _default_settings() -> dict:
    return PRESETS["default"]


def fixed_default(base: PatchCoreConfig) -> PatchCoreConfig:
    d = _default_settings()
    return replace(base, aggregation=d["aggregation"], target_dim=d["target_dim"], n_reweight=d["n_reweight"],
                   geometry=d["geometry"], max_pixels_in=d["max_pixels_in"], select=False)


def select_recipe(base: PatchCoreConfig, ds: ClassDataset, settings: Settings | None = None,
                  log: Callable[[str], None] = lambda s: None, ng: Sequence[RealNG] | None = None,
                  check: ClassDataset | None = None) -> RecipeChoice:
    """Choose among the candidates for ``ds`` from its train/good, plus the real NG images ``ng``
    (``--ng``'s choosing half) when given. ``check``: a dataset whose test images every candidate is
    also scored on (shown beside the choice, never used to make it); nothing else reads test/."""
    settings = settings or Settings(latency_budget_ms=base.select_latency_ms)
    t0 = time.perf_counter()
    seed = base.seed
    paths = pool(ds.train, settings.max_images, seed)
    why = too_few(len(paths), settings.folds, MIN_PER_FOLD)
    if why:
        why = f"selection needs {why}: fitting the fixed default recipe"
        log(why)
        return RecipeChoice(fixed_default(base), {"verdict": "not run", "reason": why})
    probe = PatchCore(fixed_default(base))
    sizes = image_sizes(paths)
    cands = declare(sizes, probe.strides[1], _default_settings())
    del probe
    images = read_images(paths)
    draws = n_draws(settings, len(ds.train))
    # seed + 1 + d: not the pool's draw; each draw's folds follow the one before in one list
    split = [f for d in range(draws) for f in fold_split(len(images), settings.folds, seed + 1 + d, dealt=True)]
    fold_draw = [d for d in range(draws) for _ in range(settings.folds)]
    synth = make_defects(images, split, settings, seed)
    results: dict[tuple, GroupResult] = {}
    for hw in dict.fromkeys(c.input_hw for c in cands):
        mine = [c for c in cands if c.input_hw == hw]
        for agg, r in evaluate_group(base, mine, images, split, synth, check, settings, len(ds.train), ng).items():
            results[(agg, hw)] = r
    dropped = []
    if settings.latency_budget_ms is not None:
        dropped = [c for c in cands if results[c.group].latency_ms > settings.latency_budget_ms]
    live = [c for c in cands if c not in dropped]
    if not live:
        why = f"every candidate is over the latency budget of {settings.latency_budget_ms:g} ms"
        log(why + ": fitting the fixed default recipe")
        return RecipeChoice(fixed_default(base), {"verdict": "not run", "reason": why})
    cells = [(fam, size) for fam in settings.families for size in settings.sizes]
    fig, rec, pro = _figures(live, results, synth, cells, settings, len(split), bool(ng))
    cell_family = [c[0] for c in cells] + ([REAL] if ng else [])
    families = [*settings.families, *([REAL] if ng else [])]
    default = 0 if cands[0] in live else None
    ranking = rank(fig, rec, pro, families, cell_family, default if default is not None else 0, seed,
                   groups=[c.aggregation for c in live], fold_draw=fold_draw)
    if default is None:  # the fixed default is over the budget: the best candidate under it
        ranking.chosen, ranking.verdict = ranking.order[0], "switched"
        ranking.reason = "the fixed default is over the latency budget: the best candidate under it"
    chosen = live[ranking.chosen]
    seconds = time.perf_counter() - t0
    from .report import record

    facts = {"draws": draws, "ng": None if not ng else {"images": len(ng), "masks": all(r.mask is not None for r in ng)},
             # per input size, the check's time (the same for each aggregation of that size)
             "check_seconds": sum({hw: r.check_seconds for (_, hw), r in results.items()}.values())}
    rec_ = record(cands, live, dropped, results, ranking, settings, len(paths), seconds, families, facts)
    log(f"selection: {rec_['verdict']}: {chosen.label} ({ranking.reason}) in {seconds:.0f} s")
    cfg = replace(base, **chosen.settings(), select=False)
    return RecipeChoice(cfg, rec_, live, ranking, results, synth)


def _figures(cands: list[Candidate], results: dict, synth: list, cells: list, settings: Settings, k: int,
             real: bool):
    """(C, folds, cells) figures (mean of image recall and AU-PRO), and the recall and AU-PRO
    themselves; with ``real`` one more cell per fold: the ``--ng`` images (recall alone when they
    have no masks)."""
    rec = np.zeros((len(cands), k, len(cells) + real))
    pro = np.zeros_like(rec)
    fig = np.zeros_like(rec)
    for f in range(k):
        mine = [s for s in synth if s.fold == f]
        where = {cell: [i for i, s in enumerate(mine) if (s.family, s.size) == cell] for cell in cells}
        for ci, c in enumerate(cands):
            r = results[c.group]
            good, bad = r.good_scores[f][c.n_reweight], r.synth_scores[f][c.n_reweight]
            for j, cell in enumerate(cells):
                rec[ci, f, j] = recall_at(good, bad[where[cell]], settings.fp_rate)
                pro[ci, f, j] = r.aupro[f][cell]
                fig[ci, f, j] = (rec[ci, f, j] + pro[ci, f, j]) / 2
            if real:
                rec[ci, f, -1] = recall_at(good, r.ng_scores[f], settings.fp_rate)
                au = r.ng_aupro[f]
                pro[ci, f, -1] = rec[ci, f, -1] if au is None else au
                fig[ci, f, -1] = rec[ci, f, -1] if au is None else (rec[ci, f, -1] + au) / 2
    return fig, rec, pro


def model_for(config: PatchCoreConfig, data: str | Path | ClassDataset, out_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> PatchCore:
    """The model a fit starts from: ``config`` as it is, or with ``config.select`` the recipe
    selection chooses for ``data`` (its record goes into the bundle's manifest; the table and a
    picture per family into ``out_dir`` when given)."""
    if not config.select:
        return PatchCore(config)
    import sys

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    ds = data if isinstance(data, ClassDataset) else _dataset(Path(data))
    ng = real_ng.load(config.ng, config.seed) if config.ng is not None else None
    sel = select_recipe(config, ds, log=log, ng=ng)
    if out_dir is not None and sel.ranking is not None:
        from .report import write_outputs

        write_outputs(Path(out_dir), sel)
    if sel.ranking is not None:
        from .report import table

        log(table(sel.record))
    model = PatchCore(sel.config)
    model.selection = sel.record
    return model


def _dataset(root: Path) -> ClassDataset:
    try:
        return load_test_set(root, need_test=False)  # good images suffice
    except DatasetError:
        raise
