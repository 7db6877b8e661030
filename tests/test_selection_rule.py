"""The selection's rule (patchcore/recipe/ranking.py) on built figure arrays: each aggregation's best
against the default, not against its own near-clones; real NG cells weighed beside the synthetic
ones; several fold draws and the spread of the lead."""

from __future__ import annotations

import numpy as np
import pytest

from patchcore import synthetic_defects as D
from patchcore.recipe.ranking import REAL, cell_weights, rank

FAMILIES = list(D.FAMILIES)
CELL_FAMILY = [f for f in FAMILIES for _ in D.SIZE_BUCKETS]  # 6 families x 3 sizes = 18 cells


def cell_ranks(a: np.ndarray) -> np.ndarray:
    """(C, cells) figures -> ranks, 1 best, ties sharing their mean rank (the old rule's ranks)."""
    better = (a[None, :, :] > a[:, None, :]).sum(1)
    equal = (a[None, :, :] == a[:, None, :]).sum(1)
    return 1 + better + (equal - 1) / 2


def _old_rule(figures: np.ndarray, cell_family, default: int = 0, seed: int = 0) -> str:
    """The rule before issue 41 (git history of ranking.py): candidates ordered by their median
    rank over cells; the first must win most folds, have a bootstrap interval of its lead over the
    default above zero, and stay in the top two of all candidates whichever family is dropped."""
    per_cell = figures.mean(1)

    def order(a):
        med = np.median(cell_ranks(a), axis=1)
        return sorted(range(len(a)), key=lambda c: (med[c], -round(float(a.mean(1)[c]), 12), c != default, c))

    ch = order(per_cell)[0]
    if ch == default:
        return "kept default"
    k = figures.shape[1]
    won = int(((figures[ch].mean(1) - figures[default].mean(1)) > 0).sum())
    d = (figures[ch] - figures[default]).ravel()
    boot = d[np.random.default_rng(seed).integers(0, len(d), (2000, len(d)))].mean(1)
    lo = np.quantile(boot, 0.025)
    places = [order(per_cell[:, [i for i, f in enumerate(cell_family) if f != fam]]).index(ch) + 1
              for fam in dict.fromkeys(cell_family)]
    return "switched" if won > k / 2 and lo > 0 and max(places) <= 2 else "uncertain"


