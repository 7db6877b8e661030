"""The fit's operating point (patchcore.operating_evidence, patchcore.fit_calibration): the
manifest's curve and evidence, the fold-bias correction, the rule choice, --ng, bad options."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from patchcore.data import load_class
from patchcore.out_of_fold import OutOfFold
from patchcore.config import PatchCoreConfig
from patchcore.model import PatchCore
from patchcore.operating_evidence import RULE_MARGIN, fold_bias, rule_for
from runtime import operating_point as op
from runtime.errors import UsageError
from runtime.postprocess import robust_scale


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from patchcore.synthetic import make_synthetic_class

    return make_synthetic_class(tmp_path_factory.mktemp("opev"), n_train=15, n_test_good=2, n_test_defect=4, size=96)


@pytest.fixture(scope="module")
def fitted(small):
    cfg = PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=96, crop=96, device="cpu", folds=3,
                          ng=str(small / "test" / "hole"), operating_point="false-calls=10%", rule="auto")
    model = PatchCore(cfg).fit(load_class(small).train)
    return model, model.manifest("t")


def test_the_manifest_holds_the_operating_point_its_curve_and_evidence(fitted):
    model, m = fitted
    thr = m["threshold"]
    point = thr["operating_point"]
    assert thr["method"] == "operating-point" and thr["value"] == point["value"] == model.threshold
    evidence, rule, policy = op.read(thr)
    assert str(policy) == "false-calls=10%" and point["rule"] == rule.to_dict()
    # --rule auto: both rules' objectives (catch rate at the policy's threshold) on record, the better one chosen
    obj = point["rule_choice"]["objective"]
    assert "image-score" in obj and (rule.kind == "image-score") == (max(obj.values()) < obj["image-score"] + RULE_MARGIN)
    assert op.choose(evidence, rule, policy) == pytest.approx(point["value"], rel=1e-12)  # the record re-derives
    assert thr["scale"] == pytest.approx(robust_scale(point["value"], evidence.good_scores), rel=1e-12)
    assert len(evidence.good_scores) == 15  # every training image, out of fold
    # each fold's held-out images carry every family x size once; the --ng half joins them
    n_synth = 3 * 18
    assert sum(evidence.facts["synthetic"]["families"].values()) == n_synth
    check = point["check"]
    assert len(evidence.defect_scores) + check["n"] == n_synth + 4 and check["n"] == 2  # test/hole: 4 images
    assert "check it" in evidence.defect_source and 0 <= check["caught"] <= check["n"]
    # the correction: scores divided by the measured fold bias (>= 1: a larger bank never scores higher)
    bias = evidence.facts["fold_bias"]
    assert bias["factor"] >= 1.0
    applied = bias["factor"] if bias["applied"] else 1.0
    np.testing.assert_allclose(evidence.good_scores * applied, thr["calibration_scores"], rtol=1e-9)
    assert evidence.facts["defect_correction"] == 1.0  # defects: measured to shift far less (docs/calibration.md)
    e = point["expected"]
    assert e["false_calls"] <= 0.10 and e["n_good"] == 15
    lo, hi = e["false_calls_interval"]
    assert lo <= e["false_calls"] <= hi
    c = point["curve"]
    assert len({len(v) for v in c.values()}) == 1 and np.all(np.diff(c["threshold"]) > 0)
    assert np.all(np.diff(c["false_calls"]) <= 0) and np.all(np.diff(c["catch_rate"]) <= 0)
    assert all(l <= v <= h for l, v, h in zip(c["catch_rate_lo"], c["catch_rate"], c["catch_rate_hi"]))
    words = "\n".join(op.describe(point))
    assert "expected false calls" in words and "expected catch rate" in words


def test_region_sizes_are_measured_as_the_runtime_measures_them(fitted, small):
    from runtime.calibration import pixel_level
    from runtime.images import read_image
    from runtime.preprocess import prepare
    from runtime.regions import Judge

    model, m = fitted
    judge = Judge(pixel_level(m["threshold"]))
    path = sorted((small / "test").rglob("*.png"))[0]
    img = read_image(path)
    pred = model.predict([img])
    found, _, _ = judge.regions(pred.maps[0], prepare(img, model.preprocess).plan)
    from patchcore.operating_evidence import largest_region

    got = largest_region(pred.maps[0], prepare(img, model.preprocess).plan, judge.level.value, judge.level.base)
    assert got == (found[0]["area_px"] if found else 0)


def test_fold_bias_extrapolates_one_more_step_of_the_power_law():
    s = np.linspace(1.0, 2.0, 10)
    folds = [np.arange(0, 5), np.arange(5, 10)]
    o = OutOfFold(s, np.zeros((10, 2, 2), np.float32), folds * 1, [1, 1])
    assert fold_bias(o)["factor"] == 1.0  # no inner scores, no correction
    five = [np.arange(i, 10, 5) for i in range(5)]
    o = OutOfFold(s, np.zeros((10, 2, 2), np.float32), five, [1] * 5, inner_scores=1.1 * s)
    a = math.log(5 / 4) / math.log(4 / 3)
    assert fold_bias(o)["factor"] == pytest.approx(1.1 ** a, rel=1e-5)
    o.inner_scores = 0.9 * s  # a smaller bank scoring lower is noise: never corrected upward
    assert fold_bias(o)["factor"] == 1.0


def _evidence(defect_regions):
    rng = np.random.default_rng(0)
    good = rng.normal(10, 1, 200)
    defects = np.concatenate([rng.normal(10.5, 1, 100), rng.normal(14, 1, 100)])  # half look good by score
    good_r = rng.integers(0, 40, 200).astype(float)
    return op.Evidence(good, defects, good_r, defect_regions)


def test_auto_rule_takes_either_only_where_regions_catch_what_the_score_misses():
    helped = _evidence(np.concatenate([np.full(100, 500.0), np.zeros(100)]))  # the low scorers have large regions
    rule, why = rule_for("auto", helped, op.parse_policy("f1"))
    assert rule.kind == "either" and rule.min_area_px == helped.good_region_px.max() + 1
    obj = why["objective"]
    assert obj[str(rule)] >= obj["image-score"] + RULE_MARGIN
    assert not rule.called_ng(helped.good_scores, helped.good_region_px, np.inf).any()  # regions alone: no good part
    plain = _evidence(np.full(200, 10.0))  # regions no larger than good parts': no help
    assert rule_for("auto", plain, op.parse_policy("f1"))[0].kind == "image-score"
    assert rule_for("image-score", helped, op.parse_policy("f1"))[0].kind == "image-score"
    assert rule_for("either", plain, op.parse_policy("f1"))[0].kind == "either"


def test_bad_operating_point_options_are_usage_errors():
    with pytest.raises(UsageError, match="not one of"):
        PatchCoreConfig(operating_point="nonsense")
    with pytest.raises(UsageError, match="folder not found"):
        PatchCoreConfig(ng="/no/such/folder")
    with pytest.raises(UsageError, match="--rule"):
        PatchCoreConfig(rule="sometimes")
    with pytest.raises(UsageError, match="--calibration oof"):
        PatchCoreConfig(operating_point="f1", calibration="holdout")


@pytest.mark.parametrize("args,says", [(["--operating-point", "nonsense"], "not one of"),
                                       (["--ng", "/no/such/folder"], "folder not found")])
def test_cli_bad_operating_point_is_exit_2(args, says, small, tmp_path):
    r = subprocess.run([sys.executable, "-m", "patchcore", "fit", "--data", str(small), "--out", str(tmp_path / "b"),
                        *args], capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_export_words_flag_a_point_that_calls_many_good_parts_ng():
    from export.pipeline import operating_point_words

    good = np.arange(100.0)
    ev = op.Evidence(good, good[50:] + 0.5)
    for text, flagged in (("false-calls=2%", False), ("false-calls=20%", True)):
        point = op.section(ev, op.Rule(), op.parse_policy(text), chosen_by="test")
        words = "\n".join(operating_point_words({"operating_point": point, "trust": {"level": "good", "why": "x"}}))
        assert words.startswith(f"operating point: {text}") and "trust: good" in words
        assert ("warning:" in words) is flagged
    assert operating_point_words({"value": 1.0}) == []  # a bundle from before operating points
