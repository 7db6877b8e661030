
import cv2
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from patchcore.metrics import EvalMetrics, auroc, evaluate, f1_max, image_auroc, pixel_auroc, pro_score


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(500) < 0.3
    s = np.round(rng.normal(size=500) + y, 1)  # heavy ties, within and across classes
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_auroc(y.astype(int), s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_hand_cases():
    assert auroc([0, 1], [0.1, 0.9]) == 1.0
    assert auroc([0, 1], [0.9, 0.1]) == 0.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    # pairs (pos, neg): (.8,.2)=1 (.8,.8)=.5 (.5,.2)=1 (.5,.8)=0 -> 2.5/4
    assert auroc([1, 0, 1, 0], [0.8, 0.2, 0.5, 0.8]) == pytest.approx(0.625)


def test_auroc_errors():
    with pytest.raises(ValueError, match="one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in size"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0, 2], [0.1, 0.2])


def test_auroc_at_pixel_scale_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(3_300_000) < 0.05
    s = rng.random(y.size).astype(np.float32) + 0.3 * y
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), bool)
    masks[1, 5:12, 8:20] = True
    masks[3, 20:30, 2:6] = True
    maps = np.round(rng.random(masks.shape) + masks * 0.4, 2).astype(np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_auroc(masks, maps[:, :16])


def test_pro_hand_two_images_diagonal_region():
    """Region A (image 0, 2 px) and region B (image 1, a 4-px diagonal: one region only under
    8-connectivity). 26 defect-free pixels: one at 0.7, the rest 0.1.
    Curve (FPR, PRO): (0,0) (0,.25)@.9 (0,.5)@.8 (1/26,.5)@.7 (1/26,.75)@.5 (1/26,1)@.3 (1,1)@.1
    Area to 0.3 = .5/26 + (.3 - 1/26) * 1  ->  PRO = 1 - .5 / (26 * .3)."""
    masks = np.zeros((2, 4, 4), bool)
    maps = np.full((2, 4, 4), 0.1)
    masks[0, 0, 0:2] = True
    maps[0, 0, 0], maps[0, 0, 1] = 0.9, 0.5
    idx = np.arange(4)
    masks[1, idx, idx] = True
    maps[1, idx, idx] = [0.8, 0.8, 0.3, 0.3]
    maps[0, 3, 3] = 0.7
    assert pro_score(masks, maps) == pytest.approx(1 - 0.5 / (26 * 0.3), abs=1e-12)
    # had the diagonal been split into 4 regions (4-connectivity), the mean would differ
    assert cv2.connectedComponents(masks[1].astype(np.uint8), connectivity=4)[0] - 1 == 4


def test_pro_hand_tie_and_interpolation():
    """One region of 2 px (values .95 and .7) and 8 defect-free px .9 .8 ... .2. The region's .7
    ties with a defect-free .7, so the curve runs straight from (2/8, .5) to (3/8, 1); at FPR .3
    it is .7. Area = .25*.5 + .05*(.5+.7)/2 = .155 -> PRO .155/.3."""
    masks = np.zeros((1, 1, 10), bool)
    masks[0, 0, :2] = True
    maps = np.array([[[0.95, 0.7, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]]])
    expected = 0.155 / 0.3
    assert pro_score(masks, maps) == pytest.approx(expected, abs=1e-12)
    # enough 'lower' quantiles hit every distinct value: the same curve
    assert pro_score(masks, maps, num_thresholds=100) == pytest.approx(expected, abs=1e-12)
    # whole curve: flat .5 to FPR .25, straight to (3/8, 1), then flat 1
    area = 0.25 * 0.5 + 0.125 * 0.75 + 0.625 * 1.0
    assert pro_score(masks, maps, fpr_limit=1.0) == pytest.approx(area, abs=1e-12)


def _pro_brute(masks, maps, fpr_limit=0.3):
    regions = []
    for i, m in enumerate(masks):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [(i, lab == k) for k in range(1, n)]
    neg = maps[~masks]
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pro = np.mean([(maps[i][r] >= t).mean() for i, r in regions])
        pts.append(((neg >= t).mean(), pro))
    x, y = map(np.array, zip(*pts))
    keep = x <= fpr_limit
    xi, yi = x[keep], y[keep]
    if xi[-1] < fpr_limit:
        j = np.argmax(x > fpr_limit)
        yv = y[j - 1] + (fpr_limit - x[j - 1]) / (x[j] - x[j - 1]) * (y[j] - y[j - 1])
        xi, yi = np.r_[xi, fpr_limit], np.r_[yi, yv]
    return np.sum(np.diff(xi) * (yi[1:] + yi[:-1]) / 2) / fpr_limit


@pytest.mark.parametrize("seed", range(3))
def test_pro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 12, 12)) < 0.15  # many small, irregular regions
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)
    assert pro_score(masks, maps) == pytest.approx(_pro_brute(masks, maps), abs=1e-12)
    assert pro_score(masks, maps, 0.1) == pytest.approx(_pro_brute(masks, maps, 0.1), abs=1e-12)


def test_pro_at_mvtec_scale_exact_and_quantile_thresholds_agree():
    rng = np.random.default_rng(0)
    masks = np.zeros((83, 224, 224), bool)
    masks[:40, 50:90, 60:100] = True
    masks[:40, 150:156, 10:30] = True
    maps = rng.random(masks.shape).astype(np.float32) + 0.5 * masks
    exact = pro_score(masks, maps)
    assert pro_score(masks, maps, num_thresholds=1000) == pytest.approx(exact, abs=2e-3)
    assert 0.5 < exact < 0.8


def test_pro_errors():
    with pytest.raises(ValueError, match="defect region"):
        pro_score(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score(np.ones((1, 2, 2), bool), np.zeros((1, 2, 2)), fpr_limit=0)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.4
    s = np.round(rng.normal(size=60) + y, 1)
    brute = max(f1_score(y, s >= t) for t in np.unique(s))
    f1, thr = f1_max(y, s)
    assert f1 == pytest.approx(brute, abs=1e-12)
    assert f1_score(y, s >= thr) == pytest.approx(f1, abs=1e-12)
    assert thr in s


def test_f1_max_hand_case_and_errors():
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == (1.0, 0.7)
    with pytest.raises(ValueError, match="positive"):
        f1_max([0, 0], [0.1, 0.2])


def test_evaluate():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 16, 16), bool)
    masks[2, 2:6, 2:6] = masks[3, 9:14, 8:12] = True
    maps = rng.random(masks.shape) + masks
    scores = maps.max(axis=(1, 2))
    m = evaluate(labels, scores, masks, maps)
    assert isinstance(m, EvalMetrics)
    assert m.image_auroc == pytest.approx(roc_auc_score(labels, scores))
    assert m.pixel_auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m.pro == pytest.approx(pro_score(masks, maps))
    assert (m.f1_max, m.f1_threshold) == f1_max(labels, scores)
    assert set(m.to_dict()) == {"image_auroc", "pixel_auroc", "pro", "f1_max", "f1_threshold"}
    no_pix = evaluate(labels, scores)
    assert no_pix.pixel_auroc is None and no_pix.pro is None
    assert evaluate(labels, scores, np.zeros_like(masks), maps).pro is None
    with pytest.raises(ValueError, match="without anomaly maps"):
        evaluate(labels, scores, masks, None)