def _clone_case(seed: int = 0) -> np.ndarray:
    """The default (0) and three local-mean near-clones (1-3), all about 0.1 above it. Candidate 1
    is first on 10 cells (perlin, paste, scratch and one stain cell) and third on the other 8, so
    its median rank is 1 with every family but 3 once perlin is dropped: there its clones 2 and 3
    overtake it, while every clone still leads the default by about 0.1 in every cell."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, 18)
    good = np.arange(18) < 10
    off = np.stack([np.zeros(18), np.where(good, 0.15, 0.10), np.full(18, 0.12), np.full(18, 0.11)])
    fig = np.repeat((base + off)[:, None, :], 3, axis=1)
    fig[0] += rng.normal(0, 0.01, (3, 18))  # the default varies fold to fold: the interval has a width
    return fig


def test_clones_reordering_without_a_family_do_not_stop_a_clear_lead_over_the_default():
    fig = _clone_case()
    groups = ["paper", "local-mean", "local-mean", "local-mean"]
    assert FAMILIES[0] == "perlin"
    # the case is what it says: candidate 1 first with all cells, third without perlin
    med = np.median(cell_ranks(fig.mean(1)), axis=1)
    assert med[1] == 1.0
    keep = [i for i, f in enumerate(CELL_FAMILY) if f != "perlin"]
    assert np.median(cell_ranks(fig.mean(1)[:, keep]), axis=1)[1] == 3.0
    # the old rule failed the challenger against its own clones
    assert _old_rule(fig, CELL_FAMILY) == "uncertain"
    # the new one measures the lead over the default, which holds without any family
    r = rank(fig, fig, fig, FAMILIES, CELL_FAMILY, default=0, groups=groups)
    assert (r.verdict, r.chosen, r.folds_won) == ("switched", 1, 3), r.reason
    t = r.groups["local-mean"]
    assert t["lead"] == pytest.approx(fig[1].mean() - fig[0].mean())
    assert min(t["lead_without_family"].values()) > 0.09 and r.interval[0] > 0
    assert r.decided_by == "synthetic"


def test_a_lead_that_rests_on_one_family_keeps_the_default():
    fig = _clone_case()
    fig[1:] = fig[0].mean(0)  # no lead anywhere ...
    fig[1, :, :3] += 0.5  # ... but on the perlin cells
    r = rank(fig, fig, fig, FAMILIES, CELL_FAMILY, default=0, groups=["paper", "local-mean", "local-mean",
                                                                         "local-mean"])
    t = r.groups["local-mean"]
    assert t["challenger"] == 1 and t["lead"] > 0.05
    assert t["lead_without_family"]["perlin"] <= 0.0 + 1e-9
    assert r.verdict == "uncertain" and r.chosen == 0 and "without perlin its lead is gone" in r.reason


def test_noise_keeps_the_default_and_a_clear_lead_is_taken():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.7, (1, 1, 18))
    fig = base + rng.normal(0, 0.05, (4, 3, 18))
    r = rank(fig, fig, fig, FAMILIES, CELL_FAMILY, default=0)
    assert r.chosen == 0 and r.verdict in ("kept default", "uncertain")
    fig[2] += 0.2
    r = rank(fig, fig, fig, FAMILIES, CELL_FAMILY, default=0)
    assert (r.verdict, r.chosen) == ("switched", 2)


def test_real_cells_weigh_half_and_can_overrule_or_veto_the_synthetic_lead():
    w = cell_weights(CELL_FAMILY + [REAL])
    assert w.sum() == pytest.approx(1.0) and w[-1] == pytest.approx(0.5) and w[0] == pytest.approx(0.5 / 18)
    assert cell_weights(CELL_FAMILY) == pytest.approx(np.full(18, 1 / 18))
    rng = np.random.default_rng(0)
    fams = FAMILIES + [REAL]
    cells = CELL_FAMILY + [REAL]
    base = rng.uniform(0.3, 0.7, (1, 1, 19))
    fig = np.repeat(base, 2, axis=0) + rng.normal(0, 0.005, (2, 3, 19))
    # a clear synthetic lead that the real NG images contradict: kept
    veto = fig.copy()
    veto[1, :, :18] += 0.1
    veto[1, :, 18] -= 0.1
    r = rank(veto, veto, veto, fams, cells, default=0, groups=["paper", "local-mean"])
    assert r.verdict == "uncertain" and r.chosen == 0
    assert r.decided_by == "real (the synthetic lead was not confirmed)"
    assert "on the real NG images it trails the default" in r.reason
    # the synthetic defects slightly against, the real ones clearly for: switched, and said so
    over = fig.copy()
    over[1, :, :18] -= 0.01
    over[1, :, 18] += 0.3
    r = rank(over, over, over, fams, cells, default=0, groups=["paper", "local-mean"])
    assert (r.verdict, r.chosen) == ("switched", 1), r.reason
    assert r.decided_by == "real (the synthetic defects disagreed)"
    assert r.groups["local-mean"]["synthetic_lead"] < 0 < r.groups["local-mean"]["real_lead"]
    # both for: agreeing
    both = fig.copy()
    both[1] += 0.1
    r = rank(both, both, both, fams, cells, default=0, groups=["paper", "local-mean"])
    assert r.verdict == "switched" and r.decided_by == "synthetic and real agreeing"


def test_several_fold_draws_give_the_lead_per_draw_and_count_every_fold():
    rng = np.random.default_rng(1)
    fig = np.repeat(rng.uniform(0.3, 0.7, (1, 1, 18)), 9, axis=1).repeat(2, axis=0)
    fig[1] += np.repeat([0.02, 0.06, 0.10], 3)[:, None]  # draw 0, 1, 2: a different lead each
    draws = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    r = rank(fig, fig, fig, FAMILIES, CELL_FAMILY, default=0, groups=["paper", "local-mean"], fold_draw=draws)
    t = r.groups["local-mean"]
    assert t["lead_per_draw"] == pytest.approx([0.02, 0.06, 0.10])
    assert t["folds"] == 9 and t["folds_won"] == 9 and t["lead"] == pytest.approx(0.06)
