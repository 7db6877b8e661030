"""The choice: each aggregation's best candidate against the fixed default, the default winning ties.

Per fold and per cell (a synthetic family x size, or the real NG images of ``--ng``), a candidate's
figure is the mean of the image recall at the threshold the fold's real held-out good images set
(their ``1 - fp_rate`` quantile) and the AU-PRO up to a false-positive rate of 0.3. Cells carry
weights (:func:`cell_weights`: the synthetic cells share one half and the real cells the other when
there are real ones, else the synthetic cells share everything). A candidate's place is its weighted
mean figure.

Candidates are grouped by aggregation; a group's best is its challenger, and its *lead* is its
weighted figure minus the default's, fold by fold. A challenger replaces the default only if its
lead is positive in most folds, a paired bootstrap interval of the lead (fold x cell pairs,
synthetic and real pairs resampled apart) excludes zero, the lead stays positive whichever one
synthetic family is left out, and, with real cells, the lead on the real cells alone is positive
(real defects may overrule the synthetic ones, never the reverse). The lead is measured against
the default, not against the challenger's own near-clones: a clone overtaking the challenger when a
family is dropped says nothing about whether the aggregation beats the default. Of the challengers
that pass, the largest lead wins; the default stays otherwise ("uncertain" when some challenger led
but failed a test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

BOOTSTRAP = 2000
LEVEL = 0.95
EPS = 1e-9  # a lead this small is rounding, not a lead
REAL = "real"  # the family name of the --ng cells
REAL_WEIGHT = 0.5  # the real cells' share of the figure when there are any (docs/selection.md, "--ng")


@dataclass
class Ranking:
    order: list[int]  # candidate indices, best first
    mean: np.ndarray  # (C,) weighted mean figure over folds x cells
    family_mean: np.ndarray  # (C, families)
    recall: np.ndarray  # (C,) mean image recall
    aupro: np.ndarray  # (C,) mean AU-PRO
    chosen: int
    challenger: int
    verdict: str  # switched | kept default | uncertain
    reason: str
    folds_won: int
    interval: tuple[float, float] | None
    decided_by: str = "synthetic"
    groups: dict = field(default_factory=dict)  # group -> its challenger's tests (see :func:`_lead_tests`)


def cell_weights(cell_family: Sequence[str]) -> np.ndarray:
    """Each cell's weight: the synthetic cells share ``1 - REAL_WEIGHT`` and the real ones
    ``REAL_WEIGHT`` when both are there; otherwise whichever there is shares 1."""
    real = np.array([f == REAL for f in cell_family])
    w = np.zeros(len(cell_family))
    if real.any() and (~real).any():
        w[real], w[~real] = REAL_WEIGHT / real.sum(), (1 - REAL_WEIGHT) / (~real).sum()
    else:
        w[:] = 1 / len(w)
    return w


def _weighted(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(..., cells) -> (...): the weighted mean over cells (weights renormalised)."""
    return (d * w).sum(-1) / w.sum()


def _interval(d: np.ndarray, w: np.ndarray, real: np.ndarray, seed: int) -> tuple[float, float]:
    """Paired bootstrap of the weighted lead: ``d`` (folds, cells) differences; synthetic and real
    pairs are resampled apart, so that each keeps its share of the weight."""
    rng = np.random.default_rng(seed)
    parts = []
    for sel in (~real, real):
        if not sel.any():
            continue
        x = d[:, sel].ravel()
        share = w[sel].sum() / w.sum()
        parts.append(share * x[rng.integers(0, len(x), (BOOTSTRAP, len(x)))].mean(1))
    boot = np.sum(parts, axis=0)
    lo, hi = np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _lead_tests(figures: np.ndarray, ch: int, default: int, families: Sequence[str], cell_family: Sequence[str],
                w: np.ndarray, fold_draw: np.ndarray, seed: int) -> dict:
    """The challenger ``ch``'s lead over the default and the tests it must pass."""
    d = figures[ch] - figures[default]  # (folds, cells)
    real = np.array([f == REAL for f in cell_family])
    fold_lead = _weighted(d, w)
    k = len(fold_lead)
    won = int((fold_lead > 0).sum())
    lo, hi = _interval(d, w, real, seed)
    without = {}
    for fam in families:
        if fam == REAL:
            continue
        keep = np.array([f != fam for f in cell_family])
        without[fam] = float(_weighted(d[:, keep], cell_weights([f for f, kp in zip(cell_family, keep) if kp])).mean())
    draws = sorted(set(fold_draw.tolist()))
    per_draw = [float(fold_lead[fold_draw == g].mean()) for g in draws]
    out = {"lead": float(fold_lead.mean()), "folds_won": won, "folds": k, "interval": (lo, hi),
           "lead_without_family": without, "lead_per_draw": per_draw,
           "synthetic_lead": float(_weighted(d[:, ~real], np.ones(int((~real).sum()))).mean()) if (~real).any() else None,
           "real_lead": float(d[:, real].mean()) if real.any() else None}
    failed = []
    if won <= k / 2:
        failed.append(f"it wins {won} of {k} folds")
    if lo <= 0:
        failed.append(f"its lead's {LEVEL:.0%} interval [{lo:+.3f}, {hi:+.3f}] includes zero")
    gone = [f for f, v in without.items() if v <= EPS]
    if gone:
        failed.append(f"without {', '.join(gone)} its lead is gone")
    if out["real_lead"] is not None and out["real_lead"] <= EPS:
        failed.append(f"on the real NG images it trails the default ({out['real_lead']:+.3f})")
    out["failed"] = failed
    return out


