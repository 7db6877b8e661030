"""Recipe selection (``--preset auto``): each product gets the candidate recipe that suits it,
judged on its own good images with synthetic defects, the fixed default winning ties.

:func:`select_recipe` runs it; :func:`model_for` is what the fitting commands call. The pieces:
:mod:`.recipe_candidates` (the recipes tried), :mod:`patchcore.synthetic_defects` (synthetic defects
with exact masks), :mod:`patchcore.folds` (the folds of the good images), :mod:`.validate` (the good
images used, scoring every candidate), :mod:`.ranking` (the choice), :mod:`.report` (table, pictures,
the manifest's record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import PatchCoreConfig
from ..data import ClassDataset, DatasetError, load_test_set
from ..folds import fold_split, too_few
from ..input_geometry import image_sizes
from ..model import PatchCore
from ..presets import PRESETS
from .ranking import Ranking, rank, recall_at
from .recipe_candidates import Candidate, declare
from .validate import MIN_PER_FOLD, GroupResult, Settings, evaluate_group, make_defects, pool, read_images

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
                  log: Callable[[str], None] = lambda s: None) -> RecipeChoice:
    """Choose among the candidates for ``ds`` (its train/good; its test/ only as a shown check)."""
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
    split = fold_split(len(images), settings.folds, seed + 1, dealt=True)  # seed + 1: not the pool's draw
    synth = make_defects(images, split, settings, seed)
    test = ds if any(s.label for s in ds.test) else None
    results: dict[tuple, GroupResult] = {}
    for hw in dict.fromkeys(c.input_hw for c in cands):
        mine = [c for c in cands if c.input_hw == hw]
        for agg, r in evaluate_group(base, mine, images, split, synth, test, settings, len(ds.train)).items():
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
    fig, rec, pro = _figures(live, results, synth, cells, settings)
    default = 0 if cands[0] in live else None
    ranking = rank(fig, rec, pro, settings.families, [c[0] for c in cells], default if default is not None else 0,
                   seed)
    if default is None:  # the fixed default is over the budget: the best candidate under it
        ranking.chosen, ranking.verdict = ranking.order[0], "switched"
        ranking.reason = "the fixed default is over the latency budget: the best candidate under it"
    chosen = live[ranking.chosen]
    seconds = time.perf_counter() - t0
    from .report import record

    rec_ = record(cands, live, dropped, results, ranking, settings, len(paths), seconds)
    log(f"selection: {rec_['verdict']}: {chosen.label} ({ranking.reason}) in {seconds:.0f} s")
    cfg = replace(base, **chosen.settings(), select=False)
    return RecipeChoice(cfg, rec_, live, ranking, results, synth)


def _figures(cands: list[Candidate], results: dict, synth: list, cells: list, settings: Settings):
    """(C, folds, cells) figures (mean of image recall and AU-PRO), and the recall and AU-PRO themselves."""
    k = settings.folds
    rec = np.zeros((len(cands), k, len(cells)))
    pro = np.zeros_like(rec)
    for f in range(k):
        mine = [s for s in synth if s.fold == f]
        where = {cell: [i for i, s in enumerate(mine) if (s.family, s.size) == cell] for cell in cells}
        for ci, c in enumerate(cands):
            r = results[c.group]
            good, bad = r.good_scores[f][c.n_reweight], r.synth_scores[f][c.n_reweight]
            for j, cell in enumerate(cells):
                rec[ci, f, j] = recall_at(good, bad[where[cell]], settings.fp_rate)
                pro[ci, f, j] = r.aupro[f][cell]
    return (rec + pro) / 2, rec, pro


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
    sel = select_recipe(config, ds, log=log)
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
