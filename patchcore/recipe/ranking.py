"""Ranking candidates on the synthetic validation, with the fixed default winning ties.

Per fold and per family x size cell, a candidate's figure is the mean of
- image recall: the share of the cell's defect images scored above the threshold that the fold's
  real held-out good images set (their ``1 - fp_rate`` quantile), and
- AU-PRO up to a false-positive rate of 0.3 on the cell's images.
Candidates are ranked per cell (figures averaged over folds; ties share the mean rank) and ordered
by their median rank over cells. The best is the challenger; it replaces the default only if it
wins most folds, a paired bootstrap interval of its lead (over fold x cell pairs) excludes zero,
and it stays in the top two whichever one family is left out. Otherwise the default stays
("uncertain" when the challenger led but failed a test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

BOOTSTRAP = 2000
LEVEL = 0.95


@dataclass
class Ranking:
    order: list[int]  # candidate indices, best first
    median_rank: np.ndarray  # (C,)
    mean: np.ndarray  # (C,) mean figure over folds x cells
    family_mean: np.ndarray  # (C, families)
    recall: np.ndarray  # (C,) mean image recall
    aupro: np.ndarray  # (C,) mean AU-PRO
    chosen: int
    challenger: int
    verdict: str  # switched | kept default | uncertain
    reason: str
    folds_won: int
    interval: tuple[float, float] | None
    top_two_without: dict[str, int]  # family left out -> the challenger's place (1-based)


def cell_ranks(a: np.ndarray) -> np.ndarray:
    """(C, cells) figures, higher better -> ranks, 1 best, ties sharing their mean rank."""
    better = (a[None, :, :] > a[:, None, :]).sum(1)  # [c, cell]: candidates strictly better than c
    equal = (a[None, :, :] == a[:, None, :]).sum(1)
    return 1 + better + (equal - 1) / 2


def _order(a: np.ndarray, default: int) -> list[int]:
    med = np.median(cell_ranks(a), axis=1)
    mean = a.mean(1)
    return sorted(range(len(a)), key=lambda c: (med[c], -round(float(mean[c]), 12), c != default, c))


def rank(figures: np.ndarray, recall: np.ndarray, aupro: np.ndarray, families: Sequence[str], cell_family: Sequence[str],
         default: int, seed: int = 0) -> Ranking:
    """``figures`` (C, folds, cells); ``cell_family`` names each cell's family; ``default`` is the
    fixed recipe's index."""
    c_n, k, _ = figures.shape
    per_cell = figures.mean(1)
    order = _order(per_cell, default)
    med = np.median(cell_ranks(per_cell), axis=1)
    fam_mean = np.stack([per_cell[:, [i for i, f in enumerate(cell_family) if f == fam]].mean(1) for fam in families],
                        axis=1)
    ch = order[0]
    common = dict(order=order, median_rank=med, mean=per_cell.mean(1), family_mean=fam_mean,
                  recall=recall.mean((1, 2)), aupro=aupro.mean((1, 2)), challenger=ch)
    if ch == default:
        return Ranking(**common, chosen=default, verdict="kept default",
                       reason="the fixed default ranks first on the synthetic defects", folds_won=0, interval=None,
                       top_two_without={})
    fold_lead = figures[ch].mean(1) - figures[default].mean(1)
    won = int((fold_lead > 0).sum())
    d = (figures[ch] - figures[default]).ravel()
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (BOOTSTRAP, len(d)))].mean(1)
    lo, hi = (float(v) for v in np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
    places = {}
    for fam in families:
        keep = [i for i, f in enumerate(cell_family) if f != fam]
        places[fam] = _order(per_cell[:, keep], default).index(ch) + 1
    failed = []
    if won <= k / 2:
        failed.append(f"it wins {won} of {k} folds")
    if lo <= 0:
        failed.append(f"its lead's {LEVEL:.0%} interval [{lo:+.3f}, {hi:+.3f}] includes zero")
    worst = [f for f, p in places.items() if p > 2]
    if worst:
        failed.append(f"without {', '.join(worst)} it is not in the top two")
    if failed:
        return Ranking(**common, chosen=default, verdict="uncertain",
                       reason="the challenger ranks first but " + "; ".join(failed) + ": kept the default",
                       folds_won=won, interval=(lo, hi), top_two_without=places)
    return Ranking(**common, chosen=ch, verdict="switched",
                   reason=f"the challenger wins {won} of {k} folds, its lead's {LEVEL:.0%} interval is "
                          f"[{lo:+.3f}, {hi:+.3f}] and it stays in the top two without any one family",
                   folds_won=won, interval=(lo, hi), top_two_without=places)


def recall_at(good: np.ndarray, defect: np.ndarray, fp_rate: float) -> float:
    """Share of ``defect`` scores above the ``1 - fp_rate`` quantile of the real ``good`` scores."""
    thr = float(np.quantile(good, 1 - fp_rate))
    return float(np.mean(defect > thr))