def _decided_by(t: dict | None) -> str:
    if t is None or t["real_lead"] is None:
        return "synthetic"
    s, r = t["synthetic_lead"], t["real_lead"]
    if (s > 0) == (r > 0):
        return "synthetic and real agreeing"
    return "real (the synthetic defects disagreed)" if r > 0 else "real (the synthetic lead was not confirmed)"


def rank(figures: np.ndarray, recall: np.ndarray, aupro: np.ndarray, families: Sequence[str],
         cell_family: Sequence[str], default: int, seed: int = 0, groups: Sequence | None = None,
         fold_draw: Sequence[int] | None = None) -> Ranking:
    """``figures`` (C, folds, cells); ``cell_family`` names each cell's family (:data:`REAL` for the
    ``--ng`` cells); ``default`` is the fixed recipe's index; ``groups`` each candidate's group (its
    aggregation; None: every candidate a group of its own); ``fold_draw`` each fold's draw (None: one)."""
    c_n, k, _ = figures.shape
    groups = list(groups) if groups is not None else list(range(c_n))
    fold_draw = np.zeros(k, int) if fold_draw is None else np.asarray(fold_draw)
    w = cell_weights(cell_family)
    mean = _weighted(figures, w).mean(1)
    order = sorted(range(c_n), key=lambda c: (-round(float(mean[c]), 12), c != default, c))
    per_cell = figures.mean(1)
    fam_mean = np.stack([per_cell[:, [i for i, f in enumerate(cell_family) if f == fam]].mean(1) for fam in families],
                        axis=1)
    common = dict(order=order, mean=mean, family_mean=fam_mean, recall=recall.mean((1, 2)),
                  aupro=aupro.mean((1, 2)))
    tests = {}
    for g in dict.fromkeys(groups):
        best = next(c for c in order if groups[c] == g)
        if best != default:
            tests[g] = {"challenger": best, **_lead_tests(figures, best, default, families, cell_family, w, fold_draw,
                                                          seed)}
    leading = [t for t in tests.values() if t["lead"] > EPS]
    if not leading:
        nearest = max(tests.values(), key=lambda t: t["lead"], default=None)
        return Ranking(**common, chosen=default, challenger=default, verdict="kept default",
                       reason="no aggregation's best candidate leads the fixed default", folds_won=0, interval=None,
                       decided_by=_decided_by(nearest), groups=tests)
    passed = [t for t in leading if not t["failed"]]
    top = max(passed or leading, key=lambda t: t["lead"])
    ch = top["challenger"]
    how = (f"the best of {groups[ch]} leads the default by {top['lead']:+.3f} (interval [{top['interval'][0]:+.3f}, "
           f"{top['interval'][1]:+.3f}], {top['folds_won']} of {top['folds']} folds")
    if not passed:
        return Ranking(**common, chosen=default, challenger=ch, verdict="uncertain",
                       reason=how + ") but " + "; ".join(top["failed"]) + ": kept the default",
                       folds_won=top["folds_won"], interval=top["interval"], decided_by=_decided_by(top), groups=tests)
    return Ranking(**common, chosen=ch, challenger=ch, verdict="switched",
                   reason=how + ", without any one family still ahead)", folds_won=top["folds_won"],
                   interval=top["interval"], decided_by=_decided_by(top), groups=tests)


def recall_at(good: np.ndarray, defect: np.ndarray, fp_rate: float) -> float:
    """Share of ``defect`` scores above the ``1 - fp_rate`` quantile of the real ``good`` scores."""
    thr = float(np.quantile(good, 1 - fp_rate))
    return float(np.mean(defect > thr))
